"""The argument checks every layer of dualvae.kernels shares (the references, the label formats, the ops): each
raises ValueError naming the op, the argument and the value seen."""
from __future__ import annotations

import math

import torch
from torch import Tensor

REDUCTIONS = ("sum", "mean", "none")
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


def check_float(name: str, t: torch.Tensor, op: str) -> None:
    """ValueError naming `name` unless t is a floating tensor."""
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise ValueError(f"{op}: {name} must be a floating tensor, got dtype {t.dtype}")


def check_same_device(op: str, **tensors: torch.Tensor | None) -> None:
    """ValueError naming each tensor's device unless the given ones (None skipped) share one."""
    present = {k: v for k, v in tensors.items() if v is not None}
    first = next(iter(present.values()), None)
    if first is None or all(v.device == first.device for v in present.values()):  # the common case, cheaply
        return
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


def describe(t) -> str:
    """A tensor's shape, or the type of what was passed instead, for error messages."""
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def check_index_tensor(op: str, name: str, t, dtypes) -> None:
    if not isinstance(t, Tensor) or t.dim() != 1 or t.dtype not in dtypes:
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else type(t).__name__
        raise ValueError(f"{op}: {name} must be a 1-D tensor of {' or '.join(map(str, dtypes))}, got {got}")
