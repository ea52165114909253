"""NVIDIA DALI: `DaliDecoder` decodes batches of JPEG files (center square crop, bilinear antialiased resize,
[-1, 1] or uint8; on the CPU or, with the `mixed` decoder, the GPU), `decode_paths` recovers from a batch DALI
fails on, and `DaliLoader` is make_loader's backend "dali".

Bad input: a corrupt or truncated JPEG raises CelebAFormatError naming the file; with skip_corrupt it is logged,
counted (`skipped`) and left out of its batch. PIL is the arbiter of what is corrupt.
"""
from __future__ import annotations

import logging
import os
import platform
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from PIL import Image

from .batch import LoadedSplit, Loader
from .celeba import CelebAFormatError

log = logging.getLogger("dualvae.data")


class MissingBackendError(ImportError):
    """A backend's package is not installed (or not available on this platform)."""


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
                    self.report_bad(p, reason)
                    continue
            arrays.append(np.frombuffer(data, dtype=np.uint8))
            kept.append(k)
        return arrays, kept

    def report_bad(self, path: str, reason: str) -> None:
        """A corrupt file: raise CelebAFormatError naming it, or (skip_corrupt) log it and add it to `skipped`."""
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


def decode_paths(decoder: DaliDecoder, path_batches: list[list[str]]):
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
                decoder.report_bad(p, reason)  # raises unless skip_corrupt
            bad_paths = {p for p, _ in bad}
            # Redo this batch without the bad files; positions are those of the original list.
            keep = [k for k, p in enumerate(paths) if p not in bad_paths]
            for images, kept in decoder.decode([[paths[k] for k in keep]]):
                yield images, [keep[k] for k in kept]
            start += done + 1

def dali_has_run() -> bool:
    """Whether a DALI decoder has run in this process (after which worker processes must not be forked)."""
    return _dali_ran


class DaliLoader(Loader):
    def __init__(self, split: LoadedSplit, *, threads: int | None = None, image_size: int, **kw):
        super().__init__(split, **kw)
        self.decoder = DaliDecoder(image_size, self.batch_size, device=str(self.device), threads=threads,
                                   normalize=True, skip_corrupt=self.skip_corrupt)

    @property
    def skipped(self) -> list[str]:
        return self.decoder.skipped

    def _batches(self, batches):
        paths = self.split.paths
        for rows, (images, kept) in zip(batches, decode_paths(self.decoder, [[paths[r] for r in b]
                                                                                   for b in batches])):
            yield rows[kept], images

    def close(self) -> None:
        self.decoder.close()

