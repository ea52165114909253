"""The public fused ops: argument checks, backend choice, torch.library custom ops with fake impls and autograd.

Backends (`Backend`, `resolve_backend`)
    "triton"     the Triton kernels (reparam_kl.py, dual_bce_triton.py): CUDA tensors, or CPU tensors while
                 TRITON_INTERPRET=1 (read at each call, not at import).
    "reference"  the pure-PyTorch definitions (reference.py), differentiated by torch's autograd.
    "cpu"        the compiled C++ CPU kernels (kernels/csrc, ops dualvae::*_cpu registered for the CPU dispatch
                 key); the reference where the library was not built (import warns once).
    "auto"       triton for CUDA tensors (the reference where triton is not installed), cpu for CPU tensors,
                 reference for float64 and for other devices.

The fused backends go through four `dualvae::` custom ops (forward and backward of each op), registered with fake
implementations and autograd, so `torch.library.opcheck` passes and `torch.compile(fullgraph=True)` traces them
as single nodes without graph breaks. Each op takes the backend as an argument: "triton" runs the Triton
kernels (on CPU tensors too, under the interpreter), "cpu" calls the C++ op; so one op serves both, whatever
the tensors' device. The Triton launchers read their inputs through strides; the C++ kernels read row-major
memory, so their inputs are made contiguous here.

Where dual_bce's gradients are computed: the Triton forward makes the loss and dz, and its backward recomputes
the logit tiles for dU and db (no atomics, no (B-blocks x n x d) partials on a GPU). The C++ forward makes dU
and db too when the upstream gradient is a scalar ("sum", "mean"): one pass over the tiles instead of two, 3
GEMMs' worth of work instead of 4; its backward then only scales them. For "none" it recomputes like Triton.

Labels and mask reach the ops as one labels.LabelArgs, built once by `label_args` (label_kind "dense": y,
"packed": PackedLabels' words, "sparse": SparseLabels' indices with indptr; a HashedMask as mask_rows with its
key, threshold and label offset, mask None) and passed whole: as keywords to the ops, whose schema spells its
fields out, and as the object to the Triton launchers. Every op is called by keyword. For sparse labels the
Triton forward also returns the positives' CSC order (a stable sort, made once), which its backward reads for
the column-owned dU/db correction (dual_bce_sparse.py).
"""
from __future__ import annotations

import enum
from typing import Optional

import torch
from torch import Tensor

from . import reference
from ._autograd import FusedOp
from ._checks import REDUCTIONS, check_float, check_same_device, check_seed, describe
from ._library import has_compiled_ops
from .labels import HashedMask, LabelArgs, PackedLabels, SparseLabels, label_args

try:
    from . import dual_bce_sparse as _bce_sparse_tl
    from . import dual_bce_triton as _bce_tl
    from . import reparam_kl as _reparam_tl
    from ._jit import interpreting as _interpreting
except ImportError:  # no triton on this platform: the triton backend is unavailable, the others work
    _bce_tl = _bce_sparse_tl = _reparam_tl = None

    def _interpreting() -> bool:
        return False


class Backend(str, enum.Enum):
    """Where a fused op runs; a plain string with the same value is accepted everywhere one is."""

    AUTO = "auto"
    TRITON = "triton"
    REFERENCE = "reference"
    CPU = "cpu"


BACKENDS = tuple(b.value for b in Backend)
TRITON_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# Whether the triton package imported; tests turn it off to see the ops where it is not installed.
TRITON_AVAILABLE = _bce_tl is not None


# ---------------------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------------------
if has_compiled_ops():  # fake implementations of the C++ ops, so they too trace under torch.compile / opcheck
    @torch.library.register_fake("dualvae::reparameterize_kl_cpu")
    def _(mu, logvar, eps, seed, offset):
        return torch.empty_like(mu), mu.new_empty(mu.shape[0], dtype=torch.float32)

    @torch.library.register_fake("dualvae::reparameterize_kl_backward_cpu")
    def _(dz, dkl, mu, logvar, eps, seed, offset, need_deps):
        return torch.empty_like(mu), torch.empty_like(mu), torch.empty_like(mu) if need_deps else mu.new_empty(0)

    @torch.library.register_fake("dualvae::dual_bce_cpu")
    def _(z, U, labels, mask, bias, gscale, n, label_kind, indptr, mask_rows, mask_key, mask_threshold,
          mask_col_offset, need_loss, need_dz, need_dU, need_db):
        B, d = z.shape
        f32 = torch.float32
        return (z.new_empty((B,) if need_loss else (0,), dtype=f32), z.new_empty((), dtype=f32),
                z.new_empty((), dtype=torch.int64), z.new_empty((B, d) if need_dz else (0,), dtype=f32),
                z.new_empty((n, d) if need_dU else (0,), dtype=f32), z.new_empty((n,) if need_db else (0,), dtype=f32))


def _may_read_back(t: Tensor) -> bool:
    """False while a CUDA graph is being captured on the current stream, where copying a value to the host is
    not allowed (the capture would fail)."""
    return not (t.is_cuda and torch.cuda.is_current_stream_capturing())


def _resolve_backend(op: str, backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """resolve_backend with the op's name in its errors."""
    if isinstance(backend, Backend):
        backend = backend.value
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if not isinstance(device, torch.device):
        device = torch.device(device)
    if backend == "auto":
        if dtype not in TRITON_DTYPES:
            return "reference"
        if device.type == "cuda":
            return "triton" if TRITON_AVAILABLE else "reference"
        if device.type != "cpu":
            return "reference"
        backend = "cpu"
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"{op}: backend 'cpu' needs CPU tensors, got tensors on {device}")
        if dtype not in TRITON_DTYPES:
            raise ValueError(f"{op}: backend 'cpu' takes float32, bfloat16 or float16 inputs, got {dtype}; "
                             f"use backend='reference' for {dtype}")
        if not has_compiled_ops():
            return "reference"  # the library was not built; importing dualvae.kernels has warned once
    if backend == "triton":
        if not TRITON_AVAILABLE:
            raise ValueError(f"{op}: backend 'triton' needs the triton package, which is not installed")
        if device.type != "cuda" and not _interpreting():
            raise ValueError(f"{op}: backend 'triton' needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), "
                             f"got tensors on {device}")
        if dtype not in TRITON_DTYPES:
            raise ValueError(f"{op}: backend 'triton' takes float32, bfloat16 or float16 inputs, got {dtype}; "
                             f"use backend='reference' for {dtype}")
    return backend


def resolve_backend(backend: str | Backend = "auto", *, device: torch.device | str,
                    dtype: torch.dtype = torch.float32) -> str:
    """The backend ("triton", "cpu" or "reference") that an op called with `backend` runs on tensors of
    `device` and `dtype`, "auto" chosen as the module docstring says. Raises ValueError for an unknown backend
    and for one that cannot take such tensors: triton without the package, or on CPU tensors without
    TRITON_INTERPRET=1; cpu on another device; a fused backend for a dtype other than float32, bfloat16 or
    float16. "cpu" resolves to "reference" where the compiled library is not built. TRITON_INTERPRET is read
    at this call."""
    return _resolve_backend("resolve_backend", backend, device, dtype)


# ---------------------------------------------------------------------------------------------------------
# reparameterize_kl
# ---------------------------------------------------------------------------------------------------------
@torch.library.custom_op("dualvae::reparameterize_kl", mutates_args=())
def _reparam_kl_op(mu: Tensor, logvar: Tensor, eps: Optional[Tensor], seed: int, offset: int,
                   backend: str) -> tuple[Tensor, Tensor]:
    if backend == "cpu":
        return torch.ops.dualvae.reparameterize_kl_cpu(mu=mu, logvar=logvar, eps=eps, seed=seed, offset=offset)
    return _reparam_tl.reparam_kl_fwd(mu, logvar, eps, seed, offset)


@_reparam_kl_op.register_fake
def _(mu, logvar, eps, seed, offset, backend):
    return torch.empty_like(mu), mu.new_empty(mu.shape[0], dtype=torch.float32)


@torch.library.custom_op("dualvae::reparameterize_kl_backward", mutates_args=())
def _reparam_kl_bwd_op(dz: Tensor, dkl: Tensor, mu: Tensor, logvar: Tensor, eps: Optional[Tensor], seed: int,
                       offset: int, need_deps: bool, backend: str) -> tuple[Tensor, Tensor, Tensor]:
    if backend == "cpu":
        return torch.ops.dualvae.reparameterize_kl_backward_cpu(dz=dz, dkl=dkl, mu=mu, logvar=logvar, eps=eps,
                                                                 seed=seed, offset=offset, need_deps=need_deps)
    dmu, dlogvar, deps = _reparam_tl.reparam_kl_bwd(dz, dkl, mu, logvar, eps, seed, offset, need_deps)
    return dmu, dlogvar, deps if deps is not None else mu.new_empty(0)


@_reparam_kl_bwd_op.register_fake
def _(dz, dkl, mu, logvar, eps, seed, offset, need_deps, backend):
    return torch.empty_like(mu), torch.empty_like(logvar), torch.empty_like(mu) if need_deps else mu.new_empty(0)


def _reparam_setup(ctx, inputs, output):
    mu, logvar, eps, seed, offset, backend = inputs
    ctx.save_for_backward(mu, logvar, eps)
    ctx.seed, ctx.offset, ctx.backend = seed, offset, backend


def _reparam_backward(ctx, dz, dkl):
    mu, logvar, eps = ctx.saved_tensors
    need_deps = eps is not None and ctx.needs_input_grad[2]
    dmu, dlogvar, deps = torch.ops.dualvae.reparameterize_kl_backward(
        dz=dz, dkl=dkl, mu=mu, logvar=logvar, eps=eps, seed=ctx.seed, offset=ctx.offset, need_deps=need_deps,
        backend=ctx.backend)
    return dmu, dlogvar, (deps if need_deps else None), None, None, None


_reparam_kl_op.register_autograd(_reparam_backward, setup_context=_reparam_setup)


def reparameterize_kl(mu: Tensor, logvar: Tensor, eps: Tensor | None = None, *, seed: int | None = None,
                      offset: int = 0, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """z = mu + exp(logvar / 2) * eps and the per-row KL(q || N(0, I)), in one pass over mu and logvar.

    eps: a tensor like mu, or None to draw it. With `seed` (int in [0, 2**63)), element k of a row-major (B, d)
    draw is Philox normal number offset + k, the same on every backend (reference.philox_randn), and the Triton
    backward regenerates it instead of keeping a B x d tensor. With neither eps nor seed, a seed is drawn from
    torch's global generator (so torch.manual_seed governs it; under torch.compile pass seed or eps).
    Returns (z in mu's dtype, kl (B,) in float32 on the fused backends).
    """
    op = "reparameterize_kl"
    check_float("mu", mu, op)
    check_float("logvar", logvar, op)
    if mu.dim() != 2:
        raise ValueError(f"{op}: mu must be 2-D (B, d), got shape {tuple(mu.shape)}")
    if logvar.shape != mu.shape:
        raise ValueError(f"{op}: logvar has shape {tuple(logvar.shape)}, expected {tuple(mu.shape)} (mu's)")
    if eps is not None:
        check_float("eps", eps, op)
        if eps.shape != mu.shape:
            raise ValueError(f"{op}: eps has shape {tuple(eps.shape)}, expected {tuple(mu.shape)} (mu's)")
    check_same_device(op, mu=mu, logvar=logvar, eps=eps)
    if logvar.dtype != mu.dtype or (eps is not None and eps.dtype != mu.dtype):
        raise ValueError(f"{op}: mu, logvar and eps must share one dtype, got mu {mu.dtype}, logvar {logvar.dtype}"
                         + (f", eps {eps.dtype}" if eps is not None else ""))
    if seed is not None:
        seed = check_seed(seed, op)
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < 2**62:
        raise ValueError(f"{op}: offset must be an int in [0, 2**62), got {offset!r}")
    backend = _resolve_backend(op, backend, mu.device, mu.dtype)
    if eps is None and seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    if backend == "reference":
        if eps is None:
            eps = reference.philox_randn(seed, offset, tuple(mu.shape), mu.device).to(mu.dtype)
        return reference.reparameterize_kl(mu, logvar, eps)
    if backend == "cpu":
        mu, logvar = mu.contiguous(), logvar.contiguous()
        eps = eps.contiguous() if eps is not None else None
    return torch.ops.dualvae.reparameterize_kl(mu=mu, logvar=logvar, eps=eps, seed=seed if seed is not None else 0,
                                               offset=offset, backend=backend)


# ---------------------------------------------------------------------------------------------------------
# dual_bce
# ---------------------------------------------------------------------------------------------------------
def _dual_bce_impl(z: Tensor, U: Tensor, labels: Tensor, mask: Optional[Tensor], bias: Optional[Tensor], n: int,
                 label_kind: str, indptr: Optional[Tensor], mask_rows: Optional[Tensor], mask_key: int,
                 mask_threshold: int, mask_col_offset: int, reduction: str, need_dz: bool, grads_in_fwd: bool,
                 need_csc: bool, backend: str,
                 check_labels: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(loss fp32: () or (B,) for "none", observed count fp32 (), unscaled dz (B, d) fp32 or (0,), with
    grads_in_fwd (backend "cpu", reduction "sum"/"mean") unscaled dU (n, d) and db (n,) fp32, else (0,), and
    with need_csc (backend "triton", sparse labels) their CSC order for the backward, colptr (n + 1,) and rows
    (nnz,) int64, else (0,)). labels .. mask_col_offset: a LabelArgs, flat (the op's schema)."""
    def empty(dtype=torch.float32):  # a new one each time: outputs of a custom op must not alias each other
        return z.new_empty(0, dtype=dtype)

    args = LabelArgs(labels, label_kind, indptr, mask, mask_rows, mask_key, mask_threshold, mask_col_offset)
    colptr, crows = empty(torch.int64), empty(torch.int64)
    if backend == "cpu":
        rows, count, bad, dz, dU, db = torch.ops.dualvae.dual_bce_cpu(
            z=z, U=U, **args._asdict(), bias=bias, gscale=None, n=n, need_loss=True, need_dz=need_dz,
            need_dU=grads_in_fwd, need_db=grads_in_fwd and bias is not None)
    else:
        rows, cnt, dz, bad = _bce_tl.dual_bce_fwd(z, U, args, bias, n, need_dz)
        count, dU, db = cnt.sum(), empty(), empty()
        if need_csc:
            colptr, crows = _bce_sparse_tl.sparse_csc(indptr, labels, n)
    # The kernels count bad labels as they read them; the count is checked here, inside the op, so the check
    # holds under torch.compile too. On CUDA reading it is a host sync, and a sync cannot be recorded into a
    # CUDA graph (torch.compile mode="reduce-overhead"): so the check is skipped while a graph is captured,
    # and still runs in eager and in the warm-up runs made before capturing (replays run no Python at all).
    # check_labels=False drops the per-call sync for callers that validate their labels once. Not
    # torch._assert_async: a failed device-side assert leaves the CUDA context unusable and names no value.
    # Packed and sparse labels are 0/1 by construction (the kernels count nothing for them): no read.
    if check_labels and label_kind == "dense" and _may_read_back(z):
        bad = int(bad)
        if bad:
            raise ValueError(f"dual_bce: y must hold labels in {{0, 1}}, got {bad} values outside it")
    if reduction == "none":
        loss = rows
    elif reduction == "sum":
        loss = rows.sum()
    else:
        loss = rows.sum() / count.clamp_min(1.0)
    return loss, count, (dz if dz is not None and need_dz else empty()), dU, db, colptr, crows


def _dual_bce_fake(z, U, labels, mask, bias, n, label_kind, indptr, mask_rows, mask_key, mask_threshold,
                   mask_col_offset, reduction, need_dz, grads_in_fwd, need_csc, backend, check_labels):
    B, d = z.shape
    f32 = torch.float32
    loss = z.new_empty(B if reduction == "none" else (), dtype=f32)
    dz = z.new_empty((B, d) if need_dz else (0,), dtype=f32)
    dU = z.new_empty((n, d) if grads_in_fwd else (0,), dtype=f32)
    db = z.new_empty((n,) if grads_in_fwd and bias is not None else (0,), dtype=f32)
    colptr = z.new_empty((n + 1,) if need_csc else (0,), dtype=torch.int64)
    crows = z.new_empty((labels.shape[0],) if need_csc else (0,), dtype=torch.int64)
    return loss, z.new_empty((), dtype=f32), dz, dU, db, colptr, crows


@torch.library.custom_op("dualvae::dual_bce_backward", mutates_args=())
def _dual_bce_bwd_op(gscale: Tensor, z: Tensor, U: Tensor, labels: Tensor, mask: Optional[Tensor],
                     bias: Optional[Tensor], n: int, label_kind: str, indptr: Optional[Tensor],
                     mask_rows: Optional[Tensor], mask_key: int, mask_threshold: int, mask_col_offset: int,
                     colptr: Optional[Tensor], crows: Optional[Tensor], need_db: bool,
                     backend: str) -> tuple[Tensor, Tensor]:
    """(dU fp32 (n, d), db fp32 (n,) or (0,)) for per-row upstream gradient scales gscale (B,). colptr, crows:
    the forward's CSC order of sparse labels (backend "triton"; made here when None)."""
    args = LabelArgs(labels, label_kind, indptr, mask, mask_rows, mask_key, mask_threshold, mask_col_offset)
    if backend == "cpu":
        _, _, _, _, du, db = torch.ops.dualvae.dual_bce_cpu(
            z=z, U=U, **args._asdict(), bias=bias, gscale=gscale.contiguous().float(), n=n, need_loss=False,
            need_dz=False, need_dU=True, need_db=need_db)
        return du, db
    csc = (colptr, crows) if colptr is not None and crows is not None else None
    du, db = _bce_tl.dual_bce_bwd(gscale, z, U, args, bias, n, need_db, csc=csc)
    return du, db if db is not None else z.new_empty(0, dtype=torch.float32)


@_dual_bce_bwd_op.register_fake
def _(gscale, z, U, labels, mask, bias, n, label_kind, indptr, mask_rows, mask_key, mask_threshold,
      mask_col_offset, colptr, crows, need_db, backend):
    return U.new_empty(U.shape, dtype=torch.float32), U.new_empty((n,) if need_db else (0,), dtype=torch.float32)


def _dual_bce_setup(ctx, inputs, output):
    (z, U, labels, mask, bias, n, label_kind, indptr, mask_rows, mask_key, mask_threshold, mask_col_offset,
     reduction, need_dz, grads_in_fwd, need_csc, backend, check_labels) = inputs
    _, count, dz, dU, db, colptr, crows = output
    if grads_in_fwd:  # the backward only scales dU and db: the inputs need not be kept
        ctx.save_for_backward(None, None, None, None, bias, count, dz, dU, db, None, None, None, None)
    else:
        ctx.save_for_backward(z, U, labels, mask, bias, count, dz, None, None, indptr, mask_rows,
                              colptr if need_csc else None, crows if need_csc else None)
    ctx.n, ctx.label_kind, ctx.reduction, ctx.need_dz, ctx.backend = n, label_kind, reduction, need_dz, backend
    ctx.mask_key, ctx.mask_threshold, ctx.mask_col_offset = mask_key, mask_threshold, mask_col_offset
    ctx.grads_in_fwd = grads_in_fwd
    # Only the loss carries a gradient; without this autograd would hand the backward zero tensors for the
    # other outputs, an n x d one for dU among them.
    ctx.set_materialize_grads(False)
    ctx.z_dtype, ctx.U_dtype, ctx.B = z.dtype, U.dtype, z.shape[0]


def _dual_bce_backward(ctx, g_loss, g_count, g_dz, g_dU, g_db, g_colptr, g_crows):
    (z, U, labels, mask, bias, count, dz_unscaled, dU_fwd, db_fwd, indptr, mask_rows, colptr,
     crows) = ctx.saved_tensors
    B = ctx.B
    g_loss = g_loss.float()
    if ctx.reduction == "none":
        gscale = g_loss
    else:  # one scale for every row
        scale = g_loss if ctx.reduction == "sum" else g_loss / count.clamp_min(1.0)
        gscale = scale.expand(B)
    dz = dU = db = None
    if ctx.needs_input_grad[0]:
        if not ctx.need_dz:
            raise RuntimeError("dual_bce: z needs a gradient but the forward ran without one "
                               "(z.requires_grad was False or grad mode was off)")
        dz = (gscale[:, None] * dz_unscaled).to(ctx.z_dtype)
    need_db = bias is not None and ctx.needs_input_grad[4]
    if ctx.grads_in_fwd:  # scalar upstream gradient: the forward's dU and db, scaled
        dU = (scale * dU_fwd).to(ctx.U_dtype) if ctx.needs_input_grad[1] else None
        db = (scale * db_fwd).to(bias.dtype) if need_db else None
    elif ctx.needs_input_grad[1] or need_db:
        args = LabelArgs(labels, ctx.label_kind, indptr, mask, mask_rows, ctx.mask_key, ctx.mask_threshold,
                         ctx.mask_col_offset)
        du32, db32 = torch.ops.dualvae.dual_bce_backward(
            gscale=gscale, z=z, U=U, **args._asdict(), bias=bias, n=ctx.n, colptr=colptr, crows=crows,
            need_db=need_db, backend=ctx.backend)
        dU = du32.to(ctx.U_dtype) if ctx.needs_input_grad[1] else None
        db = db32.to(bias.dtype) if need_db else None
    return (dz, dU, None, None, db) + (None,) * 13


_dual_bce_op = FusedOp("dualvae::dual_bce", _dual_bce_impl, _dual_bce_setup, _dual_bce_backward, _dual_bce_fake)


def dual_bce(z: Tensor, U: Tensor, y: Tensor | PackedLabels | SparseLabels,
             mask: Tensor | HashedMask | None = None, *, bias: Tensor | None = None, reduction: str = "sum",
             backend: str = "auto", check_labels: bool = True) -> Tensor:
    """Masked Bernoulli NLL of the dual head, sum_ij mask_ij * BCE(sigmoid(z_i . u_j + b_j), y_ij).

    y: (B, n) labels in {0, 1}, a PackedLabels from `pack_labels` (then mask must be None), or a SparseLabels
    (the positives, CSR rows). mask: None (all observed), a (B, n) tensor (1 = observed), or a HashedMask over
    the batch's B rows, evaluated inside the kernels (no (B, n) mask is formed). reduction: "sum", "mean" (over
    observed entries; 0 with zero gradients when none is observed) or "none" (per row, (B,)). U and bias are
    cast to z's dtype. The fused backends never form the B x n logits (see dual_bce_triton.py) and return the
    loss in float32; with SparseLabels they never form the labels either: the loss is sum mask * softplus(L)
    over the tiles minus sum mask * L over the positives.
    check_labels: raise ValueError when a dense label is not 0 or 1 (default). On CUDA that reads a count
    back to the host once per call; False skips it (the loss of such labels is then undefined). The check is
    also skipped while a CUDA graph is being captured. The reference backend always checks. Packed labels
    are checked by pack_labels, sparse ones by SparseLabels (unless made with validate=False; the cpu backend
    checks them again as it reads them).
    """
    op = "dual_bce"
    check_float("z", z, op)
    check_float("U", U, op)
    if z.dim() != 2:
        raise ValueError(f"{op}: z must be 2-D (B, d), got shape {tuple(z.shape)}")
    if U.dim() != 2 or U.shape[1] != z.shape[1]:
        raise ValueError(f"{op}: U has shape {tuple(U.shape)}, expected (n, {z.shape[1]})")
    n = U.shape[0]
    args = label_args(op, y, mask, z, n)
    if bias is not None:
        check_float("bias", bias, op)
        if bias.shape != (n,):
            raise ValueError(f"{op}: bias has shape {tuple(bias.shape)}, expected ({n},)")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    check_same_device(op, z=z, U=U, y=args.labels, indptr=args.indptr, mask=args.mask, mask_rows=args.mask_rows,
                      bias=bias)
    backend = _resolve_backend(op, backend, z.device, z.dtype)
    if backend == "reference":
        if args.label_kind == "packed":
            y, mask = y.unpack(z.dtype)
        return reference.dual_bce(z, U, y, mask, bias=bias, reduction=reduction)
    if U.dtype != z.dtype:
        U = U.to(z.dtype)
    if bias is not None and bias.dtype != z.dtype:
        bias = bias.to(z.dtype)
    args = args.for_kernels(contiguous=backend == "cpu")
    grad_mode = torch.is_grad_enabled()
    need_dU = grad_mode and (U.requires_grad or (bias is not None and bias.requires_grad))
    if backend == "cpu":
        z, U = z.contiguous(), U.contiguous()
        bias = bias.contiguous() if bias is not None else None
    if backend == "cpu" and reduction != "none" and not torch.compiler.is_compiling():  # one C++ call, autograd
        return torch.ops.dualvae.bce_cpu_eager(                                         # in C++: bce_eager_cpu.cpp
            z, U, bias, args.labels, args.mask, n, args.label_kind, args.indptr, args.mask_rows, args.mask_key,
            args.mask_threshold, args.mask_col_offset, None, None, 0.0, False, reduction, 1.0,
            bool(check_labels) and _may_read_back(z), grad_mode)
    loss, *_ = _dual_bce_op(
        z=z, U=U, **args._asdict(), bias=bias, n=n, reduction=reduction, need_dz=grad_mode and z.requires_grad,
        grads_in_fwd=backend == "cpu" and reduction != "none" and need_dU,
        need_csc=backend == "triton" and args.label_kind == "sparse" and need_dU, backend=backend,
        check_labels=bool(check_labels))
    return loss
