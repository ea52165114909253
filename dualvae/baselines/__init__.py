"""Baseline transfer models the paper compares DualVAE with: CVAE, FaderNetworks, StarGAN.

Each is a `dualvae.transfer_model.TransferModel` (through `common.LabelConditioned`), so the CIS evaluator scores
them as it scores DualVAE, and has `train_step(opts, x, y, mask, step, total_steps)` with masked-label losses.
`fit` trains any of them on images in memory; `load` reads a checkpoint back (dualvae.checkpoint.load_model).
"""
from __future__ import annotations

import time

import torch
from tqdm import tqdm

from dualvae import checkpoint
from dualvae.batching import epoch_batches
from dualvae.baselines.common import LabelConditioned
from dualvae.baselines.cvae import CVAE, CVAEConfig
from dualvae.baselines.fader import Fader, FaderConfig
from dualvae.baselines.stargan import StarGAN, StarGANConfig

KINDS = checkpoint.kinds_of(LabelConditioned)  # the baselines' kinds, from the registry checkpoint.MODEL_KINDS
MODELS = {k: (checkpoint.model_class(k), checkpoint.config_class(k)) for k in KINDS}  # kind -> (class, config)


def build(kind: str, **config):
    """A new baseline of `kind` ("cvae", "fader", "stargan") from its config fields."""
    if kind not in KINDS:
        raise ValueError(f"unknown baseline {kind!r}; expected one of {sorted(KINDS)}")
    return checkpoint.build(kind, **config)


def load(path: str, map_location="cpu"):
    """The baseline in a checkpoint written by save_atomic(model.checkpoint_state()), in eval mode."""
    return LabelConditioned.load(path, map_location)


def fit(model, images_u8: torch.Tensor, labels01: torch.Tensor, mask: torch.Tensor | None, *, steps: int,
        batch_size: int = 64, seed: int = 0, progress: bool = True, log_every: int = 25,
        checkpoint_steps=(), on_checkpoint=None) -> list[dict]:
    """Train `model` for `steps` steps on uint8 images (N, C, S, S) with 0/1 labels and the observed mask
    (True = observed); epochs in an order drawn from `seed`. After each step count in `checkpoint_steps`,
    `on_checkpoint(step_count)` is called with the model in eval mode (training resumes after it). Returns the
    logged rows; leaves the model in eval mode.
    """
    from dualvae.data import to_unit_range

    torch.manual_seed(seed)
    n = len(images_u8)
    bs = min(batch_size, n)
    gen = torch.Generator().manual_seed(seed)
    opts = model.make_optimizers()
    model.train()
    rows, t0 = [], time.time()
    bar = tqdm(range(steps), desc=f"train {model.kind}", disable=not progress, dynamic_ncols=True, leave=False)
    for step, idx in zip(bar, epoch_batches(n, bs, gen)):
        x = to_unit_range(images_u8[idx])
        m = None if mask is None else mask[idx].float()
        stats = model.train_step(opts, x, labels01[idx].float(), m, step=step, total_steps=steps)
        if step % log_every == 0 or step == steps - 1:
            rows.append({"step": step, "time_s": round(time.time() - t0, 2), **stats})
            bar.set_postfix(loss=f"{stats['loss']:.3g}")
        if on_checkpoint is not None and step + 1 in checkpoint_steps:
            model.eval()
            on_checkpoint(step + 1)
            model.train()
    model.eval()
    return rows


__all__ = ["CVAE", "CVAEConfig", "Fader", "FaderConfig", "StarGAN", "StarGANConfig", "KINDS", "MODELS", "build", "load",
           "fit"]
