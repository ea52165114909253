"""What a run reports: events (stderr and out/events.log), the loss log (out/log.csv) and its plot (loss.png)."""
from __future__ import annotations

import csv
import io
import os
import sys
import time

from tqdm import tqdm

from dualvae.data.atomic import write_text_atomic
from dualvae.training.distributed import Dist


class Say:
    """Events of the run (start, resume, fallbacks, SIGTERM, skipped steps): stderr and out/events.log, rank 0."""

    def __init__(self, out: str, d: Dist):
        self.path, self.main = os.path.join(out, "events.log"), d.is_main

    def __call__(self, msg: str) -> None:
        if not self.main:
            return
        tqdm.write(f"train: {msg}", file=sys.stderr)
        with open(self.path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}\n")


def write_log(path: str, rows: list[dict]) -> None:
    """The loss log as CSV, one row per logged step (written whole, atomically)."""
    if not rows:
        return
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path, text.getvalue())


def plot_log(rows: list[dict], path: str) -> None:
    """Reconstruction NLL, KL and label accuracy against the step, side by side."""
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(steps, [r["recon"] for r in rows]); axes[0].set_title("recon NLL / image")
    axes[1].plot(steps, [r["kl"] for r in rows]); axes[1].set_title("KL / image")
    axes[2].plot(steps, [r["label_acc"] for r in rows]); axes[2].set_title("label accuracy (observed)")
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
