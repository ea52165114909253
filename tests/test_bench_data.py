"""bench/data_throughput.py --quick runs end to end on CPU and writes a complete report."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "data_throughput.py")


def test_data_throughput_quick(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--device", "cpu", "--threads", "2",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "data-cpu.json").read_text())
    for key in ("device_name", "cpu_model", "threads", "batch_size", "image_size", "dali", "torch", "num_images",
                "prepare_images_per_s", "train_step_images_per_s", "targets", "loadavg_start"):
        assert key in report, key
    assert [r["backend"] for r in report["rows"]] == ["pil", "dali-cpu", "hdf5"]
    for r in report["rows"]:
        assert r["images"] > 0 and r["images_per_s"] > 0 and r["batches_per_epoch"] >= 2
    assert report["image_size"] == 64 and report["num_images"] == 96
    assert isinstance(report["targets"]["dali_cpu_ge_pil"], bool)
    md = (tmp_path / "data-cpu.md").read_text()
    assert "| dali-cpu | cpu | 2 |" in md and "| pil | cpu | 2 |" in md
