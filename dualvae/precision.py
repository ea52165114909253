"""Mixed precision by name, for training and evaluation alike."""
from __future__ import annotations

import contextlib

import torch

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, who: str, allowed=tuple(PRECISIONS)) -> None:
    if precision not in allowed:
        raise ValueError(f"{who}: precision must be one of {list(allowed)}, got {precision!r}")


def autocast(device: torch.device, precision: str):
    """torch.autocast at the precision's dtype on `device`, or nothing for fp32."""
    dtype = PRECISIONS[precision]
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
