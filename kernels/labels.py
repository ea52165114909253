"""Packed labels (PackedLabels, pack_labels): a (B, n) label matrix and its observed-mask at 2 bits per entry,
read in place by every fused dual_bce backend."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from . import reference


class PackedLabels(NamedTuple):
    """Labels and their observed-mask at 2 bits per entry: entry j of row b lives in words[b, j // 16] at bits
    2*(j % 16) (the label) and 2*(j % 16) + 1 (1 = observed). A (B, n) label matrix costs B * ceil(n/16) * 4
    bytes: n/4 bytes a row instead of 8n for float32 labels and mask."""

    words: Tensor  # (B, ceil(n / 16)) int32
    n: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.words.shape[0], self.n)

    @property
    def device(self) -> torch.device:
        return self.words.device

    def to(self, device) -> "PackedLabels":
        return PackedLabels(self.words.to(device), self.n)

    def unpack(self, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """(y, mask) as (B, n) tensors of `dtype`."""
        B = self.words.shape[0]
        shifts = torch.arange(0, 32, 2, device=self.words.device)
        codes = (self.words.to(torch.int64).unsqueeze(-1) >> shifts) & 3  # (B, words, 16)
        codes = codes.reshape(B, -1)[:, : self.n]
        return (codes & 1).to(dtype), (codes >> 1).to(dtype)


def describe(t) -> str:
    """A tensor's shape, or the type of what was passed instead, for error messages."""
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def pack_labels(y: Tensor, mask: Tensor | None = None) -> PackedLabels:
    """Pack (B, n) labels in {0, 1} and an optional observed-mask (nonzero = observed) into 2 bits an entry."""
    op = "pack_labels"
    if not isinstance(y, Tensor) or y.dim() != 2:
        raise ValueError(f"{op}: y must be a 2-D (B, n) tensor, got {describe(y)}")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.shape != y.shape:
            raise ValueError(f"{op}: mask has shape {describe(mask)}, expected {tuple(y.shape)} (y's)")
        reference._check_same_device(op, y=y, mask=mask)
    reference.check_labels(op, y)
    B, n = y.shape
    codes = y.to(torch.int64)
    codes = codes + 2 * ((mask != 0).to(torch.int64) if mask is not None else torch.ones_like(codes))
    width = -(-n // 16) * 16
    codes = torch.nn.functional.pad(codes, (0, width - n)).reshape(B, -1, 16)
    shifts = torch.arange(0, 32, 2, device=y.device)
    words = (codes << shifts).sum(-1)  # < 2**32
    words = torch.where(words >= 2**31, words - 2**32, words).to(torch.int32)  # same bits as uint32
    return PackedLabels(words.contiguous(), n)
