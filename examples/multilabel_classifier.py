"""A multi-label classifier (a tagger, not a VAE) whose head is the fused linear + BCE-with-logits of
dualvae.kernels, swapped in for nn.Linear + nn.BCEWithLogitsLoss with one line.

    python examples/multilabel_classifier.py [--labels N] [--steps S] [--head fused|plain]

Trains on generated data: features x, tags drawn from a hidden linear model, rare tags weighted up by pos_weight.
"""
import argparse

import torch
from torch import nn

from dualvae.kernels import LinearBCEWithLogits


class PlainHead(nn.Module):
    """nn.Linear followed by nn.BCEWithLogitsLoss, with LinearBCEWithLogits's forward(h, y) and logits(h)."""

    def __init__(self, in_features, out_features, pos_weight=None):
        super().__init__()
        self.linear, self.loss_fn = nn.Linear(in_features, out_features), nn.BCEWithLogitsLoss(pos_weight=pos_weight)

    def forward(self, h, y):
        return self.loss_fn(self.linear(h), y)

    def logits(self, h):
        return self.linear(h)


class Tagger(nn.Module):
    def __init__(self, features: int, num_labels: int, pos_weight: torch.Tensor, fused: bool = True):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(features, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU())
        head = LinearBCEWithLogits if fused else PlainHead      # the one line: no B x num_labels logits formed
        self.head = head(128, num_labels, pos_weight=pos_weight)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x), y)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.logits(self.body(x)) > 0


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--labels", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--head", choices=("fused", "plain"), default="fused")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    features, batch = 64, 256
    truth = torch.randn(args.labels, features) / features ** 0.5 * 3
    bias = -3.0 - torch.rand(args.labels) * 2                     # rare tags: 1-5% positive
    pos_weight = (1 - torch.sigmoid(bias)) / torch.sigmoid(bias)  # negatives / positives per tag
    model = Tagger(features, args.labels, pos_weight.sqrt(), fused=args.head == "fused")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for step in range(args.steps):
        x = torch.randn(batch, features)
        y = torch.bernoulli(torch.sigmoid(x @ truth.t() + bias))
        loss = model.loss(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, args.steps // 5) == 0 or step == args.steps - 1:
            with torch.no_grad():
                pred = model.predict(x)
                f1 = 2 * (pred & (y > 0)).sum() / (pred.sum() + y.sum()).clamp_min(1)
            print(f"step {step:4d}  loss {loss.item():.4f}  micro-F1 {f1.item():.3f}", flush=True)


if __name__ == "__main__":
    main()
