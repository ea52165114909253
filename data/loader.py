"""Batches at speed: `make_loader` over a CelebA root (DALI or PIL) or an HDF5 cache (cache.py's `prepare`).

Every backend applies the preprocessing of data/celeba.py (center square crop, which for CelebA's 178x218 is the
face square rows 20:198; bilinear antialiased resize; [-1, 1]) and yields a Batch (batch.py) on `device`: images
float32 [B, 3, S, S] in [-1, 1]; labels float32 [B, 40] in {0, 1} (labels "attributes"), or SparseLabels
(B, 40 + P) with labels "attributes,identity" (sources.py); mask a HashedMask over the batch's split positions;
rows, the batch's rows into the loaded split.

* Order and mask (order.py): epoch e visits the split in an order that is a pure function of (seed, e); shard k
  of K takes every K-th position of it; the mask's entry (r, j) is a hash of (seed, r, j), with r the image's
  position in the source list's split (corrupt files included), the same on every shard, backend and resume.
* Backends: "dali" decodes with NVIDIA DALI (dali.py; GPU `mixed` decoder on device="cuda", its CPU mode with
  `threads` threads otherwise); "pil" is a torch DataLoader with `threads` worker processes decoding with PIL
  (pil.py, the reference); "hdf5" reads a cache written by `prepare`, holding the split in memory (in GPU memory
  when it fits) so that a batch is an index gather (cache.py).
* Bad input: a corrupt or truncated JPEG raises CelebAFormatError naming the file; with skip_corrupt it is
  logged, counted (`loader.skipped`) and left out of its batch, which is then shorter; labels, mask and rows
  stay aligned. A missing image or a file missing from the partition list raises, naming the file.
"""
from __future__ import annotations

import os

import numpy as np
import torch

from .batch import LoadedSplit, Loader
from .cache import Hdf5Loader, is_cache_file, load_cache_split
from .celeba import ATTR_FILE, IMAGE_DIR, check_images_exist, split_id
from .dali import DaliLoader
from .order import check_missing_ratio
from .pil import PilLoader
from .sources import (check_label_set, identity_column_of, identity_columns, identity_label_names,
                      read_source_identities, read_source_list)

BACKENDS = ("dali", "hdf5", "pil")


def make_loader(source: str, split="train", *, image_size: int = 64, batch_size: int, device="cuda",
                backend: str | None = "dali", shuffle: bool = True, seed: int = 0, shard_id: int = 0,
                num_shards: int = 1, missing_ratio: float = 0.0, drop_last: bool = True,
                skip_corrupt: bool = False, threads: int | None = None, limit: int | None = None,
                verify_cache: bool = True, labels: str = "attributes") -> Loader:
    """Batches of one split of `source` (a CelebA root, or a cache file written by `prepare`): Batch(images
    float32 [B, 3, S, S] in [-1, 1], labels, mask HashedMask over the batch's split positions, rows) on
    `device`. labels "attributes": float32 [B, 40] in {0, 1}; "attributes,identity": SparseLabels (B, 40 + P),
    the attributes then one column per identity of the source's training split (needs identity_CelebA.txt).

    backend: "dali" | "pil" for a CelebA root, "hdf5" for a cache (None: "hdf5" for a file, "dali" for a folder).
    threads: DALI threads / DataLoader workers (default: all cores). limit: the first `limit` images of the split.
    The loader yields Batch(images, labels, mask, rows) and has len() (batches per epoch of this shard),
    set_epoch(e), epoch(e), label_mask (the HashedMask of every loaded row), label_source (labels_for(rows)),
    batch_rows(e), attr_names (the label names), num_labels, filenames and skipped; see the module docstring.
    """
    label_set = check_label_set(labels)
    identities = label_set == "attributes,identity"
    missing_ratio = check_missing_ratio(missing_ratio)
    if backend is None:
        backend = "hdf5" if is_cache_file(source) else "dali"
    if backend not in BACKENDS:
        raise ValueError(f"unknown data backend {backend!r}; expected one of {BACKENDS}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not (isinstance(num_shards, (int, np.integer)) and num_shards >= 1 and 0 <= shard_id < num_shards):
        raise ValueError(f"need 0 <= shard_id < num_shards, got shard_id={shard_id!r}, num_shards={num_shards!r}")
    if limit is not None and (not isinstance(limit, (int, np.integer)) or limit < 0):
        raise ValueError(f"limit must be None or a non-negative integer, got {limit!r}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' but no CUDA device is available; use device='cpu'")
    kw = dict(batch_size=int(batch_size), device=device, shuffle=shuffle, seed=seed, shard_id=int(shard_id),
              num_shards=int(num_shards), missing_ratio=missing_ratio, drop_last=drop_last,
              skip_corrupt=skip_corrupt)
    if backend == "hdf5":
        if not is_cache_file(source):
            raise ValueError(f"backend 'hdf5' reads a cache file, and {source} is not one: write it with "
                             f"`dualvae prepare --celeba {source} --out CACHE.h5`")
        split_data, images = load_cache_split(source, split, image_size, limit, verify_cache, identities)
        return Hdf5Loader(split_data, images, **kw)
    if is_cache_file(source):
        raise ValueError(f"{source} is a file (a cache?); backend {backend!r} reads a CelebA root folder "
                         f"(use backend 'hdf5' for a cache)")
    filenames, attr_names, labels, parts = read_source_list(source)
    sid = split_id(split)
    rows = np.flatnonzero(parts == sid)
    split_size = len(rows)
    if limit is not None:
        rows = rows[:limit]
    check_images_exist(source, os.path.join(source, ATTR_FILE), filenames, rows)
    image_dir = os.path.join(source, IMAGE_DIR)
    names = [filenames[r] for r in rows]
    label_names, identity_col = list(attr_names), None
    if identities:
        ids = read_source_identities(source, filenames)
        columns = identity_columns(ids, parts)
        label_names += identity_label_names(columns)
        identity_col = identity_column_of(ids[rows], columns)
    split_data = LoadedSplit([os.path.join(image_dir, nm) for nm in names],
                        (labels[torch.from_numpy(rows)] > 0).to(torch.float32), np.arange(len(rows), dtype=np.int64),
                        split_size if limit is None else len(rows), label_names, names, identity_col)
    cls = DaliLoader if backend == "dali" else PilLoader
    return cls(split_data, threads=threads, image_size=image_size, **kw)
