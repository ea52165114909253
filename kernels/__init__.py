"""dualvae.kernels: fused VAE losses (reparameterization + KL, the dual head's masked Bernoulli NLL) for
PyTorch, with their pure-PyTorch references. Needs only torch and triton (docs/kernels.md).

Use the fused ops in your VAE (examples/vae_multilabel.py trains this on generated CelebA-format data):

    from dualvae.kernels import DualHead, ReparameterizeKL

    sample = ReparameterizeKL()                             # z = mu + exp(logvar/2) * eps, and KL(q || N(0, I))
    head = DualHead(latent_dim=32, num_labels=40, reduction="sum")  # p(y|z) = Bern(sigmoid(z U^T)), U = weight
    mu, logvar = encoder(x).chunk(2, dim=1)
    z, kl = sample(mu, logvar)                              # kl: (B,) per row
    loss = (recon(decoder(z), x) + kl).mean() + head(z, y, mask) / len(x)   # no B x 40 logits are formed

Labels for many classes (dual_bce's y and mask, on every backend):

    y = SparseLabels(indptr, indices, n)                    # the positives, CSR rows (or SparseLabels.from_dense)
    mask = HashedMask(seed, missing_ratio, rows)            # the missing-label mask as a hash of the global rows
    loss = head(z, y, mask)                                 # fused: no B x n label matrix or mask is formed

Functions: `reparameterize_kl`, `dual_bce`, `pack_labels` / `PackedLabels`, `SparseLabels`, `HashedMask`,
`kl_standard_normal`; modules: `ReparameterizeKL`, `DualHead`. Each takes backend="auto" | "triton" | "reference" | "cpu" (`BACKENDS`, the
`Backend` enum); `resolve_backend(backend, device=..., dtype=...)` says which one runs. The pure-PyTorch
definitions are in `reference`.

The compiled CPU library (kernels/csrc, built by CMake through setup.py) is loaded on import when present;
`has_compiled_ops()` says whether it was. Without it everything still works on the reference path. Its fused
kernels are built for several instruction sets (default, avx2, avx512) and the widest the CPU runs is chosen;
`cpu_isa()` says which, and `DUALVAE_CPU_ISA=default|avx2|avx512` forces one.
"""
from __future__ import annotations

import glob
import os
import warnings

import torch

from . import reference

__all__ = ["reparameterize_kl", "dual_bce", "pack_labels", "PackedLabels", "SparseLabels", "HashedMask", "BACKENDS",
           "Backend", "resolve_backend", "DualHead", "ReparameterizeKL", "kl_standard_normal", "has_compiled_ops",
           "cpu_isa", "reference"]

_HERE = os.path.dirname(os.path.abspath(__file__))
_BUILD_HINT = (
    "dualvae: the compiled CPU kernels (dualvae.kernels._C) are not built; using the pure-PyTorch path. "
    "Build them with `make install` (or `pip install --no-build-isolation -e .` with torch installed)."
)


def _load_compiled() -> bool:
    candidates = sorted(glob.glob(os.path.join(_HERE, "_C*.so")))
    if not candidates:
        warnings.warn(_BUILD_HINT, RuntimeWarning, stacklevel=3)
        return False
    try:
        torch.ops.load_library(candidates[0])
    except OSError as exc:  # e.g. built against another torch
        warnings.warn(f"{_BUILD_HINT} (loading {candidates[0]} failed: {exc})", RuntimeWarning, stacklevel=3)
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


# After the compiled library: its TORCH_LIBRARY defines the dualvae namespace that ops.py adds to, and ops.py
# asks has_compiled_ops() above. Importing ops loads the submodule dual_bce.py; the function imported here then
# takes the name, so `dualvae.kernels.dual_bce` is the op and the Triton file is reached as a submodule
# (`from dualvae.kernels.dual_bce import dual_bce_fwd`).
from .labels import HashedMask, PackedLabels, SparseLabels, pack_labels  # noqa: E402
from .ops import BACKENDS, Backend, dual_bce, reparameterize_kl, resolve_backend  # noqa: E402
from .modules import DualHead, ReparameterizeKL  # noqa: E402


def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-row KL to N(0, I): the compiled op on CPU when built, else the reference formula."""
    if _COMPILED and mu.device.type == "cpu":
        return torch.ops.dualvae.kl_standard_normal(mu, logvar)
    return reference.kl_standard_normal(mu, logvar)
