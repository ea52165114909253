"""DualVAE (Okamoto et al.): a VAE whose latent z also predicts labels through a linear dual head.

    q_phi(z | x)   conv encoder -> (mu, logvar)                               (Eq. 1)
    p_theta(x | z) conv decoder -> tanh image, Gaussian likelihood with fixed sigma
    p_w(y | z)     Bern(y | sigmoid(U z)); the rows u_i of U are the dual vectors (Eq. 2)
    transfer       decode(z + lam * u_i), z the posterior mean                 (Eq. 3)

The losses (the reparameterized sample and its KL, the dual-head BCE) are in dualvae/losses.py, the one caller
of dualvae.kernels; the transfer interface (domains, input checks, transfer, checkpoint, load) is TransferModel's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from dualvae import batching
from dualvae.transfer_model import TransferModel


@dataclass
class DualVAEConfig:
    image_size: int = 64
    channels: int = 3
    latent_dim: int = 128
    num_labels: int = 40
    width: int = 32  # channels of the first conv; doubled at every stride-2 stage


def _stages(image_size: int) -> int:
    stages = int(math.log2(image_size)) - 2  # down to a 4x4 feature map
    if image_size < 8 or 2 ** (stages + 2) != image_size:
        raise ValueError(f"DualVAE: image_size must be a power of two >= 8, got {image_size}")
    return stages


class Encoder(nn.Module):
    """x (B, C, S, S) in [-1, 1] -> (mu, logvar), each (B, latent_dim)."""

    def __init__(self, cfg: DualVAEConfig):
        super().__init__()
        layers, c_in = [], cfg.channels
        for s in range(_stages(cfg.image_size)):
            c_out = cfg.width * 2**s
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c_out
        self.conv = nn.Sequential(*layers, nn.Flatten())
        self.fc = nn.Linear(c_in * 16, 2 * cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.fc(self.conv(x)).chunk(2, dim=1)
        return mu, logvar


class Decoder(nn.Module):
    """z (B, latent_dim) -> image (B, C, S, S) in [-1, 1] (tanh)."""

    def __init__(self, cfg: DualVAEConfig):
        super().__init__()
        stages = _stages(cfg.image_size)
        self.c0 = cfg.width * 2 ** (stages - 1)
        self.fc = nn.Linear(cfg.latent_dim, self.c0 * 16)
        layers, c_in = [], self.c0
        for s in reversed(range(stages - 1)):
            c_out = cfg.width * 2**s
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in = c_out
        layers += [nn.ConvTranspose2d(c_in, cfg.channels, 4, 2, 1), nn.Tanh()]
        self.deconv = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(z)).view(z.shape[0], self.c0, 4, 4)
        return self.deconv(h)


class DualVAE(TransferModel):
    kind = "dualvae"

    def __init__(self, image_size: int = 64, channels: int = 3, latent_dim: int = 128, num_labels: int = 40,
                 width: int = 32):
        super().__init__()
        self.config = DualVAEConfig(image_size, channels, latent_dim, num_labels, width)
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)
        # Dual matrix U (num_labels x latent_dim): row i is the dual vector u_i of domain i.
        self.U = nn.Parameter(torch.randn(num_labels, latent_dim) * 0.01)
        self.label_range = (0, num_labels)  # the rows of U this model holds (keep_label_rows)

    def keep_label_rows(self, lo: int, hi: int) -> None:
        """Hold only rows [lo, hi) of U, this process's shard under label parallelism (training/label_parallel.py):
        U becomes a new, smaller Parameter (call before building the optimizers). The full U is drawn first, as
        one process draws it, so the shards together are the single-process initial U."""
        self.U = nn.Parameter(self.U.detach()[lo:hi].clone())
        self.label_range = (lo, hi)

    # -- the paper's pieces ---------------------------------------------------------------------------
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def label_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of p_w(y | z): z U^T, shape (B, num_labels)."""
        return z @ self.U.t()

    def transfer_domains(self, x, domain, lam, source_labels=None):
        """Eq. 3: decode(z + lam * u_i) with z the posterior mean of x; no labels of x needed."""
        mu, _ = self.encode(x)
        return self.decode(mu + lam * self.U[domain])

    @torch.no_grad()
    def transfer_all(self, x: torch.Tensor, domains=None, lam: float = 1.0,
                     max_batch: int | None = None, source_labels: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 3 for every image and every domain: (N, n_dom, C, H, W), out[j, k] = decode(z_j + lam * u_{d_k}).

        x (N, C, H, W) is encoded once; all w = z_j + lam * u_i form one (N * n_dom, d) tensor, decoded in chunks
        of `max_batch` rows (default: from the free memory on a GPU, `batching.CPU_MAX_BATCH` on a CPU).
        `source_labels` is checked and unused: z + lam * u_i needs no labels of x.
        """
        self.check_transfer_input(x, lam, max_batch, source_labels)
        cfg = self.config
        idx = self.domain_indices(domains)
        if max_batch is None:
            max_batch = batching.max_batch_for(
                x.device, lambda: batching.activation_bytes_per_row(self.decode, self.U[:1].detach(), [self]))
        cl = torch.channels_last  # oneDNN's faster layout for these (transposed) convs on CPU
        mu = torch.cat([self.encode(x[a:a + max_batch].contiguous(memory_format=cl))[0]
                        for a in range(0, len(x), max_batch)])
        w = (mu[:, None, :] + lam * self.U[idx]).reshape(-1, cfg.latent_dim)  # row j * n_dom + k
        out = torch.empty((len(w), cfg.channels, cfg.image_size, cfg.image_size), dtype=x.dtype, device=x.device,
                          memory_format=cl)
        dec = self.decoder
        for a in range(0, len(w), max_batch):  # Decoder.forward, with the 4x4 map channels-last
            h = torch.relu(dec.fc(w[a:a + max_batch])).view(-1, dec.c0, 4, 4).contiguous(memory_format=cl)
            out[a:a + max_batch] = dec.deconv(h)
        return out.view(len(x), len(idx), *out.shape[1:])
