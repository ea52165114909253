"""The HDF5 cache: `prepare` decodes a CelebA root once (DALI) into uint8 images with their labels, and
`Hdf5Loader` (make_loader's backend "hdf5") holds a split of it in memory, so that a batch is an index gather.
A cache records its source's fingerprint; a cache whose source has changed is refused (StaleCacheError).
"""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import torch

from .atomic import atomic_output
from .batch import LoadedSplit, Loader
from .celeba import ATTR_FILE, IDENTITY_FILE, IMAGE_DIR, check_images_exist, read_celeba_identities, split_id
from .dali import DaliDecoder, MissingBackendError, decode_paths
from .sources import (identity_column_of, identity_columns, identity_label_names, read_source_list,
                      source_fingerprint)

log = logging.getLogger("dualvae.data")

CACHE_FORMAT = 1
# Rows per HDF5 chunk: 16 images of 3x64x64 = 192 KiB. Small enough that a random batch reads little it does
# not need, large enough that reading a whole split is a few thousand chunk reads.
CACHE_CHUNK_ROWS = 16


class StaleCacheError(ValueError):
    """The cache's fingerprint no longer matches its source CelebA root."""



def _import_h5py():
    try:
        import h5py
    except ImportError as e:
        raise MissingBackendError(f"the HDF5 cache needs the package h5py ({e}): pip install h5py") from None
    return h5py


def is_cache_file(source: str) -> bool:
    return os.path.isfile(source)


def read_cache_info(path: str) -> dict:
    """The cache's attributes: format, image_size, source, fingerprint, attr_names, split_sizes, skipped."""
    h5py = _import_h5py()
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path} is not a readable HDF5 cache written by `dualvae prepare` ({e})") from None
    with f:
        if f.attrs.get("dualvae_cache_format") is None:
            raise ValueError(f"{path} is not a cache written by `dualvae prepare` (no dualvae_cache_format)")
        return {k: (json.loads(v) if k in ("attr_names", "split_sizes", "skipped") else
                    (v.item() if hasattr(v, "item") else v)) for k, v in f.attrs.items()}


def check_cache_fresh(path: str, info: dict | None = None) -> None:
    """Refuse a cache whose source root still exists but has changed since `prepare` (StaleCacheError)."""
    info = info or read_cache_info(path)
    src = str(info["source"])
    if not os.path.isdir(src):
        log.warning("cache %s: its source %s is not here; its freshness cannot be checked", path, src)
        return
    try:
        now = source_fingerprint(src)
    except (FileNotFoundError, ValueError) as e:
        now = f"unreadable ({e})"
    if now != info["fingerprint"]:
        raise StaleCacheError(
            f"stale cache {path}: its source {src} has changed since it was prepared (the list of files, their "
            f"sizes or times, or the attribute/partition files differ). Re-run `dualvae prepare --celeba {src} "
            f"--out {path} --image-size {info['image_size']}`")


def load_cache_split(path: str, split, image_size: int, limit: int | None, verify: bool,
                      identities: bool = False):
    h5py = _import_h5py()
    info = read_cache_info(path)
    if int(info["image_size"]) != image_size:
        raise ValueError(f"cache {path} holds {info['image_size']}x{info['image_size']} images, not "
                         f"{image_size}x{image_size}: prepare one with --image-size {image_size}")
    if verify:
        check_cache_fresh(path, info)
    sid = split_id(split)
    with h5py.File(path, "r") as f:
        rows = np.flatnonzero(f["partition"][:] == sid)
        if limit is not None:
            rows = rows[:limit]
        sel = slice(int(rows[0]), int(rows[-1]) + 1) if len(rows) else slice(0, 0)
        contiguous = len(rows) == 0 or rows[-1] - rows[0] + 1 == len(rows)
        images = f["images"][sel] if contiguous else f["images"][rows]
        labels = f["labels"][sel] if contiguous else f["labels"][rows]
        positions = f["split_position"][sel] if contiguous else f["split_position"][rows]
        filenames = [n.decode() if isinstance(n, bytes) else n for n in f["filenames"][sel if contiguous else rows]]
        names, identity_col = list(info["attr_names"]), None
        if identities:
            if "identity" not in f:
                raise ValueError(f"cache {path} holds no identities: its source had no {IDENTITY_FILE} when it was "
                                 f"prepared; re-run `dualvae prepare --celeba {info['source']} --out {path} --force` "
                                 f"on a root that has one, or use labels 'attributes'")
            columns = f["identity_columns"][:].astype(np.int64)
            ids = f["identity"][sel] if contiguous else f["identity"][rows]
            names += identity_label_names(columns)
            identity_col = identity_column_of(ids, columns)
    split_size = int(info["split_sizes"][sid]) if limit is None else (int(positions.max()) + 1 if len(positions) else 0)
    return LoadedSplit(None, torch.from_numpy((labels > 0).astype(np.float32)), positions.astype(np.int64), split_size,
                  names, filenames, identity_col), torch.from_numpy(np.ascontiguousarray(images))


def prepare(celeba: str, out: str, image_size: int = 64, workers: int | None = None, *, skip_corrupt: bool = False,
            batch_size: int = 256, device: str | None = None, force: bool = False, progress: bool = True) -> dict:
    """Decode every image of a CelebA root once with DALI and write the cache `out` (HDF5): images uint8
    (N, 3, S, S) in chunks of CACHE_CHUNK_ROWS rows, labels int8 -1/+1, partition, split positions, file names,
    the identities and identity columns where the root has identity_CelebA.txt, and attributes: attribute names,
    image size, the source path and its fingerprint, split sizes, skipped files.

    The file appears only when complete (written to a temporary file beside it, then renamed); an interrupted
    or failed prepare leaves `out` as it was and no temporary file. A cache that is already up to date (same
    fingerprint and size) is kept unless force. Returns a summary dict."""
    from tqdm import tqdm

    h5py = _import_h5py()
    out = os.path.abspath(out)
    filenames, attr_names, labels, parts = read_source_list(celeba)
    check_images_exist(celeba, os.path.join(celeba, ATTR_FILE), filenames)
    identities = (read_celeba_identities(celeba, filenames) if os.path.exists(os.path.join(celeba, IDENTITY_FILE))
                  else None)
    fingerprint = source_fingerprint(celeba, filenames)
    if os.path.exists(out) and not force:
        try:
            info = read_cache_info(out)
        except ValueError:
            info = {}
        if info.get("fingerprint") == fingerprint and int(info.get("image_size", -1)) == image_size:
            return {"out": out, "images": None, "skipped": info.get("skipped", []), "up_to_date": True}
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    decoder = DaliDecoder(image_size, batch_size, device=device, threads=workers, normalize=False,
                          skip_corrupt=skip_corrupt)
    image_dir = os.path.join(celeba, IMAGE_DIR)
    n, s = len(filenames), image_size
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    split_position = np.zeros(n, dtype=np.int64)
    for sid in (0, 1, 2):
        rows = np.flatnonzero(parts == sid)
        split_position[rows] = np.arange(len(rows))
    split_sizes = [int((parts == sid).sum()) for sid in (0, 1, 2)]

    try:
        with atomic_output(out) as tmp, h5py.File(tmp, "w") as f:
            images = f.create_dataset("images", shape=(n, 3, s, s), maxshape=(None, 3, s, s), dtype=np.uint8,
                                      chunks=(min(CACHE_CHUNK_ROWS, max(n, 1)), 3, s, s))
            kept_rows: list[np.ndarray] = []
            w = 0
            with tqdm(total=n, unit="img", desc=f"prepare {s}px cache", disable=not progress) as bar:
                decoded = decode_paths(decoder, [[os.path.join(image_dir, filenames[r]) for r in b]
                                                       for b in batches])
                for b, (batch, kept) in zip(batches, decoded):
                    batch = batch.cpu().numpy()
                    images[w:w + len(batch)] = batch
                    w += len(batch)
                    kept_rows.append(np.asarray(b, dtype=np.int64)[kept])
                    bar.update(len(b))
            rows = np.concatenate(kept_rows) if kept_rows else np.zeros(0, np.int64)
            images.resize(w, axis=0)
            f.create_dataset("labels", data=labels.numpy()[rows])
            f.create_dataset("partition", data=parts[rows])
            f.create_dataset("split_position", data=split_position[rows])
            f.create_dataset("filenames", data=np.array([filenames[r] for r in rows], dtype=h5py.string_dtype()))
            if identities is not None:  # the columns from the whole source list, corrupt files included
                f.create_dataset("identity", data=identities[rows])
                f.create_dataset("identity_columns", data=identity_columns(identities, parts))
            f.attrs.update(dualvae_cache_format=CACHE_FORMAT, image_size=s, source=os.path.abspath(celeba),
                           fingerprint=fingerprint, attr_names=json.dumps(list(attr_names)),
                           split_sizes=json.dumps(split_sizes), skipped=json.dumps(decoder.skipped))
    finally:
        decoder.close()
    if decoder.skipped:
        log.warning("prepare: %d corrupt image(s) left out of %s", len(decoder.skipped), out)
    return {"out": out, "images": int(len(rows)), "skipped": list(decoder.skipped), "up_to_date": False}



class Hdf5Loader(Loader):
    """The split of a cache, resident in memory: in GPU memory on device="cuda" when it fits in half the free
    memory (a batch is an index gather there), else in CPU memory (and for device="cpu"), where a batch is an
    index gather on the CPU; for device="cuda" it is gathered into a pinned staging buffer and copied from there.

    The split itself is not pinned: the gather reads it on the CPU whatever its memory, and only the buffer the
    GPU copies from needs to be pinned (for the copy to be an asynchronous DMA); pinning a split that did not
    fit in GPU memory would lock gigabytes of host memory for nothing."""

    STAGING_BUFFERS = 2  # the host gathers batch k + 1 while batch k is copied

    def __init__(self, split: LoadedSplit, images: torch.Tensor, **kw):
        super().__init__(split, **kw)
        if self.device.type == "cuda":
            free = torch.cuda.mem_get_info(self.device)[0]
            if images.numel() < 0.5 * free:
                images = images.to(self.device)
        self.images = images
        self.resident = images.device
        self.staging: list[torch.Tensor] = []  # pinned, batch_size rows each (CUDA batches of a host split)
        self._copied: list = []  # per staging buffer: the CUDA event after the last copy that read it

    def _batches(self, batches):
        if self.resident.type != self.device.type:
            yield from self._staged_batches(batches)
            return
        for rows in batches:
            idx = torch.from_numpy(rows)
            # index_select copies whole rows; [idx] takes the general advanced-indexing path
            x = self.images.index_select(0, idx.to(self.images.device))
            yield rows, x.to(self.device, non_blocking=True).div(127.5).sub_(1.0)

    def _staged_batches(self, batches):
        """A host-resident split, CUDA batches: gather into pinned buffer k % 2, copy it non_blocking on the
        current stream (the batch's uint8 -> [-1, 1] follows on that stream), record an event; a buffer is
        gathered into again only after its last copy's event has completed, so no copy reads a half-rewritten
        buffer."""
        if not self.staging:
            shape = (self.batch_size, *self.images.shape[1:])
            self.staging = [torch.empty(shape, dtype=self.images.dtype, pin_memory=True)
                            for _ in range(self.STAGING_BUFFERS)]
            self._copied = [None] * self.STAGING_BUFFERS
        for k, rows in enumerate(batches):
            slot = k % len(self.staging)
            if self._copied[slot] is not None:
                self._copied[slot].synchronize()
            buf = self.staging[slot][:len(rows)]
            torch.index_select(self.images, 0, torch.from_numpy(rows), out=buf)
            x = buf.to(self.device, non_blocking=True)
            self._copied[slot] = torch.cuda.Event()
            self._copied[slot].record(torch.cuda.current_stream(self.device))
            yield rows, x.div(127.5).sub_(1.0)

