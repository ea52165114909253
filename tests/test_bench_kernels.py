"""bench/bench_dual_bce.py and bench/bench_reparam_kl.py --quick run end to end on CPU (Triton rows under the
interpreter) and write one complete report."""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = [os.path.join(ROOT, "bench", name) for name in ("bench_dual_bce.py", "bench_reparam_kl.py")]


def test_kernels_bench_quick(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    for script in SCRIPTS:
        proc = subprocess.run([sys.executable, script, "--quick", "--device", "cpu", "--out", str(tmp_path)],
                              env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "kernels-cpu.json").read_text())
    md = (tmp_path / "kernels-cpu.md").read_text()

    for key in ("device_name", "torch", "triton", "python", "cpu_model", "threads", "loadavg_start", "skipped",
                "memory_method", "sizes", "dtypes"):
        assert key in report, key
    unavailable = {impl.strip() for s in report["skipped"] if s["reason"] == "triton is not installed"
                   for impl in s["impl"].split(",")}
    rows = report["rows"]
    assert not [r for r in rows if "error" in r], [r for r in rows if "error" in r]
    for op, impls in report["impls"].items():
        got = {r["impl"] for r in rows if r["op"] == op}
        assert got == set(impls) - unavailable, (op, got, impls)
    for r in rows:
        assert r["median_ms"] > 0 and r["repeats"] >= 1
        assert r["extra_peak_mib"] is not None
        assert r["speedup_vs_eager"] is not None and r["speedup_vs_compile"] is not None
        assert r["interpreted"] == (r["impl"] in ("ours", "ours-packed", "ours-seeded"))
    assert "## dual_bce" in md and "## reparameterize_kl" in md and "eager ms / MiB" in md
    assert set(report["impls"]) == {"dual_bce", "reparameterize_kl"}  # the second script kept the first's rows
    assert [run["filters"]["ops"] for run in report["runs"]] == ["dual_bce", "reparameterize_kl"]


def test_linear_bce_bench_quick(tmp_path):
    """bench/bench_linear_bce.py --quick: every impl measured in both modes, the targets block, the table and a
    plot per mode."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "bench_linear_bce.py"), "--quick", "--device",
                           "cpu", "--threads", "1", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "linear_bce-cpu.json").read_text())
    for key in ("device_name", "torch", "cpu_isa", "threads", "loadavg_start", "runs", "targets", "rows"):
        assert key in report, key
    impls = {(r["mode"], r["impl"]) for r in report["rows"]}
    for mode in ("fwd", "fwd+bwd"):
        for impl in ("eager", "compile", "chunked", "ours", "ours-weighted", "gemm-floor", "dual_bce-ours"):
            assert (mode, impl) in impls, (mode, impl)
    assert all(r["ms"] > 0 for r in report["rows"])
    assert "| 64 | 128 | 40 |" in (tmp_path / "linear_bce-cpu.md").read_text()
    for mode in ("fwd", "fwdbwd"):
        assert (tmp_path / f"linear_bce-cpu-{mode}.png").stat().st_size > 1000
