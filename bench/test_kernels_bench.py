"""pytest-benchmark view of the kernel benchmarks: forward + backward of dual_bce and reparameterize_kl per
implementation, with the cases of bench/bench_dual_bce.py and bench/bench_reparam_kl.py.

    .venv/bin/pytest bench/test_kernels_bench.py --benchmark-only [--benchmark-group-by=group]

Not collected by `make test` / plain `pytest` (testpaths = tests). Needs pytest-benchmark. On a CUDA machine it runs
the scripts' grid; on CPU a few small sizes, with the Triton rows ("ours*") only under
TRITON_INTERPRET=1 and at tiny sizes. Each test also records the extra peak memory (and, on CUDA, kernel launches)
in the benchmark's extra_info. The two scripts are what write bench/results.
"""
from __future__ import annotations

import os
import sys

import pytest

pytest.importorskip("pytest_benchmark")
import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_dual_bce as bce  # noqa: E402
import bench_reparam_kl as rep  # noqa: E402
import harness  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _cases():
    if DEVICE == "cuda":
        bce_cases = [(B, d, n, dt) for dt in ("fp32", "bf16") for B, d, n in bce.GPU_SIZES]
        rep_cases = [(B, d, dt) for dt in ("fp32", "bf16") for B, d in rep.SIZES]
        bce_impls, rep_impls = bce.IMPLS_GPU, rep.IMPLS_GPU
    else:
        bce_cases = [(256, bce.D, 40, "fp32"), (256, bce.D, 4096, "fp32"), (1024, bce.D, 4096, "fp32")]
        rep_cases = [(256, 128, "fp32"), (4096, 128, "fp32"), (65536, 256, "fp32")]
        bce_impls, rep_impls = bce.IMPLS_CPU, rep.IMPLS_CPU
    out = []
    for B, d, n, dt in bce_cases:
        for impl in bce_impls:
            marks = ()
            if DEVICE == "cpu" and impl in harness.INTERP_IMPLS:
                if B * n > bce.INTERP_ENTRIES:
                    continue  # the interpreter: tiny sizes only
                marks = pytest.mark.skipif(not INTERPRET, reason="Triton on CPU needs TRITON_INTERPRET=1")
            out.append(pytest.param(dict(op="dual_bce", B=B, d=d, n=n, dtype=dt, impl=impl),
                                    id=f"dual_bce-B{B}-d{d}-n{n}-{dt}-{impl}", marks=marks))
    for B, d, dt in rep_cases:
        for impl in rep_impls:
            marks = ()
            if DEVICE == "cpu" and impl in harness.INTERP_IMPLS:
                if B * d > rep.INTERP_ELEMS:
                    continue
                marks = pytest.mark.skipif(not INTERPRET, reason="Triton on CPU needs TRITON_INTERPRET=1")
            out.append(pytest.param(dict(op="reparameterize_kl", B=B, d=d, n=None, dtype=dt, impl=impl),
                                    id=f"reparam-B{B}-d{d}-{dt}-{impl}", marks=marks))
    return out


@pytest.mark.parametrize("spec", _cases())
def test_fwd_bwd(benchmark, spec):
    if DEVICE == "cuda" and INTERPRET:
        pytest.skip("TRITON_INTERPRET=1 with CUDA: the Triton rows would run the interpreter")
    try:
        import triton  # noqa: F401
    except ImportError:
        if spec["impl"] in harness.INTERP_IMPLS:
            pytest.skip("triton is not installed")
    if DEVICE == "cpu":
        harness._pin_malloc()
    case = (bce if spec["op"] == "dual_bce" else rep).make_case(spec, DEVICE)
    compiled = spec["impl"] in ("compile", "chunked")
    interp = DEVICE == "cpu" and spec["impl"] in harness.INTERP_IMPLS

    def step():
        harness._step(case)
        if DEVICE == "cuda":
            torch.cuda.synchronize()

    benchmark.group = f"{spec['op']} B={spec['B']} d={spec['d']}" + \
        (f" n={spec['n']}" if spec["n"] is not None else "") + f" {spec['dtype']}"
    benchmark.pedantic(step, warmup_rounds=(2 if compiled else 1) if DEVICE == "cpu" else 5,
                       rounds=2 if interp else (5 if DEVICE == "cpu" else 20), iterations=1)
    # memory (and on CUDA launches, bandwidth) of one more step, the way the scripts measure them
    extra = harness.measure(case, DEVICE, warmup=0, repeats=1, budget_s=0.0)
    info = {k: extra[k] for k in ("extra_peak_mib", "launches_fwd", "launches_bwd", "gbps") if k in extra}
    benchmark.extra_info.update(spec, interpreted=interp, **info)
    case.zero_grad()
