"""A whole split in memory, read through `make_loader` like training reads it: `read_split`, and `read_images`
for a model's input."""
from __future__ import annotations

import numpy as np
import torch

from .celeba import CelebASplit
from .loader import make_loader

# Images per batch while reading a split: the batch only bounds what one decode step holds.
READ_BATCH = 256


def read_split(source: str, split: str | int = "train", *, image_size: int = 64, limit: int | None = None,
               backend: str | None = None, threads: int | None = None, device="cpu", skip_corrupt: bool = False,
               verify_cache: bool = True, progress: bool = False) -> CelebASplit:
    """One split of `source` (a CelebA root, or a cache file written by `prepare`) in memory, in the source
    list's order: images uint8 (N, 3, S, S) and labels int8 -1/+1 on `device`, with their file names and the
    attribute names.

    The images are those make_loader yields (shuffle=False, drop_last=False) for the same source, backend
    (None: "hdf5" for a file, "dali" for a folder) and image size, stored as uint8: ((x + 1) * 127.5).round()
    gives back exactly the uint8 pixels the loader normalized. limit: the first `limit` images of the split.
    threads: DALI threads / PIL worker processes (0: decode in this process). skip_corrupt leaves corrupt images
    (and their rows) out instead of raising."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    loader = make_loader(source, split, image_size=image_size, batch_size=READ_BATCH, device=device,
                         backend=backend, shuffle=False, drop_last=False, skip_corrupt=skip_corrupt,
                         threads=threads, limit=limit, verify_cache=verify_cache)
    images, labels, rows = [], [], []
    bar = None
    if progress:
        from tqdm import tqdm  # in the `app` extra, not the `data` one: imported only when a bar is asked for

        bar = tqdm(total=loader.num_images, unit="img", desc=f"{split} {image_size}px")
    try:
        for batch in loader:
            images.append(batch.images.add(1.0).mul_(127.5).round_().to(torch.uint8))
            labels.append(batch.labels.mul(2).sub_(1).to(torch.int8))
            rows.append(batch.rows)
            if bar is not None:
                bar.update(len(batch.images))
    finally:
        loader.close()
        if bar is not None:
            bar.close()
    device = torch.device(device)
    if not images:
        n = len(loader.attr_names)
        return CelebASplit(torch.empty((0, 3, image_size, image_size), dtype=torch.uint8, device=device),
                           torch.empty((0, n), dtype=torch.int8, device=device), [], list(loader.attr_names))
    kept = torch.cat(rows).tolist()
    return CelebASplit(torch.cat(images), torch.cat(labels), [loader.filenames[r] for r in kept],
                       list(loader.attr_names))


def read_images(source: str, split: str, num: int, image_size: int) -> tuple[torch.Tensor, CelebASplit]:
    """The first `num` images of a split as a model takes them, float32 in [-1, 1], and the split itself (labels,
    file names, attribute names); an empty split is an error naming it."""
    from .celeba import to_unit_range

    s = read_split(source, split, image_size=image_size, limit=num)
    if len(s.images) == 0:
        raise ValueError(f"the {split} split of {source} has no images")
    return to_unit_range(s.images), s
