"""linear_binary_cross_entropy_with_logits: a linear layer fused with BCEWithLogitsLoss's whole API, the B x n
logits never formed (dual_bce's kernels with the loss options of PyTorch).

Meaning (reference.linear_binary_cross_entropy_with_logits):
    F.binary_cross_entropy_with_logits(F.linear(input, weight, bias), t, weight=label_weight,
                                       pos_weight=pos_weight, reduction=reduction)
with t = target (1 - label_smoothing) + label_smoothing / 2 and mask (1 = observed) multiplying each element
before the reduction. "mean" divides by B n, as PyTorch's does (not by the observed count, as dual_bce's).

Per entry, x = the logit, p = pos_weight_j, w = mask_bj label_weight_j, l = 1 + (p - 1) t:
    loss = w ((1 - t) x + l softplus(-x)),     dloss/dx = w (l sigmoid(x) - p t)
(p = 1: the familiar max(x, 0) - t x + log1p(exp(-|x|)) and sigmoid(x) - t.) The kernels are dual_bce's, with
each option a compile-time flag (a C++ template argument, a Triton constexpr): a call without an option runs
code without it, so the 0/1 unweighted path is dual_bce's own.

Which labels and masks go with which backend:
    target: a (B, n) float tensor of soft targets in [0, 1] (bool/uint8 too), PackedLabels (0/1 with their
            mask; then mask is None) or SparseLabels (the positives); mask: None, (B, n) or a HashedMask.
    cpu and reference: every combination, with every option.
    triton: dense or packed targets with a dense or hashed mask, every option; SparseLabels are refused (their
            Triton path splits the loss into a dense y = 0 pass and a correction at the positives, which holds
            for sigmoid(x) - y only).
label_weight and pos_weight: per label, any shape that broadcasts to (n,) ((), (1,), (n,), (1, n)). A
label_weight of shape (B, 1) or (B, n) is folded into a dense mask (then mask may be None or dense).

reduction="none" returns the (B, n) matrix of losses, as PyTorch's: with that output formed there is nothing
left to save, so every backend runs the reference composition for it (Liger's fused linear cross-entropy makes
the same call). "sum" and "mean" run the fused kernels.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import reference
from ._autograd import FusedOp
from ._checks import REDUCTIONS, check_float, check_same_device
from ._library import has_compiled_ops
from .labels import LabelArgs, PackedLabels, SparseLabels, label_args
from .ops import TRITON_DTYPES, _may_read_back, _resolve_backend

try:
    from . import linear_bce_triton as _lbce_tl
except ImportError:  # no triton: the triton backend is unavailable (ops._resolve_backend says so)
    _lbce_tl = None

OP = "linear_binary_cross_entropy_with_logits"


def _linear_bce_impl(input: Tensor, weight: Tensor, labels: Tensor, mask: Optional[Tensor], bias: Optional[Tensor],
                   n: int, label_kind: str, indptr: Optional[Tensor], mask_rows: Optional[Tensor], mask_key: int,
                   mask_threshold: int, mask_col_offset: int, pos_weight: Optional[Tensor],
                   label_weight: Optional[Tensor], label_smoothing: float, loss_scale: float, need_dz: bool,
                   grads_in_fwd: bool, backend: str, check_targets: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(loss_scale times the sum of the losses, fp32 (); dz (B, d) fp32 or (0,); with grads_in_fwd (backend
    "cpu") dW (n, d) and db (n,) fp32, else (0,)). The gradients are of the scaled loss on the cpu backend (its
    kernels take the scale), of the unscaled sum on triton. labels .. mask_col_offset: a LabelArgs, flat."""
    args = LabelArgs(labels, label_kind, indptr, mask, mask_rows, mask_key, mask_threshold, mask_col_offset)
    if check_targets and _may_read_back(input):
        _check_weights(pos_weight, label_weight, mask)
    if backend == "cpu":
        rows, _, bad, dz, dW, db = torch.ops.dualvae.dual_bce_cpu(
            z=input, U=weight, **args._asdict(), bias=bias, n=n, need_loss=True, need_dz=need_dz,
            gscale=input.new_full((input.shape[0],), loss_scale, dtype=torch.float32) if loss_scale != 1 else None,
            need_dU=grads_in_fwd, need_db=grads_in_fwd and bias is not None, pos_weight=pos_weight,
            label_weight=label_weight, label_smoothing=label_smoothing, soft_targets=True)
    else:
        rows, dz, bad = _lbce_tl.linear_bce_fwd(input, weight, args, bias, n, pos_weight, label_weight,
                                                label_smoothing, need_dz)
        dW, db = input.new_empty(0, dtype=torch.float32), input.new_empty(0, dtype=torch.float32)
    # Counted by the kernels as they read the targets; checked inside the op so it holds under torch.compile
    # (skipped while a CUDA graph is captured, where a host read is not allowed: see ops.dual_bce).
    if check_targets and label_kind == "dense" and _may_read_back(input):
        bad = int(bad)
        if bad:
            raise ValueError(f"{OP}: target must hold values in [0, 1], got {bad} outside it")
    if dz is None or not need_dz:
        dz = input.new_empty(0, dtype=torch.float32)
    total = rows.sum()
    return total * loss_scale if loss_scale != 1 else total, dz, dW, db


def _linear_bce_fake(input, weight, labels, mask, bias, n, label_kind, indptr, mask_rows, mask_key, mask_threshold,
                     mask_col_offset, pos_weight, label_weight, label_smoothing, loss_scale, need_dz, grads_in_fwd,
                     backend, check_targets):
    B, d = input.shape
    f32 = torch.float32
    return (input.new_empty((), dtype=f32), input.new_empty((B, d) if need_dz else (0,), dtype=f32),
            input.new_empty((n, d) if grads_in_fwd else (0,), dtype=f32),
            input.new_empty((n,) if grads_in_fwd and bias is not None else (0,), dtype=f32))


@torch.library.custom_op("dualvae::linear_bce_backward", mutates_args=())
def _linear_bce_bwd_op(gscale: Tensor, input: Tensor, weight: Tensor, labels: Tensor, mask: Optional[Tensor],
                       bias: Optional[Tensor], n: int, label_kind: str, indptr: Optional[Tensor],
                       mask_rows: Optional[Tensor], mask_key: int, mask_threshold: int, mask_col_offset: int,
                       pos_weight: Optional[Tensor], label_weight: Optional[Tensor], label_smoothing: float,
                       need_db: bool, backend: str) -> tuple[Tensor, Tensor]:
    """(dW fp32 (n, d), db fp32 (n,) or (0,)) for per-row upstream scales gscale (B,)."""
    args = LabelArgs(labels, label_kind, indptr, mask, mask_rows, mask_key, mask_threshold, mask_col_offset)
    if backend == "cpu":
        _, _, _, _, dW, db = torch.ops.dualvae.dual_bce_cpu(
            z=input, U=weight, **args._asdict(), bias=bias, gscale=gscale.contiguous().float(), n=n,
            need_loss=False, need_dz=False, need_dU=True, need_db=need_db, pos_weight=pos_weight,
            label_weight=label_weight, label_smoothing=label_smoothing, soft_targets=True)
        return dW, db
    dW, db = _lbce_tl.linear_bce_bwd(gscale, input, weight, args, bias, n, pos_weight, label_weight,
                                     label_smoothing, need_db)
    return dW, db if db is not None else input.new_empty(0, dtype=torch.float32)


@_linear_bce_bwd_op.register_fake
def _(gscale, input, weight, labels, mask, bias, n, label_kind, indptr, mask_rows, mask_key, mask_threshold,
      mask_col_offset, pos_weight, label_weight, label_smoothing, need_db, backend):
    return (weight.new_empty(weight.shape, dtype=torch.float32),
            weight.new_empty((n,) if need_db else (0,), dtype=torch.float32))


def _setup(ctx, inputs, output):
    (input, weight, labels, mask, bias, n, label_kind, indptr, mask_rows, mask_key, mask_threshold,
     mask_col_offset, pos_weight, label_weight, label_smoothing, loss_scale, need_dz, grads_in_fwd, backend,
     check_targets) = inputs
    _, dz, dW, db = output
    if grads_in_fwd:  # the backward only scales dW and db
        ctx.save_for_backward(*([None] * 4), bias, *([None] * 4), dz, dW, db)
    else:
        ctx.save_for_backward(input, weight, labels, mask, bias, indptr, mask_rows, pos_weight, label_weight, dz,
                              None, None)
    ctx.static = (n, label_kind, mask_key, mask_threshold, mask_col_offset, label_smoothing, backend)
    ctx.need_dz, ctx.grads_in_fwd = need_dz, grads_in_fwd
    ctx.kernel_scale = 1.0 if backend == "cpu" else loss_scale  # what the saved gradients still need
    ctx.set_materialize_grads(False)  # only the loss carries a gradient
    ctx.dtypes = (input.dtype, weight.dtype)


def _backward(ctx, g_loss, g_dz, g_dW, g_db):
    (input, weight, labels, mask, bias, indptr, mask_rows, pos_weight, label_weight, dz_unscaled, dW_fwd,
     db_fwd) = ctx.saved_tensors
    n, label_kind, mask_key, mask_threshold, mask_col_offset, label_smoothing, backend = ctx.static
    scale = g_loss.float() * ctx.kernel_scale if ctx.kernel_scale != 1 else g_loss.float()
    # An eager loss.backward() hands in exactly 1: the gradients need no scaling (as Liger hands them over); a
    # host read, so only in the eager path (never traced by torch.compile) and on CPU (no device sync).
    if getattr(ctx, "eager", False) and scale.device.type == "cpu" and scale.item() == 1.0:
        scale = None
    mul = (lambda t: t) if scale is None else (lambda t: scale * t)  # noqa: E731
    dz = dW = db = None
    if ctx.needs_input_grad[0]:
        if not ctx.need_dz:
            raise RuntimeError(f"{OP}: input needs a gradient but the forward ran without one "
                               "(input.requires_grad was False or grad mode was off)")
        dz = mul(dz_unscaled).to(ctx.dtypes[0])
    need_db = bias is not None and ctx.needs_input_grad[4]
    if ctx.grads_in_fwd:
        dW = mul(dW_fwd).to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        db = mul(db_fwd).to(bias.dtype) if need_db else None
    elif ctx.needs_input_grad[1] or need_db:
        gscale = (scale if scale is not None else g_loss.new_ones((), dtype=torch.float32)).expand(input.shape[0])
        dW32, db32 = torch.ops.dualvae.linear_bce_backward(
            gscale=gscale, input=input, weight=weight, labels=labels, mask=mask, bias=bias, n=n,
            label_kind=label_kind, indptr=indptr, mask_rows=mask_rows, mask_key=mask_key,
            mask_threshold=mask_threshold, mask_col_offset=mask_col_offset, pos_weight=pos_weight,
            label_weight=label_weight, label_smoothing=label_smoothing, need_db=need_db, backend=backend)
        dW = dW32.to(ctx.dtypes[1]) if ctx.needs_input_grad[1] else None
        db = db32.to(bias.dtype) if need_db else None
    return (dz, dW, None, None, db) + (None,) * 15


_linear_bce_op = FusedOp("dualvae::linear_bce", _linear_bce_impl, _setup, _backward, _linear_bce_fake)


def _per_label(name: str, w, n: int, dtype, B: int):
    """A pos_weight / label_weight as a (n,) tensor of `dtype`, or (for label_weight of a shape with rows) the
    (B, n) matrix to fold into the mask: (per-label, per-entry)."""
    if w is None:
        return None, None
    check_float(name, w, OP)
    if w.dim() <= 1 and w.numel() in (1, n) or w.dim() == 2 and w.shape in ((1, n), (1, 1)):
        return w.reshape(-1).expand(n).to(dtype), None
    if name == "label_weight" and w.dim() == 2 and w.shape[0] == B and w.shape[1] in (1, n):
        return None, w.expand(B, n)
    rows = f", (1, {n}), ({B}, 1) or ({B}, {n})" if name == "label_weight" else f" or (1, {n})"
    raise ValueError(f"{OP}: {name} has shape {tuple(w.shape)}, expected one that broadcasts per label: (), (1,), "
                     f"({n},){rows}")


def _check_weights(pos_weight, label_weight, mask) -> None:
    """ValueError unless every weight is >= 0 (NaN fails too): a host read, so the fused path makes it inside
    its op (where torch.compile does not trace it), the reference path here."""
    for name, w in (("pos_weight", pos_weight), ("label_weight", label_weight), ("mask", mask)):
        if w is not None and w.is_floating_point() and w.numel() and not bool((w >= 0).all()):
            raise ValueError(f"{OP}: {name} must be >= 0 everywhere, got min {w.min().item()!r}")


def _plain_cpu_call(input, weight, target, bias, pos_weight, label_weight, mask, label_smoothing, reduction,
                    backend) -> bool:
    """Whether the call is the plain one the C++ op takes as it is: contiguous CPU float tensors of one dtype and
    matching shapes, a dense target, no weights or mask, a "sum" or "mean", in eager mode with the library
    built. Anything else goes through the general path and its checks."""
    if (pos_weight is not None or label_weight is not None or mask is not None or backend not in ("auto", "cpu")
            or reduction not in ("mean", "sum") or type(label_smoothing) is not float
            or not 0.0 <= label_smoothing <= 1.0 or not isinstance(input, Tensor) or not isinstance(weight, Tensor)
            or type(target) is not Tensor or not (bias is None or isinstance(bias, Tensor))):
        return False
    dtype = input.dtype
    if (dtype not in TRITON_DTYPES or weight.dtype != dtype or target.dtype != dtype
            or input.device.type != "cpu" or weight.device.type != "cpu" or target.device.type != "cpu"
            or input.dim() != 2 or weight.dim() != 2 or weight.shape[1] != input.shape[1]
            or target.shape != (input.shape[0], weight.shape[0]) or input.shape[0] * weight.shape[0] == 0
            or not (input.is_contiguous() and weight.is_contiguous() and target.is_contiguous())):
        return False
    if bias is not None and (bias.dtype != dtype or bias.device.type != "cpu" or bias.shape != (weight.shape[0],)
                             or not bias.is_contiguous()):
        return False
    return has_compiled_ops() and not torch.compiler.is_compiling()


def _eager_cpu_call(input, weight, bias, args: LabelArgs, n: int, pos_weight, label_weight, label_smoothing,
                    reduction: str, loss_scale: float) -> Tensor:
    """One C++ call with its autograd in C++ (bce_eager_cpu.cpp): the eager cpu backend's whole op."""
    return torch.ops.dualvae.bce_cpu_eager(
        input, weight, bias, args.labels, args.mask, n, args.label_kind, args.indptr, args.mask_rows, args.mask_key,
        args.mask_threshold, args.mask_col_offset, pos_weight, label_weight, float(label_smoothing), True, reduction,
        loss_scale, _may_read_back(input), torch.is_grad_enabled())


def linear_binary_cross_entropy_with_logits(
        input: Tensor, weight: Tensor, target: Tensor | PackedLabels | SparseLabels, bias: Tensor | None = None, *,
        pos_weight: Tensor | None = None, label_weight: Tensor | None = None, mask=None,
        label_smoothing: float = 0.0, reduction: str = "mean", backend: str = "auto") -> Tensor:
    """BCEWithLogitsLoss of a linear layer's output, F.binary_cross_entropy_with_logits(F.linear(input, weight,
    bias), target, weight=label_weight, pos_weight=pos_weight, reduction=reduction), without forming the B x n
    logits in the forward or the backward ("sum", "mean").

    input (B, d); weight (n, d), nn.Linear's layout; target (B, n) values in [0, 1] (soft targets allowed),
    PackedLabels or SparseLabels; bias (n,) or None. pos_weight, label_weight: per label ((n,), or anything
    broadcasting to it; label_weight also (B, 1) or (B, n)), >= 0. mask: None, (B, n) (1 = observed, any weight
    >= 0) or a HashedMask; it multiplies each element before the reduction. label_smoothing eps in [0, 1]:
    targets t = target (1 - eps) + eps / 2. reduction "mean" (sum / (B n), PyTorch's), "sum" or "none" ((B, n),
    formed: see the module docstring). Which label formats go with which backend: the module docstring.
    Returns float32 on the fused backends, the input's dtype on the reference.
    """
    if _plain_cpu_call(input, weight, target, bias, pos_weight, label_weight, mask, label_smoothing, reduction,
                       backend):
        # The common eager call, checked in full by the conditions above: straight to the C++ op, without the
        # general staging below (it costs as much as a small head's whole forward and backward).
        B, n = target.shape
        return _eager_cpu_call(input, weight, bias, LabelArgs(target, "dense"), n, None, None, label_smoothing,
                               reduction, 1.0 if reduction == "sum" else 1.0 / (B * n))
    check_float("input", input, OP)
    check_float("weight", weight, OP)
    if input.dim() != 2:
        raise ValueError(f"{OP}: input must be 2-D (B, d), got shape {tuple(input.shape)}")
    if weight.dim() != 2 or weight.shape[1] != input.shape[1]:
        raise ValueError(f"{OP}: weight has shape {tuple(weight.shape)}, expected (n, {input.shape[1]})")
    (B, _), n = input.shape, weight.shape[0]
    if reduction not in REDUCTIONS:
        raise ValueError(f"{OP}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{OP}: label_smoothing must be a float in [0, 1], got {label_smoothing!r}")
    if bias is not None:
        check_float("bias", bias, OP)
        if bias.shape != (n,):
            raise ValueError(f"{OP}: bias has shape {tuple(bias.shape)}, expected ({n},)")
    if isinstance(target, Tensor) and target.is_complex():
        raise ValueError(f"{OP}: target must be real, got dtype {target.dtype}")
    if isinstance(mask, Tensor) and (mask.is_complex() or mask.shape != (B, n)):
        raise ValueError(f"{OP}: mask has shape {tuple(mask.shape)} ({mask.dtype}), expected real ({B}, {n})")
    pos_weight_n, _ = _per_label("pos_weight", pos_weight, n, input.dtype, B)
    label_weight_n, label_weight_bn = _per_label("label_weight", label_weight, n, input.dtype, B)
    args = label_args(OP, target, mask, input, n)
    check_same_device(OP, input=input, weight=weight, target=args.labels, mask=args.mask, mask_rows=args.mask_rows,
                      bias=bias, pos_weight=pos_weight, label_weight=label_weight)
    backend = _resolve_backend(OP, backend, input.device, input.dtype)
    if label_weight_bn is not None:  # a weight with rows: one more factor of the (dense) mask
        if args.label_kind == "packed" or args.mask_rows is not None:
            raise ValueError(f"{OP}: a label_weight with rows ({tuple(label_weight.shape)}) goes only with a dense "
                             "mask or none (not with PackedLabels or a HashedMask); pass a per-label (n,) one")
        m = label_weight_bn if args.mask is None else label_weight_bn * args.mask
        args = args._replace(mask=m.to(input.dtype))
    if backend == "triton" and args.label_kind == "sparse":
        raise ValueError(f"{OP}: SparseLabels are not supported by backend 'triton' (its sparse correction holds "
                         "for dual_bce's 0/1 loss only); pass dense or PackedLabels targets, or use dual_bce")
    if backend == "reference" or reduction == "none":
        _check_weights(pos_weight, label_weight, args.mask)
        if args.label_kind == "dense" and args.labels.numel() and not bool(
                ((args.labels >= 0) & (args.labels <= 1)).all()):
            raise ValueError(f"{OP}: target must hold values in [0, 1], got values outside it")
        y, m = (target.unpack(input.dtype) if args.label_kind == "packed" else (target, mask))
        if label_weight_bn is not None:
            m, label_weight = args.mask, None
        return reference.linear_binary_cross_entropy_with_logits(
            input, weight, y, bias, pos_weight=pos_weight, label_weight=label_weight, mask=m,
            label_smoothing=float(label_smoothing), reduction=reduction)
    dtype = input.dtype
    if weight.dtype != dtype:
        weight = weight.to(dtype)
    if bias is not None and bias.dtype != dtype:
        bias = bias.to(dtype)
    cpu = backend == "cpu"
    args = args.for_kernels(contiguous=cpu)
    grad_mode = torch.is_grad_enabled()
    need_dW = grad_mode and (weight.requires_grad or (bias is not None and bias.requires_grad))
    if cpu:
        input, weight = input.contiguous(), weight.contiguous()
        bias = bias.contiguous() if bias is not None else None
    loss_scale = 1.0 if reduction == "sum" else 1.0 / (B * n) if B * n else float("nan")
    if cpu and not torch.compiler.is_compiling():
        return _eager_cpu_call(input, weight, bias, args, n, pos_weight_n, label_weight_n, label_smoothing, reduction,
                               loss_scale)
    total, *_ = _linear_bce_op(
        input=input, weight=weight, **args._asdict(), bias=bias, n=n, pos_weight=pos_weight_n,
        label_weight=label_weight_n, label_smoothing=float(label_smoothing),
        loss_scale=loss_scale, need_dz=grad_mode and input.requires_grad, grads_in_fwd=cpu and need_dW, backend=backend,
        check_targets=True)
    return total
