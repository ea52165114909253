"""dual_bce in Triton: the masked Bernoulli NLL of the dual head, the logits L = z U^T + b made tile by tile in
registers and never written to global memory.

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

Labels come as (y, mask) of any float/bool-as-uint8/uint8 dtype and any strides, or packed: 2 bits per entry,
16 entries per int32 word, bit 0 the label and bit 1 "observed" (`labels.pack_labels`), or sparse: the CSR
positives (`labels.SparseLabels`). The mask may instead be hashed (`labels.HashedMask`): each tile computes its
weights from (key, threshold, the batch's global rows, the label offset) in uint32 arithmetic, bit for bit
`mask_hash.hashed_observed` (_triton_labels.py), so no (B, n) mask is read or formed.

Sparse labels: the tiles take y = 0 (no label loads); the positives' terms are subtracted by the sparse
corrections of dual_bce_sparse.py.

The kernels run on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1; autograd and registration live in
`ops.py`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._jit import LAUNCH_OPTIONS, interpreting, jit, on_device_of
from ._triton_labels import hash_observed, kernel_labels, mask_row_key
from .dual_bce_sparse import sparse_cols_correction, sparse_csc, sparse_rows_correction
from .labels import LabelArgs

# tl.sum is a jitted triton function, frozen in the mode triton was imported in; tl.reduce with its combine
# function is a builtin (see _jit.LazyKernel).
_sum_combine = tl.standard._sum_combine


@jit
def _labels_tile(y_ptr, m_ptr, mr_ptr, rows, cols, row_ok, ok, stride_y_b, stride_y_n, stride_m_b, stride_m_n,
                 mask_key, mask_thr, mask_off,
                 PACKED: tl.constexpr, SPARSE: tl.constexpr, HAS_MASK: tl.constexpr, HASHED: tl.constexpr,
                 MASK_LIKE_Y: tl.constexpr):
    """(y, w) fp32 tiles for entries (rows, cols); w = 0 outside the matrix and where the label is missing.
    Packed labels: y_ptr holds the words and stride_y_n steps from one word to the next. Sparse labels: y = 0
    here (nothing is loaded), the positives are corrected by the sparse kernels. HASHED: w is the hash of
    (mask_rows[row], mask_off + col), computed here. MASK_LIKE_Y: the mask has y's strides, so one offset tile
    serves both loads (a second (BLOCK_B, BLOCK_N) int64 tile spills registers at bf16, d = 16)."""
    r64 = rows[:, None].to(tl.int64)
    if PACKED:
        word = tl.load(y_ptr + r64 * stride_y_b + (cols[None, :] // 16).to(tl.int64) * stride_y_n, mask=ok,
                       other=0)
        code = (word >> ((cols[None, :] % 16) * 2)) & 3
        y = (code & 1).to(tl.float32)
        w = tl.where(ok, ((code >> 1) & 1).to(tl.float32), 0.0)
    else:
        if SPARSE:
            y = tl.where(ok, 0.0, 0.0)
        else:
            y_off = r64 * stride_y_b + cols[None, :].to(tl.int64) * stride_y_n
            y = tl.load(y_ptr + y_off, mask=ok, other=0).to(tl.float32)
        if HASHED:
            row_key = mask_row_key(mask_key, tl.load(mr_ptr + r64, mask=row_ok[:, None], other=0))
            w = tl.where(ok & hash_observed(row_key, cols[None, :], mask_thr, mask_off), 1.0, 0.0)
        elif HAS_MASK:
            if MASK_LIKE_Y and not SPARSE:
                m_off = y_off
            else:
                m_off = r64 * stride_m_b + cols[None, :].to(tl.int64) * stride_m_n
            w = tl.load(m_ptr + m_off, mask=ok, other=0).to(tl.float32)
        else:
            w = tl.where(ok, 1.0, 0.0)
    return y, w


@jit
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


@jit
def _logits_tile(z_ptr, u_ptr, b_ptr, rows, cols, row_ok, col_ok, D, z_tile, u_tile,
                 stride_z_b, stride_z_d, stride_u_n, stride_u_d, stride_b,
                 HAS_BIAS: tl.constexpr, ONE_K: tl.constexpr, PRECISION: tl.constexpr, BLOCK_B: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """(BLOCK_B, BLOCK_N) fp32 logits z[rows] . U[cols] + b[cols]. With ONE_K (d <= BLOCK_K) the caller's
    resident z/U tiles are used; else the d axis is walked in BLOCK_K chunks (registers stay bounded for any d)."""
    if ONE_K:
        logits = tl.dot(z_tile, tl.trans(u_tile), input_precision=PRECISION)
    else:
        logits = tl.full([BLOCK_B, BLOCK_N], 0, dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < D
            k64 = ks[None, :].to(tl.int64)
            zk = tl.load(z_ptr + rows[:, None].to(tl.int64) * stride_z_b + k64 * stride_z_d,
                         mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            uk = tl.load(u_ptr + cols[:, None].to(tl.int64) * stride_u_n + k64 * stride_u_d,
                         mask=col_ok[:, None] & k_ok[None, :], other=0.0)
            logits = tl.dot(zk, tl.trans(uk), logits, input_precision=PRECISION)
    if HAS_BIAS:
        logits += tl.load(b_ptr + cols.to(tl.int64) * stride_b, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    return logits


@jit
def _tile(z_ptr, u_ptr, b_ptr, y_ptr, m_ptr, mr_ptr, rows, cols, row_ok, col_ok, D, z_tile, u_tile,
          stride_z_b, stride_z_d, stride_u_n, stride_u_d, stride_b, stride_y_b, stride_y_n, stride_m_b, stride_m_n,
          mask_key, mask_thr, mask_off,
          HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, MASK_LIKE_Y: tl.constexpr, PACKED: tl.constexpr,
          SPARSE: tl.constexpr, HASHED: tl.constexpr, ONE_K: tl.constexpr, PRECISION: tl.constexpr,
          BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """One (rows x cols) tile as both kernels see it: (fp32 logits, labels y, weights w, in-bounds ok)."""
    logits = _logits_tile(z_ptr, u_ptr, b_ptr, rows, cols, row_ok, col_ok, D, z_tile, u_tile,
                          stride_z_b, stride_z_d, stride_u_n, stride_u_d, stride_b,
                          HAS_BIAS, ONE_K, PRECISION, BLOCK_B, BLOCK_N, BLOCK_K)
    ok = row_ok[:, None] & col_ok[None, :]
    y, w = _labels_tile(y_ptr, m_ptr, mr_ptr, rows, cols, row_ok, ok, stride_y_b, stride_y_n, stride_m_b,
                        stride_m_n, mask_key, mask_thr, mask_off, PACKED, SPARSE, HAS_MASK, HASHED, MASK_LIKE_Y)
    return logits, y, w, ok


@jit(do_not_specialize=["mask_key", "mask_thr", "mask_off"])
def _dual_bce_fwd_kernel(
    # Pointers
    z_ptr, u_ptr, b_ptr, y_ptr, m_ptr, mr_ptr, loss_ptr, cnt_ptr, dz_ptr, bad_ptr,
    # Sizes
    B, N, D, n_per_split,
    # Strides of the inputs (the partial-sum outputs are contiguous)
    stride_z_b, stride_z_d, stride_u_n, stride_u_d, stride_b, stride_y_b, stride_y_n, stride_m_b, stride_m_n,
    # The hashed mask: key (int32 bit pattern), threshold, label offset
    mask_key, mask_thr, mask_off,
    # Meta-parameters
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, MASK_LIKE_Y: tl.constexpr, PACKED: tl.constexpr,
    SPARSE: tl.constexpr, HASHED: tl.constexpr, NEED_DZ: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ONE_K: tl.constexpr,
):
    """loss_b = sum_j w_bj BCE(L_bj, y_bj), cnt_b = sum_j w_bj, dz_b = sum_j w_bj (sigmoid(L_bj) - y_bj) u_j.

    Grid (row blocks, splits of n, chunks of d). Program (i, s, c) writes the loss and count partials of its
    rows over split s (chunk 0 only) and the dz partial of columns c*BLOCK_K.. of its rows; unpacked labels
    outside {0, 1} are counted into bad_ptr (checked by ops.dual_bce: no B x n validation pass, no temporaries).
    Bytes moved: z once, U once per row block, the labels once (B n / 4 bytes packed), the (S, B) and
    (S, B, d) partials; never the B x n logits.
    """
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
    cnt = tl.full([BLOCK_B], 0, dtype=tl.float32)
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
        if not PACKED and not SPARSE:
            bad += tl.reduce(tl.where(ok & (y != 0.0) & (y != 1.0), 1, 0), 1, _sum_combine)
        bce, resid = _bce_terms(logits, y)
        loss += tl.reduce(w * bce, 1, _sum_combine)
        cnt += tl.reduce(w, 1, _sum_combine)
        if NEED_DZ:
            dz += tl.dot((w * resid).to(u.dtype), u, input_precision=PRECISION)
    out = split.to(tl.int64) * B + rows
    if pid_d == 0:
        tl.store(loss_ptr + out, loss, mask=row_ok)
        tl.store(cnt_ptr + out, cnt, mask=row_ok)
        if not PACKED and not SPARSE:
            tl.store(bad_ptr + out, bad, mask=row_ok)
    if NEED_DZ:
        tl.store(dz_ptr + out[:, None] * D + dcols[None, :], dz, mask=row_ok[:, None] & d_ok[None, :])


@jit(do_not_specialize=["mask_key", "mask_thr", "mask_off"])
def _dual_bce_bwd_kernel(
    # Pointers
    z_ptr, u_ptr, b_ptr, y_ptr, m_ptr, mr_ptr, gscale_ptr, du_ptr, db_ptr,
    # Sizes
    B, N, D, b_per_split,
    # Strides of the inputs (the partial-sum outputs are contiguous)
    stride_z_b, stride_z_d, stride_u_n, stride_u_d, stride_b, stride_y_b, stride_y_n, stride_m_b, stride_m_n,
    stride_g,
    # The hashed mask: key (int32 bit pattern), threshold, label offset
    mask_key, mask_thr, mask_off,
    # Meta-parameters
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, MASK_LIKE_Y: tl.constexpr, PACKED: tl.constexpr,
    SPARSE: tl.constexpr, HASHED: tl.constexpr, NEED_DB: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ONE_K: tl.constexpr,
):
    """dU_j = sum_b G_bj z_b, db_j = sum_b G_bj, G_bj = gscale_b w_bj (sigmoid(L_bj) - y_bj).

    Grid (column blocks of U, splits of B, chunks of d): the dU partial of columns c*BLOCK_K.. of its rows of
    U over split s, and (chunk 0) the db partial. Bytes moved: U once, z once per column block, the labels
    once, the (S', n, d) and (S', n) partials.
    """
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
        _, resid = _bce_terms(logits, y)
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


def _sm_count(device) -> int:
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


def dual_bce_config(B: int, N: int, D: int, dtype: torch.dtype, interpret: bool | None = None,
                    hashed: bool = False) -> dict:
    """Tile shape for the dual_bce kernels: BLOCK_B rows of z x BLOCK_N rows of U per tile, the d axis in BLOCK_K
    chunks (one chunk when d <= BLOCK_K; else the logits walk the chunks and the grid gets a chunk axis for the
    dz/dU accumulators). Chosen so the fp32 accumulators and the three-pass TF32 operands of fp32 fit the
    register file without spills: compile_check proves it for every entry of gpu_configs().
    interpret: the interpreter's small tiles (default: whether TRITON_INTERPRET asks for it now). hashed: the
    tiles compute a hashed mask (a few more registers per entry)."""
    dp = max(16, triton.next_power_of_2(D))
    if interpreting() if interpret is None else interpret:
        return {"BLOCK_B": 16, "BLOCK_N": 16, "BLOCK_K": min(dp, 32), "num_warps": 4, "num_stages": 1}
    if dtype == torch.float32:
        # three-pass TF32 splits each operand in two: about twice the operand registers of bf16
        if dp <= 64:  # (ptxas spills a few bytes at d <= 32 with two stages on sm_80; three do not)
            return {"BLOCK_B": 32, "BLOCK_N": 32, "BLOCK_K": dp, "num_warps": 8, "num_stages": 3 if dp <= 32 else 2}
        if dp == 128:
            return {"BLOCK_B": 16, "BLOCK_N": 32, "BLOCK_K": 128, "num_warps": 8, "num_stages": 2}
        return {"BLOCK_B": 16, "BLOCK_N": 32, "BLOCK_K": 64, "num_warps": 4, "num_stages": 1}
    # (with eight warps, some supported triton's ptxas spills the sm_80 kernels at d <= 16, and the hashed
    # backward at d = 32 with two stages; the warps and stages below fit under every supported triton)
    if dp == 16 and not hashed:
        return {"BLOCK_B": 64, "BLOCK_N": 32, "BLOCK_K": dp, "num_warps": 4, "num_stages": 2}
    if dp == 32 and hashed:
        return {"BLOCK_B": 64, "BLOCK_N": 32, "BLOCK_K": dp, "num_warps": 8, "num_stages": 3}
    if dp < 128 or (dp == 128 and not hashed):
        return {"BLOCK_B": 64, "BLOCK_N": 32, "BLOCK_K": dp, "num_warps": 8, "num_stages": 2}
    if dp == 128:  # (ptxas holds the hashed backward at 128 registers with two stages and spills on sm_80)
        return {"BLOCK_B": 32, "BLOCK_N": 32, "BLOCK_K": 128, "num_warps": 8, "num_stages": 1}
    return {"BLOCK_B": 32, "BLOCK_N": 32, "BLOCK_K": 128, "num_warps": 8, "num_stages": 2}


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


def dual_bce_fwd(z, U, args: LabelArgs, bias, n: int, need_dz: bool, *, splits: int | None = None):
    """(per-row loss (B,) fp32, observed count per row (B,) fp32, unscaled dz (B, d) fp32 or None,
    number of labels outside {0, 1} (a 0-d int64 tensor on z's device, 0 for packed and sparse labels): a
    tensor, so that reading it back to the host is the caller's choice).
    args (labels.LabelArgs): label_kind "dense": (B, n) y; "packed": (B, ceil(n / 16)) int32 words; "sparse":
    the (nnz,) int32 or int64 indices of the CSR positives, with indptr (B + 1,) int64. Any strides. mask: None
    or (B, n); mask_rows (B,) int64: the hashed mask of (mask_key, mask_threshold, mask_col_offset) instead.
    splits: force S (tests)."""
    kl = kernel_labels(z, args)
    B, D = z.shape
    dev = z.device
    cfg = dual_bce_config(B, n, D, z.dtype, hashed=kl.flags["HASHED"])
    S = _splits(triton.cdiv(B, cfg["BLOCK_B"]), n, cfg["BLOCK_N"], dev, B * D * 4 if need_dz else B * 8, splits)
    n_per_split = triton.cdiv(triton.cdiv(max(n, 1), S), cfg["BLOCK_N"]) * cfg["BLOCK_N"]
    S = triton.cdiv(max(n, 1), n_per_split)
    loss = torch.empty(S, B, dtype=torch.float32, device=dev)
    cnt = torch.empty(S, B, dtype=torch.float32, device=dev)
    bad = torch.zeros(S, B, dtype=torch.int32, device=dev)
    dz = torch.empty(S, B, D, dtype=torch.float32, device=dev) if need_dz else None
    if B and n:
        b_arg = bias if bias is not None else z
        grid = (triton.cdiv(B, cfg["BLOCK_B"]), S, triton.cdiv(D, cfg["BLOCK_K"]))
        with on_device_of(z):
            _dual_bce_fwd_kernel[grid](
                z, U, b_arg, *kl.pointers, loss, cnt, dz if need_dz else loss, bad,
                B, n, D, n_per_split,
                *z.stride(), *U.stride(), b_arg.stride(0) if bias is not None else 0, *kl.strides, *kl.mask_scalars,
                HAS_BIAS=bias is not None, **kl.flags,
                NEED_DZ=need_dz,
                PRECISION=_precision(z.dtype), BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"],
                BLOCK_K=cfg["BLOCK_K"], ONE_K=D <= cfg["BLOCK_K"],
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **LAUNCH_OPTIONS,
            )
    else:
        loss.zero_()
        cnt.zero_()
        if need_dz:
            dz.zero_()
    loss, cnt, dz = loss.sum(0), cnt.sum(0), (dz.sum(0) if need_dz else None)
    if args.label_kind == "sparse" and args.labels.shape[0] and B and n:
        sparse_rows_correction(z, U, bias, kl, loss, dz)
    return loss, cnt, dz, bad.sum()


def dual_bce_bwd(gscale, z, U, args: LabelArgs, bias, n: int, need_db: bool, *, csc=None,
                 splits: int | None = None):
    """(dU (n, d) fp32, db (n,) fp32 or None) for per-row upstream scales gscale (B,) of any float dtype and
    stride (a scalar expanded to (B,) is read in place). Labels and mask as for dual_bce_fwd; csc: sparse_csc's
    (colptr, rows) of sparse labels, made here when not given."""
    kl = kernel_labels(z, args)
    B, D = z.shape
    dev = z.device
    cfg = dual_bce_config(B, n, D, z.dtype, hashed=kl.flags["HASHED"])
    S = _splits(triton.cdiv(n, cfg["BLOCK_N"]), B, cfg["BLOCK_B"], dev, n * D * 4, splits)
    b_per_split = triton.cdiv(triton.cdiv(max(B, 1), S), cfg["BLOCK_B"]) * cfg["BLOCK_B"]
    S = triton.cdiv(max(B, 1), b_per_split)
    du = torch.empty(S, n, D, dtype=torch.float32, device=dev)
    db = torch.empty(S, n, dtype=torch.float32, device=dev) if need_db else None
    if B and n:
        b_arg = bias if bias is not None else z
        grid = (triton.cdiv(n, cfg["BLOCK_N"]), S, triton.cdiv(D, cfg["BLOCK_K"]))
        with on_device_of(z):
            _dual_bce_bwd_kernel[grid](
                z, U, b_arg, *kl.pointers, gscale, du, db if need_db else du,
                B, n, D, b_per_split,
                *z.stride(), *U.stride(), b_arg.stride(0) if bias is not None else 0, *kl.strides,
                gscale.stride(0), *kl.mask_scalars,
                HAS_BIAS=bias is not None, **kl.flags,
                NEED_DB=need_db,
                PRECISION=_precision(z.dtype), BLOCK_B=cfg["BLOCK_B"], BLOCK_N=cfg["BLOCK_N"],
                BLOCK_K=cfg["BLOCK_K"], ONE_K=D <= cfg["BLOCK_K"],
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], **LAUNCH_OPTIONS,
            )
    else:
        du.zero_()
        if need_db:
            db.zero_()
    du, db = du.sum(0), (db.sum(0) if need_db else None)
    if args.label_kind == "sparse" and args.labels.shape[0] and B and n:
        colptr, crows = csc if csc is not None else sparse_csc(args.indptr, args.labels, n)
        sparse_cols_correction(gscale, z, colptr, crows, kl, du, db)
    return du, db
