"""The one module that reads and writes checkpoint files. Checkpoints are written atomically (a crash mid-write leaves
the previous file intact, never half a file) and read back with `torch.load(weights_only=True)`: a checkpoint holds
tensors and plain Python values (dict, list, tuple, str, int, float, bool, None) only, so loading one cannot run
code. A file that carries any other pickled object is refused (UnsafeCheckpointError), naming what it carries.

`MODEL_KINDS` is the one model registry (kind -> model class, config class: DualVAE, the baselines, the
attribute classifier); `build(kind, **config)` builds any of them and `load_model(path, kind)` loads any of them:
DualVAE.load, baselines.build/load and AttributeClassifier.load go through them.

A label-parallel DualVAE checkpoint (`dualvae train --label-parallel`) holds everything but U in its main file,
plus "label_parallel": {"world_size": K, "num_labels": n, "shards": [{"file", "rank", "lo", "hi"}, ...]}; each
shard file (kind LABEL_SHARD_KIND, named by label_shard_name, a path relative to the main file's folder) holds
rows [lo, hi) of U and the step it belongs to. `read_label_shard` reads and checks one, `load_model` assembles
the full U from all of them.

A training run's step checkpoints live in out/ckpt as step-N.pt (checkpoint_path, list_checkpoints);
write_step_checkpoint writes one, makes out/model.pt a copy of it and rotates the old ones out."""
from __future__ import annotations

import glob
import importlib
import os
import pickle
import re
from collections import OrderedDict

import torch

from dualvae.data.atomic import copy_atomic, write_atomic


# exact types: a numpy float64 is a float, but pickles as a numpy object
_SCALARS = (str, int, float, bool, type(None))
_TORCH_VALUES = (torch.Tensor, torch.dtype, torch.device, torch.Size)


def check_plain(obj, where: str = "checkpoint") -> None:
    """Raise TypeError naming the first value in `obj` that torch.load(weights_only=True) would refuse: only
    tensors, dtypes, devices and sizes, str/int/float/bool/None, and dicts, lists and tuples of them."""
    if type(obj) in _SCALARS or isinstance(obj, _TORCH_VALUES):
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            check_plain(k, f"{where} key {k!r}")
            check_plain(v, f"{where}[{k!r}]")
    elif type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
    else:
        raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}; a checkpoint stores "
                        f"tensors and plain values only (convert it: a dataclass to a dict, an array to a tensor)")


def save_atomic(obj, path: str) -> str:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`; `obj` must hold
    tensors and plain values only (check_plain), so that load_checkpoint can read it back."""
    check_plain(obj)
    return write_atomic(path, lambda f: torch.save(obj, f))


class UnsafeCheckpointError(ValueError):
    """The checkpoint carries pickled Python objects (classes, numpy arrays), not only tensors and plain types."""


def _pickled_globals(path: str, exc: Exception) -> list[str]:
    """The classes/functions a file's pickle references beyond what weights_only allows (empty: none found)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - not a zip checkpoint (legacy format): read the name from the error
        return re.findall(r"GLOBAL ([\w.]+)", str(exc))


def _torch_reason(exc: Exception) -> str:
    """The line of torch.load's error that says what is wrong with the file, without its advice (which, for a
    weights_only refusal, is to load unsafely)."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    return f"{type(exc).__name__}: {lines[0].split('. ')[0]}" if lines else type(exc).__name__


def _unreadable(path: str, exc: Exception) -> ValueError:
    """Our message for a file torch.load cannot read: its path, its size, what was expected."""
    return ValueError(f"checkpoint {path} could not be read: the file ({os.path.getsize(path)} bytes) is not a "
                      f"readable checkpoint; expected a file written by torch.save (a zip archive) holding tensors "
                      f"and plain values, as dualvae writes them (model.pt, ckpt/step-N.pt); torch.load: "
                      f"{_torch_reason(exc)}")


def load_checkpoint(path: str, map_location="cpu", kind: str | tuple[str, ...] | None = None) -> dict:
    """Load a checkpoint dict (tensors and plain types only); `kind` ("dualvae", "classifier", or a tuple of
    them) must match what was saved."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _pickled_globals(path, exc)
        if not found:
            raise _unreadable(path, exc) from None
        raise UnsafeCheckpointError(
            f"checkpoint {path} holds pickled Python objects ({', '.join(found)}), not only tensors and plain "
            f"types; refused, since unpickling them can run arbitrary code. A checkpoint written by an older "
            f"DualVAE (configs as dataclasses, numpy RNG state) must be re-saved: train again, or, only if you "
            f"trust where the file came from, load it with torch.load(path, weights_only=False) and save it "
            f"again with tensors and plain values only") from None
    except Exception as exc:  # truncated or not a torch file
        raise _unreadable(path, exc) from None
    kinds = (kind,) if isinstance(kind, str) else kind
    if not isinstance(ckpt, dict) or (kinds is not None and ckpt.get("kind") not in kinds):
        found = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        expected = " or ".join(repr(k) for k in kinds) if kinds else "a dict"
        raise ValueError(f"checkpoint {path} holds {found!r}, expected a {expected} checkpoint")
    return ckpt


# -- label-parallel shards --------------------------------------------------------------------------------------
LABEL_SHARD_KIND = "dualvae-label-shard"


def label_shard_name(main_name: str, rank: int, world: int) -> str:
    """The file name of rank `rank`'s shard beside the main checkpoint `main_name`: step-N.shard-R-of-K.pt."""
    stem = main_name[:-3] if main_name.endswith(".pt") else main_name
    return f"{os.path.basename(stem)}.shard-{rank}-of-{world}.pt"


def read_label_shard(path: str, ckpt: dict, rank: int, map_location="cpu") -> dict:
    """Rank `rank`'s shard of the label-parallel checkpoint `ckpt` read from `path`, checked against it (kind,
    step, rank, world size, range, U's shape); ValueError naming the shard file when it is missing or does not
    belong to this checkpoint."""
    lp = ckpt["label_parallel"]
    entries = lp["shards"]
    if not 0 <= rank < len(entries):
        raise ValueError(f"checkpoint {path}: no label shard for rank {rank} (it lists {len(entries)})")
    entry = entries[rank]
    shard_path = os.path.join(os.path.dirname(os.path.abspath(path)), entry["file"])
    if not os.path.isfile(shard_path):
        raise ValueError(f"checkpoint {path}: its label shard {shard_path} (rank {rank} of {lp['world_size']}, "
                         f"U rows [{entry['lo']}, {entry['hi']})) is missing")
    shard = load_checkpoint(shard_path, map_location=map_location, kind=LABEL_SHARD_KIND)
    expected = {"step": ckpt.get("step"), "rank": rank, "world_size": lp["world_size"], "lo": entry["lo"],
                "hi": entry["hi"]}
    found = {k: shard.get(k) for k in expected}
    U = shard.get("U")
    d = ckpt["config"]["latent_dim"]
    if found != expected or not isinstance(U, torch.Tensor) or tuple(U.shape) != (entry["hi"] - entry["lo"], d):
        got = {**found, "U": tuple(U.shape) if isinstance(U, torch.Tensor) else type(U).__name__}
        raise ValueError(f"label shard {shard_path} does not belong to checkpoint {path}: it holds {got}, "
                         f"expected {expected} and U of shape ({entry['hi'] - entry['lo']}, {d})")
    return shard


def assemble_label_shards(path: str, ckpt: dict, map_location="cpu") -> torch.Tensor:
    """The full U (n, d) of a label-parallel checkpoint: its shards' rows, in order."""
    lp = ckpt["label_parallel"]
    entries = lp["shards"]
    ranges = [(e["lo"], e["hi"]) for e in entries]
    bounds = [0] + [hi for _, hi in ranges]
    if len(entries) != lp["world_size"] or [lo for lo, _ in ranges] != bounds[:-1] or bounds[-1] != lp["num_labels"]:
        raise ValueError(f"checkpoint {path}: its label shards {ranges} do not cover [0, {lp['num_labels']}) "
                         f"in order over {lp['world_size']} ranks")
    return torch.cat([read_label_shard(path, ckpt, r, map_location)["U"] for r in range(len(entries))])


# -- a run's step checkpoints ----------------------------------------------------------------------------------
CKPT_NAME = re.compile(r"step-(\d+)\.pt$")
SHARD_NAME = re.compile(r"\.shard-\d+-of-\d+\.pt$")  # what label_shard_name adds to the main file's stem


def checkpoint_path(ckpt_dir: str, step: int) -> str:
    """ckpt_dir/step-N.pt, N zero-padded so that names sort by step."""
    return os.path.join(ckpt_dir, f"step-{step:09d}.pt")


def list_checkpoints(ckpt_dir: str) -> list[str]:
    """Step checkpoints in `ckpt_dir`, newest (highest step) first."""
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(ckpt_dir, "step-*.pt"))
             if (m := CKPT_NAME.search(os.path.basename(p)))]
    return [p for _, p in sorted(found, reverse=True)]


def write_step_checkpoint(ck: dict, ckpt_dir: str, step: int, model_path: str, keep: int) -> str:
    """out/ckpt/step-N.pt (atomic), then out/model.pt as a copy of it (atomic), then the oldest beyond `keep`
    removed: a crash at any point leaves every file complete."""
    path = save_atomic(ck, checkpoint_path(ckpt_dir, step))
    copy_atomic(path, model_path)
    rotate_checkpoints(ckpt_dir, keep)
    return path


def rotate_checkpoints(ckpt_dir: str, keep: int) -> None:
    """Remove the step checkpoints beyond the newest `keep`, and every label-parallel shard file whose main file
    is not there: those of the removed ones, and those a crash left between writing the shards and the main
    file. (The newest main file is written after all of its shards, and no rank writes the next ones before
    this returns: the step's collectives wait for rank 0.)"""
    for old in list_checkpoints(ckpt_dir)[keep:]:
        os.remove(old)
    for shard in glob.glob(os.path.join(glob.escape(ckpt_dir), "step-*.shard-*-of-*.pt")):
        if not os.path.exists(SHARD_NAME.sub(".pt", shard)):
            os.remove(shard)


# The one model registry: every checkpoint kind -> (its model class, its config class; None where the config is
# a plain dict), as "module:name", imported only when used: the model modules import this one.
MODEL_KINDS = {
    "dualvae": ("dualvae.model:DualVAE", "dualvae.model:DualVAEConfig"),
    "cvae": ("dualvae.baselines.cvae:CVAE", "dualvae.baselines.cvae:CVAEConfig"),
    "fader": ("dualvae.baselines.fader:Fader", "dualvae.baselines.fader:FaderConfig"),
    "stargan": ("dualvae.baselines.stargan:StarGAN", "dualvae.baselines.stargan:StarGANConfig"),
    "classifier": ("dualvae.classifier:AttributeClassifier", None),
}


def _check_kind(kind: str) -> None:
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {sorted(MODEL_KINDS)}")


def _import(ref: str):
    module, name = ref.split(":")
    return getattr(importlib.import_module(module), name)


def model_class(kind: str):
    """The class that builds models of `kind` (a key of MODEL_KINDS)."""
    _check_kind(kind)
    return _import(MODEL_KINDS[kind][0])


def config_class(kind: str):
    """The config dataclass of `kind`'s model; None for a kind whose config is a plain dict (the classifier)."""
    _check_kind(kind)
    ref = MODEL_KINDS[kind][1]
    return None if ref is None else _import(ref)


def kinds_of(base: type) -> tuple[str, ...]:
    """The kinds whose class is `base` or a subclass of it, in registry order (TransferModel: every transfer
    model; baselines.common.LabelConditioned: the baselines)."""
    return tuple(k for k in MODEL_KINDS if issubclass(model_class(k), base))


def build(kind: str, **config):
    """A new model of `kind` from its config fields (every model class takes them as keyword arguments)."""
    return model_class(kind)(**config)


def load_model(path: str, kind: str | tuple[str, ...] | None = None, map_location="cpu"):
    """The model in the checkpoint `path`, in eval mode: the one loader of every kind (MODEL_KINDS).

    kind: the kind (or kinds) the file must hold; None accepts any. The file is read with load_checkpoint
    (tensors and plain values only), the model built from its config dict (`build`), then given the
    checkpoint's weights and attribute names; a label-parallel checkpoint's U is assembled from its shard files.
    Each failure raises ValueError naming the file."""
    kinds = tuple(MODEL_KINDS) if kind is None else (kind,) if isinstance(kind, str) else tuple(kind)
    for k in kinds:
        _check_kind(k)  # an unknown kind asked for is the caller's error, not the file's
    ckpt = load_checkpoint(path, map_location=map_location, kind=kinds)
    config = ckpt.get("config")
    if not isinstance(config, dict):
        raise ValueError(f"checkpoint {path} has no config dict (found {type(config).__name__})")
    try:
        model = build(ckpt["kind"], **config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"checkpoint {path}: its config {config} does not build the model: {exc}") from None
    state = ckpt["model"]
    if ckpt.get("label_parallel"):
        state = {**state, "U": assemble_label_shards(path, ckpt, map_location)}
    try:
        model.load_state_dict(state)
    except (KeyError, RuntimeError) as exc:
        raise ValueError(f"checkpoint {path}: its weights do not fit {type(model).__name__}: {exc}") from None
    model.attr_names = ckpt.get("attr_names")
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    return model.eval()
