"""Batches at speed: `make_loader` over a CelebA root (DALI or PIL) or an HDF5 cache, and `prepare` (the cache).

Every backend applies the preprocessing of data/celeba.py (center square crop, which for CelebA's 178x218 is the
face square rows 20:198; bilinear antialiased resize; [-1, 1]) and yields
`(images float32 [B, 3, S, S] in [-1, 1], labels, mask)` on `device`: labels float32 [B, 40] in {0, 1} (labels
"attributes"), or SparseLabels (B, 40 + P) with labels "attributes,identity"; mask a HashedMask over the batch's
split positions.

* Order: epoch e of a loader visits the split in `epoch_order(N, seed, e)` (a pure function of (seed, epoch));
  shard k of K takes positions k, k + K, k + 2K, ... of that order, so the shards of an epoch are disjoint and
  together cover the split once; each shard cuts its share into batches (the last, short one dropped with
  drop_last).
* Mask: `HashedMask(seed, missing_ratio, rows)` with rows the batch's positions in the source list's split
  (corrupt files included), so entry (r, j) is the same on every shard, every backend and every resume, and
  equals `draw_label_mask((N, n), missing_ratio, seed)[r, j]`; no (B, n) mask is formed.
* Identity labels (labels="attributes,identity"): one column per identity of the source's training split (all
  of it, whatever `limit`), in increasing id order, named "identity_<id>" after the attributes; a row's labels
  are its attribute positives and its identity's column, as SparseLabels. An image whose identity is not among
  them (only in val/test, as in CelebA's identity-based splits) has no identity positive.
* Backends: "dali" decodes with NVIDIA DALI (GPU `mixed` decoder on device="cuda", its CPU mode with `threads`
  threads otherwise); "pil" is a torch DataLoader with `threads` worker processes decoding with PIL (the
  reference); "hdf5" reads a cache written by `prepare`, holding the split in memory (in GPU memory when it
  fits) so that a batch is an index gather.
* Bad input: a corrupt or truncated JPEG raises CelebAFormatError naming the file; with skip_corrupt it is
  logged, counted (`loader.skipped`) and left out of its batch, which is then shorter; labels and mask stay
  aligned. A missing image or a file missing from the partition list raises, naming the file.
"""
from __future__ import annotations

import ast
import hashlib
import json
import logging
import numbers
import os
import platform
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_output
from dualvae.kernels import HashedMask, SparseLabels

from .celeba import (
    ATTR_FILE,
    IDENTITY_FILE,
    IMAGE_DIR,
    PARTITION_FILE,
    CelebAFormatError,
    _check_images_exist,
    _split_id,
    load_celeba_image,
    read_celeba_attributes,
    read_celeba_identities,
    read_celeba_partition,
    split_indices,
)

log = logging.getLogger("dualvae.data")

BACKENDS = ("dali", "hdf5", "pil")
LABEL_SETS = ("attributes", "attributes,identity")
IDENTITY_PREFIX = "identity_"
CACHE_FORMAT = 1
# Rows per HDF5 chunk: 16 images of 3x64x64 = 192 KiB. Small enough that a random batch reads little it does
# not need, large enough that reading a whole split is a few thousand chunk reads.
CACHE_CHUNK_ROWS = 16


class StaleCacheError(ValueError):
    """The cache's fingerprint no longer matches its source CelebA root."""


class MissingBackendError(ImportError):
    """A backend's package is not installed (or not available on this platform)."""


# ---------------------------------------------------------------------------------------------------------------
# Pure functions: order, shards, mask
# ---------------------------------------------------------------------------------------------------------------


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


def identity_label_names(identities) -> list[str]:
    """The label names of identity columns: "identity_<id>"."""
    return [f"{IDENTITY_PREFIX}{int(i)}" for i in identities]


def identity_columns(identities: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """The identity columns of a source: the identities of its training split (partition 0), increasing."""
    return np.unique(np.asarray(identities, dtype=np.int64)[np.asarray(parts) == 0])


def identity_column_of(identities: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Each image's identity column (int64), -1 for an identity that has none (not in the training split)."""
    identities = np.asarray(identities, dtype=np.int64)
    col = np.searchsorted(columns, identities)
    found = col < len(columns)
    found[found] = columns[col[found]] == identities[found]
    return np.where(found, col, -1).astype(np.int64)


def attribute_identity_labels(attributes: torch.Tensor, identity_col: torch.Tensor, n: int) -> SparseLabels:
    """SparseLabels (B, n): row b's positives are its attribute positives (columns of attributes (B, a) that are
    1), then column a + identity_col[b] (none where identity_col[b] is -1). Forms (B, a + 1) indices, never
    (B, n)."""
    B, a = attributes.shape
    cols = torch.arange(a, device=attributes.device).expand(B, a)
    keys = torch.cat([torch.where(attributes > 0, cols, -1),
                      torch.where(identity_col >= 0, identity_col + a, -1)[:, None]], 1)
    keep = keys >= 0
    indptr = torch.zeros(B + 1, dtype=torch.int64, device=attributes.device)
    indptr[1:] = torch.cumsum(keep.sum(1), 0)
    return SparseLabels(indptr, keys[keep], n, validate=False)  # row-major, a row's columns increase


def check_label_set(labels) -> str:
    text = ",".join(t.strip() for t in labels.split(",")) if isinstance(labels, str) else labels
    if text not in LABEL_SETS:
        raise ValueError(f"labels must be one of {', '.join(repr(v) for v in LABEL_SETS)}, got {labels!r}")
    return text


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


# ---------------------------------------------------------------------------------------------------------------
# The source list: which files, which labels
# ---------------------------------------------------------------------------------------------------------------


def read_source_list(root: str) -> tuple[list[str], list[str], torch.Tensor, np.ndarray]:
    """(filenames, attr_names, labels int8 -1/+1, partition int8) of a CelebA root, every row checked: the
    attribute and partition files must list the same files (a mismatch raises ValueError naming the file)."""
    filenames, attr_names, labels = read_celeba_attributes(root, check_images=False)
    partition = read_celeba_partition(root)
    for split in (0, 1, 2):  # raises naming the first attribute-file row missing from the partition
        split_indices(filenames, partition, split)
    if len(partition) != len(filenames):
        listed = set(filenames)
        extra = next(name for name in partition if name not in listed)
        raise ValueError(f"{extra} is in {os.path.join(root, PARTITION_FILE)} but not in "
                         f"{os.path.join(root, ATTR_FILE)}: the attribute and partition files do not match")
    parts = np.array([partition[f] for f in filenames], dtype=np.int8)
    return filenames, attr_names, labels, parts


def read_source_identities(root: str, filenames: list[str]) -> np.ndarray:
    """The identity of each of `filenames` (int64), from root/identity_CelebA.txt; a clear error when the root
    has no such file."""
    path = os.path.join(root, IDENTITY_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"identity labels need {path} (one identity per image, `000001.jpg 2880`), which "
                                f"is not there: use labels 'attributes', or a root with the file (`dualvae synth` "
                                f"writes one)")
    return read_celeba_identities(root, filenames)


def source_fingerprint(root: str, filenames=None) -> str:
    """sha256 over the attribute and partition files' bytes (and the identity file's, where there is one) and
    each listed image's name, size and mtime."""
    h = hashlib.sha256()
    for name in (ATTR_FILE, PARTITION_FILE):
        with open(os.path.join(root, name), "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    if os.path.exists(os.path.join(root, IDENTITY_FILE)):
        with open(os.path.join(root, IDENTITY_FILE), "rb") as f:
            h.update(b"identity\0" + hashlib.sha256(f.read()).digest())
    if filenames is None:
        filenames = read_celeba_attributes(root, check_images=False)[0]
    image_dir = os.path.join(root, IMAGE_DIR)
    for name in filenames:
        try:
            st = os.stat(os.path.join(image_dir, name))
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            h.update(f"{name}\0missing\n".encode())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# JPEG checks shared by the backends
# ---------------------------------------------------------------------------------------------------------------


def _looks_complete(data: bytes) -> bool:
    """Cheap test on bytes already read: a JPEG starts with SOI (FFD8) and ends with EOI (FFD9)."""
    return data[:2] == b"\xff\xd8" and data.rstrip(b"\x00\r\n ")[-2:] == b"\xff\xd9"


def _decode_error(path: str) -> str | None:
    """Why PIL cannot decode `path` (None when it can): the arbiter for files DALI or the byte check reject."""
    try:
        with Image.open(path) as img:
            img.load()
        return None
    except Exception as e:  # noqa: BLE001 - any failure means "corrupt", reported with its reason
        return f"{type(e).__name__}: {e}"


def _corrupt(path: str, reason: str) -> CelebAFormatError:
    return CelebAFormatError(f"cannot decode image {path}: {reason} (pass --skip-corrupt / skip_corrupt=True "
                             f"to leave corrupt images out)")


# ---------------------------------------------------------------------------------------------------------------
# DALI
# ---------------------------------------------------------------------------------------------------------------


def _dali_import_error() -> ImportError | None:
    try:
        import nvidia.dali  # noqa: F401
        import nvidia.dali.fn  # noqa: F401
        import nvidia.dali.types  # noqa: F401
    except ImportError as e:
        return e
    return None


def dali_missing() -> str | None:
    """Why NVIDIA DALI cannot be used in this process, or None when it imports."""
    e = _dali_import_error()
    return None if e is None else f"nvidia.dali is not importable ({e})"


def _import_dali():
    e = _dali_import_error()
    if e is not None:
        why = ("NVIDIA DALI has no build for this platform (Linux x86_64/aarch64 only)"
               if platform.system() != "Linux" or platform.machine() not in ("x86_64", "aarch64")
               else "install it with `pip install nvidia-dali-cuda120` (make install does)")
        raise MissingBackendError(f"data backend 'dali' needs the package nvidia-dali-cuda120, which is not "
                                  f"importable ({e}); {why}, or use the PIL DataLoader: --data-backend pil "
                                  f"(make_loader(..., backend='pil'))")
    import nvidia.dali

    return nvidia.dali


# Whether a DALI decoder has run in this process. Its threads (DALI's own pools, the file reader) live on, and a
# forked child inherits any lock one of them held at the fork, never to be released: fork is safe only before.
_dali_ran = False


class DaliDecoder:
    """Decode batches of JPEG file paths with DALI -> uint8 [B, 3, S, S] (normalize=False) or float32 in
    [-1, 1] (normalize=True), on the CPU (device="cpu", `threads` threads) or the GPU ("cuda": `mixed` decoder,
    crop/resize/normalize on the GPU). Files are read by a background thread one batch ahead and DALI runs
    asynchronously, so the next batch decodes while the caller uses the current one.

    Corrupt files: the bytes are checked as they are read (SOI ... EOI); a suspect file, or a batch DALI fails
    on, is decoded with PIL to name the culprit. skip_corrupt=False raises CelebAFormatError naming it; True
    logs it, adds it to `self.skipped` and leaves it out of its batch (`decode` returns which entries were kept).
    """

    def __init__(self, image_size: int, max_batch: int, *, device: str = "cpu", threads: int | None = None,
                 normalize: bool = True, skip_corrupt: bool = False):
        self.dali = _import_dali()
        self.image_size, self.max_batch, self.normalize = int(image_size), int(max_batch), normalize
        self.device = torch.device(device)
        self.threads = max(1, threads or os.cpu_count() or 1)
        self.skip_corrupt = skip_corrupt
        self.skipped: list[str] = []
        self._pipe = None
        self._in_flight = 0
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="dali-read")

    def _build(self):
        dali = self.dali
        fn, types = dali.fn, dali.types
        gpu = self.device.type == "cuda"
        size, normalize = self.image_size, self.normalize

        @dali.pipeline_def(batch_size=self.max_batch, num_threads=self.threads,
                           device_id=(self.device.index if self.device.index is not None
                                      else torch.cuda.current_device()) if gpu else None,
                           prefetch_queue_depth=1, exec_async=True, exec_pipelined=True)
        def pipeline():
            jpegs = fn.external_source(name="jpegs", dtype=types.UINT8)
            # Center square: for CelebA's 178x218 that is rows 20:198 x all columns (data/celeba.py FACE_BOX);
            # the decoder decodes only that region.
            shape = fn.peek_image_shape(jpegs, dtype=types.INT32)
            side = fn.cast(dali.math.min(shape[0], shape[1]), dtype=types.FLOAT)
            images = fn.decoders.image_crop(jpegs, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                            crop_w=side, crop_h=side, crop_pos_x=0.5, crop_pos_y=0.5)
            images = fn.resize(images, size=[size, size], interp_type=types.INTERP_LINEAR, antialias=True,
                               dtype=types.UINT8)
            if normalize:  # (x / 255 - 0.5) / 0.5 = x / 127.5 - 1, and HWC -> CHW, in one operator
                return fn.crop_mirror_normalize(images, dtype=types.FLOAT, output_layout="CHW",
                                                mean=[127.5] * 3, std=[127.5] * 3)
            return fn.transpose(images, perm=[2, 0, 1])

        pipe = pipeline()
        pipe.build()
        return pipe

    def _read(self, paths: list[str]):
        """Read the files' bytes; returns (arrays, kept positions). Suspect files are judged by PIL."""
        arrays, kept = [], []
        for k, p in enumerate(paths):
            try:
                with open(p, "rb") as f:
                    data = f.read()
            except FileNotFoundError:
                raise FileNotFoundError(f"CelebA image not found: {p}") from None
            if not _looks_complete(data):
                reason = _decode_error(p)
                if reason is not None:
                    self._bad(p, reason)
                    continue
            arrays.append(np.frombuffer(data, dtype=np.uint8))
            kept.append(k)
        return arrays, kept

    def _bad(self, path: str, reason: str) -> None:
        if not self.skip_corrupt:
            raise _corrupt(path, reason)
        if path not in self.skipped:  # (a batch DALI failed on is re-checked whole)
            log.warning("skipping corrupt image %s (%s)", path, reason)
            self.skipped.append(path)

    def _to_torch(self, out) -> torch.Tensor:
        if self.device.type == "cuda":
            from nvidia.dali.plugin.pytorch import feed_ndarray

            tensor = out.as_tensor()
            result = torch.empty(tensor.shape(), dtype=torch.float32 if self.normalize else torch.uint8,
                                 device=self.device)
            feed_ndarray(tensor, result, cuda_stream=torch.cuda.current_stream(self.device))
            return result
        return torch.from_numpy(np.array(out.as_array()))  # a copy: DALI reuses its output buffer

    def decode(self, batches):
        """For each list of paths in `batches` (any iterable), yield (images, kept): `kept` lists the positions
        in the list whose images are in `images` (all of them unless skip_corrupt left some out)."""
        global _dali_ran
        _dali_ran = True
        self._drain()
        it = iter(batches)
        reads: deque = deque()

        def read_ahead():
            paths = next(it, None)
            if paths is not None:
                reads.append(self._reader.submit(self._read, paths))

        read_ahead()
        read_ahead()
        if not reads:
            return
        # Schedule the first batch; then, each time one is taken, schedule the next before handing it over,
        # so DALI decodes batch k + 1 while the caller works on batch k.
        current = self._schedule(reads.popleft())
        while current is not None:
            read_ahead()
            images = self._collect(*current)
            following = self._schedule(reads.popleft()) if reads else None
            yield images, current[1]
            current = following

    def _drain(self) -> None:
        """Discard a batch left in flight by a caller that stopped iterating early."""
        while self._in_flight:
            self._in_flight -= 1
            try:
                self._pipe.outputs()
            except RuntimeError:
                self._pipe = None
                self._in_flight = 0

    def _schedule(self, read_future):
        arrays, kept = read_future.result()
        if arrays:
            if self._pipe is None:
                self._pipe = self._build()
            self._pipe.feed_input("jpegs", arrays)
            self._pipe.schedule_run()
            self._in_flight += 1
        return arrays, kept

    def _collect(self, arrays, kept) -> torch.Tensor:
        s = self.image_size
        if not arrays:
            dtype = torch.float32 if self.normalize else torch.uint8
            return torch.empty((0, 3, s, s), dtype=dtype, device=self.device)
        try:
            self._in_flight -= 1
            (out,) = self._pipe.outputs()
            return self._to_torch(out)
        except RuntimeError as e:
            self._pipe = None  # a failed DALI pipeline cannot be used again
            self._in_flight = 0
            raise RuntimeError(f"DALI failed on a batch ({e}); decoding it with PIL to find the file") from e

    def close(self) -> None:
        self._reader.shutdown(wait=False, cancel_futures=True)
        self._pipe = None


def _dali_decode_paths(decoder: DaliDecoder, path_batches: list[list[str]]):
    """decoder.decode with recovery: when DALI fails on a batch, PIL finds the corrupt file; it is reported
    (or, with skip_corrupt, skipped) and decoding resumes at that batch with a fresh pipeline."""
    start = 0
    while start < len(path_batches):
        done = 0
        try:
            for images, kept in decoder.decode(path_batches[start:]):
                yield images, kept
                done += 1
            return
        except RuntimeError as e:
            if not str(e).startswith("DALI failed"):
                raise
            paths = path_batches[start + done]
            bad = [(p, r) for p in paths for r in [_decode_error(p)] if r is not None]
            if not bad:
                raise RuntimeError(f"DALI failed on a batch of {len(paths)} images that PIL decodes: "
                                   f"{paths[0]} ... {paths[-1]}: {e.__cause__}") from e
            for p, reason in bad:
                decoder._bad(p, reason)  # raises unless skip_corrupt
            bad_paths = {p for p, _ in bad}
            # Redo this batch without the bad files; positions are those of the original list.
            keep = [k for k, p in enumerate(paths) if p not in bad_paths]
            for images, kept in decoder.decode([[paths[k] for k in keep]]):
                yield images, [keep[k] for k in kept]
            start += done + 1


# ---------------------------------------------------------------------------------------------------------------
# Loaders
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Split:
    """One split: file paths (None for a cache), binary labels, and each row's position in the source split."""

    paths: list[str] | None
    labels: torch.Tensor  # float32 (N, a), 0/1: the attributes
    positions: np.ndarray  # int64 (N,), position of each row in the source list's split
    split_size: int  # size of the split in the source list (the mask's rows)
    attr_names: list[str]  # the label names: the attributes, then the identity columns' names
    filenames: list[str]
    identity_col: np.ndarray | None = None  # int64 (N,): each row's identity column, -1 for none


class Loader:
    """Iterable of (images, labels, mask) batches; see make_loader. Iterating runs the current epoch
    (`set_epoch`, or `epoch(e)` for one epoch without changing it); each full pass advances it by one."""

    def __init__(self, split: _Split, *, batch_size: int, device, shuffle: bool, seed: int, shard_id: int,
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
        self._device_mask = self.label_mask.to(self.device)
        self._labels = split.labels.to(self.device)
        self._identity = None if split.identity_col is None else torch.from_numpy(split.identity_col).to(self.device)
        self.last_indices: torch.Tensor | None = None  # rows (into this split) of the batch last yielded

    @property
    def num_images(self) -> int:
        return len(self.split.labels)

    @property
    def skipped(self) -> list[str]:
        return []

    def _rows(self, idx) -> torch.Tensor:
        idx = torch.as_tensor(idx)
        if idx.dim() != 1 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"rows must be a 1-D int64 tensor of rows into this split, got {idx.dtype} "
                             f"{tuple(idx.shape)}")
        return idx.to(self.device, torch.int64)

    def labels_of(self, idx) -> torch.Tensor | SparseLabels:
        """The labels of rows `idx` (int64, rows into this loaded split) on the loader's device: float32 (B, a)
        attributes, or SparseLabels (B, a + P) with the identity columns."""
        idx = self._rows(idx)
        attributes = self._labels.index_select(0, idx)
        if self._identity is None:
            return attributes
        return attribute_identity_labels(attributes, self._identity.index_select(0, idx), self.num_labels)

    def mask_of(self, idx) -> HashedMask:
        """The HashedMask of rows `idx` (int64, rows into this loaded split): rows = their split positions."""
        return self._device_mask.select(self._rows(idx))

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
        """The batches of `epoch`, from batch `start` (a resumed run skips what it consumed) up to `stop`."""
        for rows, images in self._batches(self.batch_rows(epoch)[start:stop]):
            idx = torch.from_numpy(np.asarray(rows, dtype=np.int64))
            self.last_indices = idx
            dev_idx = idx.to(self.device)
            yield images, self.labels_of(dev_idx), self.mask_of(dev_idx)

    def _batches(self, batches):  # -> (rows, images float32 on device)
        raise NotImplementedError

    def close(self) -> None:
        pass


class DaliLoader(Loader):
    def __init__(self, split: _Split, *, threads: int | None = None, image_size: int, **kw):
        super().__init__(split, **kw)
        self.decoder = DaliDecoder(image_size, self.batch_size, device=str(self.device), threads=threads,
                                   normalize=True, skip_corrupt=self.skip_corrupt)

    @property
    def skipped(self) -> list[str]:
        return self.decoder.skipped

    def _batches(self, batches):
        paths = self.split.paths
        for rows, (images, kept) in zip(batches, _dali_decode_paths(self.decoder, [[paths[r] for r in b]
                                                                                   for b in batches])):
            yield rows[kept], images

    def close(self) -> None:
        self.decoder.close()


class _PilDataset(torch.utils.data.Dataset):
    def __init__(self, paths: list[str], image_size: int, skip_corrupt: bool):
        self.paths, self.image_size, self.skip_corrupt = paths, image_size, skip_corrupt

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int):
        try:
            return row, torch.from_numpy(load_celeba_image(self.paths[row], self.image_size).transpose(2, 0, 1).copy())
        except CelebAFormatError as e:
            if not self.skip_corrupt:
                raise CelebAFormatError(f"{e} (pass --skip-corrupt / skip_corrupt=True to leave corrupt images "
                                        f"out)") from None
            return row, None


def _pil_collate(items):
    good = [(r, im) for r, im in items if im is not None]
    bad = [r for r, im in items if im is None]
    rows = np.array([r for r, _ in good], dtype=np.int64)
    images = torch.stack([im for _, im in good]) if good else None
    return rows, images, bad


class _EpochBatchSampler:
    """The DataLoader's batch sampler: iterated in this process, it yields the batches set for the epoch, so
    one DataLoader (and its persistent workers) serves every epoch."""

    def __init__(self):
        self.batches: list[np.ndarray] = []

    def __iter__(self):
        return iter([b.tolist() for b in self.batches])

    def __len__(self) -> int:
        return len(self.batches)


def _is_main_guard(test: ast.expr) -> bool:
    """Whether an `if` test is `__name__ == "__main__"` (either way round)."""
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return False
    sides = [test.left, test.comparators[0]]
    return (any(isinstance(e, ast.Name) and e.id == "__name__" for e in sides)
            and any(isinstance(e, ast.Constant) and e.value == "__main__" for e in sides))


def unguarded_main_line() -> tuple[str, int] | None:
    """(file, line) of the main script's top-level line this call comes from when that line is outside an
    `if __name__ == "__main__":` block, so that a worker process started by spawn or a forkserver, which
    re-imports the main script, would run it again; None when it would not (guarded, interactive, `-c`, a
    package's __main__)."""
    main = sys.modules.get("__main__")
    spec_name = getattr(getattr(main, "__spec__", None), "name", None)
    if spec_name is not None and (spec_name == "__main__" or spec_name.endswith(".__main__")):
        return None  # multiprocessing does not re-run a package's __main__
    if spec_name is None and getattr(main, "__file__", None) is None:
        return None
    frame, top = sys._getframe(1), None
    while frame is not None:
        if frame.f_code.co_name == "<module>" and frame.f_globals.get("__name__") == "__main__":
            top = frame
        frame = frame.f_back
    if top is None:
        return None
    path, line = top.f_code.co_filename, top.f_lineno
    try:
        with open(path) as f:
            tree = ast.parse(f.read())
    except (OSError, SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_main_guard(node.test) and \
                node.body[0].lineno <= line <= node.body[-1].end_lineno:
            return None
    return path, line


def _worker_start_method() -> str:
    """How the PIL loader starts its worker processes: fork while no DALI decoder has run in this process (the
    workers then need nothing re-imported); after one has, a forkserver (a fork could inherit DALI's locks held),
    refused when the main script would run its unguarded top level again in every worker."""
    if not _dali_ran:
        return "fork"
    found = unguarded_main_line()
    if found is not None:
        path, line = found
        raise RuntimeError(
            f"PIL loader: a DALI decoder has run in this process, so the DataLoader workers cannot be forked "
            f"(a fork can inherit a lock DALI's threads hold, and hang) and are started from a forkserver, which "
            f"re-imports the main script {path}; its line {line} runs at the top level, outside an "
            f"`if __name__ == \"__main__\":` block, so every worker would run it again and die. Put the script's "
            f"code under `if __name__ == \"__main__\":`, or decode in this process (threads=0, --workers 0), or "
            f"read with backend 'dali' or 'hdf5'")
    return "forkserver"


class PilLoader(Loader):
    """The reference: a torch DataLoader, `threads` worker processes decoding with PIL (0: in this process).
    The workers start at the first batch and persist across epochs; they are forked, unless a DALI decoder has
    run in this process (see _worker_start_method)."""

    def __init__(self, split: _Split, *, threads: int | None = None, image_size: int, **kw):
        super().__init__(split, **kw)
        self.image_size = image_size
        self.workers = (os.cpu_count() or 1) if threads is None else threads
        self._skipped: list[str] = []
        self._sampler = _EpochBatchSampler()
        self._dl = None

    @property
    def skipped(self) -> list[str]:
        return self._skipped

    def _data_loader(self):
        if self._dl is None:
            ds = _PilDataset(self.split.paths, self.image_size, self.skip_corrupt)
            extra = dict(multiprocessing_context=_worker_start_method(), persistent_workers=True,
                         prefetch_factor=4) if self.workers else {}
            self._dl = torch.utils.data.DataLoader(ds, batch_sampler=self._sampler, num_workers=self.workers,
                                                   collate_fn=_pil_collate, pin_memory=self.device.type == "cuda",
                                                   **extra)
        return self._dl

    def _batches(self, batches):
        dl = self._data_loader()
        self._sampler.batches = batches
        s = self.image_size
        for rows, images, bad in dl:
            for r in bad:
                path = self.split.paths[r]
                if path not in self._skipped:
                    log.warning("skipping corrupt image %s", path)
                    self._skipped.append(path)
            if images is None:
                images = torch.empty((0, 3, s, s), dtype=torch.uint8)
            yield rows, images.to(self.device, non_blocking=True).div(127.5).sub_(1.0)

    def close(self) -> None:
        self._dl = None  # shuts the persistent workers down


class Hdf5Loader(Loader):
    """The split of a cache, resident in memory: in GPU memory on device="cuda" when it fits in half the free
    memory (a batch is an index gather there), else in CPU memory (and for device="cpu"), where a batch is an
    index gather on the CPU; for device="cuda" it is gathered into a pinned staging buffer and copied from there.

    The split itself is not pinned: the gather reads it on the CPU whatever its memory, and only the buffer the
    GPU copies from needs to be pinned (for the copy to be an asynchronous DMA); pinning a split that did not
    fit in GPU memory would lock gigabytes of host memory for nothing."""

    STAGING_BUFFERS = 2  # the host gathers batch k + 1 while batch k is copied

    def __init__(self, split: _Split, images: torch.Tensor, **kw):
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


# ---------------------------------------------------------------------------------------------------------------
# HDF5 cache
# ---------------------------------------------------------------------------------------------------------------


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


def _load_cache_split(path: str, split, image_size: int, limit: int | None, verify: bool,
                      identities: bool = False):
    h5py = _import_h5py()
    info = read_cache_info(path)
    if int(info["image_size"]) != image_size:
        raise ValueError(f"cache {path} holds {info['image_size']}x{info['image_size']} images, not "
                         f"{image_size}x{image_size}: prepare one with --image-size {image_size}")
    if verify:
        check_cache_fresh(path, info)
    sid = _split_id(split)
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
    return _Split(None, torch.from_numpy((labels > 0).astype(np.float32)), positions.astype(np.int64), split_size,
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
    _check_images_exist(celeba, os.path.join(celeba, ATTR_FILE), filenames)
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
                decoded = _dali_decode_paths(decoder, [[os.path.join(image_dir, filenames[r]) for r in b]
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


# ---------------------------------------------------------------------------------------------------------------
# make_loader
# ---------------------------------------------------------------------------------------------------------------


def make_loader(source: str, split="train", *, image_size: int = 64, batch_size: int, device="cuda",
                backend: str | None = "dali", shuffle: bool = True, seed: int = 0, shard_id: int = 0,
                num_shards: int = 1, missing_ratio: float = 0.0, drop_last: bool = True,
                skip_corrupt: bool = False, threads: int | None = None, limit: int | None = None,
                verify_cache: bool = True, labels: str = "attributes") -> Loader:
    """Batches of one split of `source` (a CelebA root, or a cache file written by `prepare`):
    (images float32 [B, 3, S, S] in [-1, 1], labels, mask HashedMask over the batch's split positions) on
    `device`. labels "attributes": float32 [B, 40] in {0, 1}; "attributes,identity": SparseLabels (B, 40 + P),
    the attributes then one column per identity of the source's training split (needs identity_CelebA.txt).

    backend: "dali" | "pil" for a CelebA root, "hdf5" for a cache (None: "hdf5" for a file, "dali" for a folder).
    threads: DALI threads / DataLoader workers (default: all cores). limit: the first `limit` images of the split.
    The loader has len() (batches per epoch of this shard), set_epoch(e), epoch(e), label_mask (the HashedMask
    of every loaded row), labels_of(rows), mask_of(rows), batch_rows(e), attr_names (the label names),
    num_labels, filenames, last_indices and skipped; see the module docstring for the contract.
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
        split_data, images = _load_cache_split(source, split, image_size, limit, verify_cache, identities)
        return Hdf5Loader(split_data, images, **kw)
    if is_cache_file(source):
        raise ValueError(f"{source} is a file (a cache?); backend {backend!r} reads a CelebA root folder "
                         f"(use backend 'hdf5' for a cache)")
    filenames, attr_names, labels, parts = read_source_list(source)
    sid = _split_id(split)
    rows = np.flatnonzero(parts == sid)
    split_size = len(rows)
    if limit is not None:
        rows = rows[:limit]
    _check_images_exist(source, os.path.join(source, ATTR_FILE), filenames, rows)
    image_dir = os.path.join(source, IMAGE_DIR)
    names = [filenames[r] for r in rows]
    label_names, identity_col = list(attr_names), None
    if identities:
        ids = read_source_identities(source, filenames)
        columns = identity_columns(ids, parts)
        label_names += identity_label_names(columns)
        identity_col = identity_column_of(ids[rows], columns)
    split_data = _Split([os.path.join(image_dir, nm) for nm in names],
                        (labels[torch.from_numpy(rows)] > 0).to(torch.float32), np.arange(len(rows), dtype=np.int64),
                        split_size if limit is None else len(rows), label_names, names, identity_col)
    cls = DaliLoader if backend == "dali" else PilLoader
    return cls(split_data, threads=threads, image_size=image_size, **kw)
