"""Training throughput end to end: steps/s and images/s of Algorithm 1 with its data, eager vs ours.

Writes `<out>/train-<device>.json` (out defaults to bench/results) and prints the table. One run, the same
generated CelebA-format data, DualVAE width 32, latent 128, 40 labels, 64x64, batch 256, each row timing
`--steps` steps (data loading included) after `--warmup` untimed ones (compilation, pipeline and worker start):

  eager       torch DataLoader with K PIL worker processes, fp32, losses in plain PyTorch (kernel backend
              "reference"), no compilation: the baseline
  ours        DALI (GPU decoder on CUDA, K threads on CPU) + the fused dualvae.kernels ops (backend "auto") +
              torch.compile + bf16 autocast: what `dualvae train --compile --precision bf16` runs
  ours-fp32   (CPU only) ours without bf16: on a CPU without bf16 arithmetic (AVX2), bf16 is emulated and slow

Target on a GPU: ours >= 1.5x eager in images/s. The load average before and after is recorded: on a shared
machine the figures are only comparable within one run.

    .venv/bin/python bench/train_step.py                       # CUDA when available, else CPU
    .venv/bin/python bench/train_step.py --quick --out /tmp/t  # CI-sized (tests/test_bench_train.py)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from dualvae.sysinfo import cpu_model  # noqa: E402  (after the path: runnable from a checkout)

DEFAULT_OUT = os.path.join(HERE, "results")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_config(root: str, device: torch.device, *, data_backend: str, kernel_backend: str, precision: str,
                compile: bool, batch: int, size: int, width: int, steps: int, warmup: int, threads: int) -> dict:
    """`warmup` + `steps` iterations of Algorithm 1 (dualvae.train.train_step) on batches from make_loader."""
    from dualvae.data import make_loader
    from dualvae.model import DualVAE
    from dualvae.train import LossFns, TrainConfig, fused_losses, make_optimizers, train_step

    torch.manual_seed(0)
    cfg = TrainConfig(data=root, out="", batch_size=batch, width=width, image_size=size, precision=precision,
                      compile=compile, kernel_backend=kernel_backend)
    t_setup = time.perf_counter()
    loader = make_loader(root, "train", image_size=size, batch_size=batch, device=device, backend=data_backend,
                         seed=0, threads=threads)
    model = DualVAE(size, 3, cfg.latent_dim, len(loader.attr_names), width, kernel_backend=kernel_backend)
    model = model.to(device).train()
    g, g_e = make_optimizers(model, cfg)
    fns = LossFns(model, cfg, compile=compile, fullgraph=fused_losses(kernel_backend, device))
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    gen = torch.Generator().manual_seed(0)

    def batches():
        epoch = 0
        while True:
            yield from loader.epoch(epoch)
            epoch += 1

    it = batches()

    def one_step():
        x, y, m = next(it)
        eps = torch.randn(len(x), cfg.latent_dim, generator=gen).to(device)
        return train_step(model, g, g_e, x, y, m, eps, cfg, fns=fns, scaler=scaler)

    for _ in range(warmup):
        one_step()
    _sync(device)
    warmup_s = time.perf_counter() - t_setup
    t = time.perf_counter()
    for _ in range(steps):
        stats = one_step()
    _sync(device)
    dt = time.perf_counter() - t
    loader.close()
    return {"data_backend": data_backend, "kernel_backend": kernel_backend, "precision": precision,
            "compile": compile, "fullgraph": compile and fused_losses(kernel_backend, device), "steps": steps, "seconds": round(dt, 3), "steps_per_s": round(steps / dt, 4),
            "images_per_s": round(steps * batch / dt, 1), "setup_and_warmup_s": round(warmup_s, 2),
            "last_neg_elbo": round(stats["neg_elbo"], 2)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="CI-sized: 192 images, batch 16, width 8, 1 step, no compilation (only runs the code)")
    ap.add_argument("--data", default=None, help="an existing CelebA-format root (default: generate one)")
    ap.add_argument("--num", type=int, default=None, help="images to generate (default: enough for every step)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 256 (quick 16)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--width", type=int, default=None, help="DualVAE conv width (default 32; quick 8)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per row (default: 50 on CUDA, 3 on CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per row (default 5 on CUDA, 1 on CPU)")
    ap.add_argument("--threads", type=int, default=None, help="K: DALI threads = DataLoader workers (default: cores)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    ap.add_argument("--out", default=DEFAULT_OUT)
    a = ap.parse_args(argv)

    import nvidia.dali

    from dualvae.data.synth import write_synth_celeba

    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    threads = a.threads or os.cpu_count() or 1
    batch = a.batch_size or (16 if a.quick else 256)
    width = a.width or (8 if a.quick else 32)
    steps = a.steps or (1 if a.quick else (50 if cuda else 3))
    warmup = a.warmup if a.warmup is not None else (1 if a.quick or not cuda else 5)
    # Enough training images (80% of those generated) for every step of a row in one epoch, at least 2 batches.
    num = a.num or max(192, int((steps + warmup + 1) * batch / 0.8) + 64)
    size = a.image_size
    dev_name = "cpu" if not cuda else re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    report = {"device": device.type, "device_name": torch.cuda.get_device_name() if cuda else cpu_model(),
              "cpu_model": cpu_model(), "cores": os.cpu_count(), "threads": threads,
              "torch_threads": torch.get_num_threads(), "image_size": size, "batch_size": batch, "width": width,
              "latent_dim": 128, "steps": steps, "warmup": warmup, "quick": a.quick, "torch": torch.__version__,
              "dali": nvidia.dali.__version__, "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "loadavg_start": os.getloadavg()}
    plan = [("eager", dict(data_backend="pil", kernel_backend="reference", precision="fp32", compile=False)),
            ("ours", dict(data_backend="dali", kernel_backend="auto", precision="bf16", compile=not a.quick))]
    if not cuda:
        plan.append(("ours-fp32", dict(data_backend="dali", kernel_backend="auto", precision="fp32",
                                       compile=not a.quick)))
    with tempfile.TemporaryDirectory() as tmp:
        root = a.data
        if root is None:
            root = os.path.join(tmp, "synth")
            t = time.perf_counter()
            write_synth_celeba(root, num=num, seed=0, workers=threads)
            report.update(num_images=num, synth_s=round(time.perf_counter() - t, 2))
        rows = []
        for name, kw in plan:
            r = {"config": name, **time_config(root, device, batch=batch, size=size, width=width, steps=steps,
                                               warmup=warmup, threads=threads, **kw),
                 "loadavg_after": os.getloadavg()}
            rows.append(r)
            print(f"{name:<10} {r['steps_per_s']:>8.3f} steps/s {r['images_per_s']:>9.1f} images/s "
                  f"(setup + warm-up {r['setup_and_warmup_s']} s, load {r['loadavg_after'][0]:.2f})", flush=True)
    report["rows"] = rows
    rate = {r["config"]: r["images_per_s"] for r in rows}
    report["ours_over_eager"] = round(rate["ours"] / rate["eager"], 3)
    report["target"] = "ours >= 1.5x eager images/s on a GPU"
    report["target_met"] = report["ours_over_eager"] >= 1.5 if cuda else None  # the target is for GPUs
    if "ours-fp32" in rate:
        report["ours_fp32_over_eager"] = round(rate["ours-fp32"] / rate["eager"], 3)
    report["loadavg_end"] = os.getloadavg()

    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, f"train-{dev_name}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    print(f"\n{report['device_name']} ({device.type}), {size}x{size}, batch {batch}, width {width}, {steps} timed "
          f"step(s) per row, load average {report['loadavg_start'][0]:.2f} at start")
    print("| config | data | kernels | precision | compile | steps/s | images/s |\n|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['data_backend']} | {r['kernel_backend']} | {r['precision']} | "
              f"{r['compile']} | {r['steps_per_s']:.3f} | {r['images_per_s']:.1f} |")
    print(f"ours / eager: {report['ours_over_eager']}x (target on a GPU: >= 1.5x)\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
