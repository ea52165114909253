"""StarGAN (Choi et al. 2017) at 64x64: one generator for every domain, a discriminator with an auxiliary
attribute classifier, WGAN-GP.

    G(x, c)   x joined to the target labels c as constant maps; conv 7x7, two stride-2 down-sampling convs,
              `res_blocks` residual blocks, two stride-2 up-sampling transposed convs, conv 7x7, tanh
              (InstanceNorm + ReLU, as the original; the original has 6 residual blocks)
    D(x)      conv 4x4 stride 2 + LeakyReLU(0.01) down to 2x2; D_src (3x3 conv, a score map), D_cls (attribute
              logits)
    D loss    -D_src(x) + D_src(G(x, c)) + lam_cls * BCE(D_cls(x), y) + lam_gp * GP         (lam_gp = 10, lam_cls = 1)
    G loss    -D_src(G(x, c)) + lam_cls * BCE(D_cls(G(x, c)), c) + lam_rec * |x - G(G(x, c), y)|_1  (lam_rec = 10)
    G is updated once every `n_critic` D updates (5), Adam lr 1e-4, betas (0.5, 0.999).

Missing labels: the BCE on real images is masked (a missing label teaches D_cls nothing); the source labels y
(the reconstruction target, and the pool target labels are drawn from) are the observed value where observed and
D_cls's own prediction, rounded, where missing; target labels c are the source labels of another image of the
batch (the original's shuffle), so every entry of c is known and the BCE on fakes is not masked.
Transfer to domain i: y = D_cls(x) rounded, c = y with c_i = 1 and the other hair colours 0 (hair colours as the
original's `create_labels`; it flips the other attributes, the CIS protocol sets them), G(x, c); lam != 1 scales
the change of c (`common.target_labels`).
The attribute losses are summed over attributes and averaged over the batch, as the original's
`classification_loss`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dualvae.baselines import common


@dataclass
class StarGANConfig:
    image_size: int = 64
    channels: int = 3
    num_labels: int = 40
    g_width: int = 64
    d_width: int = 64
    res_blocks: int = 6
    lambda_cls: float = 1.0
    lambda_rec: float = 10.0
    lambda_gp: float = 10.0
    n_critic: int = 5
    lr: float = 1e-4


class ResidualBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.InstanceNorm2d(c, affine=True), nn.ReLU(inplace=True),
            nn.Conv2d(c, c, 3, 1, 1, bias=False), nn.InstanceNorm2d(c, affine=True))

    def forward(self, x):
        return x + self.body(x)


class Generator(nn.Module):
    def __init__(self, cfg: StarGANConfig):
        super().__init__()
        w, c = cfg.g_width, cfg.channels
        layers = [nn.Conv2d(c + cfg.num_labels, w, 7, 1, 3, bias=False), nn.InstanceNorm2d(w, affine=True),
                  nn.ReLU(inplace=True)]
        for _ in range(2):
            layers += [nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False), nn.InstanceNorm2d(2 * w, affine=True),
                       nn.ReLU(inplace=True)]
            w *= 2
        layers += [ResidualBlock(w) for _ in range(cfg.res_blocks)]
        for _ in range(2):
            layers += [nn.ConvTranspose2d(w, w // 2, 4, 2, 1, bias=False), nn.InstanceNorm2d(w // 2, affine=True),
                       nn.ReLU(inplace=True)]
            w //= 2
        layers += [nn.Conv2d(w, c, 7, 1, 3, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x, c):
        """net(cat[x, c as constant maps]), with the first conv's label part computed without the maps: a
        conv of a constant map is, at each position, the sum of the kernel taps that fall inside the image, so
        conv(c maps) = c @ S with S (n, out, H, W) from the weights alone (the zero padding makes S differ at the
        borders). The same function and parameters as the concatenated conv, at a small part of its cost: the
        n label channels are most of the first conv's input."""
        conv, k = self.net[0], self.net[0].kernel_size[0]
        ch = x.shape[1]
        h = F.conv2d(x, conv.weight[:, :ch], padding=conv.padding)
        H, W = x.shape[-2:]
        pad = conv.padding[0]
        taps = torch.arange(k, device=x.device) - pad

        def inside(size):  # (size, k): 1 where tap t of the kernel at position p reads a pixel of the image
            src = torch.arange(size, device=x.device)[:, None] + taps
            return ((src >= 0) & (src < size)).to(x.dtype)

        inside_r, inside_c = inside(H), inside(W)
        w = conv.weight[:, ch:].to(x.dtype)  # (out, n, k, k)
        S = torch.einsum("oikl,pk,ql->iopq", w, inside_r, inside_c)
        h = h + torch.einsum("bi,iopq->bopq", c.to(x.dtype), S)
        return self.net[1:](h)


class Discriminator(nn.Module):
    def __init__(self, cfg: StarGANConfig):
        super().__init__()
        n = int(math.log2(cfg.image_size)) - 1  # down to 2x2
        if cfg.image_size < 8 or 2 ** (n + 1) != cfg.image_size:
            raise ValueError(f"StarGAN: image_size must be a power of two >= 8, got {cfg.image_size}")
        layers, c_in, w = [], cfg.channels, cfg.d_width
        for _ in range(n):
            layers += [nn.Conv2d(c_in, w, 4, 2, 1), nn.LeakyReLU(0.01, inplace=True)]
            c_in, w = w, min(w * 2, 2048)
        self.main = nn.Sequential(*layers)
        self.src = nn.Conv2d(c_in, 1, 3, 1, 1, bias=False)
        self.cls = nn.Conv2d(c_in, cfg.num_labels, 2, bias=False)

    def forward(self, x):
        h = self.main(x)
        return self.src(h), self.cls(h).flatten(1)


class StarGAN(common.LabelConditioned):
    kind = "stargan"

    def __init__(self, cfg: StarGANConfig | None = None, **kw):
        super().__init__()
        cfg = cfg or StarGANConfig(**kw)
        self.config = cfg
        self.G = Generator(cfg)
        self.D = Discriminator(cfg)

    def make_optimizers(self):
        betas = (0.5, 0.999)
        return {"g": torch.optim.Adam(self.G.parameters(), lr=self.config.lr, betas=betas),
                "d": torch.optim.Adam(self.D.parameters(), lr=self.config.lr, betas=betas)}

    def source_labels(self, x, y, mask=None):
        """y where observed, D_cls's rounded prediction where missing (no gradient either way)."""
        if mask is None:
            return y
        with torch.no_grad():
            pred = (self.D(x)[1] > 0).to(y.dtype)
        return common.fill_missing(y, mask, pred)

    def gradient_penalty(self, x_real, x_fake):
        a = torch.rand(len(x_real), 1, 1, 1, device=x_real.device)
        x_hat = (a * x_real + (1 - a) * x_fake).requires_grad_(True)
        out = self.D(x_hat)[0]
        g = torch.autograd.grad(out.sum(), x_hat, create_graph=True)[0].flatten(1)
        return ((g.norm(2, dim=1) - 1) ** 2).mean()

    def d_loss(self, x, y, mask, c_trg):
        cfg = self.config
        src_real, cls_real = self.D(x)
        with torch.no_grad():
            x_fake = self.G(x, c_trg)
        src_fake, _ = self.D(x_fake)
        cls = common.masked_bce(cls_real, y, mask)
        gp = self.gradient_penalty(x, x_fake)
        loss = -src_real.mean() + src_fake.mean() + cfg.lambda_cls * cls + cfg.lambda_gp * gp
        return loss, {"d_loss": loss.item(), "d_cls": cls.item(), "gp": gp.item()}

    def g_loss(self, x, y_src, c_trg):
        cfg = self.config
        x_fake = self.G(x, c_trg)
        src_fake, cls_fake = self.D(x_fake)
        cls = common.masked_bce(cls_fake, c_trg)
        rec = (x - self.G(x_fake, y_src)).abs().mean()
        loss = -src_fake.mean() + cfg.lambda_cls * cls + cfg.lambda_rec * rec
        return loss, {"g_loss": loss.item(), "g_cls": cls.item(), "g_rec": rec.item()}

    def train_step(self, opts, x, y, mask=None, step: int = 0, total_steps: int = 1) -> dict:
        """One D update; one G update too every n_critic-th step. The stats carry the latest G update's losses
        on every step, so a log that samples steps sees G too."""
        y_src = self.source_labels(x, y, mask)
        c_trg = y_src[torch.randperm(len(x), device=x.device)]
        d, stats = self.d_loss(x, y, mask, c_trg)
        opts["d"].zero_grad(set_to_none=True)
        d.backward()
        opts["d"].step()
        stats["loss"] = stats["d_loss"]
        if (step + 1) % self.config.n_critic == 0:
            g, g_stats = self.g_loss(x, y_src, c_trg)
            opts["g"].zero_grad(set_to_none=True)
            g.backward()
            opts["g"].step()
            self._last_g_stats = g_stats
        stats.update(getattr(self, "_last_g_stats", {}))
        return stats

    @torch.no_grad()
    def predict_labels(self, x):
        return (self.D(x)[1] > 0).to(x.dtype)

    def transfer_rows(self, x, y, domain, lam: float = 1.0):
        """G(x, c) for each row, c the target labels (c_i = 1, the other hair colours 0) at strength lam."""
        return self.G(x, self.targets(y, domain, lam))
