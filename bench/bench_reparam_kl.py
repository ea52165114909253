"""Benchmark of reparameterize_kl (dualvae.kernels), forward + backward w.r.t. mu and logvar, against eager and
torch.compile.

    python bench/bench_reparam_kl.py [--quick] [--device cpu|cuda] [--out DIR] [--repeats N] [--threads N]
                                     [--dtypes DTYPES] [--impls IMPLS] [--sizes SIZES] [--resume]

Writes its rows into `<out>/kernels-<device>.json` and `.md` beside bench/bench_dual_bce.py's and prints the
table (bench/harness.py says how it measures). Implementations ("impl"):
    eager        the reference math in plain torch ops (kernels/reference.py), with an explicit eps
    compile      torch.compile of that same reference function
    ours         backend="triton" (CUDA; on CPU only under the Triton interpreter at tiny sizes: not a
                 performance number, marked "interp")
    ours-seeded  backend="triton" drawing eps in-kernel from a seed (no eps tensor read or kept)
    ours-cpu     (CPU) backend="cpu": the C++ kernels of kernels/csrc (the reference where they are not built)
On CUDA each row reports its bandwidth as a fraction of a measured device-to-device copy (torch.clone).
"""
from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import DTYPES, INTERP_IMPLS, Case, compiled, implementations, kernels, main  # noqa: E402

OP = "reparameterize_kl"
TITLE = "reparameterize_kl"
SIZE_KEYS = ("B", "d")
# The grid: B x d from 256x128 to 65536x512 (fp32 and bf16 on a GPU, fp32 on CPU).
SIZES = [(256, 128), (1024, 128), (4096, 128), (16384, 128), (16384, 512), (65536, 256), (65536, 512)]
INTERP_ELEMS = 256 * 128        # the Triton interpreter runs only tiny sizes
QUICK_SIZES = [(64, 32)]
BW_TARGET_ELEMS = 16 * 2**20    # "from 16M elements up"
IMPLS_GPU = ["eager", "compile", "ours", "ours-seeded"]
IMPLS_CPU = ["eager", "compile", "ours-cpu", "ours", "ours-seeded"]


def make_reparam(impl: str, B: int, d: int, dtype: torch.dtype, device: str) -> Case:
    """Inputs and forward/backward of one implementation at (B, d)."""
    g = torch.Generator(device=device).manual_seed(B * 31 + d)
    mu = torch.randn(B, d, generator=g, device=device).to(dtype).requires_grad_()
    logvar = (torch.randn(B, d, generator=g, device=device) * 0.5).to(dtype).requires_grad_()
    seeded = impl == "ours-seeded"
    eps = None if seeded else torch.randn(B, d, generator=g, device=device).to(dtype)
    gz = torch.randn(B, d, generator=g, device=device).to(dtype)
    # upstream KL gradients in both dtypes the ops return (kl is float32 on the fused backends): picking one
    # costs no kernel launch inside the timed backward
    gkl = {dt: torch.ones(B, device=device, dtype=dt) for dt in {dtype, torch.float32}}
    leaves = [mu, logvar]

    if impl == "eager":
        ref = kernels().reference.reparameterize_kl

        def fwd():
            return ref(mu, logvar, eps)
    elif impl == "compile":
        ref = compiled(kernels().reference.reparameterize_kl)

        def fwd():
            return ref(mu, logvar, eps)
    elif impl in ("ours", "ours-seeded", "ours-cpu"):
        K = kernels()
        backend = "cpu" if impl == "ours-cpu" else "triton"

        def fwd():
            if seeded:
                return K.reparameterize_kl(mu, logvar, seed=1234, backend=backend)
            return K.reparameterize_kl(mu, logvar, eps, backend=backend)
    else:
        raise ValueError(f"reparameterize_kl: unknown impl {impl!r}")

    def bwd(out):
        z, kl = out
        torch.autograd.backward((z, kl), (gz, gkl[kl.dtype]))

    es = torch.empty((), dtype=dtype).element_size()
    elems = B * d
    n_eps = 0 if seeded else 1
    bytes_fwd = elems * es * (3 + n_eps) + B * 4             # read mu, logvar (, eps); write z; write kl
    bytes_bwd = elems * es * (5 + n_eps) + B * 4             # read dz, mu, logvar (, eps); write dmu, dlogvar; read dkl
    inputs = [mu, logvar, gz, *gkl.values()] + ([eps] if eps is not None else [])
    nbytes = sum(t.numel() * t.element_size() for t in inputs)
    return Case("reparameterize_kl", impl, fwd, bwd, leaves, nbytes, bytes_fwd, bytes_bwd,
                keep=[gz, gkl] + ([eps] if eps is not None else []))


def make_case(spec: dict, device: str) -> Case:
    return make_reparam(spec["impl"], spec["B"], spec["d"], DTYPES[spec["dtype"]], device)


def plan(device: str, quick: bool, triton_ok: bool) -> tuple[list[dict], list[dict]]:
    """(specs to run, skipped entries with reasons)."""
    specs = []
    cpu = device == "cpu"
    impls, skipped = implementations(IMPLS_CPU if cpu else IMPLS_GPU, triton_ok)
    if quick:
        sizes, dtypes = QUICK_SIZES, ["fp32"]
    elif cpu:
        sizes, dtypes = SIZES, ["fp32"]
        skipped.append(dict(op=OP, dtype="bf16", impl="all", reason="CPU run is fp32 only (time budget)"))
        if triton_ok:
            skipped.append(dict(op=OP, impl="ours, ours-seeded",
                                reason=f"Triton interpreter on CPU: only fp32 sizes with B*d <= {INTERP_ELEMS} "
                                       "(tiny)"))
    else:
        sizes, dtypes = SIZES, ["fp32", "bf16"]
    for dt in dtypes:
        for B, d in sizes:
            for impl in impls:
                if cpu and impl in INTERP_IMPLS and (B * d > INTERP_ELEMS or dt != "fp32"):
                    continue  # listed once above
                specs.append(dict(op=OP, B=B, d=d, n=None, dtype=dt, impl=impl))
    return specs, skipped


def targets(rows: list[dict], device: str) -> tuple[dict, bool, str | None]:
    """(entries per target, all met, the targets in words): on a GPU, one kernel launch each way at every size
    and >= 85% of the measured copy bandwidth (fwd+bwd bytes / time) from 16M elements up; none on CPU."""
    if device != "cuda":
        return {}, True, None
    out = {"reparam_launches": [], "reparam_bandwidth": []}
    for r in rows:
        if r["op"] != OP or r.get("impl") != "ours" or "error" in r:
            continue
        size = {k: r[k] for k in ("B", "d", "dtype")}
        out["reparam_launches"].append(dict(size, fwd=r.get("launches_fwd"), bwd=r.get("launches_bwd"),
                                            ok=r.get("launches_fwd") == 1 and r.get("launches_bwd") == 1))
        if r["B"] * r["d"] >= BW_TARGET_ELEMS:
            f = r.get("bw_frac")
            out["reparam_bandwidth"].append(dict(size, bw_frac=f, bw_frac_fwd=r.get("bw_frac_fwd"),
                                                 bw_frac_bwd=r.get("bw_frac_bwd"), ok=f is not None and f >= 0.85))
    ok = all(e["ok"] for v in out.values() for e in v)
    return out, ok, ("reparam+KL one kernel launch each way at every size and >= 85% of the measured copy "
                     "bandwidth (fwd+bwd bytes / time) from 16M elements up")


if __name__ == "__main__":
    sys.exit(main(OP, __doc__.split("\n\n")[0]))
