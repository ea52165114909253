"""SHIM(loader): the training loader's interface until dualvae.data.make_loader takes `labels=` and yields
HashedMask masks (the data side of this change). Remove this file, and call make_loader directly in loop.py,
once make_loader has a `labels` parameter.

What training relies on (the new loader's interface): make_loader(..., labels="attributes" |
"attributes,identity") yields (images, labels, mask), labels a float32 (b, n) tensor or a SparseLabels, mask a
kernels.HashedMask over the batch's global image indices; loader.label_mask (the HashedMask of the whole split),
loader.labels_of(idx) / loader.mask_of(idx) (rows idx into the split: any rows, not only this shard's),
loader.attr_names, loader.last_indices, loader.num_images, loader.epoch(e, start, stop), loader.close().
"""
from __future__ import annotations

import inspect

import numpy as np
import torch

from dualvae.data import make_loader
from dualvae.kernels import HashedMask


def takes_labels() -> bool:
    """Whether make_loader is the new one (labels=, HashedMask masks)."""
    return "labels" in inspect.signature(make_loader).parameters


class HashedMaskLoader:
    """An older Loader (dense float masks drawn by torch.rand) seen through the new interface: the mask becomes
    the HashedMask of the batch's split positions, and labels_of / mask_of read any rows."""

    def __init__(self, inner, seed: int, missing_ratio: float):
        self._inner = inner
        positions = torch.from_numpy(np.asarray(inner.split.positions, dtype=np.int64))
        self.label_mask = HashedMask(seed, missing_ratio, positions)
        self._device_mask = self.label_mask.to(inner.device)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def labels_of(self, idx: torch.Tensor) -> torch.Tensor:
        return self._inner._labels.index_select(0, idx.to(self._inner.device))

    def mask_of(self, idx: torch.Tensor) -> HashedMask:
        return self._device_mask.select(idx.to(self._inner.device))

    def epoch(self, epoch: int, start: int = 0, stop: int | None = None):
        for images, labels, _ in self._inner.epoch(epoch, start=start, stop=stop):
            yield images, labels, self.mask_of(self._inner.last_indices)


def open_loader(source: str, split: str, *, labels: str, seed: int, missing_ratio: float, **kw):
    if takes_labels():
        return make_loader(source, split, labels=labels, seed=seed, missing_ratio=missing_ratio, **kw)
    if labels != "attributes":
        raise ValueError(f"train: labels {labels!r} need a loader that reads them (this dualvae.data reads the "
                         f"attributes only)")
    inner = make_loader(source, split, seed=seed, missing_ratio=missing_ratio, **kw)
    return HashedMaskLoader(inner, seed, missing_ratio)
