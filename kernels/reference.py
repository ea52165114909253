"""Pure-PyTorch references: the meaning of every dualvae op.

Every fused backend (Triton, C++ CPU) keeps these signatures and is tested against them in float64.

Notation as in the paper: z (B, d) latent codes, U (n, d) dual matrix whose rows are the dual vectors u_i,
y (B, n) labels in {0, 1}, mask (B, n) the indicator I (1 = label observed).
"""
from __future__ import annotations

import math

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


def check_labels(op: str, y: torch.Tensor) -> None:
    """ValueError naming `y` unless every entry is 0 or 1."""
    if y.is_complex():
        raise ValueError(f"{op}: y must be real labels in {{0, 1}}, got dtype {y.dtype}")
    if y.numel() and not bool(((y == 0) | (y == 1)).all()):
        raise ValueError(f"{op}: y must hold labels in {{0, 1}}, got values outside it")


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
    _check_float("mu", mu, op)
    _check_float("logvar", logvar, op)
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
        _check_float("eps", eps, op)
        if eps.shape != mu.shape:
            raise ValueError(f"{op}: eps has shape {tuple(eps.shape)}, expected {tuple(mu.shape)} (mu's)")
    _check_same_device(op, mu=mu, logvar=logvar, eps=eps)
    z = mu + torch.exp(0.5 * logvar) * eps
    return z, kl_standard_normal(mu, logvar)


# -- counter-based normal numbers --------------------------------------------------------------------
# Philox4x32-10 (Salmon et al., SC'11) written in int64 tensor arithmetic, bit for bit the generator behind
# triton.language.randn: key = the 64-bit seed split in two 32-bit halves, counter = (offset_lo, offset_hi, 0, 0),
# then Box-Muller on the first two outputs. Element k of a (B, d) draw uses counter offset + k (row-major), so
# a kernel can regenerate any element from (seed, offset, k) instead of storing eps.
_M32 = 0xFFFFFFFF
_PHILOX_KEY_A, _PHILOX_KEY_B = 0x9E3779B9, 0xBB67AE85
_PHILOX_ROUND_A, _PHILOX_ROUND_B = 0xD2511F53, 0xCD9E8D57
SEED_MAX = 2**63 - 1


def check_seed(seed, op: str) -> int:
    """The seed as an int in [0, 2**63): ValueError naming `seed` for non-integers, NaN/inf, out of range."""
    if isinstance(seed, torch.Tensor) and seed.numel() == 1 and not seed.is_floating_point():
        seed = int(seed.item())
    if isinstance(seed, bool) or not isinstance(seed, int):
        if isinstance(seed, float) and not math.isfinite(seed):
            raise ValueError(f"{op}: seed must be a finite integer, got {seed!r}")
        if isinstance(seed, float) and seed.is_integer():
            seed = int(seed)
        else:
            raise ValueError(f"{op}: seed must be an int, got {seed!r}")
    if not 0 <= seed <= SEED_MAX:
        raise ValueError(f"{op}: seed must lie in [0, 2**63), got {seed}")
    return seed


def _umul32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product of the constant a and uint32 values b (int64 tensor),
    without overflowing int64: b is split in 16-bit halves."""
    b_lo, b_hi = b & 0xFFFF, b >> 16
    p_lo, p_hi = a * b_lo, a * b_hi  # each < 2**48
    mid = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2**49
    return (p_hi >> 16) + (mid >> 32), mid & _M32


def philox_randint4x(seed: int, counters: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Philox4x32-10 of counters (int64 tensor, used as (lo, hi) 32-bit words) under the 64-bit key `seed`.
    Returns the four uint32 outputs as int64 tensors."""
    c0, c1 = counters & _M32, (counters >> 32) & _M32
    c2 = torch.zeros_like(c0)
    c3 = torch.zeros_like(c0)
    k0, k1 = seed & _M32, (seed >> 32) & _M32
    for _ in range(10):
        hi_b, lo_b = _umul32(_PHILOX_ROUND_B, c2)
        hi_a, lo_a = _umul32(_PHILOX_ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _PHILOX_KEY_A) & _M32, (k1 + _PHILOX_KEY_B) & _M32
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
    _check_float("z", z, op)
    _check_float("U", U, op)
    if z.dim() != 2:
        raise ValueError(f"{op}: z must be 2-D (B, d), got shape {tuple(z.shape)}")
    if U.dim() != 2 or U.shape[1] != z.shape[1]:
        raise ValueError(f"{op}: U has shape {tuple(U.shape)}, expected (n, {z.shape[1]})")
    B, n = z.shape[0], U.shape[0]
    from .labels import HashedMask, SparseLabels  # labels.py imports this module

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
    _check_same_device(op, z=z, U=U, y=y, mask=mask, bias=bias)
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


# -- the missing-label mask as a function ------------------------------------------------------------
# Entry (r, j) of the indicator I (r a global image index, j a global label index) is observed unless
# h(r, j) < threshold, a 32-bit counter-based hash compared with threshold = round(missing_ratio * 2**32):
#     key      = fmix32(seed_lo ^ fmix32(seed_hi ^ 0x9E3779B9))            (once per seed)
#     row_key  = fmix32(key + r * 0x9E3779B1)                             (once per row)
#     h(r, j)  = fmix32(row_key ^ (j * 0x85EBCA77))                       (per entry: 3 multiplies)
# in uint32 arithmetic (mod 2**32), fmix32 MurmurHash3's finalizer. Every backend (Triton, C++) evaluates the
# same integers, so the mask is one definition, bit for bit, wherever it is formed.
_ROW_MUL, _COL_MUL, _SEED_SALT = 0x9E3779B1, 0x85EBCA77, 0x9E3779B9
_FMIX_A, _FMIX_B = 0x85EBCA6B, 0xC2B2AE35
MASK_INDEX_MAX = 2**31 - 1  # rows and (offset) label indices of a hashed mask fit int32


def _mul32(a: int, x):
    """(a * x) mod 2**32 for uint32 x (an int or an int64 tensor), without int64 overflow."""
    if isinstance(x, int):
        return (a * x) & _M32
    return _umul32(a, x)[1]


def fmix32(x):
    """MurmurHash3's 32-bit finalizer of uint32 x (an int or an int64 tensor holding uint32 values)."""
    x = x ^ (x >> 16)
    x = _mul32(_FMIX_A, x)
    x = x ^ (x >> 13)
    x = _mul32(_FMIX_B, x)
    return x ^ (x >> 16)


def mask_key(seed: int) -> int:
    """The uint32 key of a hashed mask's seed (an int in [0, 2**63))."""
    seed = check_seed(seed, "mask_key")
    return fmix32((seed & _M32) ^ fmix32((seed >> 32) ^ _SEED_SALT))


def mask_threshold(missing_ratio: float) -> int:
    """round(missing_ratio * 2**32), in [0, 2**32]: an entry is missing when its hash is below it."""
    return min(int(round(float(missing_ratio) * 2**32)), 2**32)


def mask_row_keys(key: int, rows: torch.Tensor) -> torch.Tensor:
    """fmix32(key + r * 0x9E3779B1) per row index r (int64 tensor)."""
    return fmix32((_mul32(_ROW_MUL, rows.to(torch.int64) & _M32) + key) & _M32)


def hashed_observed(key: int, threshold: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The observed indicator (bool) of entries (rows[:, None], cols[None, :]): h(r, j) >= threshold."""
    row_keys = mask_row_keys(key, rows)
    col_terms = _mul32(_COL_MUL, cols.to(torch.int64) & _M32)
    return fmix32(row_keys[:, None] ^ col_terms[None, :]) >= threshold
