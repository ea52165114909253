"""What the C++ CPU kernels buy `make demo`: one Algorithm 1 step of the demo's model, backend "cpu" vs
"reference", measured in one run.

    python bench/demo_step.py [--steps 30] [--rounds 5] [--threads N] [--out bench/results/demo-step-cpu.json]

The demo's DualVAE (64x64, conv width 24, latent 128, 40 labels, batch 64) on random images and labels; each
round times `steps` steps of every backend in turn (round-robin, so load drifts hit both alike) and the report
keeps the median over rounds of the mean step time. It also times the two fused ops alone at these sizes
(`fused_ops_ms`): their share of a step bounds what any kernel backend can change in the demo. The demo trains
on one thread while the classifier trains on the other, so the default is --threads 1.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import statistics
import sys
import time

import torch

from dualvae import kernels
from dualvae.data.atomic import write_json_atomic
from dualvae.losses import LossFns
from dualvae.model import DualVAE
from dualvae.sysinfo import cpu_report
from dualvae.training import TrainConfig, make_optimizers, train_step

HERE = os.path.dirname(os.path.abspath(__file__))
BACKENDS = ("reference", "cpu")


def run(steps: int, rounds: int, threads: int, batch: int = 64) -> dict:
    torch.set_num_threads(threads)
    cfg = TrainConfig(data="", out="", latent_dim=128, width=24, batch_size=batch)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, 64, 64, generator=g) * 2 - 1
    y = (torch.rand(batch, 40, generator=g) > 0.5).float()
    mask = torch.ones(batch, 40)
    eps = torch.randn(batch, 128, generator=g)
    setups = {}
    for backend in BACKENDS:
        torch.manual_seed(0)
        model = DualVAE(64, 3, 128, 40, 24).train()
        setups[backend] = (model, *make_optimizers(model, cfg), LossFns(model, cfg.recon_sigma, backend=backend))
        model, opt_g, opt_ge, fns = setups[backend]
        train_step(model, opt_g, opt_ge, x, y, mask, eps, cfg, fns=fns)  # warmup
    per_round = {b: [] for b in BACKENDS}
    for _ in range(rounds):
        for backend in BACKENDS:
            model, opt_g, opt_ge, fns = setups[backend]
            t0 = time.perf_counter()
            for _ in range(steps):
                train_step(model, opt_g, opt_ge, x, y, mask, eps, cfg, fns=fns)
            per_round[backend].append((time.perf_counter() - t0) / steps)
    ms = {b: statistics.median(v) * 1e3 for b, v in per_round.items()}
    return {"step_ms": {b: round(v, 2) for b, v in ms.items()},
            "fused_ops_ms": {b: round(fused_ops_ms(b, batch, rounds), 4) for b in BACKENDS},
            "rounds_ms": {b: [round(t * 1e3, 2) for t in v] for b, v in per_round.items()},
            "speedup_cpu_vs_reference": round(ms["reference"] / ms["cpu"], 3)}


def fused_ops_ms(backend: str, batch: int, rounds: int, reps: int = 200) -> float:
    """The two fused ops alone at the demo's sizes, forward + backward, as a step calls them (median ms)."""
    g = torch.Generator().manual_seed(1)
    mu, logvar = (torch.randn(batch, 128, generator=g).requires_grad_() for _ in range(2))
    eps = torch.randn(batch, 128, generator=g)
    U = (torch.randn(40, 128, generator=g) * 0.01).requires_grad_()
    y = (torch.rand(batch, 40, generator=g) > 0.5).float()
    mask = torch.ones(batch, 40)

    def once():
        z, kl = kernels.reparameterize_kl(mu, logvar, eps, backend=backend)
        (kl.mean() + kernels.dual_bce(z, U, y, mask, reduction="sum", backend=backend)).backward()

    once()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            once()
        times.append((time.perf_counter() - t0) / reps)
    return statistics.median(times) * 1e3


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "results", "demo-step-cpu.json"))
    args = ap.parse_args(argv)
    if not kernels.has_compiled_ops():
        print("demo_step: the C++ CPU kernels are not built (make install)", file=sys.stderr)
        return 1
    load0 = os.getloadavg()
    result = run(args.steps, args.rounds, args.threads)
    report = {
        "what": "one Algorithm 1 step (VAE step + label step) of the demo's DualVAE, backend cpu vs reference",
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "sizes": {"image_size": 64, "width": 24, "latent_dim": 128, "num_labels": 40, "batch_size": 64,
                  "steps_per_round": args.steps, "rounds": args.rounds},
        "dtype": "float32", "device": "cpu", **cpu_report(), "threads": args.threads,
        "torch": torch.__version__, "python": platform.python_version(),
        "loadavg_start": [round(v, 2) for v in load0], "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        **result,
    }
    write_json_atomic(args.out, report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
