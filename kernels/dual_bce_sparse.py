"""dual_bce's sparse corrections in Triton, for SparseLabels (the dense tiles, dual_bce_triton.py, take y = 0).

The tiles take y = 0 (no label loads), so they make sum w softplus(L) and w sigmoid(L); the
positives, y = 1, subtract w L from the loss and w from the residual. That correction is a sparse term:
loss_b -= sum_{j in pos(b)} w_bj L_bj, the positives' logits as indexed dot products z_b . u_j + b_j (as Cut
Cross-Entropy computes the target logit); dz_b -= sum_{j in pos(b)} w_bj u_j (one program per CSR row: row
ownership); dU_j -= sum_{b: j in pos(b)} gscale_b w_bj z_b and db_j likewise (one program per column of a CSC
order that a stable sort makes once in the forward: column ownership). No atomics; every sum has an order fixed
by the labels, so results are deterministic. Extra bytes: the nnz indices and, for the backward, the CSC order
(n + 1 + nnz int64).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._jit import LAUNCH_OPTIONS, interpreting, jit, on_device_of
from ._triton_labels import KernelLabels, hash_observed, mask_row_key

# tl.sum is a jitted triton function, frozen in the mode triton was imported in; tl.reduce with its combine
# function is a builtin (see _jit.LazyKernel).
_sum_combine = tl.standard._sum_combine


@jit
def _positive_weight(m_ptr, mr_ptr, r64, j64, ok, stride_m_b, stride_m_n, mask_key, mask_thr, mask_off,
                     HAS_MASK: tl.constexpr, HASHED: tl.constexpr):
    """The observed weight w of positives (r64, j64) (int64 vectors), 0 where not ok: 1, the dense mask's value,
    or the hash."""
    if HASHED:
        row_key = mask_row_key(mask_key, tl.load(mr_ptr + r64, mask=ok, other=0))
        w = tl.where(ok & hash_observed(row_key, j64, mask_thr, mask_off), 1.0, 0.0)
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


def sparse_rows_correction(z, U, bias, kl: KernelLabels, loss, dz):
    """Subtracts the positives' terms from the dense tiles' per-row loss and dz (in place)."""
    B, D = z.shape
    cfg = sparse_config(D)
    indices, indptr, mask, mask_rows = kl.args.labels, kl.args.indptr, kl.args.mask, kl.args.mask_rows
    mask_args = kl.mask_scalars
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


def sparse_cols_correction(gscale, z, colptr, crows, kl: KernelLabels, du, db):
    """Subtracts the positives' terms from the dense tiles' dU and db (in place)."""
    n = colptr.shape[0] - 1
    D = z.shape[1]
    cfg = sparse_config(D)
    mask, mask_rows, mask_args = kl.args.mask, kl.args.mask_rows, kl.mask_scalars
    m = mask if mask is not None else z
    with on_device_of(z):
        _sparse_cols_kernel[(n,)](
            z, colptr, crows, m, mask_rows if mask_rows is not None else z, gscale, du,
            db if db is not None else du,
            D, *z.stride(), *(mask.stride() if mask is not None else (0, 0)), gscale.stride(0), *mask_args,
            HAS_MASK=mask is not None, HASHED=mask_rows is not None, NEED_DB=db is not None,
            BLOCK_P=cfg["BLOCK_P"], BLOCK_K=cfg["BLOCK_K"], num_warps=cfg["num_warps"], **LAUNCH_OPTIONS,
        )
