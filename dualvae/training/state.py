"""A run's checkpoints: what one holds, their rotation in out/ckpt, resuming from one, and the RNG states.

A checkpoint holds everything a resume needs: the model, both optimizers, the GradScaler, the step, the epoch and
the position in it, every rank's RNG states, the missing-label mask, the loss log and the config. It holds
tensors and plain values only, so that it loads with torch.load(weights_only=True) (dualvae.checkpoint).

The missing-label mask is stored as its definition, ck["label_mask"] = {"seed", "missing_ratio", "rows"} (rows:
the split positions of the training images, int64), never as a dense (N, n) tensor: `mask_from_state` gives the
kernels.HashedMask back, and .dense(n) the (N, n) indicator. A label-parallel run's checkpoint keeps U in one
shard file per rank beside the main file (training/label_parallel.py).
"""
from __future__ import annotations

import os
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from dualvae.checkpoint import (UnsafeCheckpointError, checkpoint_path, list_checkpoints, load_checkpoint,
                                rotate_checkpoints, save_atomic)
from dualvae.kernels import HashedMask
from dualvae.training import label_parallel
from dualvae.training.config import RESUME_FIELDS, TrainConfig
from dualvae.training.distributed import Dist, barrier, broadcast_object, gather_objects

# What a checkpoint must hold to be resumed (a model-only one, DualVAE.checkpoint_state(), lacks most).
RESUME_KEYS = ("model", "g", "g_e", "step", "epoch", "epoch_position", "rng", "train_config")


@dataclass
class Progress:
    """Where a run stands: what a checkpoint records besides the weights and optimizers."""

    step: int = 0  # iterations done
    epoch: int = 0
    position: int = 0  # batches of this epoch taken
    skipped_nonfinite: int = 0  # optimizer steps left out for a NaN/inf loss
    log: list[dict] = field(default_factory=list)  # the rows of log.csv
    last_ckpt: str | None = None  # the newest checkpoint this process wrote or resumed from


def mask_state(mask: HashedMask) -> dict:
    """A HashedMask as checkpoint values: its definition (seed, missing ratio, the rows' global indices)."""
    return {"seed": mask.seed, "missing_ratio": mask.missing_ratio, "rows": mask.rows.cpu()}


def mask_from_state(state: dict) -> HashedMask:
    """The HashedMask of a checkpoint's "label_mask" (mask_state)."""
    return HashedMask(state["seed"], state["missing_ratio"], state["rows"])


def check_label_mask(saved, mask: HashedMask, path: str) -> None:
    """Refuse (ValueError naming the checkpoint) to resume checkpoint `path`, whose ck["label_mask"] is `saved`,
    with the loader's mask `mask` unless the two are the same mask: the same seed, missing ratio and rows. A
    tensor is the mask of a checkpoint written before the mask was a hash (a random draw, other entries)."""
    if isinstance(saved, torch.Tensor):
        raise ValueError(f"resume: checkpoint {path} stores its missing-label mask as a {tuple(saved.shape)} "
                         f"tensor: it was written before the mask's definition changed (it is now a hash of the "
                         f"seed, the image and the label), so this run's missing labels are not the ones it was "
                         f"trained with; restart the run (without --resume, in a new run folder)")
    try:
        found = mask_from_state(saved)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"resume: checkpoint {path}: its missing-label mask {saved!r:.200} is not a mask "
                         f"definition {{'seed', 'missing_ratio', 'rows'}}: {exc}") from None
    diff = [f"{k} {a!r} (checkpoint) vs {b!r}" for k, a, b in
            (("seed", found.seed, mask.seed), ("missing_ratio", found.missing_ratio, mask.missing_ratio))
            if a != b]
    rows, want = found.rows.cpu(), mask.rows.cpu()
    if rows.shape != want.shape:
        diff.append(f"rows: {len(rows)} images (checkpoint) vs {len(want)}")
    elif not torch.equal(rows, want):
        i = int((rows != want).nonzero()[0])
        diff.append(f"rows: image {i} at split position {int(rows[i])} (checkpoint) vs {int(want[i])}")
    if diff:
        raise ValueError(f"resume: checkpoint {path} was trained with another missing-label mask than this "
                         f"run's: {'; '.join(diff)}; resume it on the same data (--data, --limit)")


def checkpoint_state(model, g, g_e, scaler, progress: Progress, cfg: TrainConfig, *, steps_per_epoch: int,
                     rng: list[dict], world_size: int, label_mask: HashedMask) -> dict:
    """The checkpoint of a run at progress.step; `rng` holds every rank's rng_state."""
    return {
        **model.checkpoint_state(),  # kind, config, model (the weights), attr_names: what DualVAE.load reads
        "g": g.state_dict(),
        "g_e": g_e.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "step": progress.step,
        "epoch": progress.epoch,
        "epoch_position": progress.position,
        "steps_per_epoch": steps_per_epoch,
        "rng": rng,
        "world_size": world_size,
        "label_mask": mask_state(label_mask),
        "skipped_nonfinite": progress.skipped_nonfinite,
        "log": progress.log,
        "train_config": asdict(cfg),
    }


def write_parallel_checkpoint(ck: dict | None, model, g_e, d: Dist, ckpt_dir: str, step: int, model_path: str,
                              keep: int) -> str:
    """The checkpoint of a label-parallel run: every rank writes its shard of U (atomic), then, once all have
    (barrier), rank 0 writes out/ckpt/step-N.pt and out/model.pt (each atomic, listing the shards: model.pt names
    them in ckpt/) and rotates. `ck`: rank 0's checkpoint_state (None elsewhere). Returns the step file's path
    (on every rank)."""
    path = checkpoint_path(ckpt_dir, step)
    label_parallel.write_shard(model, g_e, path, step, d)
    barrier(d)
    if d.is_main:
        name = os.path.basename(path)
        save_atomic(label_parallel.main_part(ck, model, g_e, d, "", name), path)
        rel = os.path.relpath(ckpt_dir, os.path.dirname(os.path.abspath(model_path)))
        save_atomic(label_parallel.main_part(ck, model, g_e, d, rel, name), model_path)
        rotate_checkpoints(ckpt_dir, keep)
    return os.path.abspath(path)


# -- resume -----------------------------------------------------------------------------------------------------
def resume(cfg: TrainConfig, d: Dist, model, g, g_e, scaler, gen: torch.Generator, say,
           steps_per_epoch: int, label_mask: HashedMask) -> Progress:
    """Restore the checkpoint cfg.resume names (find_resume) into the model, optimizers, scaler and RNGs and
    return its progress; a fresh Progress when "auto" finds none. `label_mask`: the loader's (the checkpoint's
    must be the same)."""
    ck, path, shard = find_resume(cfg, d, say)
    if ck is None:
        return Progress()
    progress = restore(ck, cfg, d, model, g, g_e, scaler, gen, say, path, label_mask=label_mask, shard=shard)
    progress.last_ckpt = path
    say(f"resumed from {path}: step {progress.step}, epoch {progress.epoch}, batch {progress.position} of "
        f"{steps_per_epoch}")
    return progress


def find_resume(cfg: TrainConfig, d: Dist, say) -> tuple[dict | None, str | None, dict | None]:
    """(the checkpoint to resume, its path, this rank's label shard of it: None unless both it and the run are
    label-parallel over as many processes): cfg.resume's path, or ("auto") the newest valid one in out/ckpt,
    falling back to older ones past a corrupt main or shard file; (None, None, None) when "auto" finds none.

    Every rank reads the candidate and its own shard, then the ranks agree on the outcome (one gather of their
    errors): a file that is bad on any rank makes all of them fall back, or all of them fail, so that none waits
    in a collective the others have left."""
    auto = cfg.resume == "auto"
    ckpt_dir = os.path.join(cfg.out, "ckpt")
    candidates = broadcast_object(list_checkpoints(ckpt_dir) if d.is_main else None, d) if auto else [cfg.resume]
    for i, path in enumerate(candidates):
        ck = shard = error = None
        try:
            ck = load_resumable(path)
            if cfg.label_parallel:
                shard = label_parallel.own_shard(ck, path, d)
        except (ValueError, OSError) as exc:  # damaged (ValueError), unsafe (a subclass), missing
            error = exc
        errors = gather_objects(None if error is None else (_error_kind(error), str(error)), d)
        failed = [(r, kind, msg) for r, e in enumerate(errors) if e is not None for kind, msg in [e]]
        if not failed:
            return ck, path, shard
        rank, kind, msg = failed[0]
        if not auto or any(k != "damaged" for _, k, _ in failed):
            # not a damaged file to skip (an unsafe one: falling back past it could restart the run at step 0)
            if error is not None:
                raise error
            raise (UnsafeCheckpointError if kind == "unsafe" else ValueError)(f"resume (rank {rank}): {msg}")
        nxt = candidates[i + 1] if i + 1 < len(candidates) else None
        say(f"resume: {msg}; " + (f"falling back to the previous checkpoint {nxt}" if nxt else
                                  "no older checkpoint to fall back to"))
    say(f"resume auto: no valid checkpoint in {ckpt_dir}; starting at step 0")
    return None, None, None


def _error_kind(exc: Exception) -> str:
    if isinstance(exc, UnsafeCheckpointError):
        return "unsafe"
    return "damaged" if isinstance(exc, ValueError) else "missing"


def load_resumable(path: str) -> dict:
    ck = load_checkpoint(path, kind="dualvae")  # ValueError for unreadable/truncated files
    missing = [k for k in RESUME_KEYS if k not in ck]
    if missing:
        raise ValueError(f"checkpoint {path} cannot be resumed: it lacks {', '.join(missing)}")
    return ck


def restore(ck: dict, cfg: TrainConfig, d: Dist, model, g, g_e, scaler, gen: torch.Generator, say,
            path: str = "checkpoint", *, label_mask: HashedMask, shard: dict | None = None) -> Progress:
    """Load checkpoint `ck` (read from `path`) into the run (refused when a RESUME_FIELDS setting differs, when
    its missing-label mask is not `label_mask`, the loader's (check_label_mask), or when it is label-parallel and
    the run is not, or over another number of processes); returns its progress. `shard`: this rank's label
    shard, when find_resume has read it."""
    saved = ck["train_config"]
    defaults = TrainConfig(data="", out="")
    diff = [f"{k} {saved.get(k, getattr(defaults, k))!r} (checkpoint) vs {getattr(cfg, k)!r}"
            for k in RESUME_FIELDS if saved.get(k, getattr(defaults, k)) != getattr(cfg, k)]
    if diff:
        raise ValueError(f"resume: this run's settings differ from the checkpoint's: {'; '.join(diff)}")
    check_label_mask(ck.get("label_mask"), label_mask, path)
    if cfg.label_parallel:
        model_state, g_e_state = label_parallel.restore_shard(ck, path, model, g_e, d, shard)
    elif ck.get("label_parallel"):
        raise ValueError(f"resume: checkpoint {path} holds U in {ck['label_parallel']['world_size']} "
                         f"label-parallel shards; resume it with --label-parallel on as many processes")
    else:
        model_state, g_e_state = ck["model"], ck["g_e"]
    model.load_state_dict(model_state)
    g.load_state_dict(ck["g"])
    g_e.load_state_dict(g_e_state)
    if scaler is not None and ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    rngs = ck["rng"]
    if len(rngs) != d.world:
        say(f"resume: the checkpoint was written by {len(rngs)} process(es), this run has {d.world}; the data "
            f"stream (order, eps) does not depend on it, each process takes rank 0's global RNG states")
    set_rng_state(rngs[d.rank] if len(rngs) == d.world else rngs[0], gen, d)
    return Progress(step=ck["step"], epoch=ck["epoch"], position=ck["epoch_position"],
                    skipped_nonfinite=ck.get("skipped_nonfinite", 0), log=list(ck.get("log") or []))


# -- RNG states -------------------------------------------------------------------------------------------------
def rng_state(gen: torch.Generator, d: Dist) -> dict:
    """Every RNG a step draws from, as tensors and plain values (checkpoints load with weights_only=True)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {"eps": gen.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(d.device) if d.device.type == "cuda" else None,
            "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                      "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
            "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64),
                       "gauss_next": py_gauss}}


def set_rng_state(s: dict, gen: torch.Generator, d: Dist) -> None:
    gen.set_state(s["eps"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and d.device.type == "cuda":
        torch.cuda.set_rng_state(s["cuda"], d.device)
    n = s["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss_next"]))
