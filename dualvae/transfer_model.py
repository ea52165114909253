"""The interface every transfer model implements: DualVAE and the baselines (CVAE, FaderNetworks, StarGAN).

A transfer model m maps an image x and a domain i (a label index) to m^i(x), the image moved to domain i at a
strength lam. `TransferModel` defines once what they share:

    domain_indices(domains)           None (all), an index or label name, or a list of them -> label indices
                                      (label names: the attributes, and "identity_<id>" for a model trained
                                      with identity labels: that identity's dual vector)
    transfer(x, domain, lam)          one domain for every image, or one per image -> (N, C, H, W)
    transfer_all(x, domains, lam, max_batch=None, source_labels=None)
                                      every image to every domain -> (N, n_dom, C, H, W), out[j, k] = m^{d_k}(x_j)
    checkpoint_state() / load(path)   the checkpoint dict (kind, config, weights, attribute names) and back

A subclass sets `kind` (its checkpoint kind), `config` (a dataclass with image_size, channels, num_labels) and
implements `transfer_domains(x, domain, lam, source_labels)` (one transfer per row, `domain` a tensor of
indices); a label-conditioned model also `predicted_source_labels`. It may replace `transfer_all` with a faster
path under the same contract, as DualVAE does (encode once, decode z + lam * u_i).
"""
from __future__ import annotations

import math
from dataclasses import asdict

import torch
from torch import nn

from dualvae import batching
from dualvae.data import IDENTITY_PREFIX  # the label names of identity columns ("identity_2880")


def is_identity_name(name) -> bool:
    return isinstance(name, str) and name.startswith(IDENTITY_PREFIX)


def _unknown_domain(who: str, d: str, attr_names) -> ValueError:
    names = list(attr_names or [])
    attributes = [n for n in names if not is_identity_name(n)]
    identities = [n for n in names if is_identity_name(n)]
    if is_identity_name(d):
        if not identities:
            why = ("this model was trained without identity labels (train it with --labels attributes,identity "
                   "for a dual vector per identity)")
        else:
            why = (f"the model has dual vectors for the {len(identities)} identities of its training split "
                   f"({identities[0]} ... {identities[-1]}); an identity seen only in val/test, or not in the "
                   f"training data, has none")
        return ValueError(f"{who}: unknown domain {d!r}: {why}")
    known = f"{attributes}" + (f" and {len(identities)} identities ({identities[0]} ...)" if identities else "")
    return ValueError(f"{who}: unknown domain {d!r}; known: {known if names else None}")


def domain_indices(domains, num_labels: int, attr_names=None, who: str = "domains") -> list[int]:
    """Label indices of `domains`: None (all), an index or label name (an attribute, or "identity_<id>" where the
    model has that identity's column), or a sequence of them."""
    if domains is None:
        return list(range(num_labels))
    if isinstance(domains, (int, str)) or (isinstance(domains, torch.Tensor) and domains.dim() == 0):
        domains = [domains]
    out = []
    position = {n: i for i, n in enumerate(attr_names)} if attr_names else {}
    for d in domains:
        if isinstance(d, str):
            if d not in position:
                raise _unknown_domain(who, d, attr_names)
            d = position[d]
        out.append(int(d))
    bad = [d for d in out if not 0 <= d < num_labels]
    if bad:
        raise ValueError(f"{who}: domains {bad} out of range [0, {num_labels})")
    return out


def check_lam(lam, who: str) -> None:
    if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not math.isfinite(lam):
        raise ValueError(f"{who}: lam must be a finite number, got {lam!r}")


class TransferModel(nn.Module):
    """Base class of the transfer models; see the module docstring for the contract."""

    kind: str | None = None  # the checkpoint kind; None on this base class (any transfer model)

    def __init__(self):
        super().__init__()
        self.attr_names: list[str] | None = None

    @property
    def num_labels(self) -> int:
        return self.config.num_labels

    def domain_indices(self, domains) -> list[int]:
        return domain_indices(domains, self.num_labels, self.attr_names, type(self).__name__)

    def check_transfer_input(self, x: torch.Tensor, lam, max_batch=None, source_labels=None) -> None:
        """Raise ValueError naming the argument of transfer_all that does not fit this model."""
        cfg, who = self.config, f"{type(self).__name__}.transfer_all"
        if x.dim() != 4 or len(x) == 0 or tuple(x.shape[1:]) != (cfg.channels, cfg.image_size, cfg.image_size):
            raise ValueError(f"{who}: x has shape {tuple(x.shape)}, expected "
                             f"(N, {cfg.channels}, {cfg.image_size}, {cfg.image_size})")
        check_lam(lam, who)
        batching.check_max_batch(max_batch, who)
        if source_labels is not None and tuple(source_labels.shape) != (len(x), cfg.num_labels):
            raise ValueError(f"{who}: source_labels have shape {tuple(source_labels.shape)}, expected "
                             f"({len(x)}, {cfg.num_labels})")

    def transfer_domains(self, x: torch.Tensor, domain: torch.Tensor, lam: float,
                         source_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Row r of x transferred to domain[r]: (B, C, H, W). `source_labels` (B, num_labels) 0/1, the dataset's
        labels of x, for a label-conditioned model (None: its own prediction)."""
        raise NotImplementedError

    def predicted_source_labels(self, x: torch.Tensor, max_batch: int) -> torch.Tensor | None:
        """The labels of x a label-conditioned model starts from when the caller gives none, predicted once per
        image (not once per (image, domain) row); None for a model that needs none."""
        return None

    @torch.no_grad()
    def transfer(self, x: torch.Tensor, domain, lam: float = 1.0) -> torch.Tensor:
        """Each image of x to `domain`: an index or label name (an attribute, "identity_<id>") for every image, or
        a sequence, one per image."""
        doms = self.domain_indices(domain)
        if isinstance(domain, (int, str)):
            doms = doms * len(x)
        if len(doms) != len(x):
            raise ValueError(f"transfer: {len(doms)} domains for {len(x)} images; give one, or one per image")
        return self.transfer_domains(x, torch.tensor(doms, device=x.device), lam)

    @torch.no_grad()
    def transfer_all(self, x: torch.Tensor, domains=None, lam: float = 1.0, max_batch: int | None = None,
                     source_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Every image of x (N, C, H, W) to every domain: (N, n_dom, C, H, W), out[j, k] = m^{domains[k]}(x_j),
        pushed through the network `max_batch` rows at a time (default `batching.CPU_MAX_BATCH`).
        `domains` as in domain_indices; `source_labels` (N, num_labels), the dataset's 0/1 labels of x."""
        self.check_transfer_input(x, lam, max_batch, source_labels)
        idx = self.domain_indices(domains)
        max_batch = max_batch or batching.CPU_MAX_BATCH
        n_dom = len(idx)
        rows_img = torch.arange(len(x), device=x.device).repeat_interleave(n_dom)
        rows_dom = torch.tensor(idx, device=x.device).repeat(len(x))
        if source_labels is not None:
            y = source_labels.to(x.device, x.dtype)
        else:
            y = self.predicted_source_labels(x, max_batch)
        outs = []
        for a in range(0, len(rows_img), max_batch):
            j = rows_img[a:a + max_batch]
            outs.append(self.transfer_domains(x[j], rows_dom[a:a + max_batch], lam, None if y is None else y[j]))
        out = torch.cat(outs)
        return out.view(len(x), n_dom, *out.shape[1:])

    def checkpoint_state(self) -> dict:
        return {"kind": self.kind, "config": asdict(self.config), "model": self.state_dict(),
                "attr_names": self.attr_names}

    @classmethod
    def load(cls, path: str, map_location="cpu"):
        """The model of a checkpoint of this class's kind (of any transfer model's, called on TransferModel),
        in eval mode."""
        from dualvae.checkpoint import kinds_of, load_model

        return load_model(path, cls.kind or kinds_of(cls), map_location)
