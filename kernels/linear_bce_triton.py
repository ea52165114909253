"""linear_binary_cross_entropy_with_logits in Triton: dual_bce's tiles (dual_bce_triton.py: the logits
L = input weight^T + b made tile by tile in registers, the labels and mask read or hashed per tile) with
BCEWithLogitsLoss's options as constexpr flags, so a call without an option compiles without it.

Per entry, x = L, t = y (1 - eps) + eps / 2 (SMOOTH; else t = y, any value in [0, 1]), p = pos_weight_j
(HAS_POS_W), w = mask_bj label_weight_j (HAS_LABEL_W), l = 1 + (p - 1) t:
    loss = w ((1 - t) x + l softplus(-x)),   G = w (l sigmoid(x) - p t)
(p absent: max(x, 0) - t x + log1p(e^-|x|) and sigmoid(x) - t, dual_bce's terms).

forward, grid (row blocks, S splits of n, chunks of d): per-row loss partials (S, B), the unscaled dz partials
(S, B, d) when the input needs a gradient, and the count of targets outside [0, 1]. backward, grid (column
blocks, S' splits of B, chunks of d): recomputes the tiles for dW += G^T input and db += sum_rows G, G scaled
per row by gscale. Partials are reduced by torch.sum: no atomics, deterministic. Bytes moved and why dz comes
from the forward and dW from a recomputation: dual_bce_triton.py's docstring, which holds here unchanged.

Labels: dense (soft) or packed targets, a dense or hashed mask. Sparse labels are refused by the op
(linear_bce.py): their Triton path corrects a y = 0 pass at the positives, which holds for sigmoid(x) - y only.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._jit import LAUNCH_OPTIONS, jit, on_device_of
from ._triton_labels import kernel_labels
from .dual_bce_triton import _precision, _splits, _tile, dual_bce_config
from .labels import LabelArgs

_sum_combine = tl.standard._sum_combine  # a builtin reduce (see dual_bce_triton.py)


@jit
def _linear_bce_terms(logits, y, pw, smooth_a, smooth_c, HAS_POS_W: tl.constexpr, SMOOTH: tl.constexpr):
    """(loss, dloss/dx) of every entry before the weight w, from one exp: e = exp(-|x|)."""
    t = y * smooth_a + smooth_c if SMOOTH else y
    e = tl.exp(-tl.abs(logits))
    one_e = 1.0 + e
    exact = one_e == 1.0  # log1p(e) for small e without libdevice (Goldberg), as dual_bce's terms
    log1p_e = tl.where(exact, e, tl.log(one_e) * (e / tl.where(exact, 1.0, one_e - 1.0)))
    sig = tl.where(logits >= 0, 1.0 / one_e, e / one_e)
    if HAS_POS_W:
        lw = 1.0 + (pw - 1.0) * t
        return (1.0 - t) * logits + lw * (tl.maximum(-logits, 0.0) + log1p_e), lw * sig - pw * t
    return tl.maximum(logits, 0.0) - t * logits + log1p_e, sig - t


@jit
def _column_options(pw_ptr, lw_ptr, cols, col_ok, w, stride_pw, stride_lw,
                    HAS_POS_W: tl.constexpr, HAS_LABEL_W: tl.constexpr):
    """(pos_weight as a (1, BLOCK_N) row or 1.0, w times label_weight's row)."""
    pw = 1.0
    if HAS_POS_W:
        pw = tl.load(pw_ptr + cols.to(tl.int64) * stride_pw, mask=col_ok, other=1.0).to(tl.float32)[None, :]
    if HAS_LABEL_W:
        w = w * tl.load(lw_ptr + cols.to(tl.int64) * stride_lw, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return pw, w


@jit(do_not_specialize=["mask_key", "mask_thr", "mask_off", "smooth_a", "smooth_c"])
def _linear_bce_fwd_kernel(
    # Pointers
    z_ptr, u_ptr, b_ptr, y_ptr, m_ptr, mr_ptr, pw_ptr, lw_ptr, loss_ptr, dz_ptr, bad_ptr,
    # Sizes
    B, N, D, n_per_split,
    # Strides of the inputs (the partial-sum outputs are contiguous)
    stride_z_b, stride_z_d, stride_u_n, stride_u_d, stride_b, stride_y_b, stride_y_n, stride_m_b, stride_m_n,
    stride_pw, stride_lw,
    # The hashed mask (key, threshold, label offset) and the smoothing's t = a y + c
    mask_key, mask_thr, mask_off, smooth_a, smooth_c,
    # Meta-parameters
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, MASK_LIKE_Y: tl.constexpr, PACKED: tl.constexpr,
    SPARSE: tl.constexpr, HASHED: tl.constexpr, HAS_POS_W: tl.constexpr, HAS_LABEL_W: tl.constexpr,
    SMOOTH: tl.constexpr, NEED_DZ: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ONE_K: tl.constexpr,
):
    """loss_b = sum_j w_bj loss(L_bj, t_bj), dz_b = sum_j G_bj weight_j, bad_b = targets of row b outside [0, 1]."""
    pid_b = tl.program_id(0)
    split = tl.program_id(1)
    pid_d = tl.program_id(2)
    rows = pid_b * BLOCK_B + tl.arange(0, BLOCK_B)
    dcols = pid_d * BLOCK_K + tl.arange(0, BLOCK_K)
    row_ok = rows < B
    d_ok = dcols < D
    d64 = dcols[None, :].to(tl.int64)
    z = tl.load(z_ptr + rows[:, None].to(tl.int64) * stride_z_b + d64 * stride_z_d,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    loss = tl.full([BLOCK_B], 0, dtype=tl.float32)
    bad = tl.full([BLOCK_B], 0, dtype=tl.int32)
    dz = tl.full([BLOCK_B, BLOCK_K], 0, dtype=tl.float32)
    n_lo = split * n_per_split
    n_hi = tl.minimum(n_lo + n_per_split, N)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = cols < n_hi
        u = tl.load(u_ptr + cols[:, None].to(tl.int64) * stride_u_n + d64 * stride_u_d,
                    mask=col_ok[:, None] & d_ok[None, :], other=0.0)
        logits, y, w, ok = _tile(z_ptr, u_ptr, b_ptr, y_ptr, m_ptr, mr_ptr, rows, cols, row_ok, col_ok, D, z, u,
                                 stride_z_b, stride_z_d, stride_u_n, stride_u_d, stride_b,
                                 stride_y_b, stride_y_n, stride_m_b, stride_m_n, mask_key, mask_thr, mask_off,
                                 HAS_BIAS, HAS_MASK, MASK_LIKE_Y, PACKED, SPARSE, HASHED, ONE_K, PRECISION,
                                 BLOCK_B, BLOCK_N, BLOCK_K)
        if not PACKED:  # NaN is neither >= 0 nor <= 1: counted too
            bad += tl.reduce(tl.where(ok & ~((y >= 0.0) & (y <= 1.0)), 1, 0), 1, _sum_combine)
        pw, w = _column_options(pw_ptr, lw_ptr, cols, col_ok, w, stride_pw, stride_lw, HAS_POS_W, HAS_LABEL_W)
        per, resid = _linear_bce_terms(logits, y, pw, smooth_a, smooth_c, HAS_POS_W, SMOOTH)
        loss += tl.reduce(w * per, 1, _sum_combine)
        if NEED_DZ:
            dz += tl.dot((w * resid).to(u.dtype), u, input_precision=PRECISION)
    out = split.to(tl.int64) * B + rows
    if pid_d == 0:
        tl.store(loss_ptr + out, loss, mask=row_ok)
        if not PACKED:
            tl.store(bad_ptr + out, bad, mask=row_ok)
    if NEED_DZ:
        tl.store(dz_ptr + out[:, None] * D + dcols[None, :], dz, mask=row_ok[:, None] & d_ok[None, :])


@jit(do_not_specialize=["mask_key", "mask_thr", "mask_off", "smooth_a", "smooth_c"])
def _linear_bce_bwd_kernel(
    # Pointers
    z_ptr, u_ptr, b_ptr, y_ptr, m_ptr, mr_ptr, pw_ptr, lw_ptr, gscale_ptr, du_ptr, db_ptr,
    # Sizes
    B, N, D, b_per_split,
    # Strides of the inputs (the partial-sum outputs are contiguous)
    stride_z_b, stride_z_d, stride_u_n, stride_u_d, stride_b, stride_y_b, stride_y_n, stride_m_b, stride_m_n,
    stride_pw, stride_lw, stride_g,
    # The hashed mask (key, threshold, label offset) and the smoothing's t = a y + c
    mask_key, mask_thr, mask_off, smooth_a, smooth_c,
    # Meta-parameters
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, MASK_LIKE_Y: tl.constexpr, PACKED: tl.constexpr,
    SPARSE: tl.constexpr, HASHED: tl.constexpr, HAS_POS_W: tl.constexpr, HAS_LABEL_W: tl.constexpr,
    SMOOTH: tl.constexpr, NEED_DB: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ONE_K: tl.constexpr,
):
    """dW_j = sum_b gscale_b G_bj input_b, db_j = sum_b gscale_b G_bj."""
    pid_n = tl.program_id(0)
    split = tl.program_id(1)
    pid_d = tl.program_id(2)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    dcols = pid_d * BLOCK_K + tl.arange(0, BLOCK_K)
    col_ok = cols < N
    d_ok = dcols < D
    d64 = dcols[None, :].to(tl.int64)
    u = tl.load(u_ptr + cols[:, None].to(tl.int64) * stride_u_n + d64 * stride_u_d,
                mask=col_ok[:, None] & d_ok[None, :], other=0.0)
    du = tl.full([BLOCK_N, BLOCK_K], 0, dtype=tl.float32)
    db = tl.full([BLOCK_N], 0, dtype=tl.float32)
    b_lo = split * b_per_split
    b_hi = tl.minimum(b_lo + b_per_split, B)
    for b0 in range(b_lo, b_hi, BLOCK_B):
        rows = b0 + tl.arange(0, BLOCK_B)
        row_ok = rows < b_hi
        z = tl.load(z_ptr + rows[:, None].to(tl.int64) * stride_z_b + d64 * stride_z_d,
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        logits, y, w, ok = _tile(z_ptr, u_ptr, b_ptr, y_ptr, m_ptr, mr_ptr, rows, cols, row_ok, col_ok, D, z, u,
                                 stride_z_b, stride_z_d, stride_u_n, stride_u_d, stride_b,
                                 stride_y_b, stride_y_n, stride_m_b, stride_m_n, mask_key, mask_thr, mask_off,
                                 HAS_BIAS, HAS_MASK, MASK_LIKE_Y, PACKED, SPARSE, HASHED, ONE_K, PRECISION,
                                 BLOCK_B, BLOCK_N, BLOCK_K)
        pw, w = _column_options(pw_ptr, lw_ptr, cols, col_ok, w, stride_pw, stride_lw, HAS_POS_W, HAS_LABEL_W)
        _, resid = _linear_bce_terms(logits, y, pw, smooth_a, smooth_c, HAS_POS_W, SMOOTH)
        gs = tl.load(gscale_ptr + rows.to(tl.int64) * stride_g, mask=row_ok, other=0.0).to(tl.float32)
        g = w * resid * gs[:, None]
        du += tl.dot(tl.trans(g.to(z.dtype)), z, input_precision=PRECISION)
        if NEED_DB:
            db += tl.reduce(g, 0, _sum_combine)
    out = split.to(tl.int64) * N + cols
    tl.store(du_ptr + out[:, None] * D + dcols[None, :], du, mask=col_ok[:, None] & d_ok[None, :])
    if NEED_DB:
        if pid_d == 0:
            tl.store(db_ptr + out, db, mask=col_ok)


def linear_bce_config(B: int, N: int, D: int, dtype: torch.dtype, interpret: bool | None = None,
                      hashed: bool = False) -> dict:
    """dual_bce_config's tiles, but with half the rows where the options' column loads make ptxas spill: fp32 at
    16 < d <= 32 (the packed-label forward on sm_90, triton 3.9) and bf16/fp16 at d <= 16 (the backward on sm_80,
    triton 3.6). compile_check compiles every entry under both."""
    cfg = dual_bce_config(B, N, D, dtype, interpret=interpret, hashed=hashed)
    if dtype == torch.float32 and cfg["BLOCK_K"] == 32 and cfg["BLOCK_B"] == 32:
        cfg = {**cfg, "BLOCK_B": 16}
    elif dtype != torch.float32 and cfg["BLOCK_K"] == 16 and cfg["BLOCK_B"] == 64:
        cfg = {**cfg, "BLOCK_B": 32}
    return cfg


def _options(z, pos_weight, label_weight, smoothing: float):
    """(pointers, strides, scalars, flags) of the per-label options; absent ones are unread stand-ins."""
    pw = pos_weight if pos_weight is not None else z
    lw = label_weight if label_weight is not None else z
    strides = (pw.stride(0) if pos_weight is not None else 0, lw.stride(0) if label_weight is not None else 0)
    flags = {"HAS_POS_W": pos_weight is not None, "HAS_LABEL_W": label_weight is not None, "SMOOTH": smoothing != 0}
    return (pw, lw), strides, (1.0 - smoothing, 0.5 * smoothing), flags


def linear_bce_fwd(z, U, args: LabelArgs, bias, n: int, pos_weight, label_weight, smoothing: float, need_dz: bool,
                   *, splits: int | None = None):
    """(per-row loss (B,) fp32, unscaled dz (B, d) fp32 or None, the number of targets outside [0, 1] (a 0-d
    int64 tensor; 0 for packed labels)). Labels and mask as for dual_bce_fwd (not sparse); pos_weight,
    label_weight: (n,) or None; any strides. splits: force S (tests)."""
    kl = kernel_labels(z, args)
    B, D = z.shape
    dev = z.device
    cfg = linear_bce_config(B, n, D, z.dtype, hashed=kl.flags["HASHED"])
    S = _splits(triton.cdiv(B, cfg["BLOCK_B"]), n, cfg["BLOCK_N"], dev, B * D * 4 if need_dz else B * 8, splits)
    n_per_split = triton.cdiv(triton.cdiv(max(n, 1), S), cfg["BLOCK_N"]) * cfg["BLOCK_N"]
    S = triton.cdiv(max(n, 1), n_per_split)
    loss = torch.zeros(S, B, dtype=torch.float32, device=dev)
    bad = torch.zeros(S, B, dtype=torch.int32, device=dev)
    dz = (torch.empty if B and n else torch.zeros)(S, B, D, dtype=torch.float32, device=dev) if need_dz else None
    if B and n:
        ptrs, strides, scalars, flags = _options(z, pos_weight, label_weight, smoothing)
        b_arg = bias if bias is not None else z
        grid = (triton.cdiv(B, cfg["BLOCK_B"]), S, triton.cdiv(D, cfg["BLOCK_K"]))
        with on_device_of(z):
            _linear_bce_fwd_kernel[grid](
                z, U, b_arg, *kl.pointers, *ptrs, loss, dz if need_dz else loss, bad,
                B, n, D, n_per_split,
                *z.stride(), *U.stride(), b_arg.stride(0) if bias is not None else 0, *kl.strides, *strides,
                *kl.mask_scalars, *scalars,
                HAS_BIAS=bias is not None, **kl.flags, **flags, NEED_DZ=need_dz,
                PRECISION=_precision(z.dtype), BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"],
                BLOCK_K=cfg["BLOCK_K"], ONE_K=D <= cfg["BLOCK_K"],
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **LAUNCH_OPTIONS,
            )
    return loss.sum(0), (dz.sum(0) if need_dz else None), bad.sum()


def linear_bce_bwd(gscale, z, U, args: LabelArgs, bias, n: int, pos_weight, label_weight, smoothing: float,
                   need_db: bool, *, splits: int | None = None):
    """(dW (n, d) fp32, db (n,) fp32 or None) for per-row upstream scales gscale (B,) (a scalar expanded to
    (B,) is read in place)."""
    kl = kernel_labels(z, args)
    B, D = z.shape
    dev = z.device
    cfg = linear_bce_config(B, n, D, z.dtype, hashed=kl.flags["HASHED"])
    S = _splits(triton.cdiv(n, cfg["BLOCK_N"]), B, cfg["BLOCK_B"], dev, n * D * 4, splits)
    b_per_split = triton.cdiv(triton.cdiv(max(B, 1), S), cfg["BLOCK_B"]) * cfg["BLOCK_B"]
    S = triton.cdiv(max(B, 1), b_per_split)
    empty = torch.empty if B and n else torch.zeros
    du = empty(S, n, D, dtype=torch.float32, device=dev)
    db = empty(S, n, dtype=torch.float32, device=dev) if need_db else None
    if B and n:
        ptrs, strides, scalars, flags = _options(z, pos_weight, label_weight, smoothing)
        b_arg = bias if bias is not None else z
        grid = (triton.cdiv(n, cfg["BLOCK_N"]), S, triton.cdiv(D, cfg["BLOCK_K"]))
        with on_device_of(z):
            _linear_bce_bwd_kernel[grid](
                z, U, b_arg, *kl.pointers, *ptrs, gscale, du, db if need_db else du,
                B, n, D, b_per_split,
                *z.stride(), *U.stride(), b_arg.stride(0) if bias is not None else 0, *kl.strides, *strides,
                gscale.stride(0), *kl.mask_scalars, *scalars,
                HAS_BIAS=bias is not None, **kl.flags, **flags, NEED_DB=need_db,
                PRECISION=_precision(z.dtype), BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"],
                BLOCK_K=cfg["BLOCK_K"], ONE_K=D <= cfg["BLOCK_K"],
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **LAUNCH_OPTIONS,
            )
    return du.sum(0), (db.sum(0) if need_db else None)
