"""The field's checks beside CIS: how far a model's transfers are from real images (the Fréchet distance between
f's pooled penultimate features of transferred and of real test images, FID's formula on our f), and how often
f reads a transfer toward domain i as having attribute i (transfer accuracy, as StarGAN/AttGAN/STGAN report)."""
from __future__ import annotations

import torch

REALISM_IMAGES = 320  # source images whose transfers (to every domain) the realism distance compares


def feature_moments(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (float64) of a set of feature rows (N, d), N >= 2."""
    if feats.dim() != 2 or len(feats) < 2:
        raise ValueError(f"feature_moments: need (N >= 2, d) features, got {tuple(feats.shape)}")
    f = feats.double()
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (len(f) - 1)


def _sqrt_psd(a: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh((a + a.T) / 2)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(m1: tuple[torch.Tensor, torch.Tensor], m2: tuple[torch.Tensor, torch.Tensor]) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) of two Gaussians given as (mean, covariance)."""
    (mu1, s1), (mu2, s2) = m1, m2
    if mu1.shape != mu2.shape:
        raise ValueError(f"frechet_distance: feature sizes differ: {tuple(mu1.shape)} vs {tuple(mu2.shape)}")
    r1 = _sqrt_psd(s1)
    cross = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp_min(0).sqrt().sum()
    return float((mu1 - mu2).pow(2).sum() + s1.trace() + s2.trace() - 2 * cross)


@torch.no_grad()
def transfer_features(model, clf, images: torch.Tensor, lam: float, domains: int, max_batch: int = 256,
                      source_labels: torch.Tensor | None = None) -> torch.Tensor:
    """f's pooled features of every transfer of `images` to each of the first `domains` domains at `lam`."""
    feats = []
    per = max(1, max_batch // domains)
    for a in range(0, len(images), per):
        kw = {} if source_labels is None else {"source_labels": source_labels[a:a + per]}
        x_t = model.transfer_all(images[a:a + per], list(range(domains)), lam, max_batch=max_batch, **kw)
        feats.append(clf.pooled_features(x_t.flatten(0, 1)))
    return torch.cat(feats)


@torch.no_grad()
def real_features(clf, images: torch.Tensor, max_batch: int = 256) -> torch.Tensor:
    return torch.cat([clf.pooled_features(images[a:a + max_batch]) for a in range(0, len(images), max_batch)])


def noise_images(images: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """n images of Gaussian pixel noise with the per-pixel mean and std of `images`: what a generator that
    learnt only the pixel statistics outputs. Its distance is the realism bar."""
    g = torch.Generator().manual_seed(seed)
    mu, sd = images.mean(0), images.std(0)
    return (mu + sd * torch.randn(n, *images.shape[1:], generator=g)).clamp(-1, 1)


def transfer_accuracy(M: torch.Tensor, f0: torch.Tensor) -> dict:
    """From M (N, n, n) and f(x) (N, n): per domain i, the share of transfers toward i that f reads as having
    attribute i (f_i > 0.5), over all images ("all") and over the images f reads as lacking it ("flip": the
    transfers that had something to change); the means over domains, and the per-domain lists."""
    n = M.shape[-1]
    i = torch.arange(n)
    after = (M[:, i, i] + f0) > 0.5  # (N, n): f_i of the transfer toward i
    lacking = f0 <= 0.5
    all_ = after.float().mean(0)
    flip = (after & lacking).float().sum(0) / lacking.float().sum(0).clamp_min(1)
    return {"all": all_.mean().item(), "flip": flip[lacking.any(0)].mean().item() if lacking.any() else float("nan"),
            "per_domain": [round(v, 4) for v in all_.tolist()],
            "flip_per_domain": [round(v, 4) if lacking[:, k].any() else None for k, v in enumerate(flip.tolist())]}
