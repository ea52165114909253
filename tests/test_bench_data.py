"""bench/data_throughput.py --quick runs end to end on CPU and writes a complete report."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from dualvae.data import dali_missing
from no_dali import without_dali

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "data_throughput.py")


def test_data_throughput_quick(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--quick", "--device", "cpu", "--threads", "2",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "data-cpu.json").read_text())
    for key in ("device_name", "cpu_model", "threads", "batch_size", "image_size", "dali", "torch", "num_images",
                "prepare_images_per_s", "train_step_images_per_s", "targets", "loadavg_start", "cpu_isa_level",
                "cpu_isa", "cpu_count"):
        assert key in report, key
    assert report["skipped"] == []
    assert [r["backend"] for r in report["rows"]] == ["pil", "dali-cpu", "hdf5"]
    for r in report["rows"]:
        assert r["images"] > 0 and r["images_per_s"] > 0 and r["batches_per_epoch"] >= 2
    assert report["image_size"] == 64 and report["num_images"] == 96
    assert isinstance(report["targets"]["dali_cpu_ge_pil"], bool)
    md = (tmp_path / "data-cpu.md").read_text()
    assert "| dali-cpu | cpu | 2 |" in md and "| pil | cpu | 2 |" in md


def test_data_throughput_without_dali_runs_the_other_rows(tmp_path):
    from dualvae.cli import main

    have_dali = dali_missing() is None
    args = ["--quick", "--device", "cpu", "--threads", "2", "--out", str(tmp_path)]
    if have_dali:  # a cache written here, read where DALI is not
        root, cache = str(tmp_path / "root"), str(tmp_path / "root.h5")
        assert main(["synth", "--out", root, "--num", "96", "--seed", "0", "--workers", "1"]) == 0
        assert main(["prepare", "--celeba", root, "--out", cache, "--workers", "1"]) == 0
        args += ["--data", root, "--cache", cache]
    proc = subprocess.run(without_dali(SCRIPT, *args), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "data-cpu.json").read_text())
    assert report["dali"] is None and report["num_images"] == 96
    assert [r["backend"] for r in report["rows"]] == (["pil", "hdf5"] if have_dali else ["pil"])
    for r in report["rows"]:
        assert r["images"] > 0 and r["images_per_s"] > 0
    skipped = {r["backend"]: r["reason"] for r in report["skipped"]}
    assert "nvidia.dali is not importable" in skipped["dali-cpu"]
    if not have_dali:
        assert "pass --cache" in skipped["hdf5"]
    assert report["train_step_images_per_s"] > 0 and report["targets"] == {}
    for key in ("cpu_model", "cpu_isa_level", "cpu_isa", "cpu_count"):
        assert key in report, key
    assert "skipped: dali-cpu (cpu): nvidia.dali is not importable" in (tmp_path / "data-cpu.md").read_text()
