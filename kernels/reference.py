"""Pure-PyTorch references: the meaning of every dualvae op.

Every fused backend (Triton, C++ CPU) keeps these signatures and is tested against them in float64.

Notation as in the paper: z (B, d) latent codes, U (n, d) dual matrix whose rows are the dual vectors u_i,
y (B, n) labels in {0, 1}, mask (B, n) the indicator I (1 = label observed). The missing-label mask's hash is
mask_hash.py's (its names are re-exported here), the shared argument checks _checks.py's.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._checks import REDUCTIONS, SEED_MAX, check_float, check_labels, check_same_device, check_seed  # noqa: F401
from .labels import HashedMask, SparseLabels
from .mask_hash import (M32, MASK_INDEX_MAX, fmix32, hashed_observed, mask_key, mask_row_keys,  # noqa: F401
                        mask_threshold, umul32)

def reparameterize_kl(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    eps: torch.Tensor | None = None,
    *,
    seed: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reparameterized sample and per-row KL to the standard normal prior.

    z = mu + exp(logvar / 2) * eps,   eps ~ N(0, I)
    kl_j = KL(N(mu_j, diag(exp(logvar_j))) || N(0, I)) = -1/2 * sum_k (1 + logvar_jk - mu_jk^2 - exp(logvar_jk))

    With eps=None, eps is drawn here: with `seed`, from the counter-based Philox stream of `philox_randn`
    (the very numbers the Triton kernel draws in-kernel, so every backend gives the same z for a seed),
    else from torch's global RNG. Returns (z with mu's shape, kl of shape (B,)).
    """
    op = "reparameterize_kl"
    check_float("mu", mu, op)
    check_float("logvar", logvar, op)
    if logvar.shape != mu.shape:
        raise ValueError(f"{op}: logvar has shape {tuple(logvar.shape)}, expected {tuple(mu.shape)} (mu's)")
    if mu.dim() != 2:
        raise ValueError(f"{op}: mu must be 2-D (B, d), got shape {tuple(mu.shape)}")
    if eps is None:
        if seed is not None:
            eps = philox_randn(check_seed(seed, op), 0, tuple(mu.shape), mu.device).to(mu.dtype)
        else:
            eps = torch.randn_like(mu)
    else:
        check_float("eps", eps, op)
        if eps.shape != mu.shape:
            raise ValueError(f"{op}: eps has shape {tuple(eps.shape)}, expected {tuple(mu.shape)} (mu's)")
    check_same_device(op, mu=mu, logvar=logvar, eps=eps)
    z = mu + torch.exp(0.5 * logvar) * eps
    return z, kl_standard_normal(mu, logvar)


# -- counter-based normal numbers --------------------------------------------------------------------
# Philox4x32-10 (Salmon et al., SC'11) written in int64 tensor arithmetic, bit for bit the generator behind
# triton.language.randn: key = the 64-bit seed split in two 32-bit halves, counter = (offset_lo, offset_hi, 0, 0),
# then Box-Muller on the first two outputs. Element k of a (B, d) draw uses counter offset + k (row-major), so
# a kernel can regenerate any element from (seed, offset, k) instead of storing eps.
_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57


def philox_randint4x(seed: int, counters: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of counters (int64 tensor, used as (lo, hi) 32-bit words) under the 64-bit key `seed`.
    Returns the four uint32 outputs as int64 tensors."""
    c0, c1 = counters & M32, (counters >> 32) & M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & M32, (seed >> 32) & M32
    for _ in range(10):
        hi_b, lo_b = umul32(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = umul32(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _PHILOX_KEY_A) & M32, (k1 + _PHILOX_KEY_B) & M32
    return c0, c1, c2, c3


def _uint_to_uniform(x: torch.Tensor) -> torch.Tensor:
    signed = torch.where(x >= 2**31, x - 2**32, x)  # the int32 bit pattern
    signed = torch.where(signed < 0, -signed - 1, signed)
    return signed.to(torch.float32) * torch.tensor(4.6566127342e-10, dtype=torch.float32)


def philox_randn(seed: int, offset: int, shape: tuple[int, ...], device=None) -> torch.Tensor:
    """Standard normal float32 numbers, element k (row-major) from counter offset + k: triton's tl.randn (the
    Triton kernel evaluates the cosine by its own series, equal to torch.cos up to rounding)."""
    numel = math.prod(shape)
    counters = torch.arange(numel, dtype=torch.int64, device=device) + offset
    i1, i2, _, _ = philox_randint4x(seed, counters)
    u1 = torch.clamp_min(_uint_to_uniform(i1), 1.0e-7)
    th = torch.tensor(6.283185307179586, dtype=torch.float32) * _uint_to_uniform(i2)
    r = torch.sqrt(-2.0 * torch.log(u1))
    return (r * torch.cos(th)).reshape(shape)


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-row KL(N(mu, diag(exp(logvar))) || N(0, I)) = -1/2 * sum_k (1 + logvar - mu^2 - exp(logvar))."""
    return -0.5 * (1.0 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)


def dual_bce(
    z: torch.Tensor,
    U: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    bias: torch.Tensor | None = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """Masked Bernoulli negative log-likelihood of the dual head p(y | z) = Bern(sigmoid(z U^T + b)).

    loss_ij = mask_ij * BCE(sigmoid(z_j . u_i + b_i), y_ij), computed from logits in the stable
    log-sum-exp form, so logits of any size give finite values. y may be a SparseLabels and mask a HashedMask
    (labels.py): they mean their dense matrices, `y.dense()` and `mask.dense(n)`.

    reduction: "sum" over all entries; "mean" over observed entries (mask sum; 0 when nothing is observed,
    with zero gradients); "none" per row, shape (B,).
    The label step of Algorithm 1 maximizes alpha * sum_ij I_ij log p(y_ij | z_j, u_i), i.e. minimizes
    alpha * dual_bce(z, U, y, I, reduction="sum").
    """
    op = "dual_bce"
    check_float("z", z, op)
    check_float("U", U, op)
    if z.dim() != 2:
        raise ValueError(f"{op}: z must be 2-D (B, d), got shape {tuple(z.shape)}")
    if U.dim() != 2 or U.shape[1] != z.shape[1]:
        raise ValueError(f"{op}: U has shape {tuple(U.shape)}, expected (n, {z.shape[1]})")
    B, n = z.shape[0], U.shape[0]
    if isinstance(y, SparseLabels):  # the definition: the dense matrix
        if y.shape != (B, n):
            raise ValueError(f"{op}: sparse y is for shape {y.shape}, expected ({B}, {n}) (z's rows, U's rows)")
        y = y.dense(z.dtype)
    if isinstance(mask, HashedMask):
        if mask.rows.shape != (B,):
            raise ValueError(f"{op}: the HashedMask has {len(mask.rows)} rows, expected {B} (z's rows, "
                             f"z has shape {tuple(z.shape)})")
        mask = mask.dense(n, z.dtype)
    if not isinstance(y, torch.Tensor) or y.shape != (B, n):
        shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{op}: y has shape {shape}, expected ({B}, {n})")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != (B, n)):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"{op}: mask has shape {shape}, expected ({B}, {n})")
    if bias is not None and (not isinstance(bias, torch.Tensor) or bias.shape != (n,)):
        shape = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"{op}: bias has shape {shape}, expected ({n},)")
    if reduction not in REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {REDUCTIONS}, got {reduction!r}")
    check_same_device(op, z=z, U=U, y=y, mask=mask, bias=bias)
    check_labels(op, y)

    logits = z @ U.t()
    if bias is not None:
        logits = logits + bias
    per_entry = F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="none")
    if mask is not None:
        per_entry = per_entry * mask.to(logits.dtype)
    if reduction == "none":
        return per_entry.sum(dim=1)
    total = per_entry.sum()
    if reduction == "sum":
        return total
    observed = mask.to(logits.dtype).sum() if mask is not None else torch.tensor(float(B * n), dtype=logits.dtype)
    return total / observed.clamp_min(1.0)


def linear_binary_cross_entropy_with_logits(
    input: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    bias: torch.Tensor | None = None,
    *,
    pos_weight: torch.Tensor | None = None,
    label_weight: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """F.binary_cross_entropy_with_logits(F.linear(input, weight, bias), t, weight=label_weight,
    pos_weight=pos_weight, reduction=reduction) with t = target (1 - label_smoothing) + label_smoothing / 2 and
    `mask` (1 = observed) multiplying each element before the reduction: "mean" divides by B n, as PyTorch's does,
    "none" returns the (B, n) matrix. target may be a SparseLabels and mask a HashedMask (their dense matrices).
    The argument checks are the public op's (kernels/linear_bce.py); this is the definition it is tested against."""
    logits = F.linear(input, weight.to(input.dtype), bias.to(input.dtype) if bias is not None else None)
    B, n = logits.shape
    if isinstance(target, SparseLabels):
        target = target.dense(logits.dtype)
    if isinstance(mask, HashedMask):
        mask = mask.dense(n, logits.dtype)
    t = target.to(logits.dtype)
    if label_smoothing:
        t = t * (1.0 - label_smoothing) + 0.5 * label_smoothing
    cast = (lambda w: w.to(logits.dtype) if w is not None else None)
    loss = F.binary_cross_entropy_with_logits(logits, t, weight=cast(label_weight), pos_weight=cast(pos_weight),
                                              reduction="none")
    if mask is not None:
        loss = loss * mask.to(logits.dtype)
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.sum() / (B * n)  # 0 / 0 = nan for no entries, as PyTorch
