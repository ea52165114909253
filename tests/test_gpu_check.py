"""bench/gpu_check.py --dry: the GPU check's stages run end to end on CPU and write a verdict per stage."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "gpu_check.py")
STAGES = ["env", "tests", "kernels", "linear_bce", "train", "data", "ext"]


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DUALVAE_REQUIRE_EXT")}
    proc = subprocess.run([sys.executable, SCRIPT, "--dry", "--out", str(out)], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=420)
    summary = json.loads((out / "summary.json").read_text())
    verdicts = {s["stage"]: s for s in summary["stages"]}
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-2000:], verdicts)
    assert summary["ok"] and summary["dry"]
    assert [s["stage"] for s in summary["stages"]] == STAGES
    for name in STAGES[:6]:
        assert verdicts[name]["verdict"] == "pass", verdicts[name]
    assert verdicts["ext"]["verdict"] == "skipped" and verdicts["ext"]["reason"]
    assert verdicts["tests"]["selected"] > 10 and verdicts["tests"]["passed"] >= 1
    files = sorted(os.listdir(out))
    assert len(files) <= 8, files
    assert {"summary.json", "gpu_check.log", "tests.json", "kernels-cpu.json", "linear_bce-cpu.json",
            "train-cpu.json", "data-cpu.json"} <= set(files), files
    env_info = summary["env"]
    assert env_info["torch"] and env_info["cpu"]["cpu_isa_level"]
    # imported from the checkout through the shim, not from wherever the test runs
    assert env_info["source_tree_shim"]
    assert os.path.samefile(env_info["dualvae_kernels_from"], os.path.join(ROOT, "kernels"))
    kernels = json.loads((out / "kernels-cpu.json").read_text())
    assert kernels["cpu"]["cpu_isa_level"] == env_info["cpu"]["cpu_isa_level"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a host without CUDA")
def test_gpu_check_fails_a_stage_and_says_so(tmp_path):
    # the real check on a host without CUDA: env fails, so the exit status is non-zero and summary.json says why
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, SCRIPT, "--out", str(out), "--stages", "none"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["ok"]
    failed = [s for s in summary["stages"] if s["verdict"] == "fail"]
    assert failed and "no CUDA device" in failed[0]["reason"], summary["stages"]
    assert all(s["verdict"] == "skipped" for s in summary["stages"] if s["stage"] != "env")
