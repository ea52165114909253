"""Benchmark of dual_bce (dualvae.kernels), forward + backward w.r.t. z and U, against eager, torch.compile and
a Liger-style chunked implementation.

    python bench/bench_dual_bce.py [--quick] [--device cpu|cuda] [--out DIR] [--repeats N] [--threads N]
                                   [--dtypes DTYPES] [--impls IMPLS] [--sizes SIZES] [--resume]

Writes its rows into `<out>/kernels-<device>.json` and `.md` beside bench/bench_reparam_kl.py's and prints the
table (bench/harness.py says how it measures). Implementations ("impl"):
    eager        the reference math in plain torch ops (kernels/reference.py)
    compile      torch.compile of that same reference function
    chunked      the Liger way: a custom autograd.Function whose forward loops over chunks of CHUNK columns of U,
                 runs a torch.compile'd chunk function that returns the chunk's loss and its gradients (dz
                 accumulated, dU written), and whose backward only scales them
    ours         backend="triton" (CUDA; on CPU only under the Triton interpreter at tiny sizes: not a
                 performance number, marked "interp")
    ours-packed  backend="triton" with labels packed by pack_labels (packing is outside the timing)
    ours-cpu     (CPU) backend="cpu": the C++ kernels of kernels/csrc (the reference where they are not built)
"""
from __future__ import annotations

import math
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import DTYPES, INTERP_IMPLS, Case, compiled, implementations, kernels, main  # noqa: E402

OP = "dual_bce"
TITLE = "dual_bce (d=128, masked, reduction=sum)"
SIZE_KEYS = ("B", "d", "n")
CHUNK = 4096  # columns of U per chunk in the Liger-style implementation
# The GPU grid: B in {256, 4096}, d=128, n in {40, 4096, 65536, 262144}, fp32 and bf16.
D = 128
GPU_SIZES = [(B, D, n) for B in (256, 4096) for n in (40, 4096, 65536, 262144)]
# On CPU: the C++ kernels' target grid (B=1024, d=128, n in {40, 8192, 65536, 262144}) plus three shapes of
# the GPU grid, less the sizes over the caps below (listed as skipped, with the reason).
CPU_SIZES = sorted({(1024, D, n) for n in (40, 8192, 65536, 262144)} | {(256, D, 40), (256, D, 4096),
                                                                       (4096, D, 4096)})
CPU_LOGITS_CAP = 2 << 30        # skip sizes whose eager logits exceed 2 GiB
CPU_ENTRIES_CAP = 1 << 28       # and (time budget) more than 1024 x 262144 label entries
CPU_BF16_ENTRIES_CAP = 1 << 20  # bf16 matmul/elementwise on an AVX2-only CPU is emulated: far slower than fp32
INTERP_ENTRIES = 256 * 40       # the Triton interpreter runs only tiny sizes (it runs each program in Python)
QUICK_SIZES = [(32, D, 40)]
IMPLS_GPU = ["eager", "compile", "chunked", "ours", "ours-packed"]
IMPLS_CPU = ["eager", "compile", "chunked", "ours-cpu", "ours", "ours-packed"]


def _chunk_grads(z, U_c, y_c, m_c):
    """Loss and gradients of one chunk of columns, computed explicitly (compiled by the chunked impl)."""
    logits = (z @ U_c.t()).float()
    y = y_c.float()
    m = m_c.float()
    loss = (m * F.binary_cross_entropy_with_logits(logits, y, reduction="none")).sum()
    g = (m * (torch.sigmoid(logits) - y)).to(z.dtype)
    return loss, (g @ U_c).float(), (g.t() @ z).float()


class ChunkedDualBCE(torch.autograd.Function):
    """Liger's way: the forward loops over chunks of n, computes every chunk's loss and gradients (never the whole
    B x n logits), keeps dz and dU; the backward scales them by the upstream scalar."""

    @staticmethod
    def forward(ctx, z, U, y, mask, chunk_fn, chunk):
        n = U.shape[0]
        loss = torch.zeros((), dtype=torch.float32, device=z.device)
        dz = torch.zeros(z.shape, dtype=torch.float32, device=z.device)
        dU = torch.empty(U.shape, dtype=torch.float32, device=U.device)
        for s in range(0, n, chunk):
            l_c, dz_c, dU_c = chunk_fn(z, U[s:s + chunk], y[:, s:s + chunk], mask[:, s:s + chunk])
            loss += l_c
            dz += dz_c
            dU[s:s + chunk] = dU_c
        ctx.save_for_backward(dz.to(z.dtype), dU.to(U.dtype))
        return loss

    @staticmethod
    def backward(ctx, grad):
        dz, dU = ctx.saved_tensors
        if bool(grad != 1.0):  # as Liger does: a unit upstream gradient hands the stored gradients over unscaled
            dz, dU = grad * dz, grad * dU
        return (dz if ctx.needs_input_grad[0] else None), (dU if ctx.needs_input_grad[1] else None), \
            None, None, None, None


def make_bce(impl: str, B: int, d: int, n: int, dtype: torch.dtype, device: str) -> Case:
    """Inputs and forward/backward of one implementation at (B, d, n)."""
    g = torch.Generator(device=device).manual_seed(B * 7919 + n)  # drawn on the device: B x n is large
    z = (torch.randn(B, d, generator=g, device=device) * 0.5).to(dtype).requires_grad_()
    U = (torch.randn(n, d, generator=g, device=device) / math.sqrt(d)).to(dtype).requires_grad_()
    y = (torch.rand(B, n, generator=g, device=device) > 0.5).to(dtype)
    mask = (torch.rand(B, n, generator=g, device=device) > 0.3).to(dtype)
    leaves = [z, U]

    def bwd(loss):
        loss.backward()

    if impl == "ours-packed":
        K = kernels()
        packed = K.pack_labels(y, mask)
        del y, mask
        labels = [packed.words]

        def fwd():
            return K.dual_bce(z, U, packed, reduction="sum", backend="triton")
    else:
        labels = [y, mask]
        if impl == "eager":
            ref = kernels().reference.dual_bce

            def fwd():
                return ref(z, U, y, mask, reduction="sum")
        elif impl == "compile":
            ref = compiled(kernels().reference.dual_bce)

            def fwd():
                return ref(z, U, y, mask, reduction="sum")
        elif impl == "chunked":
            chunk_fn = compiled(_chunk_grads)

            def fwd():
                return ChunkedDualBCE.apply(z, U, y, mask, chunk_fn, CHUNK)
        elif impl in ("ours", "ours-cpu"):
            K = kernels()
            backend = "triton" if impl == "ours" else "cpu"

            def fwd():
                return K.dual_bce(z, U, y, mask, reduction="sum", backend=backend)
        else:
            raise ValueError(f"dual_bce: unknown impl {impl!r}")
    nbytes = sum(t.numel() * t.element_size() for t in leaves + labels)
    return Case("dual_bce", impl, fwd, bwd, leaves, nbytes, keep=labels)


def make_case(spec: dict, device: str) -> Case:
    return make_bce(spec["impl"], spec["B"], spec["d"], spec["n"], DTYPES[spec["dtype"]], device)


def plan(device: str, quick: bool, triton_ok: bool) -> tuple[list[dict], list[dict]]:
    """(specs to run, skipped entries with reasons)."""
    specs = []
    cpu = device == "cpu"
    impls, skipped = implementations(IMPLS_CPU if cpu else IMPLS_GPU, triton_ok)
    if quick:
        sizes, dtypes = QUICK_SIZES, ["fp32"]
    elif cpu:
        sizes, dtypes = [], ["fp32", "bf16"]
        for B, d, n in CPU_SIZES:
            logits = B * n * 4  # eager's logits are float32 ... or bf16, but then bf16's own cap applies first
            if logits > CPU_LOGITS_CAP:
                skipped.append(dict(op=OP, B=B, d=d, n=n, impl="all",
                                    reason=f"eager logits {logits / 2**30:.1f} GiB (fp32) > 2 GiB (CPU cap)"))
            elif B * n > CPU_ENTRIES_CAP:
                skipped.append(dict(op=OP, B=B, d=d, n=n, impl="all",
                                    reason=f"CPU time budget: B*n = {B * n} > {CPU_ENTRIES_CAP} (1024 x 262144)"))
            else:
                sizes.append((B, d, n))
        if triton_ok:
            skipped.append(dict(op=OP, impl="ours, ours-packed",
                                reason=f"Triton interpreter on CPU: only fp32 sizes with B*n <= {INTERP_ENTRIES} "
                                       "(tiny)"))
    else:
        sizes, dtypes = GPU_SIZES, ["fp32", "bf16"]
    for dt in dtypes:
        for B, d, n in sizes:
            if cpu and dt == "bf16" and B * n > CPU_BF16_ENTRIES_CAP:
                skipped.append(dict(op=OP, B=B, d=d, n=n, dtype=dt, impl="all",
                                    reason=f"bf16 on this CPU (no native bf16 matmul) is emulated, far slower "
                                           f"than fp32: time budget, B*n = {B * n} > {CPU_BF16_ENTRIES_CAP}"))
                continue
            for impl in impls:
                if cpu and impl in INTERP_IMPLS and (B * n > INTERP_ENTRIES or dt != "fp32"):
                    continue  # listed once above
                specs.append(dict(op=OP, B=B, d=d, n=n, dtype=dt, impl=impl))
    return specs, skipped


def targets(rows: list[dict], device: str) -> tuple[dict, bool, str]:
    """(entries per target, all met, the targets in words). GPU, on the 'ours' rows: >= 3x eager and >= 1.5x
    torch.compile at n >= 4096, extra peak memory <= 5% of eager's at n >= 65536. CPU, on 'ours-cpu' (the C++
    kernels' targets): fp32 at B=1024, d=128, n=8192 >= 2x eager and >= 1.2x torch.compile; extra peak memory at
    n=262144 < 10% of eager's."""
    out = {"dual_bce_speed": [], "dual_bce_memory": []}
    cuda = device == "cuda"
    for r in rows:
        if r["op"] != OP or "error" in r or r.get("impl") != ("ours" if cuda else "ours-cpu"):
            continue
        size = {k: r[k] for k in ("B", "d", "n", "dtype")}
        se, sc, m = r.get("speedup_vs_eager"), r.get("speedup_vs_compile"), r.get("mem_vs_eager")
        if cuda:
            if r["n"] >= 4096:
                out["dual_bce_speed"].append(dict(size, vs_eager=se, vs_compile=sc,
                                                  ok=bool(se and sc and se >= 3.0 and sc >= 1.5)))
            if r["n"] >= 65536:
                out["dual_bce_memory"].append(dict(size, mem_vs_eager=m, ok=m is not None and m <= 0.05))
        elif r["dtype"] == "fp32" and (r["B"], r["d"]) == (1024, 128):
            if r["n"] == 8192:
                out["dual_bce_speed"].append(dict(size, vs_eager=se, vs_compile=sc,
                                                  ok=bool(se and sc and se >= 2.0 and sc >= 1.2)))
            if r["n"] == 262144:
                out["dual_bce_memory"].append(dict(size, mem_vs_eager=m, ok=m is not None and m < 0.10))
    ok = all(e["ok"] for v in out.values() for e in v)
    if cuda:
        return out, ok, ("dual_bce >= 3x eager and >= 1.5x torch.compile at n >= 4096; extra peak memory <= 5% of "
                         "eager's at n >= 65536")
    ok = ok and all(out.values())  # the CPU targets name sizes: they must have been measured
    return out, ok, ("ours-cpu dual_bce fp32 at B=1024, d=128, n=8192: >= 2x eager and >= 1.2x torch.compile; "
                     "extra peak memory at n=262144 < 10% of eager's")


if __name__ == "__main__":
    sys.exit(main(OP, __doc__.split("\n\n")[0]))
