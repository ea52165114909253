"""The attribute classifier f of the conditional inception score.

The paper fine-tunes Inception-v3; no pretrained weights can be had here, so f is a CNN trained from scratch on
the training split (all labels observed), with sigmoid outputs: f(x) in [0, 1]^n is the probability of each
attribute. Its per-attribute accuracy and AUC on the test split are reported with it.
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from dualvae.batching import epoch_batches
from dualvae.checkpoint import load_model, save_atomic
from dualvae.data.atomic import write_json_atomic
from dualvae.options import check_counts, option


class AttributeClassifier(nn.Module):
    """x (B, C, S, S) in [-1, 1] -> attribute logits (B, num_labels); `probs` gives f(x) = sigmoid(logits)."""

    def __init__(self, num_labels: int = 40, image_size: int = 64, channels: int = 3, width: int = 32):
        super().__init__()
        self.config = {"num_labels": num_labels, "image_size": image_size, "channels": channels, "width": width}
        layers, c_in, size, stage = [], channels, image_size, 0
        while size > 4:  # stride-2 4x4 conv, then a 3x3 conv at the new size; down to 4x4
            c_out = width * 2**stage
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            if size <= 32:
                layers += [nn.Conv2d(c_out, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
            c_in, size, stage = c_out, size // 2, stage + 1
        # Flatten, not global pooling: where a feature sits (hat vs. bangs vs. beard) is part of the label.
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(c_in * 16, num_labels))
        self.attr_names: list[str] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    @torch.no_grad()
    def probs(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self(x))

    @torch.no_grad()
    def pooled_features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features averaged over space, (B, channels of the last stage): the embedding the
        realism distance compares (as FID compares Inception's pooled features)."""
        return self.features[:-1](x).mean((2, 3))

    def checkpoint_state(self) -> dict:
        return {"kind": "classifier", "config": dict(self.config), "model": self.state_dict(),
                "attr_names": self.attr_names}

    @classmethod
    def load(cls, path: str, map_location="cpu") -> "AttributeClassifier":
        """The classifier of a checkpoint written by `dualvae train-classifier`, in eval mode."""
        return load_model(path, "classifier", map_location)


def binary_auc(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Area under the ROC curve (Mann-Whitney, ties averaged); NaN when one class is absent."""
    pos = targets > 0.5
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = scores.double().argsort()
    ranks = torch.empty_like(order, dtype=torch.float64)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=torch.float64)
    sorted_scores = scores.double()[order]
    # average ranks over ties
    uniq, inverse, counts = torch.unique_consecutive(sorted_scores, return_inverse=True, return_counts=True)
    if len(uniq) < len(scores):
        ends = counts.cumsum(0).double()
        avg = ends - (counts.double() - 1) / 2
        ranks[order] = avg[inverse]
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@torch.no_grad()
def evaluate_classifier(model: AttributeClassifier, images_u8: torch.Tensor, labels01: torch.Tensor,
                        batch_size: int = 256) -> dict:
    """Per-attribute accuracy (threshold 0.5) and AUC on a labelled set."""
    from dualvae.data import to_unit_range

    model.eval()
    probs = torch.cat([model.probs(to_unit_range(images_u8[i:i + batch_size]))
                       for i in range(0, len(images_u8), batch_size)])
    acc = ((probs > 0.5).float() == labels01).float().mean(0)
    names = model.attr_names or [str(i) for i in range(labels01.shape[1])]
    per_attr = {}
    for k, name in enumerate(names):
        auc = binary_auc(probs[:, k], labels01[:, k])
        per_attr[name] = {"accuracy": round(float(acc[k]), 4), "auc": None if auc != auc else round(auc, 4),
                          "positives": int(labels01[:, k].sum())}
    aucs = [v["auc"] for v in per_attr.values() if v["auc"] is not None]
    return {"num_images": len(images_u8), "mean_accuracy": round(float(acc.mean()), 4),
            "mean_auc": round(sum(aucs) / max(len(aucs), 1), 4), "min_auc": min(aucs) if aucs else None,
            "attributes": per_attr}


@dataclass
class ClassifierConfig:
    out: str = option(help="where to write the classifier checkpoint (its JSON report goes beside it)")
    # data may stay unset in Python when train_classifier is given the splits; the command line requires it
    data: str | None = option(None, "CelebA root or a cache file written by `dualvae prepare`", required=True)
    steps: int = option(1500, "training steps")
    batch_size: int = option(64, "images per step")
    lr: float = option(2e-3, "peak learning rate of the one-cycle AdamW schedule")
    width: int = option(32, "channels of the first conv, doubled at every stride-2 stage")
    image_size: int = option(64, "side of the square images, in pixels")
    limit: int | None = option(None, "train on only the first LIMIT images of the training split", none="all")
    seed: int = option(0, "seed of the weights, the batch order and the shifts", min=0)
    workers: int | None = option(None, "decoding threads (DALI) or worker processes (PIL, 0: none)",
                                 none="all cores", min=0)
    data_backend: str | None = option(None, "how images are read: dali or pil for a CelebA root, hdf5 for a cache",
                                      none="hdf5 for a file, dali for a folder", choices=("dali", "pil", "hdf5"))
    progress: bool = option(True, "show progress bars")


def train_classifier(cfg: ClassifierConfig, train_split=None, test_split=None) -> tuple[str, dict]:
    """Train f on the training split, evaluate on the test split; writes cfg.out (checkpoint) and a JSON report
    beside it (same name, .json). Returns (checkpoint path, report). The splits (CelebASplit) are read from
    cfg.data with dualvae.data.read_split unless given."""
    from dualvae.data import labels_to_binary, read_split, to_unit_range

    check_counts(cfg, "train_classifier")
    if cfg.data is None and (train_split is None or test_split is None):
        raise ValueError("train_classifier: needs data (a CelebA root or cache) or both splits")
    torch.manual_seed(cfg.seed)
    read = dict(image_size=cfg.image_size, backend=cfg.data_backend, threads=cfg.workers, progress=cfg.progress)
    if train_split is None:
        train_split = read_split(cfg.data, "train", limit=cfg.limit, **read)
    if test_split is None:
        test_split = read_split(cfg.data, "test", **read)
    images, labels = train_split.images, labels_to_binary(train_split.labels)
    n = len(images)
    bs = min(cfg.batch_size, n)
    model = AttributeClassifier(labels.shape[1], cfg.image_size, images.shape[1], cfg.width)
    model.attr_names = list(train_split.attr_names)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    t0 = time.time()
    bar = tqdm(range(cfg.steps), desc="train classifier", disable=not cfg.progress, dynamic_ncols=True)
    for _, idx in zip(bar, epoch_batches(n, bs, gen)):
        x = to_unit_range(images[idx])
        # Random shifts of up to 4 px: the classifier must also judge decoded (transferred) images.
        dx, dy = (int(v) for v in torch.randint(-4, 5, (2,), generator=gen))
        x = torch.roll(x, shifts=(dy, dx), dims=(2, 3))
        loss = F.binary_cross_entropy_with_logits(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    report = evaluate_classifier(model, test_split.images, labels_to_binary(test_split.labels))
    report.update(split="test", train_images=n, steps=cfg.steps, train_seconds=round(time.time() - t0, 1),
                  config=asdict(cfg))
    save_atomic({**model.checkpoint_state(), "report": report}, cfg.out)
    write_json_atomic(os.path.splitext(cfg.out)[0] + ".json", report)
    return cfg.out, report
