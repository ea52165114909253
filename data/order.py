"""The order a loader visits a split in, its shards and batches, and the missing-label mask: pure functions of
(seed, epoch), the same on every backend, shard and resume.

Epoch e visits the split in `epoch_order(N, seed, e)`; shard k of K takes positions k, k + K, k + 2K, ... of that
order, so the shards of an epoch are disjoint and together cover the split once; each shard cuts its share into
batches (the last, short one dropped with drop_last). The mask is `HashedMask(seed, missing_ratio, rows)` with
rows the split positions, so entry (r, j) equals `draw_label_mask((N, n), missing_ratio, seed)[r, j]`.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from dualvae.kernels import HashedMask


def check_missing_ratio(missing_ratio) -> float:
    real = isinstance(missing_ratio, numbers.Real) and not isinstance(missing_ratio, bool)
    ratio = float(missing_ratio) if real else None
    if ratio is None or not 0.0 <= ratio < 1.0:
        raise ValueError(f"missing_ratio must be a number in [0, 1), got {missing_ratio!r}")
    return ratio


def draw_label_mask(shape: tuple[int, int], missing_ratio: float, seed: int) -> torch.Tensor:
    """The indicator I of Algorithm 1 (bool (N, n), True = observed) over split positions 0 .. N - 1, each entry
    missing with probability missing_ratio: `HashedMask(seed, missing_ratio, arange(N)).dense(n)`, the mask the
    loaders' batches carry and the kernels evaluate (one definition, dualvae.kernels.reference)."""
    N, n = (int(v) for v in shape)
    return HashedMask(seed, check_missing_ratio(missing_ratio), torch.arange(N, dtype=torch.int64)).dense(n)


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """Split positions in the order epoch `epoch` visits them: a pure function of (n, seed, epoch)."""
    if not shuffle:
        return np.arange(n, dtype=np.int64)
    return np.random.default_rng([int(seed), int(epoch), 0x5EED]).permutation(n).astype(np.int64)


def shard_batches(n: int, batch_size: int, *, seed: int, epoch: int, shuffle: bool = True, shard_id: int = 0,
                  num_shards: int = 1, drop_last: bool = True) -> list[np.ndarray]:
    """The batches (arrays of split positions) of one shard in one epoch."""
    mine = epoch_order(n, seed, epoch, shuffle)[shard_id::num_shards]
    stop = len(mine) - len(mine) % batch_size if drop_last else len(mine)
    return [mine[i:i + batch_size] for i in range(0, stop, batch_size)]

