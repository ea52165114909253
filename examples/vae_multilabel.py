"""A plain VAE with a multi-label head whose losses are the fused ops of dualvae.kernels (not DualVAE).

    python examples/vae_multilabel.py --data DIR [--steps N] [--image-size S]

Trains on the CelebA-format folder DIR, generated there first when it holds no attribute file.
"""
import argparse
import os

import torch
from torch import nn

from dualvae.kernels import DualHead, ReparameterizeKL


class VAE(nn.Module):
    def __init__(self, pixels: int, latent_dim: int = 32, num_labels: int = 40):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(pixels, 256), nn.ReLU(), nn.Linear(256, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, 256), nn.ReLU(), nn.Linear(256, pixels))
        self.sample = ReparameterizeKL()                    # z = mu + exp(logvar/2) * eps, and KL(q || N(0, I))
        self.head = DualHead(latent_dim, num_labels, reduction="sum")  # p(y|z) = Bern(sigmoid(z U^T)), U = weight

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        z, kl = self.sample(mu, logvar)                     # kl: (B,), one value per row
        recon = nn.functional.binary_cross_entropy_with_logits(self.decoder(z), x, reduction="none").sum(1)
        return (recon + kl + self.head(z, y) / len(x)).mean()  # per image; no B x num_labels logits formed


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="CelebA-format folder (generated there when missing)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--num", type=int, default=256, help="images to generate when --data is empty")
    args = ap.parse_args(argv)
    from dualvae.data import ATTR_FILE, read_split  # the generated faces; the model needs only dualvae.kernels
    from dualvae.data.synth import write_synth_celeba
    if not os.path.exists(os.path.join(args.data, ATTR_FILE)):
        write_synth_celeba(args.data, num=args.num, seed=0, workers=1, progress=False)
    split = read_split(args.data, "train", image_size=args.image_size, backend="pil", threads=0)
    x_all = split.images.flatten(1).float() / 255.0
    y_all = (split.labels > 0).float()                      # CelebA's -1/+1 labels as 0/1
    torch.manual_seed(0)
    model = VAE(x_all.shape[1], num_labels=y_all.shape[1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(1, args.steps + 1):
        idx = torch.randint(0, len(x_all), (64,))
        loss = model.loss(x_all[idx], y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step == 1 or step % 10 == 0 or step == args.steps:
            print(f"step {step:5d}  loss {loss.item():.3f}", flush=True)


if __name__ == "__main__":
    main()
