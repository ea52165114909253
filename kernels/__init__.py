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

For any multi-label head, nn.Linear + nn.BCEWithLogitsLoss fused, with BCEWithLogitsLoss's options:

    loss = linear_binary_cross_entropy_with_logits(h, head.weight, y, head.bias, pos_weight=pw)
    head = LinearBCEWithLogits(in_features, num_labels, pos_weight=pw)   # head(h, y); head.logits(h) to predict

Functions: `reparameterize_kl`, `dual_bce`, `linear_binary_cross_entropy_with_logits`, `pack_labels` /
`PackedLabels`, `SparseLabels`, `HashedMask`, `kl_standard_normal`; modules: `ReparameterizeKL`, `DualHead`,
`LinearBCEWithLogits`. Each takes backend="auto" | "triton" |
"reference" | "cpu" (`BACKENDS`, the `Backend` enum); `resolve_backend(backend, device=..., dtype=...)` says which
one runs. The pure-PyTorch definitions are in `reference`.

Layout, each module importing only those below it: _checks.py (shared argument checks), mask_hash.py (the
hashed mask's integers), labels.py (PackedLabels, SparseLabels, HashedMask, LabelArgs), reference.py (the
meaning of every op), _library.py (the compiled CPU library), the Triton kernels and launchers (reparam_kl.py,
dual_bce_triton.py with _triton_labels.py and dual_bce_sparse.py), ops.py (torch.library ops, autograd,
backends), modules.py.

The compiled CPU library (kernels/csrc, built by CMake through setup.py) is loaded on import when present;
`has_compiled_ops()` says whether it was. Without it everything still works on the reference path. Its fused
kernels are built for several instruction sets (default, avx2, avx512) and the widest the CPU runs is chosen;
`cpu_isa()` says which, and `DUALVAE_CPU_ISA=default|avx2|avx512` forces one.
"""
from __future__ import annotations

import torch

from . import reference
from ._library import cpu_isa, has_compiled_ops
from .labels import HashedMask, PackedLabels, SparseLabels, pack_labels
from .linear_bce import linear_binary_cross_entropy_with_logits
from .modules import DualHead, LinearBCEWithLogits, ReparameterizeKL
from .ops import BACKENDS, Backend, dual_bce, reparameterize_kl, resolve_backend

__all__ = ["reparameterize_kl", "dual_bce", "linear_binary_cross_entropy_with_logits", "LinearBCEWithLogits",
           "pack_labels", "PackedLabels", "SparseLabels", "HashedMask", "BACKENDS",
           "Backend", "resolve_backend", "DualHead", "ReparameterizeKL", "kl_standard_normal", "has_compiled_ops",
           "cpu_isa", "reference"]

def kl_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-row KL to N(0, I): the compiled op on CPU when built, else the reference formula."""
    if has_compiled_ops() and mu.device.type == "cpu":
        return torch.ops.dualvae.kl_standard_normal(mu, logvar)
    return reference.kl_standard_normal(mu, logvar)
