"""Conditional VAE (Kingma et al. 2014, the M2 model's conditional part) with DualVAE's encoder/decoder.

    q(y | x)       linear head on the encoder's conv features (x only): predicts labels, trained by masked BCE
    q(z | x, y)    DualVAE's conv encoder, y joined to the conv features before the fc layer -> (mu, logvar)
    p(x | z, y)    DualVAE's decoder on [z, y] (Gaussian, fixed sigma, as DualVAE)
    transfer to domain i: y = q(y|x) (the source labels), y_i <- y_i + lam (1 - y_i) (the other hair colours move
                   down as far, as StarGAN's `create_labels`), decode(mu(x, y), y')

Loss per batch: recon + KL + alpha * masked BCE(q(y|x), y). Missing labels: y fed to q(z|x,y) and p(x|z,y) is
the observed value where observed and q(y|x)'s probability (detached) where missing (`common.fill_missing`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dualvae.baselines import common
from dualvae.model import Decoder, DualVAEConfig, Encoder


@dataclass
class CVAEConfig:
    image_size: int = 64
    channels: int = 3
    latent_dim: int = 128
    num_labels: int = 40
    width: int = 32
    recon_sigma: float = 0.2
    alpha: float = 1.0  # weight of q(y|x)'s masked BCE (summed over labels, batch mean) against the per-image ELBO
    lr: float = 1e-3


class CVAE(common.LabelConditioned):
    kind = "cvae"

    def __init__(self, cfg: CVAEConfig | None = None, **kw):
        super().__init__()
        cfg = cfg or CVAEConfig(**kw)
        self.config = cfg
        vcfg = DualVAEConfig(cfg.image_size, cfg.channels, cfg.latent_dim, cfg.num_labels, cfg.width)
        self.encoder = Encoder(vcfg)
        feat = self.encoder.fc.in_features
        self.encoder.fc = nn.Linear(feat + cfg.num_labels, 2 * cfg.latent_dim)  # q(z | x, y)
        self.label_head = nn.Linear(feat, cfg.num_labels)  # q(y | x)
        self.decoder = Decoder(DualVAEConfig(cfg.image_size, cfg.channels, cfg.latent_dim + cfg.num_labels,
                                             cfg.num_labels, cfg.width))  # p(x | z, y)

    def features(self, x):
        return self.encoder.conv(x)

    def encode(self, h, y):
        return self.encoder.fc(torch.cat([h, y], 1)).chunk(2, dim=1)

    def decode(self, z, y):
        return self.decoder(torch.cat([z, y], 1))

    def loss(self, x, y, mask=None, eps=None) -> tuple[torch.Tensor, dict]:
        cfg = self.config
        h = self.features(x)
        logits = self.label_head(h)
        cls = common.masked_bce(logits, y, mask)
        y_in = common.fill_missing(y, mask, torch.sigmoid(logits))
        mu, logvar = self.encode(h, y_in)
        eps = torch.randn_like(mu) if eps is None else eps
        z = mu + torch.exp(0.5 * logvar) * eps
        recon = ((self.decode(z, y_in) - x) ** 2).flatten(1).sum(1) / (2 * cfg.recon_sigma ** 2)
        kl = 0.5 * (mu ** 2 + logvar.exp() - 1 - logvar).sum(1)
        loss = (recon + kl).mean() + cfg.alpha * cls
        return loss, {"loss": loss.item(), "recon": recon.mean().item(), "kl": kl.mean().item(), "cls": cls.item()}

    def make_optimizers(self):
        return {"g": torch.optim.Adam(self.parameters(), lr=self.config.lr)}

    def train_step(self, opts, x, y, mask=None, step: int = 0, total_steps: int = 1) -> dict:
        loss, stats = self.loss(x, y, mask)
        opts["g"].zero_grad(set_to_none=True)
        loss.backward()
        opts["g"].step()
        return stats

    @torch.no_grad()
    def predict_labels(self, x):
        return torch.sigmoid(self.label_head(self.features(x)))

    def transfer_rows(self, x, y, domain, lam: float):
        """decode(mu(x, y), y with y_i shifted by lam) for each row, y the source labels (q(y|x))."""
        mu, _ = self.encode(self.features(x), y)
        return self.decode(mu, self.targets(y, domain, lam))
