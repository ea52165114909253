"""What a loader hands over: a `Batch` (images, labels, mask, rows), and the `Loader` base every backend shares
(the split it loaded, its labels, the batches of an epoch).

A batch carries everything its consumer needs, its rows included; nothing reads state back from the loader. The
labels and mask of any rows of the split (those of other ranks' batches, under label parallelism) come from the
loader's `label_source` (`SplitLabels.labels_for(rows)`), a value that holds the split's labels and nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from dualvae.kernels import HashedMask, SparseLabels

from .order import check_missing_ratio, shard_batches
from .sources import attribute_identity_labels


class Batch(NamedTuple):
    """One batch on the loader's device: images float32 [B, 3, S, S] in [-1, 1]; labels float32 [B, a] in {0, 1}
    or SparseLabels (B, a + P); mask the HashedMask over the batch's split positions; rows int64 (B,) on the CPU,
    the batch's rows into the loaded split (a corrupt file left out is not among them)."""

    images: torch.Tensor
    labels: torch.Tensor | SparseLabels
    mask: HashedMask
    rows: torch.Tensor


@dataclass
class LoadedSplit:
    """One split as a backend loaded it: file paths (None for a cache), binary labels, each row's position in the
    source split."""

    paths: list[str] | None
    labels: torch.Tensor  # float32 (N, a), 0/1: the attributes
    positions: np.ndarray  # int64 (N,), position of each row in the source list's split
    split_size: int  # size of the split in the source list (the mask's rows)
    attr_names: list[str]  # the label names: the attributes, then the identity columns' names
    filenames: list[str]
    identity_col: np.ndarray | None = None  # int64 (N,): each row's identity column, -1 for none


class SplitLabels:
    """The labels and missing-label mask of a loaded split's rows, on `device`: the one way to ask for labels
    by rows (the loader's batches and label parallelism's global batch alike)."""

    def __init__(self, split: LoadedSplit, mask: HashedMask, device: torch.device):
        self.device = device
        self.num_labels = len(split.attr_names)
        self._mask = mask.to(device)
        self._labels = split.labels.to(device)
        self._identity = None if split.identity_col is None else torch.from_numpy(split.identity_col).to(device)

    def _rows(self, rows) -> torch.Tensor:
        rows = torch.as_tensor(rows)
        if rows.dim() != 1 or rows.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"rows must be a 1-D int64 tensor of rows into this split, got {rows.dtype} "
                             f"{tuple(rows.shape)}")
        return rows.to(self.device, torch.int64)

    def labels_for(self, rows) -> tuple[torch.Tensor | SparseLabels, HashedMask]:
        """(labels, mask) of `rows` (int64, rows into the loaded split): float32 (B, a) attributes or SparseLabels
        (B, a + P) with the identity columns, and the HashedMask whose rows are their split positions."""
        rows = self._rows(rows)
        attributes = self._labels.index_select(0, rows)
        labels = attributes if self._identity is None else attribute_identity_labels(
            attributes, self._identity.index_select(0, rows), self.num_labels)
        return labels, self._mask.select(rows)


class Loader:
    """Iterable of Batch; see make_loader. Iterating runs the current epoch (`set_epoch`, or `epoch(e)` for one
    epoch without changing it); each full pass advances it by one."""

    def __init__(self, split: LoadedSplit, *, batch_size: int, device, shuffle: bool, seed: int, shard_id: int,
                 num_shards: int, missing_ratio: float, drop_last: bool, skip_corrupt: bool):
        self.split = split
        self.batch_size, self.device = batch_size, torch.device(device)
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.shard_id, self.num_shards = shard_id, num_shards
        self.skip_corrupt = skip_corrupt
        self.current_epoch = 0
        self.attr_names, self.filenames = split.attr_names, split.filenames
        self.missing_ratio = check_missing_ratio(missing_ratio)
        self.num_attributes = split.labels.shape[1]
        self.num_labels = len(split.attr_names)
        positions = torch.from_numpy(np.ascontiguousarray(split.positions, dtype=np.int64))
        # The mask of every loaded row (rows: their split positions), the one the batches' masks are cut from.
        self.label_mask = HashedMask(seed, self.missing_ratio, positions)
        self.label_source = SplitLabels(split, self.label_mask, self.device)

    @property
    def num_images(self) -> int:
        return len(self.split.labels)

    @property
    def skipped(self) -> list[str]:
        return []

    def batch_rows(self, epoch: int) -> list[np.ndarray]:
        """The rows of each batch of this shard in `epoch` (before any corrupt file is left out)."""
        return shard_batches(self.num_images, self.batch_size, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                             shard_id=self.shard_id, num_shards=self.num_shards, drop_last=self.drop_last)

    def __len__(self) -> int:
        mine = len(range(self.shard_id, self.num_images, self.num_shards))
        return mine // self.batch_size if self.drop_last else -(-mine // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.current_epoch = int(epoch)

    def __iter__(self):
        epoch = self.current_epoch
        yield from self.epoch(epoch)
        self.current_epoch = epoch + 1

    def epoch(self, epoch: int, start: int = 0, stop: int | None = None):
        """The Batches of `epoch`, from batch `start` (a resumed run skips what it consumed) up to `stop`."""
        for rows, images in self._batches(self.batch_rows(epoch)[start:stop]):
            rows = torch.from_numpy(np.asarray(rows, dtype=np.int64))
            labels, mask = self.label_source.labels_for(rows.to(self.device))
            yield Batch(images, labels, mask, rows)

    def _batches(self, batches):  # -> (rows, images float32 on device)
        raise NotImplementedError

    def close(self) -> None:
        pass
