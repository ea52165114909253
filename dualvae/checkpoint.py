"""Checkpoints written atomically: a crash mid-write leaves the previous file intact, never half a file."""
from __future__ import annotations

import json
import os
import shutil

import torch


def _write_atomic(path: str, write) -> str:
    """write(f) into a temporary file in the same folder, fsync, then rename over `path`; on any error the
    temporary file is removed and `path` is untouched."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_atomic(obj, path: str) -> str:
    """torch.save to a temporary file in the same folder, fsync, then rename over `path`."""
    return _write_atomic(path, lambda f: torch.save(obj, f))


def copy_atomic(src: str, path: str) -> str:
    """Copy file `src` to `path` the same way: readers see the old file or the whole copy."""
    def write(f):
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f)

    return _write_atomic(path, write)


def write_text_atomic(path: str, text: str) -> str:
    """Write a text file through a temporary file and a rename: readers see the old file or the new one."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def write_json_atomic(path: str, obj) -> str:
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def load_checkpoint(path: str, map_location="cpu", kind: str | None = None) -> dict:
    """Load a checkpoint dict; `kind` ("dualvae", "classifier") must match what was saved."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as exc:  # truncated or not a torch file
        raise ValueError(f"checkpoint {path} could not be read: {exc}") from exc
    if not isinstance(ckpt, dict) or (kind is not None and ckpt.get("kind") != kind):
        found = ckpt.get("kind") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"checkpoint {path} holds {found!r}, expected a {kind!r} checkpoint")
    return ckpt


def load_model(cls, path: str, kind: str, map_location="cpu"):
    """Rebuild `cls(**config)` from a checkpoint of `kind`, load its weights and attribute names; eval mode."""
    ckpt = load_checkpoint(path, map_location=map_location, kind=kind)
    model = cls(**ckpt["config"])
    model.load_state_dict(ckpt["model"])
    model.attr_names = ckpt.get("attr_names")
    return model.eval()
