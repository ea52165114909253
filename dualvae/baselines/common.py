"""What the three baselines share: the masked label loss, how missing labels are filled, the target labels of a
transfer (StarGAN's `create_labels`, with a strength λ), the label-conditioned transfer (`LabelConditioned`, on
the `TransferModel` interface) and the reconstruction check that tells a face model from a failed one.

Attribute losses are summed over the attributes and averaged over the batch, as the originals compute them
(StarGAN's `classification_loss`, FaderNetworks' per-attribute cross-entropies added up).

Missing labels (mask I from `dualvae.data.draw_label_mask`, True = observed):
- every classification loss is a masked BCE (`masked_bce`): a missing entry contributes neither loss nor gradient;
- where a network is *conditioned* on y (CVAE's encoder/decoder, Fader's decoder, StarGAN's reconstruction
  target), a missing entry is filled with the model's own prediction of it (`fill_missing`, detached), so the
  value stored at a missing entry never reaches any gradient. At transfer time the source labels of a test image
  are likewise the model's prediction (every model sees only x, as DualVAE does), unless the caller passes the
  dataset's labels (`transfer_all(..., source_labels=y)`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dualvae.transfer_model import TransferModel


def masked_bce(logits: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """BCE-with-logits summed over the attributes, averaged over the batch (the originals' reduction).

    With a mask (1 = observed) the sum runs over the observed entries and is scaled by n / (observed entries per
    row), so that it equals the full sum when every label is observed and keeps that size as labels go missing:
    the attribute term's weight against the adversarial and reconstruction terms does not shrink with s. 0 (with a
    graph) when nothing is observed."""
    if logits.shape != y.shape:
        raise ValueError(f"masked_bce: logits have shape {tuple(logits.shape)}, y {tuple(y.shape)}")
    n = logits.shape[-1]
    if mask is None:
        return F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / max(len(logits), 1)
    if mask.shape != y.shape:
        raise ValueError(f"masked_bce: mask has shape {tuple(mask.shape)}, expected {tuple(y.shape)}")
    m = mask.to(logits.dtype)
    # where(): the value of y at a missing entry cannot leak into the loss, even as NaN.
    y_obs = torch.where(m > 0, y.to(logits.dtype), torch.zeros_like(logits))
    per = F.binary_cross_entropy_with_logits(logits, y_obs, reduction="none") * m
    return per.sum() * n / m.sum().clamp_min(1.0)


def fill_missing(y: torch.Tensor, mask: torch.Tensor | None, predicted: torch.Tensor) -> torch.Tensor:
    """y at observed entries, the (detached) predicted probability at missing ones."""
    if mask is None:
        return y
    return torch.where(mask.bool(), y, predicted.detach().to(y.dtype))


HAIR_COLORS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")  # StarGAN's create_labels group


def exclusive_groups(attr_names) -> list[list[int]]:
    """Groups of mutually exclusive attributes among `attr_names`: CelebA's hair colours, as StarGAN's
    `create_labels` treats them (setting one turns the others off)."""
    names = list(attr_names or [])
    group = [names.index(a) for a in HAIR_COLORS if a in names]
    return [group] if len(group) > 1 else []


def target_labels(y: torch.Tensor, domain: torch.Tensor, lam: float, groups=()) -> torch.Tensor:
    """Target labels of a transfer to `domain` (one index per row) at strength lam: y_i <- y_i + lam (1 - y_i)
    on the target entry, and, when the target is in an exclusive group (hair colours), y_j <- y_j - lam y_j on
    the others of the group; every other entry unchanged. lam = 1 treats the hair colours as StarGAN's
    `create_labels` does (c_i = 1, the other hair colours 0); any other target is set to 1 (the transfer to domain
    i of the CIS protocol), where `create_labels` flips it. lam != 1 scales every change (the attribute value shift
    of CVAE/Fader, StarGAN's c_i beyond 1)."""
    out = y.clone()
    rows = torch.arange(len(y), device=y.device)
    out[rows, domain] = y[rows, domain] + lam * (1.0 - y[rows, domain])
    for group in groups:
        g = torch.tensor(group, device=y.device)
        in_group = (domain[:, None] == g[None, :]).any(1)  # rows whose target is in the group
        off = torch.zeros_like(y, dtype=torch.bool)
        off[:, g] = in_group[:, None]
        off[rows, domain] = False
        out = torch.where(off, y - lam * y, out)
    return out


def label_maps(y: torch.Tensor, size: int) -> torch.Tensor:
    """(B, n) -> (B, n, size, size): each label as a constant feature map."""
    return y[:, :, None, None].expand(-1, -1, size, size)


class LabelConditioned(TransferModel):
    """A transfer model conditioned on labels: it transfers x with source labels y (the dataset's, or its own
    `predict_labels(x)`) to the target labels of a domain, through `transfer_rows(x, y, domain, lam)`."""

    def targets(self, y: torch.Tensor, domain: torch.Tensor, lam: float) -> torch.Tensor:
        """The target labels of a transfer (`target_labels`, with the model's exclusive hair-colour group)."""
        return target_labels(y, domain, lam, exclusive_groups(self.attr_names))

    @torch.no_grad()
    def predicted_source_labels(self, x: torch.Tensor, max_batch: int) -> torch.Tensor:
        return torch.cat([self.predict_labels(x[a:a + max_batch]) for a in range(0, len(x), max_batch)])

    def transfer_domains(self, x, domain, lam, source_labels=None):
        y = self.predict_labels(x) if source_labels is None else source_labels.to(x.device, x.dtype)
        return self.transfer_rows(x, y, domain, lam)


@torch.no_grad()
def reconstruction_ratio(model, x: torch.Tensor, source_labels: torch.Tensor | None = None) -> float:
    """Mean |x - x'| of the model's reconstruction x' (x -> its own labels c_x -> x: a transfer at strength 0),
    over the same for the dataset mean image. About 1 or more for a model that outputs noise or one image for
    every input; well below 1 for a model that reproduces faces. The failure detector of the experiments."""
    if len(x) < 2:
        raise ValueError(f"reconstruction_ratio: need at least 2 images, got {len(x)}")
    kw = {} if source_labels is None else {"source_labels": source_labels}
    rec = model.transfer_all(x, [0], 0.0, **kw)[:, 0]
    err = (rec - x).abs().mean()
    base = (x - x.mean(0, keepdim=True)).abs().mean().clamp_min(1e-8)
    return (err / base).item()
