"""Pure-PyTorch references: the meaning of every dualvae op.

Every fused backend (Triton, C++ CPU) keeps these signatures and is tested against them in float64.

Notation as in the paper: z (B, d) latent codes, U (n, d) dual matrix whose rows are the dual vectors u_i,
y (B, n) labels in {0, 1}, mask (B, n) the indicator I (1 = label observed).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

REDUCTIONS = ("sum", "mean", "none")


def _check_float(name: str, t: torch.Tensor, op: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{op}: {name} must be a floating tensor, got dtype {t.dtype}")


def _check_same_device(op: str, **tensors: torch.Tensor | None) -> None:
    present = {k: v for k, v in tensors.items() if v is not None}
    devices = {v.device for v in present.values()}
    if len(devices) > 1:
        seen = ", ".join(f"{k} on {v.device}" for k, v in present.items())
        raise ValueError(f"{op}: tensors must be on one device, got {seen}")


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

    With eps=None, eps is drawn here: from a generator seeded with `seed` when given (same seed, same z),
    else from torch's global RNG. Returns (z with mu's shape, kl of shape (B,)).
    """
    op = "reparameterize_kl"
    _check_float("mu", mu, op)
    _check_float("logvar", logvar, op)
    if logvar.shape != mu.shape:
        raise ValueError(f"{op}: logvar has shape {tuple(logvar.shape)}, expected {tuple(mu.shape)} (mu's)")
    if mu.dim() != 2:
        raise ValueError(f"{op}: mu must be 2-D (B, d), got shape {tuple(mu.shape)}")
    if eps is None:
        if seed is not None:
            if isinstance(seed, float) or not isinstance(seed, int):
                raise ValueError(f"{op}: seed must be an int, got {seed!r}")
            gen = torch.Generator(device=mu.device).manual_seed(seed)
            eps = torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype)
        else:
            eps = torch.randn_like(mu)
    else:
        _check_float("eps", eps, op)
        if eps.shape != mu.shape:
            raise ValueError(f"{op}: eps has shape {tuple(eps.shape)}, expected {tuple(mu.shape)} (mu's)")
    _check_same_device(op, mu=mu, logvar=logvar, eps=eps)
    z = mu + torch.exp(0.5 * logvar) * eps
    return z, kl_standard_normal(mu, logvar)


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
    log-sum-exp form, so logits of any size give finite values.

    reduction: "sum" over all entries; "mean" over observed entries (mask sum; 0 when nothing is observed,
    with zero gradients); "none" per row, shape (B,).
    The label step of Algorithm 1 maximizes alpha * sum_ij I_ij log p(y_ij | z_j, u_i), i.e. minimizes
    alpha * dual_bce(z, U, y, I, reduction="sum").
    """
    op = "dual_bce"
    _check_float("z", z, op)
    _check_float("U", U, op)
    if z.dim() != 2:
        raise ValueError(f"{op}: z must be 2-D (B, d), got shape {tuple(z.shape)}")
    if U.dim() != 2 or U.shape[1] != z.shape[1]:
        raise ValueError(f"{op}: U has shape {tuple(U.shape)}, expected (n, {z.shape[1]})")
    B, n = z.shape[0], U.shape[0]
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
    _check_same_device(op, z=z, U=U, y=y, mask=mask, bias=bias)
    if y.numel() and not bool(((y == 0) | (y == 1)).all()):
        raise ValueError(f"{op}: y must hold labels in {{0, 1}}, got values outside it")

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
