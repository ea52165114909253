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
`reference.hashed_observed`, so no (B, n) mask is read or formed.

Sparse labels: the tiles take y = 0 (no label loads), so they make sum w softplus(L) and w sigmoid(L); the
positives, y = 1, subtract w L from the loss and w from the residual. That correction is a sparse term:
loss_b -= sum_{j in pos(b)} w_bj L_bj, the positives' logits as indexed dot products z_b . u_j + b_j (as Cut
Cross-Entropy computes the target logit); dz_b -= sum_{j in pos(b)} w_bj u_j (one program per CSR row: row
ownership); dU_j -= sum_{b: j in pos(b)} gscale_b w_bj z_b and db_j likewise (one program per column of a CSC
order that a stable sort makes once in the forward: column ownership). No atomics; every sum has an order fixed
by the labels, so results are deterministic. Extra bytes: the nnz indices and, for the backward, the CSC order
(n + 1 + nnz int64).

The kernels run on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1; autograd and registration live in
`ops.py`.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._jit import LAUNCH_OPTIONS, interpreting, jit, on_device_of

# tl.sum is a jitted triton function, frozen in the mode triton was imported in; tl.reduce with its combine
# function is a builtin (see _jit.LazyKernel).
_sum_combine = tl.standard._sum_combine


@jit
def _fmix32(x):
    """MurmurHash3's 32-bit finalizer of uint32 x (`reference.fmix32`); the constants are uint32, so the
    products wrap mod 2**32."""
    x = x ^ (x >> 16)
    x = x * 0x85EBCA6B
    x = x ^ (x >> 13)
    x = x * 0xC2B2AE35
    return x ^ (x >> 16)


@jit
def _mask_row_key(mask_key, grows):
    """fmix32(key + r * 0x9E3779B1) of global rows r (an int tensor in [0, 2**31)); mask_key is the uint32 key's
    int32 bit pattern (`reference.mask_row_keys`)."""
    return _fmix32(grows.to(tl.uint32) * 0x9E3779B1 + mask_key.to(tl.uint32, bitcast=True))


@jit
def _hash_observed(row_key, lcols, mask_thr, mask_off):
    """Whether entries (row_key's rows, label mask_off + lcols) are observed: fmix32(row_key ^ j * 0x85EBCA77)
    >= threshold (`reference.hashed_observed`). mask_thr is threshold - 1 as an int32 bit pattern (the
    launchers pass a threshold of 0 as no mask at all), so h >= threshold is h > mask_thr in uint32 for every
    threshold in [1, 2**32], and the argument has one type whatever its value."""
    gcols = lcols.to(tl.uint32) + mask_off.to(tl.uint32)
    h = _fmix32(row_key ^ (gcols * 0x85EBCA77))
    return h > mask_thr.to(tl.uint32, bitcast=True)


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
            row_key = _mask_row_key(mask_key, tl.load(mr_ptr + r64, mask=row_ok[:, None], other=0))
            w = tl.where(ok & _hash_observed(row_key, cols[None, :], mask_thr, mask_off), 1.0, 0.0)
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


@jit
def _positive_weight(m_ptr, mr_ptr, r64, j64, ok, stride_m_b, stride_m_n, mask_key, mask_thr, mask_off,
                     HAS_MASK: tl.constexpr, HASHED: tl.constexpr):
    """The observed weight w of positives (r64, j64) (int64 vectors), 0 where not ok: 1, the dense mask's value,
    or the hash."""
    if HASHED:
        row_key = _mask_row_key(mask_key, tl.load(mr_ptr + r64, mask=ok, other=0))
        w = tl.where(ok & _hash_observed(row_key, j64, mask_thr, mask_off), 1.0, 0.0)
    elif HAS_MASK:
        w = tl.load(m_ptr + r64 * stride_m_b + j64 * stride_m_n, mask=ok, other=0).to(tl.float32)
    else:
        w = tl.where(ok, 1.0, 0.0)
    return w


@jit
def _gathered_rows_sum(x_ptr, rows, w, ok, k64, k_ok, stride_x_n, stride_x_d):
    """sum_p w_p x[rows_p, k64] (fp32, one BLOCK_K chunk of d): the weighted sum of gathered rows of x that both
    corrections accumulate (rows of U into dz_b, rows of z into dU_j)."""
    xk = tl.load(x_ptr + rows[:, None] * stride_x_n + k64[None, :] * stride_x_d,
                 mask=ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
    return tl.reduce(w[:, None] * xk, 0, _sum_combine)


@jit(do_not_specialize=["mask_key", "mask_thr", "mask_off"])
def _sparse_rows_kernel(
    z_ptr, u_ptr, b_ptr, idx_ptr, indptr_ptr, m_ptr, mr_ptr, loss_ptr, dz_ptr,
    D,
    stride_z_b, stride_z_d, stride_u_n, stride_u_d, stride_b, stride_m_b, stride_m_n,
    mask_key, mask_thr, mask_off,
    HAS_BIAS: tl.constexpr, HAS_MASK: tl.constexpr, HASHED: tl.constexpr, NEED_DZ: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The positives' correction of row b (one program per CSR row, which alone writes loss[b] and dz[b]):
    loss_b -= sum_{j in pos(b)} w_bj L_bj with L_bj = z_b . u_j + b_j (indexed dot products), and
    dz_b -= sum_{j in pos(b)} w_bj u_j. The dense tiles took y = 0 there; y = 1 subtracts w L from the BCE and
    w from sigmoid(L) - y. loss (B,) and dz (B, d) are the reduced fp32 outputs, updated in place."""
    row = tl.program_id(0).to(tl.int64)
    lo = tl.load(indptr_ptr + row)
    hi = tl.load(indptr_ptr + row + 1)
    acc = tl.full([BLOCK_P], 0, dtype=tl.float32)
    for p0 in range(lo, hi, BLOCK_P):
        ps = p0 + tl.arange(0, BLOCK_P)
        ok = ps < hi
        j = tl.load(idx_ptr + ps, mask=ok, other=0).to(tl.int64)
        w = _positive_weight(m_ptr, mr_ptr, j * 0 + row, j, ok, stride_m_b, stride_m_n, mask_key, mask_thr,
                             mask_off, HAS_MASK, HASHED)
        logit = tl.full([BLOCK_P], 0, dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < D
            k64 = ks.to(tl.int64)
            zk = tl.load(z_ptr + row * stride_z_b + k64 * stride_z_d, mask=k_ok, other=0.0).to(tl.float32)
            uk = tl.load(u_ptr + j[:, None] * stride_u_n + k64[None, :] * stride_u_d,
                         mask=ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
            logit += tl.reduce(uk * zk[None, :], 1, _sum_combine)
        if HAS_BIAS:
            logit += tl.load(b_ptr + j * stride_b, mask=ok, other=0.0).to(tl.float32)
        acc += w * logit
    tl.store(loss_ptr + row, tl.load(loss_ptr + row) - tl.reduce(acc, 0, _sum_combine))
    if NEED_DZ:
        for k0 in range(0, D, BLOCK_K):
            ks = k0 + tl.arange(0, BLOCK_K)
            k_ok = ks < D
            k64 = ks.to(tl.int64)
            g = tl.full([BLOCK_K], 0, dtype=tl.float32)
            for p0 in range(lo, hi, BLOCK_P):
                ps = p0 + tl.arange(0, BLOCK_P)
                ok = ps < hi
                j = tl.load(idx_ptr + ps, mask=ok, other=0).to(tl.int64)
                w = _positive_weight(m_ptr, mr_ptr, j * 0 + row, j, ok, stride_m_b, stride_m_n, mask_key, mask_thr,
                                     mask_off, HAS_MASK, HASHED)
                g += _gathered_rows_sum(u_ptr, j, w, ok, k64, k_ok, stride_u_n, stride_u_d)
            dz_row = dz_ptr + row * D + k64
            tl.store(dz_row, tl.load(dz_row, mask=k_ok, other=0.0) - g, mask=k_ok)


@jit(do_not_specialize=["mask_key", "mask_thr", "mask_off"])
def _sparse_cols_kernel(
    z_ptr, colptr_ptr, crow_ptr, m_ptr, mr_ptr, gscale_ptr, du_ptr, db_ptr,
    D,
    stride_z_b, stride_z_d, stride_m_b, stride_m_n, stride_g,
    mask_key, mask_thr, mask_off,
    HAS_MASK: tl.constexpr, HASHED: tl.constexpr, NEED_DB: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The positives' correction of column j (one program per column of the CSC order, which alone writes
    dU[j] and db[j]): dU_j -= sum_{b: j in pos(b)} gscale_b w_bj z_b and db_j -= sum gscale_b w_bj, the rows
    of column j in increasing order (colptr (n + 1,), crow the rows in CSC order). dU (n, d) and db (n,) are
    the reduced fp32 outputs, updated in place."""
    col = tl.program_id(0).to(tl.int64)
    lo = tl.load(colptr_ptr + col)
    hi = tl.load(colptr_ptr + col + 1)
    if NEED_DB:
        acc = tl.full([BLOCK_P], 0, dtype=tl.float32)
        for p0 in range(lo, hi, BLOCK_P):
            ps = p0 + tl.arange(0, BLOCK_P)
            ok = ps < hi
            r = tl.load(crow_ptr + ps, mask=ok, other=0)
            w = _positive_weight(m_ptr, mr_ptr, r, r * 0 + col, ok, stride_m_b, stride_m_n, mask_key, mask_thr,
                                 mask_off, HAS_MASK, HASHED)
            acc += w * tl.load(gscale_ptr + r * stride_g, mask=ok, other=0.0).to(tl.float32)
        tl.store(db_ptr + col, tl.load(db_ptr + col) - tl.reduce(acc, 0, _sum_combine))
    for k0 in range(0, D, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < D
        k64 = ks.to(tl.int64)
        g = tl.full([BLOCK_K], 0, dtype=tl.float32)
        for p0 in range(lo, hi, BLOCK_P):
            ps = p0 + tl.arange(0, BLOCK_P)
            ok = ps < hi
            r = tl.load(crow_ptr + ps, mask=ok, other=0)
            w = _positive_weight(m_ptr, mr_ptr, r, r * 0 + col, ok, stride_m_b, stride_m_n, mask_key, mask_thr,
                                 mask_off, HAS_MASK, HASHED)
            gw = w * tl.load(gscale_ptr + r * stride_g, mask=ok, other=0.0).to(tl.float32)
            g += _gathered_rows_sum(z_ptr, r, gw, ok, k64, k_ok, stride_z_b, stride_z_d)
        du_row = du_ptr + col * D + k64
        tl.store(du_row, tl.load(du_row, mask=k_ok, other=0.0) - g, mask=k_ok)


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


LABEL_KINDS = ("dense", "packed", "sparse")


def _signed32(x: int) -> int:
    """A uint32 as the int32 with its bits: a kernel argument of one type (i32) whatever its value."""
    return x - 2**32 if x >= 2**31 else x


def threshold_arg(threshold: int) -> int:
    """The kernels' mask_thr for a hashed mask's threshold in [1, 2**32]: threshold - 1 as an int32 bit pattern
    (see _hash_observed; a threshold of 0 is passed as no mask)."""
    return _signed32(threshold - 1)


def _label_args(z, labels, mask, label_kind, mask_rows, mask_key, mask_threshold, mask_col_offset):
    """The label and mask arguments of the dense kernels: (y, mask, mask_rows) pointers (unread stand-ins
    where absent), the four label strides, and the hashed mask's three scalars."""
    if label_kind == "sparse":  # the dense tiles load no labels
        y = mask if mask is not None else z
        y_strides = (0, 0)
    else:
        y, y_strides = labels, labels.stride()
    m = mask if mask is not None else y
    m_strides = mask.stride() if mask is not None else y_strides
    rows = mask_rows if mask_rows is not None else z
    return (y, m, rows, (*y_strides, *m_strides),
            (_signed32(mask_key), threshold_arg(max(mask_threshold, 1)), mask_col_offset))


def _label_flags(labels, mask, label_kind, mask_rows) -> dict:
    return {"HAS_MASK": mask is not None, "PACKED": label_kind == "packed", "SPARSE": label_kind == "sparse",
            "HASHED": mask_rows is not None,
            "MASK_LIKE_Y": mask is None or (label_kind == "dense" and mask.stride() == labels.stride())}


def sparse_config(D: int, interpret: bool | None = None) -> dict:
    """Block shape of the sparse correction kernels: BLOCK_P positives at a time, d in BLOCK_K chunks."""
    dp = max(16, triton.next_power_of_2(D))
    if interpreting() if interpret is None else interpret:
        return {"BLOCK_P": 16, "BLOCK_K": min(dp, 32), "num_warps": 4}
    return {"BLOCK_P": 16, "BLOCK_K": min(dp, 64), "num_warps": 4}


def sparse_csc(indptr, indices, n: int):
    """The CSC order of CSR positives: (colptr (n + 1,) int64, the rows (nnz,) int64 in column order, each
    column's rows increasing). A stable sort by column keeps the row-major order within a column, so the
    correction sums in an order fixed by the labels alone."""
    B = indptr.shape[0] - 1
    nnz = indices.shape[0]
    rows = torch.repeat_interleave(torch.arange(B, device=indptr.device), indptr[1:] - indptr[:-1],
                                   output_size=nnz)
    cols = indices.to(torch.int64)
    order = torch.sort(cols, stable=True)
    colptr = torch.searchsorted(order.values, torch.arange(n + 1, device=indptr.device))
    return colptr, rows[order.indices]


def _sparse_rows(z, U, bias, indices, indptr, mask, mask_rows, mask_args, loss, dz):
    """Subtracts the positives' terms from the dense tiles' per-row loss and dz (in place)."""
    B, D = z.shape
    cfg = sparse_config(D)
    m = mask if mask is not None else z
    with on_device_of(z):
        _sparse_rows_kernel[(B,)](
            z, U, bias if bias is not None else z, indices, indptr, m,
            mask_rows if mask_rows is not None else z, loss, dz if dz is not None else loss,
            D, *z.stride(), *U.stride(), bias.stride(0) if bias is not None else 0,
            *(mask.stride() if mask is not None else (0, 0)), *mask_args,
            HAS_BIAS=bias is not None, HAS_MASK=mask is not None, HASHED=mask_rows is not None,
            NEED_DZ=dz is not None, BLOCK_P=cfg["BLOCK_P"], BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"],
            **LAUNCH_OPTIONS,
        )


def _sparse_cols(gscale, z, colptr, crows, mask, mask_rows, mask_args, du, db):
    """Subtracts the positives' terms from the dense tiles' dU and db (in place)."""
    n = colptr.shape[0] - 1
    D = z.shape[1]
    cfg = sparse_config(D)
    m = mask if mask is not None else z
    with on_device_of(z):
        _sparse_cols_kernel[(n,)](
            z, colptr, crows, m, mask_rows if mask_rows is not None else z, gscale, du,
            db if db is not None else du,
            D, *z.stride(), *(mask.stride() if mask is not None else (0, 0)), gscale.stride(0), *mask_args,
            HAS_MASK=mask is not None, HASHED=mask_rows is not None, NEED_DB=db is not None,
            BLOCK_P=cfg["BLOCK_P"], BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"], **LAUNCH_OPTIONS,
        )


def dual_bce_fwd(z, U, labels, mask, bias, n: int, label_kind: str, need_dz: bool, *, indptr=None,
                 mask_rows=None, mask_key: int = 0, mask_threshold: int = 0, mask_col_offset: int = 0,
                 splits: int | None = None):
    """(per-row loss (B,) fp32, observed count per row (B,) fp32, unscaled dz (B, d) fp32 or None,
    number of labels outside {0, 1} (a 0-d int64 tensor on z's device, 0 for packed and sparse labels): a
    tensor, so that reading it back to the host is the caller's choice).
    labels: label_kind "dense": (B, n) y; "packed": (B, ceil(n / 16)) int32 words; "sparse": the (nnz,) int32 or
    int64 indices of the CSR positives, with indptr (B + 1,) int64. Any strides. mask: None or (B, n); mask_rows
    (B,) int64: the hashed mask of (mask_key, mask_threshold, mask_col_offset) instead. splits: force S (tests)."""
    if mask_threshold == 0:  # nothing missing: the hashed mask is all ones
        mask_rows = None
    B, D = z.shape
    dev = z.device
    cfg = dual_bce_config(B, n, D, z.dtype, hashed=mask_rows is not None)
    S = _splits(triton.cdiv(B, cfg["BLOCK_B"]), n, cfg["BLOCK_N"], dev, B * D * 4 if need_dz else B * 8, splits)
    n_per_split = triton.cdiv(triton.cdiv(max(n, 1), S), cfg["BLOCK_N"]) * cfg["BLOCK_N"]
    S = triton.cdiv(max(n, 1), n_per_split)
    loss = torch.empty(S, B, dtype=torch.float32, device=dev)
    cnt = torch.empty(S, B, dtype=torch.float32, device=dev)
    bad = torch.zeros(S, B, dtype=torch.int32, device=dev)
    dz = torch.empty(S, B, D, dtype=torch.float32, device=dev) if need_dz else None
    y_arg, m_arg, r_arg, label_strides, mask_args = _label_args(z, labels, mask, label_kind, mask_rows, mask_key,
                                                                mask_threshold, mask_col_offset)
    if B and n:
        b_arg = bias if bias is not None else z
        grid = (triton.cdiv(B, cfg["BLOCK_B"]), S, triton.cdiv(D, cfg["BLOCK_K"]))
        with on_device_of(z):
            _dual_bce_fwd_kernel[grid](
                z, U, b_arg, y_arg, m_arg, r_arg, loss, cnt, dz if need_dz else loss, bad,
                B, n, D, n_per_split,
                *z.stride(), *U.stride(), b_arg.stride(0) if bias is not None else 0, *label_strides, *mask_args,
                HAS_BIAS=bias is not None, **_label_flags(labels, mask, label_kind, mask_rows),
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
    if label_kind == "sparse" and labels.shape[0] and B and n:
        _sparse_rows(z, U, bias, labels, indptr, mask, mask_rows, mask_args, loss, dz)
    return loss, cnt, dz, bad.sum()


def dual_bce_bwd(gscale, z, U, labels, mask, bias, n: int, label_kind: str, need_db: bool, *, indptr=None,
                 mask_rows=None, mask_key: int = 0, mask_threshold: int = 0, mask_col_offset: int = 0, csc=None,
                 splits: int | None = None):
    """(dU (n, d) fp32, db (n,) fp32 or None) for per-row upstream scales gscale (B,) of any float dtype and
    stride (a scalar expanded to (B,) is read in place). Labels and mask as for dual_bce_fwd; csc: sparse_csc's
    (colptr, rows) of sparse labels, made here when not given."""
    if mask_threshold == 0:  # nothing missing: the hashed mask is all ones
        mask_rows = None
    B, D = z.shape
    dev = z.device
    cfg = dual_bce_config(B, n, D, z.dtype, hashed=mask_rows is not None)
    S = _splits(triton.cdiv(n, cfg["BLOCK_N"]), B, cfg["BLOCK_B"], dev, n * D * 4, splits)
    b_per_split = triton.cdiv(triton.cdiv(max(B, 1), S), cfg["BLOCK_B"]) * cfg["BLOCK_B"]
    S = triton.cdiv(max(B, 1), b_per_split)
    du = torch.empty(S, n, D, dtype=torch.float32, device=dev)
    db = torch.empty(S, n, dtype=torch.float32, device=dev) if need_db else None
    y_arg, m_arg, r_arg, label_strides, mask_args = _label_args(z, labels, mask, label_kind, mask_rows, mask_key,
                                                                mask_threshold, mask_col_offset)
    if B and n:
        b_arg = bias if bias is not None else z
        grid = (triton.cdiv(n, cfg["BLOCK_N"]), S, triton.cdiv(D, cfg["BLOCK_K"]))
        with on_device_of(z):
            _dual_bce_bwd_kernel[grid](
                z, U, b_arg, y_arg, m_arg, r_arg, gscale, du, db if need_db else du,
                B, n, D, b_per_split,
                *z.stride(), *U.stride(), b_arg.stride(0) if bias is not None else 0, *label_strides,
                gscale.stride(0), *mask_args,
                HAS_BIAS=bias is not None, **_label_flags(labels, mask, label_kind, mask_rows),
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
    if label_kind == "sparse" and labels.shape[0] and B and n:
        colptr, crows = csc if csc is not None else sparse_csc(indptr, labels, n)
        _sparse_cols(gscale, z, colptr, crows, mask, mask_rows, mask_args, du, db)
    return du, db
