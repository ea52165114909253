"""The missing-label mask as a function (HashedMask, labels.py): the counter-based hash every backend evaluates
bit for bit, written in int64 tensor arithmetic, and the 32-bit multiply it shares with the references' Philox."""
from __future__ import annotations

import torch

from ._checks import check_seed

M32 = 0xFFFFFFFF


def umul32(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo) 32-bit halves of the 64-bit product of the constant a and uint32 values b (int64 tensor),
    without overflowing int64: b is split in 16-bit halves."""
    b_lo, b_hi = b & 0xFFFF, b >> 16
    p_lo, p_hi = a * b_lo, a * b_hi  # each < 2**48
    mid = p_lo + ((p_hi & 0xFFFF) << 16)  # < 2**49
    return (p_hi >> 16) + (mid >> 32), mid & M32


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
        return (a * x) & M32
    return umul32(a, x)[1]


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
    return fmix32((seed & M32) ^ fmix32((seed >> 32) ^ _SEED_SALT))


def mask_threshold(missing_ratio: float) -> int:
    """round(missing_ratio * 2**32), in [0, 2**32]: an entry is missing when its hash is below it."""
    return min(int(round(float(missing_ratio) * 2**32)), 2**32)


def mask_row_keys(key: int, rows: torch.Tensor) -> torch.Tensor:
    """fmix32(key + r * 0x9E3779B1) per row index r (int64 tensor)."""
    return fmix32((_mul32(_ROW_MUL, rows.to(torch.int64) & M32) + key) & M32)


def hashed_observed(key: int, threshold: int, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """The observed indicator (bool) of entries (rows[:, None], cols[None, :]): h(r, j) >= threshold."""
    row_keys = mask_row_keys(key, rows)
    col_terms = _mul32(_COL_MUL, cols.to(torch.int64) & M32)
    return fmix32(row_keys[:, None] ^ col_terms[None, :]) >= threshold
