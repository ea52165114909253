"""The package's one way to write a file: into a temporary file in the same folder, fsync, then rename over the
target. A crash mid-write leaves the previous file whole (readers see the old file or the new one, never half a
file), and on any error the temporary file is removed. It imports nothing of the package, so the data library
(dualvae.data) and the application both write through it, and bench/gpu_check.py loads it from its file on a
bare host."""
from __future__ import annotations

import contextlib
import json
import os
import shutil


@contextlib.contextmanager
def atomic_output(path: str):
    """Yield a temporary path beside `path` to write (by any library that takes a path, e.g. h5py, which must have
    closed it when the block ends); it is fsynced and replaces `path` when the block ends without an error, and is
    removed when it raises."""
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_atomic(path: str, write) -> str:
    """Call write(f) on a binary file that becomes `path` once write returns; returns the absolute path."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as f:
            write(f)
    return os.path.abspath(path)


def write_text_atomic(path: str, text: str) -> str:
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json_atomic(path: str, obj, indent: int = 2, **dumps_kw) -> str:
    return write_text_atomic(path, json.dumps(obj, indent=indent, **dumps_kw) + "\n")


def copy_atomic(src: str, path: str) -> str:
    """Copy file `src` to `path`: readers see the old file or the whole copy."""
    def write(f):
        with open(src, "rb") as s:
            shutil.copyfileobj(s, f)

    return write_atomic(path, write)
