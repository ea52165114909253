"""What stops a run, and how: a non-finite loss, SIGTERM, out of memory.

- A NaN/inf loss is checked on the global batch (every rank sees the same value), so all ranks stop, or skip the
  optimizer step (skip_nonfinite), together. The stop names the step and the last good checkpoint.
- SIGTERM (what schedulers and torchrun send) only sets a flag: the loop finishes its step, the flag rides on
  the step's all-reduce so that all ranks agree, a checkpoint is written and the run returns.
- Out of memory raises TrainingOOMError naming the batch size per process and, where it can be measured, the
  largest batch that runs a forward + backward.
"""
from __future__ import annotations

import gc
import signal
import threading

import numpy as np
import torch

from dualvae.losses import first_rows
from dualvae.precision import autocast
from dualvae.training.distributed import Dist


class TrainingError(RuntimeError):
    """A run stopped by a fault (non-finite loss, out of memory); the message says what to do."""


class NonFiniteLossError(TrainingError):
    pass


class TrainingOOMError(TrainingError):
    pass


# -- non-finite losses ------------------------------------------------------------------------------------------
def step_is_finite(value: float, what: str, skip_nonfinite: bool) -> bool:
    """Whether to take the optimizer step of a loss of `value` (over the global batch): True when it is finite,
    False (skip the step) when it is not and `skip_nonfinite`; otherwise NonFiniteLossError."""
    if np.isfinite(value):
        return True
    if not skip_nonfinite:
        raise NonFiniteLossError(f"non-finite {what} loss ({value}) over the global batch")
    return False


def nonfinite_stop(exc: NonFiniteLossError, step: int, last_ckpt: str | None) -> NonFiniteLossError:
    """The error a run stops with at `step`: what was kept and how to go on."""
    kept = (f"the last good checkpoint, {last_ckpt}, is untouched: resume from it with --resume auto "
            f"(e.g. with a lower --lr)") if last_ckpt else "no checkpoint had been written yet"
    return NonFiniteLossError(f"train: {exc} at step {step}; stopped. {kept}; or pass --skip-nonfinite to skip "
                              f"such steps")


# -- SIGTERM ----------------------------------------------------------------------------------------------------
class SigtermFlag:
    """SIGTERM sets `raised`; `restore()` puts the previous handler back. Python installs handlers from the main
    thread only: a run started in another thread leaves SIGTERM's handler as it was."""

    def __init__(self):
        self.raised = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.raised = True

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# -- out of memory ----------------------------------------------------------------------------------------------
def is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def oom_summary(exc: BaseException) -> str:
    """The error's type and first line: what an OOM message keeps of the exception."""
    return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def probe_blocker(d: Dist) -> str | None:
    """Why the largest fitting batch cannot be measured here (None: it can)."""
    if d.enabled:
        return (f"not measured with {d.world} processes: one rank probing alone would enter SyncBatchNorm "
                f"collectives the others never join, and the run would hang")
    if d.device.type != "cuda":
        return f"not measured on this device ({d.device.type})"
    return None


def oom_message(cfg, d: Dist, error: str, probe) -> str:
    """The message of a TrainingOOMError; `probe()` (the largest batch that fits, or None) runs only where it
    can neither deadlock nor measure another device than the one that ran out."""
    per_rank = cfg.batch_size // d.world
    blocker = probe_blocker(d)
    fits = probe() if blocker is None else None
    fit_text = (f"the largest batch per process that fits (forward + backward, halving) is {fits}" if fits else
                f"the largest batch that fits is unknown ({blocker or 'halving down to 1 found none that runs'})")
    return (f"train: out of memory at batch size {per_rank} per process (global --batch-size {cfg.batch_size}, "
            f"{d.world} process(es), {cfg.image_size}x{cfg.image_size}, {cfg.precision}); {fit_text}; lower "
            f"--batch-size, use more processes, or --precision bf16 ({error})")


def oom_error(cfg, d: Dist, error: str, model, fns, x, y, m, eps) -> TrainingOOMError:
    """The error of a step that ran out of memory on batch (x, y, m, eps); call it outside the `except` of that
    step, so that the step's frames (and their activations) are gone before the probe runs."""
    return TrainingOOMError(oom_message(cfg, d, error, lambda: largest_fitting_batch(model, fns, cfg, x, y, m,
                                                                                     eps)))


def fits(model, fns, cfg, x, y, m, eps) -> None:
    """A forward + backward of both losses on this batch (no optimizer step); raises when it does not fit."""
    with autocast(x.device, cfg.precision):
        r, k = fns.vae(x, eps)
        nll, _, _ = fns.label(x, y, m, eps)
    (r + k + nll).backward()


def release(model, device: torch.device) -> None:
    """Free what a failed step left: gradients, graphs held in reference cycles, the allocator's cached blocks."""
    model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def largest_fitting_batch(model, fns, cfg, x, y, m, eps) -> int | None:
    """Halve the batch until it `fits`. Each attempt runs in a frame of its own and is caught here, so its
    tensors are gone (frame and traceback released) before the next one starts."""
    eps = eps.to(x.device)
    b = len(x) // 2
    while b >= 1:
        release(model, x.device)
        try:
            fits(model, fns, cfg, x[:b], *first_rows(y, m, b), eps[:b])
            return b
        except RuntimeError as exc:
            if not is_oom(exc):
                return None
        b //= 2
    return None
