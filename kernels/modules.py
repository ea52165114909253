"""nn.Module twins of the fused ops: each validates and stores its options in __init__ and calls the op in
forward, so a model holds its loss heads as layers (and their parameters in its state_dict)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .labels import HashedMask, PackedLabels, SparseLabels
from .linear_bce import linear_binary_cross_entropy_with_logits
from .ops import BACKENDS, Backend, dual_bce, reparameterize_kl
from ._checks import REDUCTIONS


def _check_backend(cls: str, backend) -> str:
    try:
        return Backend(backend).value
    except ValueError:
        raise ValueError(f"{cls}: backend must be one of {BACKENDS}, got {backend!r}") from None


class DualHead(nn.Module):
    """The dual head p(y | z) = Bern(sigmoid(z U^T + b)) and its masked Bernoulli loss.

    `weight` is the dual matrix U, (num_labels, latent_dim), one dual vector u_i per label (nn.Linear's layout
    and name, so `logits` is F.linear); `bias` is b (num_labels,) or None. forward(z, y, mask) is
    `dual_bce(z, weight, y, mask, bias=bias, reduction=reduction, backend=backend)`: the fused backends never
    form the B x num_labels logits, in the forward or the backward. y: (B, num_labels) labels in {0, 1}, a
    PackedLabels (then mask is None) or a SparseLabels; mask: None, a (B, num_labels) tensor (1 = observed) or
    a HashedMask. The loss is float32 on the fused backends. check_labels=False skips the label check (and its
    per-call host sync on CUDA).
    """

    def __init__(self, latent_dim: int, num_labels: int, bias: bool = False, backend: str | Backend = "auto",
                 reduction: str = "mean", check_labels: bool = True, device=None, dtype=None):
        super().__init__()
        for name, value in (("latent_dim", latent_dim), ("num_labels", num_labels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"DualHead: {name} must be a positive int, got {value!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"DualHead: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        self.latent_dim, self.num_labels = latent_dim, num_labels
        self.backend = _check_backend("DualHead", backend)
        self.reduction = reduction
        self.check_labels = bool(check_labels)
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(num_labels, latent_dim, **factory))
        self.bias = nn.Parameter(torch.empty(num_labels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's initialisation: U and b uniform in +-1/sqrt(latent_dim)."""
        bound = 1.0 / math.sqrt(self.latent_dim)
        nn.init.uniform_(self.weight, -bound, bound)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -bound, bound)

    def _check_z(self, z) -> None:
        if not isinstance(z, Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"DualHead: z has shape {shape}, expected (B, {self.latent_dim})")

    def forward(self, z: Tensor, y: Tensor | PackedLabels | SparseLabels,
                mask: Tensor | HashedMask | None = None) -> Tensor:
        self._check_z(z)
        return dual_bce(z, self.weight, y, mask, bias=self.bias, reduction=self.reduction, backend=self.backend,
                        check_labels=self.check_labels)

    def logits(self, z: Tensor) -> Tensor:
        """z U^T (+ b), (B, num_labels): materialised, for predictions, not for the loss."""
        self._check_z(z)
        return nn.functional.linear(z, self.weight.to(z.dtype),
                                    self.bias.to(z.dtype) if self.bias is not None else None)

    def extra_repr(self) -> str:
        return (f"latent_dim={self.latent_dim}, num_labels={self.num_labels}, bias={self.bias is not None}, "
                f"backend={self.backend!r}, reduction={self.reduction!r}")


class ReparameterizeKL(nn.Module):
    """z = mu + exp(logvar / 2) * eps and the per-row KL(q || N(0, I)) in one pass: forward(mu, logvar, eps=None,
    *, seed=None, offset=0) -> (z, kl (B,)) is `reparameterize_kl(..., backend=backend)`. With eps None it is
    drawn: from (seed, offset) when a seed is given, else from torch's global generator. No parameters."""

    def __init__(self, backend: str | Backend = "auto"):
        super().__init__()
        self.backend = _check_backend("ReparameterizeKL", backend)

    def forward(self, mu: Tensor, logvar: Tensor, eps: Tensor | None = None, *, seed: int | None = None,
                offset: int = 0) -> tuple[Tensor, Tensor]:
        return reparameterize_kl(mu, logvar, eps, seed=seed, offset=offset, backend=self.backend)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"


class LinearBCEWithLogits(nn.Module):
    """nn.Linear(in_features, out_features) followed by nn.BCEWithLogitsLoss(weight=label_weight,
    pos_weight=pos_weight, reduction=reduction), fused: forward(input, target, mask=None) is
    `linear_binary_cross_entropy_with_logits(input, weight, target, bias, ...)`, which never forms the
    B x out_features logits; `logits(input)` is the linear layer, for predictions. `weight` and `bias` have
    nn.Linear's names, shapes and initialisation (a state_dict of nn.Linear loads into it); pos_weight and
    label_weight are buffers, as in nn.BCEWithLogitsLoss."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, pos_weight: Tensor | None = None,
                 label_weight: Tensor | None = None, label_smoothing: float = 0.0, reduction: str = "mean",
                 backend: str | Backend = "auto", device=None, dtype=None):
        super().__init__()
        for name, value in (("in_features", in_features), ("out_features", out_features)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LinearBCEWithLogits: {name} must be a positive int, got {value!r}")
        if reduction not in REDUCTIONS:
            raise ValueError(f"LinearBCEWithLogits: reduction must be one of {REDUCTIONS}, got {reduction!r}")
        if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
                or not 0.0 <= label_smoothing <= 1.0:
            raise ValueError(f"LinearBCEWithLogits: label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.in_features, self.out_features = in_features, out_features
        self.backend = _check_backend("LinearBCEWithLogits", backend)
        self.reduction, self.label_smoothing = reduction, float(label_smoothing)
        self.register_buffer("pos_weight", pos_weight)
        self.register_buffer("label_weight", label_weight)
        linear = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)  # its init
        self.weight = linear.weight
        self.bias = linear.bias

    def forward(self, input: Tensor, target: Tensor | PackedLabels | SparseLabels,
                mask: Tensor | HashedMask | None = None) -> Tensor:
        return linear_binary_cross_entropy_with_logits(
            input, self.weight, target, self.bias, pos_weight=self.pos_weight, label_weight=self.label_weight,
            mask=mask, label_smoothing=self.label_smoothing, reduction=self.reduction, backend=self.backend)

    def logits(self, input: Tensor) -> Tensor:
        """input W^T + b, (B, out_features): materialised, for predictions, not for the loss."""
        return nn.functional.linear(input, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}, backend={self.backend!r}")
