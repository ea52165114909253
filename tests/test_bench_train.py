"""bench/train_step.py --quick runs end to end on CPU and writes a complete report, with DALI and without it."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dualvae.data import dali_missing
from no_dali import without_dali

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "train_step.py")
LADDER = ["eager", "data", "kernels", "compile", "bf16"]

def _run(tmp_path, *extra, no_dali=False):
    args = ["--quick", "--device", "cpu", "--threads", "1", "--out", str(tmp_path), *extra]
    cmd = without_dali(SCRIPT, *args) if no_dali else [sys.executable, SCRIPT, *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((tmp_path / "train-cpu.json").read_text())


@pytest.mark.skipif(dali_missing() is not None, reason="nvidia.dali is not installed: the DALI rows would be skipped")
def test_train_step_bench_quick(tmp_path):
    proc, report = _run(tmp_path)
    for key in ("device_name", "cpu", "threads", "batch_size", "image_size", "torch", "triton", "dali",
                "loadavg_start", "loadavg_end", "rounds_info", "ours_over_eager", "x_eager", "target_met"):
        assert key in report, key
    assert report["cpu"]["cpu_isa_level"] and isinstance(report["cpu"]["cpu_isa"], list)
    assert [r["config"] for r in report["rows"]] == LADDER
    assert [r["precision"] for r in report["rows"]] == ["fp32"] * 4 + ["bf16"]
    assert [r["data_backend"] for r in report["rows"]] == ["pil"] + ["dali"] * 4
    assert [r["kernel_backend"] for r in report["rows"]] == ["reference"] * 2 + ["auto"] * 3
    assert len(report["rounds_info"]) == 1 and len(report["rounds_info"][0]["loadavg_before"]) == 3
    for r in report["rows"]:
        assert "skipped" not in r and "error" not in r, r
        assert r["timed_steps"] == 1 and r["step_s"]["median"] > 0
        ips = r["images_per_s"]
        assert 0 < ips["min"] <= ips["median"] <= ips["max"]
        assert r["x_eager"] > 0
    assert report["rows"][0]["x_eager"] == 1.0 and report["complete"] is True
    assert report["image_size"] == 64 and report["target_met"] is None  # the target is for GPUs
    assert "| bf16 | + bf16 autocast (= ours) | dali | auto | bf16 |" in proc.stdout
    assert (tmp_path / "train-cpu.md").read_text().count("\n| ") == 1 + len(LADDER)  # header + one per row


def test_train_step_bench_runs_without_dali(tmp_path):
    """Rows that need DALI are skipped with the reason; the others run."""
    _, report = _run(tmp_path, no_dali=True)
    rows = {r["config"]: r for r in report["rows"]}
    assert list(rows) == LADDER
    assert report["dali"] is None and "not importable" in report["dali_missing"]
    assert rows["eager"]["timed_steps"] == 1 and "skipped" not in rows["eager"]
    for name in LADDER[1:]:
        assert "needs DALI" in rows[name]["skipped"], rows[name]
        assert "images_per_s" not in rows[name]


def test_train_step_bench_pil_ladder_without_dali(tmp_path):
    """--data-backend pil runs the kernel/compile/bf16 rows without DALI (a bare GPU host has none)."""
    _, report = _run(tmp_path, "--data-backend", "pil", "--configs", "eager,data,kernels,ours", no_dali=True)
    rows = {r["config"]: r for r in report["rows"]}
    assert list(rows) == ["eager", "data", "kernels", "bf16"]
    assert "same configuration as eager" in rows["data"]["skipped"]
    for name in ("eager", "kernels", "bf16"):
        assert rows[name]["data_backend"] == "pil" and rows[name]["timed_steps"] == 1, rows[name]
    assert report["x_eager"]["kernels"] > 0 and report["ours_over_eager"] > 0


def test_train_step_bench_rejects_unknown_config(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--device", "cpu", "--configs", "eager,turbo",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown configuration 'turbo'" in proc.stderr
