"""bench/train_step.py --quick runs end to end on CPU and writes a complete report."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "train_step.py")


def test_train_step_bench_quick(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--device", "cpu", "--threads", "1",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "train-cpu.json").read_text())
    for key in ("device_name", "cpu_model", "threads", "batch_size", "image_size", "torch", "dali", "loadavg_start",
                "loadavg_end", "ours_over_eager", "target_met"):
        assert key in report, key
    assert [r["config"] for r in report["rows"]] == ["eager", "ours", "ours-fp32"]
    assert [r["precision"] for r in report["rows"]] == ["fp32", "bf16", "fp32"]
    for r in report["rows"]:
        assert r["steps"] == 1 and r["steps_per_s"] > 0 and r["images_per_s"] > 0
    assert report["image_size"] == 64 and report["target_met"] is None  # the target is for GPUs
    assert "| ours | dali | auto | bf16 |" in proc.stdout
