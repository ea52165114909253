"""Triton kernels for the fused ops, their launch configurations and launchers.

The kernels run on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1 (how the tests run them).
Launchers take and return plain tensors; autograd and the torch.library registration live in `ops.py`.

reparameterize_kl
    One kernel each way over a (B, d) grid of row blocks; z, the per-row KL and (backward) both gradients in
    one pass over mu/logvar. With no eps tensor the kernel draws eps = tl.randn(seed, offset + k) for element k
    (counter-based Philox) and the backward draws the very same numbers again: no B x d eps tensor is stored.

dual_bce
    Logits L = z U^T + b are made tile by tile in registers and never written to global memory.

    forward, grid (row blocks of z, S splits of n, chunks of d): per tile L, the stable masked BCE
    max(L, 0) - y L + log1p(exp(-|L|)), the observed count, and (when z needs a gradient) the unscaled
    dz += (mask * (sigmoid(L) - y)) @ U_tile. Partial sums per split go to (S, B) and (S, B, d) buffers that a
    deterministic torch.sum reduces: no atomics, results independent of scheduling.
    backward, grid (column blocks of U, S' splits of B, chunks of d): recomputes L per tile and accumulates
    dU += G^T z and db += sum_rows G with G = gscale_row * mask * (sigmoid(L) - y); dz = gscale_row * dz_fwd.
    The d axis: up to BLOCK_K (128 or 64) one chunk, the z and U tiles stay in registers. Beyond, each program
    owns one BLOCK_K-wide chunk of the dz/dU accumulators and forms L by walking all chunks, so the register
    footprint is that of d = BLOCK_K at any d, at the price of recomputing L once per chunk.

    Why dz in the forward and dU by recomputation (bytes, fp32, B=4096, n=65536, d=128):
    eager writes and re-reads the logits, probabilities and gradient: several B*n*4 = 1 GiB tensors. Full
    grads-in-forward (Liger's way) needs a scalar upstream gradient, so it cannot serve reduction="none", and a
    cross-block reduction of dU (n*d*4 = 32 MiB per split) inside the forward. Ours keeps dz (B*d*4 = 2 MiB,
    the size of z) from the forward, which serves every reduction because dz scales per row; dU/db need the
    per-row scale inside the sum, so the backward recomputes the tile GEMM: 4 tile GEMMs in all
    (L, dz | L, dU) against eager's 3, in exchange for ~0 bytes of B x n traffic and a loss that works for
    all reductions and for forward-only (eval) calls with a single GEMM.

Labels come as (y, mask) of any float/bool/uint8 dtype, or packed: 2 bits per entry, 16 entries per int32
word, bit 0 the label and bit 1 "observed" (see `ops.pack_labels`).
"""
from __future__ import annotations

import contextlib
import os

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # the default Triton documents; silences its warning

import torch  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402


def _on_device_of(t: torch.Tensor):
    """The tensors' CUDA device made current for a launch: Triton launches on the current device, so cuda:1
    tensors with device 0 current would otherwise run on device 0 with pointers into device 1's memory."""
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


# ---------------------------------------------------------------------------------------------------------
# reparameterize_kl
# ---------------------------------------------------------------------------------------------------------
@triton.jit
def _reparam_kl_fwd_kernel(
    mu_ptr, logvar_ptr, eps_ptr, z_ptr, kl_ptr, B, D, seed, offset,
    HAS_EPS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    kl = tl.zeros([BLOCK_B], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (cols[None, :] < D)
        idx = rows[:, None].to(tl.int64) * D + cols[None, :]
        mu = tl.load(mu_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        lv = tl.load(logvar_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        if HAS_EPS:
            eps = tl.load(eps_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        else:
            eps = tl.randn(seed, offset + idx)
        std = tl.exp(0.5 * lv)
        tl.store(z_ptr + idx, (mu + std * eps).to(z_ptr.dtype.element_ty), mask=ok)
        kl += tl.sum(tl.where(ok, mu * mu + std * std - 1.0 - lv, 0.0), axis=1)
    tl.store(kl_ptr + rows, 0.5 * kl, mask=row_ok)


# Triton makes each kernel interpreted or compiled when it is decorated, from TRITON_INTERPRET at that moment
# (this module's import); a later change of the variable changes nothing that runs. So the mode is read off a
# kernel, which is what the launchers really call, rather than off the environment.
INTERPRET = not isinstance(_reparam_kl_fwd_kernel, triton.runtime.JITFunction)


@triton.jit
def _reparam_kl_bwd_kernel(
    dz_ptr, dkl_ptr, mu_ptr, logvar_ptr, eps_ptr, dmu_ptr, dlogvar_ptr, deps_ptr, B, D, seed, offset,
    HAS_EPS: tl.constexpr, NEED_DEPS: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    row_ok = rows < B
    dkl = tl.load(dkl_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        ok = row_ok[:, None] & (cols[None, :] < D)
        idx = rows[:, None].to(tl.int64) * D + cols[None, :]
        dz = tl.load(dz_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        mu = tl.load(mu_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        lv = tl.load(logvar_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        if HAS_EPS:
            eps = tl.load(eps_ptr + idx, mask=ok, other=0.0).to(tl.float32)
        else:
            eps = tl.randn(seed, offset + idx)  # the forward's eps, regenerated
        std = tl.exp(0.5 * lv)
        # z = mu + std*eps, kl = 1/2 sum(mu^2 + std^2 - 1 - lv)
        tl.store(dmu_ptr + idx, (dz + dkl * mu).to(dmu_ptr.dtype.element_ty), mask=ok)
        dlv = 0.5 * (dz * eps * std + dkl * (std * std - 1.0))
        tl.store(dlogvar_ptr + idx, dlv.to(dlogvar_ptr.dtype.element_ty), mask=ok)
        if NEED_DEPS:
            tl.store(deps_ptr + idx, (dz * std).to(deps_ptr.dtype.element_ty), mask=ok)


def reparam_config(B: int, D: int, interpret: bool = INTERPRET) -> dict:
    """Block shape for a (B, D) reparameterization: 1024 elements a program (8 a thread: Philox's ten rounds keep
    many values live; 4096 elements a program spill), whole rows up to d = 128, else the row in 128 chunks."""
    if interpret:
        return {"BLOCK_B": 8, "BLOCK_D": min(64, triton.next_power_of_2(max(D, 1))), "num_warps": 4}
    block_d = min(128, triton.next_power_of_2(max(D, 16)))
    return {"BLOCK_B": 1024 // block_d, "BLOCK_D": block_d, "num_warps": 4}


def reparam_kl_fwd(mu, logvar, eps, seed: int, offset: int):
    B, D = mu.shape
    z = torch.empty_like(mu)
    kl = torch.empty(B, dtype=torch.float32, device=mu.device)
    if B == 0:
        return z, kl
    cfg = reparam_config(B, D)
    grid = (triton.cdiv(B, cfg["BLOCK_B"]),)
    with _on_device_of(mu):
        _reparam_kl_fwd_kernel[grid](
            mu, logvar, eps if eps is not None else mu, z, kl, B, D, seed, offset,
            HAS_EPS=eps is not None, BLOCK_B=cfg["BLOCK_B"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"],
        )
    return z, kl


def reparam_kl_bwd(dz, dkl, mu, logvar, eps, seed: int, offset: int, need_deps: bool):
    B, D = mu.shape
    dmu, dlogvar = torch.empty_like(mu), torch.empty_like(logvar)
    deps = torch.empty_like(mu) if need_deps else None
    if B == 0:
        return dmu, dlogvar, deps
    cfg = reparam_config(B, D)
    grid = (triton.cdiv(B, cfg["BLOCK_B"]),)
    with _on_device_of(mu):
        _reparam_kl_bwd_kernel[grid](
            dz, dkl, mu, logvar, eps if eps is not None else mu, dmu, dlogvar, deps if need_deps else dmu,
            B, D, seed, offset,
            HAS_EPS=eps is not None, NEED_DEPS=need_deps,
            BLOCK_B=cfg["BLOCK_B"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"],
        )
    return dmu, dlogvar, deps


# ---------------------------------------------------------------------------------------------------------
# dual_bce
# ---------------------------------------------------------------------------------------------------------
@triton.jit
def _labels_tile(y_ptr, m_ptr, rows, cols, ok, N, N_WORDS, PACKED: tl.constexpr, HAS_MASK: tl.constexpr):
    """(y, w) fp32 tiles for entries (rows, cols); w = 0 outside the matrix and where the label is missing."""
    if PACKED:
        word = tl.load(y_ptr + rows[:, None].to(tl.int64) * N_WORDS + (cols[None, :] // 16), mask=ok, other=0)
        code = (word >> ((cols[None, :] % 16) * 2)) & 3
        y = (code & 1).to(tl.float32)
        w = tl.where(ok, ((code >> 1) & 1).to(tl.float32), 0.0)
    else:
        idx = rows[:, None].to(tl.int64) * N + cols[None, :]
        y = tl.load(y_ptr + idx, mask=ok, other=0).to(tl.float32)
        if HAS_MASK:
            w = tl.load(m_ptr + idx, mask=ok, other=0).to(tl.float32)
        else:
            w = tl.where(ok, 1.0, 0.0)
    return y, w


@triton.jit
def _bce_terms(logits, y):
    """(stable BCE-with-logits, sigmoid(logits) - y) from one exp: e = exp(-|L|),
    bce = max(L, 0) - y L + log1p(e) and sigmoid(L) = 1/(1+e) or e/(1+e) by the sign of L."""
    e = tl.exp(-tl.abs(logits))
    one_e = 1.0 + e
    # log1p(e) accurate for small e without libdevice (Goldberg): log(u) * e / (u - 1), u = 1 + e
    exact = one_e == 1.0
    log1p_e = tl.where(exact, e, tl.log(one_e) * (e / tl.where(exact, 1.0, one_e - 1.0)))
    bce = tl.maximum(logits, 0.0) - y * logits + log1p_e
    sig = tl.where(logits >= 0, 1.0 / one_e, e / one_e)
    return bce, sig - y


@triton.jit
def _logits_tile(z_ptr, u_ptr, b_ptr, rows, cols, row_ok, col_ok, D, z_tile, u_tile,
                 HAS_BIAS: tl.constexpr, ONE_K: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_B, BLOCK_N) fp32 logits z[rows] . U[cols] + b[cols]. With ONE_K (d <= BLOCK_K) the caller's
    resident z/U tiles are used; else the d axis is walked in BLOCK_K chunks (registers stay bounded for any d)."""
    if ONE_K:
        logits = tl.dot(z_tile, tl.trans(u_tile), input_precision=PRECISION)
    else:
        logits = tl.zeros([BLOCK_B, BLOCK_N], dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < D
            zk = tl.load(z_ptr + rows[:, None].to(tl.int64) * D + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                         other=0.0)
            uk = tl.load(u_ptr + cols[:, None].to(tl.int64) * D + ks[None, :], mask=col_ok[:, None] & k_ok[None, :],
                         other=0.0)
            logits = tl.dot(zk, tl.trans(uk), logits, input_precision=PRECISION)
    if HAS_BIAS:
        logits += tl.load(b_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return logits


@triton.jit
def _dual_bce_fwd_kernel(
    z_ptr, u_ptr, b_ptr, y_ptr, m_ptr, loss_ptr, cnt_ptr, dz_ptr, bad_ptr,
    B, N, D, N_WORDS, n_per_split,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, PACKED: tl.constexpr, NEED_DZ: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ONE_K: tl.constexpr,
):
    """Grid (row blocks, splits of n, chunks of d). Program (i, s, c) writes the loss and count partials of its
    rows over split s (chunk 0 only) and the dz partial of columns c*BLOCK_K.. of its rows; unpacked labels
    outside {0, 1} are counted into bad_ptr (checked by ops.dual_bce: no B x n validation pass, no temporaries)."""
    pid_b = tl.program_id(0)
    split = tl.program_id(1)
    pid_d = tl.program_id(2)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    dcols = pid_d * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < B
    d_ok = dcols < D
    z = tl.load(z_ptr + rows[:, None].to(tl.int64) * D + dcols[None, :], mask=row_ok[:, None] & d_ok[None, :],
                other=0.0)
    loss = tl.zeros([BLOCK_B], dtype=tl.float32)
    cnt = tl.zeros([BLOCK_B], dtype=tl.float32)
    bad = tl.zeros([BLOCK_B], dtype=tl.int32)
    dz = tl.zeros([BLOCK_B, BLOCK_K], dtype=tl.float32)
    n_lo = split * n_per_split
    n_hi = tl.minimum(n_lo + n_per_split, N)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < n_hi
        u = tl.load(u_ptr + cols[:, None].to(tl.int64) * D + dcols[None, :], mask=col_ok[:, None] & d_ok[None, :],
                    other=0.0)
        logits = _logits_tile(z_ptr, u_ptr, b_ptr, rows, cols, row_ok, col_ok, D, z, u,
                              HAS_BIAS, ONE_K, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
        ok = row_ok[:, None] & col_ok[None, :]
        y, w = _labels_tile(y_ptr, m_ptr, rows, cols, ok, N, N_WORDS, PACKED, HAS_MASK)
        if not PACKED:
            bad += tl.sum(tl.where(ok & (y != 0.0) & (y != 1.0), 1, 0), axis=1)
        bce, resid = _bce_terms(logits, y)
        loss += tl.sum(w * bce, axis=1)
        cnt += tl.sum(w, axis=1)
        if NEED_DZ:
            dz += tl.dot((w * resid).to(u.dtype), u, input_precision=PRECISION)
    out = split.to(tl.int64) * B + rows
    if pid_d == 0:
        tl.store(loss_ptr + out, loss, mask=row_ok)
        tl.store(cnt_ptr + out, cnt, mask=row_ok)
        if not PACKED:
            tl.store(bad_ptr + out, bad, mask=row_ok)
    if NEED_DZ:
        tl.store(dz_ptr + out[:, None] * D + dcols[None, :], dz, mask=row_ok[:, None] & d_ok[None, :])


@triton.jit
def _dual_bce_bwd_kernel(
    z_ptr, u_ptr, b_ptr, y_ptr, m_ptr, gscale_ptr, du_ptr, db_ptr,
    B, N, D, N_WORDS, b_per_split,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, PACKED: tl.constexpr, NEED_DB: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ONE_K: tl.constexpr,
):
    """Grid (column blocks of U, splits of B, chunks of d): the dU partial of columns c*BLOCK_K.. of its rows of
    U over split s, and (chunk 0) the db partial."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    pid_d = tl.program_id(2)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dcols = pid_d * BLOCK_K + tl.arange(0, BLOCK_K)
    col_ok = cols < N
    d_ok = dcols < D
    u = tl.load(u_ptr + cols[:, None].to(tl.int64) * D + dcols[None, :], mask=col_ok[:, None] & d_ok[None, :],
                other=0.0)
    du = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    db = tl.zeros([BLOCK_N], dtype=tl.float32)
    b_lo = split * b_per_split
    b_hi = tl.minimum(b_lo + b_per_split, B)
    for b0 in range(b_lo, b_hi, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B)
        row_ok = rows < b_hi
        z = tl.load(z_ptr + rows[:, None].to(tl.int64) * D + dcols[None, :], mask=row_ok[:, None] & d_ok[None, :],
                    other=0.0)
        logits = _logits_tile(z_ptr, u_ptr, b_ptr, rows, cols, row_ok, col_ok, D, z, u,
                              HAS_BIAS, ONE_K, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
        ok = row_ok[:, None] & col_ok[None, :]
        y, w = _labels_tile(y_ptr, m_ptr, rows, cols, ok, N, N_WORDS, PACKED, HAS_MASK)
        _, resid = _bce_terms(logits, y)
        gs = tl.load(gscale_ptr + rows, mask=row_ok, other=0.0)
        g = w * resid * gs[:, None]
        du += tl.dot(tl.trans(g.to(z.dtype)), z, input_precision=PRECISION)
        if NEED_DB:
            db += tl.sum(g, axis=0)
    out = split.to(tl.int64) * N + cols
    tl.store(du_ptr + out[:, None] * D + dcols[None, :], du, mask=col_ok[:, None] & d_ok[None, :])
    if NEED_DB:
        if pid_d == 0:
            tl.store(db_ptr + out, db, mask=col_ok)


def _sm_count(device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def dual_bce_config(B: int, N: int, D: int, dtype: torch.dtype, interpret: bool = INTERPRET) -> dict:
    """Tile shape for the dual_bce kernels: BLOCK_B rows of z x BLOCK_N rows of U per tile, the d axis in BLOCK_K
    chunks (one chunk when d <= BLOCK_K; else the logits walk the chunks and the grid gets a chunk axis for the
    dz/dU accumulators). Chosen so the fp32 accumulators and the three-pass TF32 operands of fp32 fit the
    register file without spills: compile_check proves it for every entry of gpu_configs()."""
    dp = max(16, triton.next_power_of_2(D))
    if interpret:
        return {"BLOCK_B": 16, "BLOCK_N": 16, "BLOCK_K": min(dp, 32), "num_warps": 4, "num_stages": 1}
    if dtype == torch.float32:
        # three-pass TF32 splits each operand in two: about twice the operand registers of bf16
        if dp <= 64:  # (ptxas spills a few bytes at d <= 32 with two stages on sm_80; three do not)
            return {"BLOCK_B": 32, "BLOCK_N": 32, "BLOCK_K": dp, "num_warps": 8, "num_stages": 3 if dp <= 32 else 2}
        if dp == 128:
            return {"BLOCK_B": 16, "BLOCK_N": 32, "BLOCK_K": 128, "num_warps": 8, "num_stages": 2}
        return {"BLOCK_B": 16, "BLOCK_N": 32, "BLOCK_K": 64, "num_warps": 4, "num_stages": 1}
    if dp <= 128:
        return {"BLOCK_B": 64, "BLOCK_N": 32, "BLOCK_K": dp, "num_warps": 8, "num_stages": 2}
    return {"BLOCK_B": 32, "BLOCK_N": 32, "BLOCK_K": 128, "num_warps": 8, "num_stages": 2}


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def gpu_configs() -> dict[str, list[tuple[str, dict]]]:
    """Every (dtype, launch config) the launchers can pick on a GPU, per kernel: what compile_check compiles.
    Configs are chosen by shape (a table, not run-time autotuning), so this list is exhaustive."""
    dtypes = (torch.float32, torch.bfloat16, torch.float16)
    reparam = {tuple(sorted(reparam_config(1, d, interpret=False).items())) for d in (16, 32, 64, 128)}
    bce = set()
    for dt in dtypes:
        for d in (16, 32, 64, 128, 256):  # every larger d takes the d = 256 config
            cfg = dual_bce_config(1, 1, d, dt, interpret=False)
            bce.add((_dtype_name(dt), tuple(sorted({**cfg, "ONE_K": d <= cfg["BLOCK_K"]}.items()))))
    reparam_list = [(_dtype_name(dt), dict(c)) for dt in dtypes for c in sorted(reparam)]
    bce_list = [(name, dict(c)) for name, c in sorted(bce)]
    return {"reparam_kl_fwd": reparam_list, "reparam_kl_bwd": reparam_list,
            "dual_bce_fwd": bce_list, "dual_bce_bwd": bce_list}


def _precision(dtype: torch.dtype) -> str:
    # fp32: three TF32 products ~ fp32 accuracy at tensor-core speed (eager's fp32 matmul does not use TF32).
    return "tf32x3" if dtype == torch.float32 else "ieee"


def _splits(blocks: int, work: int, block: int, device, per_split_bytes: int, override: int | None) -> int:
    """How many ways to split the reduction dimension so ~2 waves of programs fill the GPU, bounded by the
    work there is and by a 64 MiB partial-sum buffer."""
    if override is not None:
        return max(1, min(override, triton.cdiv(work, block)))
    want = triton.cdiv(2 * _sm_count(device), max(blocks, 1))
    cap = max(1, (64 << 20) // max(per_split_bytes, 1))
    return max(1, min(want, triton.cdiv(work, block), cap))


def _label_args(labels, mask):
    return labels, (mask if mask is not None else labels)


def dual_bce_fwd(z, U, labels, mask, bias, n: int, packed: bool, need_dz: bool, splits: int | None = None):
    """(per-row loss (B,) fp32, observed count per row (B,) fp32, unscaled dz (B, d) fp32 or None,
    number of labels outside {0, 1} (a 0-d int64 tensor on z's device, 0 for packed labels): a tensor, so
    that reading it back to the host is the caller's choice)."""
    B, D = z.shape
    dev = z.device
    cfg = dual_bce_config(B, n, D, z.dtype)
    S = _splits(triton.cdiv(B, cfg["BLOCK_B"]), n, cfg["BLOCK_N"], dev, B * D * 4 if need_dz else B * 8, splits)
    n_per_split = triton.cdiv(triton.cdiv(max(n, 1), S), cfg["BLOCK_N"]) * cfg["BLOCK_N"]
    S = triton.cdiv(max(n, 1), n_per_split)
    loss = torch.empty(S, B, dtype=torch.float32, device=dev)
    chunks = triton.cdiv(D, cfg["BLOCK_K"])
    cnt = torch.empty(S, B, dtype=torch.float32, device=dev)
    bad = torch.zeros(S, B, dtype=torch.int32, device=dev)
    dz = torch.empty(S, B, D, dtype=torch.float32, device=dev) if need_dz else None
    if B and n:
        y_arg, m_arg = _label_args(labels, mask)
        grid = (triton.cdiv(B, cfg["BLOCK_B"]), S, chunks)
        with _on_device_of(z):
            _dual_bce_fwd_kernel[grid](
                z, U, bias if bias is not None else z, y_arg, m_arg, loss, cnt, dz if need_dz else loss, bad,
                B, n, D, labels.shape[1] if packed else n, n_per_split,
                HAS_BIAS=bias is not None, HAS_MASK=mask is not None, PACKED=packed, NEED_DZ=need_dz,
                PRECISION=_precision(z.dtype), BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"],
                BLOCK_K=cfg["BLOCK_K"], ONE_K=D <= cfg["BLOCK_K"],
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
            )
    else:
        loss.zero_()
        cnt.zero_()
        if need_dz:
            dz.zero_()
    return loss.sum(0), cnt.sum(0), (dz.sum(0) if need_dz else None), bad.sum()


def dual_bce_bwd(gscale, z, U, labels, mask, bias, n: int, packed: bool, need_db: bool, splits: int | None = None):
    """(dU (n, d) fp32, db (n,) fp32 or None) for per-row upstream scales gscale (B,) fp32."""
    B, D = z.shape
    dev = z.device
    cfg = dual_bce_config(B, n, D, z.dtype)
    S = _splits(triton.cdiv(n, cfg["BLOCK_N"]), B, cfg["BLOCK_B"], dev, n * D * 4, splits)
    b_per_split = triton.cdiv(triton.cdiv(max(B, 1), S), cfg["BLOCK_B"]) * cfg["BLOCK_B"]
    S = triton.cdiv(max(B, 1), b_per_split)
    du = torch.empty(S, n, D, dtype=torch.float32, device=dev)
    chunks = triton.cdiv(D, cfg["BLOCK_K"])
    db = torch.empty(S, n, dtype=torch.float32, device=dev) if need_db else None
    if B and n:
        y_arg, m_arg = _label_args(labels, mask)
        grid = (triton.cdiv(n, cfg["BLOCK_N"]), S, chunks)
        with _on_device_of(z):
            _dual_bce_bwd_kernel[grid](
                z, U, bias if bias is not None else z, y_arg, m_arg, gscale, du, db if need_db else du,
                B, n, D, labels.shape[1] if packed else n, b_per_split,
                HAS_BIAS=bias is not None, HAS_MASK=mask is not None, PACKED=packed, NEED_DB=need_db,
                PRECISION=_precision(z.dtype), BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"],
                BLOCK_K=cfg["BLOCK_K"], ONE_K=D <= cfg["BLOCK_K"],
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
            )
    else:
        du.zero_()
        if need_db:
            db.zero_()
    return du.sum(0), (db.sum(0) if need_db else None)
