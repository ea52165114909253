"""The compiled CPU library (kernels/csrc, built by CMake through setup.py): loaded once, on import, when present.
Its TORCH_LIBRARY defines the `dualvae` op namespace that ops.py adds to."""
from __future__ import annotations

import glob
import os
import warnings

import torch

_HERE = os.path.dirname(os.path.abspath(__file__))
_BUILD_HINT = (
    "dualvae: the compiled CPU kernels (dualvae.kernels._C) are not built; using the pure-PyTorch path. "
    "Build them with `make install` (or `pip install --no-build-isolation -e .` with torch installed)."
)


def _load_compiled() -> bool:
    candidates = sorted(glob.glob(os.path.join(_HERE, "_C*.so")))
    if not candidates:
        warnings.warn(_BUILD_HINT, RuntimeWarning, stacklevel=4)
        return False
    try:
        torch.ops.load_library(candidates[0])
    except OSError as exc:  # e.g. built against another torch
        warnings.warn(f"{_BUILD_HINT} (loading {candidates[0]} failed: {exc})", RuntimeWarning, stacklevel=4)
        return False
    return True


_COMPILED = _load_compiled()


def has_compiled_ops() -> bool:
    """True when the CMake-built CPU library is loaded (torch.ops.dualvae.* available): backend "cpu" runs its
    C++ kernels, not the reference."""
    return _COMPILED


def cpu_isa() -> str | None:
    """The build of the fused C++ CPU kernels that backend "cpu" runs in this process: "default" (baseline
    x86-64, or any other CPU), "avx2" (AVX2 + FMA + F16C) or "avx512" (AVX-512 F/BW/VL/DQ); None without the
    compiled library. Auto: the widest build compiled in that this CPU and its OS support.

    DUALVAE_CPU_ISA=default|avx2|avx512 forces one build (auto or empty: the default choice). The library reads
    it once, at the first call of a C++ kernel or of this function, and keeps that choice for the process; a
    value it does not know, a build it lacks or one this CPU cannot run raises there (ValueError /
    RuntimeError naming the value and the builds available), never falls back silently.
    """
    if not _COMPILED:
        return None
    return torch.ops.dualvae.cpu_isa()
