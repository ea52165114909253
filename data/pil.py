"""make_loader's backend "pil", the reference: a torch DataLoader whose worker processes decode with PIL
(data/celeba.py's preprocessing), and how those workers are started (fork, or a forkserver after DALI has run).
"""
from __future__ import annotations

import ast
import logging
import os
import sys

import numpy as np
import torch

from .batch import LoadedSplit, Loader
from .celeba import CelebAFormatError, load_celeba_image
from .dali import dali_has_run

log = logging.getLogger("dualvae.data")


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
    if not dali_has_run():
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

    def __init__(self, split: LoadedSplit, *, threads: int | None = None, image_size: int, **kw):
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

