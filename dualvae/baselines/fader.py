"""FaderNetworks (Lample et al. 2017), the 64x64 version of the original architecture.

    encoder E      conv 4x4 stride 2, BatchNorm, LeakyReLU(0.2), width -> ... channels, down to a 2x2 map (z = E(x))
    decoder D      transposed conv 4x4 stride 2, BatchNorm, ReLU; the attributes, as two constant maps per
                   attribute ([1 - y_i, y_i], the original's one-hot pair), joined to the input of every layer
    latent dis. P  conv 4x4 stride 2 on z, then two linear layers -> attribute logits
    attribute predictor C   a small conv classifier of x, masked BCE: the source labels where they are missing and
                   at transfer time (the original reads them from the dataset; here every model sees only x)

Training, per batch: P steps on masked BCE(P(E(x)), y); then E, D step on MSE(D(E(x), y), x) +
lam_dis(t) * masked BCE(P(E(x)), 1 - y) (fool P), lam_dis ramped linearly from 0 to `lambda_lat_dis` (1e-4, the
original's final weight) over the first third of the run and then held, as the original ramps over its first 500k
of about 1.56M steps (`ramp_steps` sets another length); gradients clipped at norm 5, as the original. Adam lr
2e-4, beta1 0.5. Each step logs P's accuracy on the observed labels (`dis_acc`) beside the accuracy of always
answering each attribute's majority value in the batch (`dis_chance`): the adversary works when the first falls
toward the second.
The attribute losses are summed over attributes (the original adds one cross-entropy per attribute). Missing
labels: P's and the encoder's adversarial losses are masked; D is fed C's prediction (detached) at missing entries.
Transfer to domain i: y = C(x), y_i <- y_i + lam (1 - y_i) (lam the attribute value shift; the other hair
colours move down as far, as StarGAN's `create_labels`), D(E(x), y').
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dualvae.baselines import common


@dataclass
class FaderConfig:
    image_size: int = 64
    channels: int = 3
    num_labels: int = 40
    width: int = 16  # the original starts at 16 channels and doubles per layer up to 512
    max_channels: int = 512
    lambda_lat_dis: float = 1e-4  # the original's final latent-discriminator weight
    ramp_steps: int | None = None  # linear ramp 0 -> lambda_lat_dis over this many steps; None: a third of the run
    clip_grad_norm: float = 5.0  # the original clips the autoencoder's and the discriminator's gradients at 5
    lr: float = 2e-4
    dropout: float = 0.3  # the latent discriminator's dropout, as the original


def _n_layers(image_size: int) -> int:
    n = int(math.log2(image_size)) - 1  # down to 2x2
    if image_size < 8 or 2 ** (n + 1) != image_size:
        raise ValueError(f"Fader: image_size must be a power of two >= 8, got {image_size}")
    return n


class Fader(common.LabelConditioned):
    kind = "fader"

    def __init__(self, cfg: FaderConfig | None = None, **kw):
        super().__init__()
        cfg = cfg or FaderConfig(**kw)
        self.config = cfg
        n, na = _n_layers(cfg.image_size), cfg.num_labels
        chans = [min(cfg.width * 2 ** k, cfg.max_channels) for k in range(n)]
        enc, c_in = [], cfg.channels
        for k, c in enumerate(chans):
            enc += [nn.Conv2d(c_in, c, 4, 2, 1)]
            if k > 0:
                enc += [nn.BatchNorm2d(c)]
            enc += [nn.LeakyReLU(0.2, inplace=True)]
            c_in = c
        self.encoder = nn.Sequential(*enc)
        self.latent_channels = c_in
        self.dec = nn.ModuleList()
        self.dec_bn = nn.ModuleList()
        outs = list(reversed(chans[:-1])) + [cfg.channels]
        for k, c in enumerate(outs):
            self.dec.append(nn.ConvTranspose2d(c_in + 2 * na, c, 4, 2, 1))
            self.dec_bn.append(nn.BatchNorm2d(c) if k < len(outs) - 1 else nn.Identity())
            c_in = c
        lc = self.latent_channels
        self.lat_dis = nn.Sequential(
            nn.Conv2d(lc, lc, 4, 2, 1), nn.BatchNorm2d(lc), nn.LeakyReLU(0.2, inplace=True), nn.Flatten(),
            nn.Dropout(cfg.dropout), nn.Linear(lc, 512), nn.LeakyReLU(0.2, inplace=True), nn.Linear(512, na))
        pred, c_in, size = [], cfg.channels, cfg.image_size
        for k in range(min(3, n)):
            pred += [nn.Conv2d(c_in, chans[k] * 2, 4, 2, 1), nn.BatchNorm2d(chans[k] * 2), nn.LeakyReLU(0.2, True)]
            c_in, size = chans[k] * 2, size // 2
        self.predictor = nn.Sequential(*pred, nn.Flatten(), nn.Linear(c_in * size * size, na))

    def encode(self, x):
        return self.encoder(x)

    def decode(self, z, y):
        h = z
        a = torch.stack([1 - y, y], 2).flatten(1)  # (B, 2n): the one-hot pair of every attribute
        for k, (conv, bn) in enumerate(zip(self.dec, self.dec_bn)):
            h = conv(torch.cat([h, common.label_maps(a, h.shape[-1])], 1))
            h = torch.tanh(h) if k == len(self.dec) - 1 else torch.relu(bn(h))
        return h

    def lambda_dis(self, step: int, total_steps: int = 1) -> float:
        ramp = self.config.ramp_steps or math.ceil(total_steps / 3)
        return self.config.lambda_lat_dis * min(1.0, step / max(1, ramp))

    def make_optimizers(self):
        lr, betas = self.config.lr, (0.5, 0.999)
        ae = [*self.encoder.parameters(), *self.dec.parameters(), *self.dec_bn.parameters()]
        return {"ae": torch.optim.Adam(ae, lr=lr, betas=betas),
                "dis": torch.optim.Adam(self.lat_dis.parameters(), lr=lr, betas=betas),
                "pred": torch.optim.Adam(self.predictor.parameters(), lr=lr, betas=betas)}

    def dis_loss(self, x, y, mask=None):
        """P's masked BCE on the (detached) latent code, and P's accuracy and the majority-answer accuracy on the
        observed labels of the batch."""
        with torch.no_grad():
            z = self.encode(x)
        logits = self.lat_dis(z)
        with torch.no_grad():
            m = torch.ones_like(y) if mask is None else mask.to(y.dtype)
            seen = m.sum().clamp_min(1.0)
            acc = (((logits > 0).to(y.dtype) == y).to(y.dtype) * m).sum() / seen
            share = (y * m).sum(0) / m.sum(0).clamp_min(1.0)  # the share of 1s per attribute
            chance = (torch.maximum(share, 1 - share) * m.sum(0)).sum() / seen
        return common.masked_bce(logits, y, mask), {"dis_acc": acc.item(), "dis_chance": chance.item()}

    def ae_loss(self, x, y, mask=None, step: int = 0, total_steps: int = 1):
        logits_c = self.predictor(x)
        pred = common.masked_bce(logits_c, y, mask)
        y_in = common.fill_missing(y, mask, torch.sigmoid(logits_c))
        z = self.encode(x)
        recon = ((self.decode(z, y_in) - x) ** 2).mean()
        adv = common.masked_bce(self.lat_dis(z), 1 - y, mask)  # fool the latent discriminator
        stats = {"recon": recon.item(), "adv": adv.item(), "pred": pred.item()}
        return recon + self.lambda_dis(step, total_steps) * adv, pred, stats

    def train_step(self, opts, x, y, mask=None, step: int = 0, total_steps: int = 1) -> dict:
        d, dis_stats = self.dis_loss(x, y, mask)
        opts["dis"].zero_grad(set_to_none=True)
        d.backward()
        clip = self.config.clip_grad_norm
        if clip:
            nn.utils.clip_grad_norm_(self.lat_dis.parameters(), clip)
        opts["dis"].step()
        ae, pred, stats = self.ae_loss(x, y, mask, step, total_steps)
        opts["ae"].zero_grad(set_to_none=True)
        opts["pred"].zero_grad(set_to_none=True)
        (ae + pred).backward()
        if clip:
            nn.utils.clip_grad_norm_([p for g in opts["ae"].param_groups for p in g["params"]], clip)
        opts["ae"].step()
        opts["pred"].step()
        return {"loss": ae.item(), "dis": d.item(), "lambda_dis": self.lambda_dis(step, total_steps), **dis_stats,
                **stats}

    @torch.no_grad()
    def predict_labels(self, x):
        return torch.sigmoid(self.predictor(x))

    def transfer_rows(self, x, y, domain, lam: float):
        """D(E(x), y with y_i shifted by lam) for each row, y the source labels (C(x))."""
        return self.decode(self.encode(x), self.targets(y, domain, lam))
