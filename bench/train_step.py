"""Training throughput end to end: images/s of Algorithm 1 with its data, one row per change from eager to ours.

Writes `<out>/train-<device>.json` and `<out>/train-<device>.md` (out defaults to bench/results) and prints the
table. The same generated CelebA-format data, DualVAE width 32, latent 128, 40 labels, 64x64, batch 256. The
configurations form a ladder, each adding one change to the one before, so that the speed-up is attributed
rather than asserted:

  eager     torch DataLoader with K PIL worker processes, losses in plain PyTorch (kernel backend "reference"),
            fp32, no compilation: the baseline
  data      + the fast data backend (--data-backend, default DALI: GPU decoder on CUDA, K threads on CPU)
  kernels   + the fused dualvae.kernels ops (backend "auto": Triton on CUDA, the C++ kernels on CPU)
  compile   + torch.compile of the two losses (alias ours-fp32)
  bf16      + bf16 autocast: what `dualvae train --compile --precision bf16` runs (alias ours)
Extras, run only when named in --configs: kernels-bf16 (data + kernels + bf16, no compilation) and eager-bf16
(eager + bf16 autocast).

Each configuration is built once (loader, model, optimizers, compiled losses) and warmed up (--warmup untimed
steps: compilation, pipeline and worker start). Then, round after round, every configuration in turn runs one
untimed step and --steps timed ones (data loading included) over a slice of a fresh epoch that ends with the
round, so no loader keeps decoding in the background while another configuration is timed. The load average is
recorded before and after every round: on a shared machine the figures are only comparable within one run.
Rows that need DALI are skipped, with the reason, where nvidia.dali is not importable. Target on a GPU: ours >=
1.5x eager in images/s.

    .venv/bin/python bench/train_step.py                       # CUDA when available, else CPU
    .venv/bin/python bench/train_step.py --quick --out /tmp/t  # CI-sized (tests/test_bench_train.py)
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # before the imports below: runnable from a checkout
from dualvae.data.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from dualvae.sysinfo import cpu_model, cpu_report  # noqa: E402
from dualvae.data import dali_missing  # noqa: E402

DEFAULT_OUT = os.path.join(HERE, "results")

# name -> (what it adds, data ("pil" or "fast": --data-backend), kernel backend, precision, compile)
CONFIGS = {
    "eager": ("baseline: PIL DataLoader, reference losses, fp32, eager", "pil", "reference", "fp32", False),
    "data": ("+ fast data backend", "fast", "reference", "fp32", False),
    "kernels": ("+ fused kernels (backend auto)", "fast", "auto", "fp32", False),
    "compile": ("+ torch.compile", "fast", "auto", "fp32", True),
    "bf16": ("+ bf16 autocast (= ours)", "fast", "auto", "bf16", True),
    "kernels-bf16": ("data + kernels + bf16, no compile", "fast", "auto", "bf16", False),
    "eager-bf16": ("eager + bf16 autocast", "pil", "reference", "bf16", False),
}
ALIASES = {"ours": "bf16", "ours-fp32": "compile"}
DEFAULT_CONFIGS = ("eager", "data", "kernels", "compile", "bf16")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # absent, or fails to import on this host
        return None


class Runner:
    """One configuration kept alive across rounds: its loader, model, optimizers and (compiled) losses."""

    def __init__(self, root: str, device: torch.device, *, data_backend: str, kernel_backend: str, precision: str,
                 compile: bool, batch: int, size: int, width: int, threads: int):
        from dualvae.data import make_loader
        from dualvae.losses import LossFns
        from dualvae.model import DualVAE
        from dualvae.training import TrainConfig, make_optimizers

        torch.manual_seed(0)
        self.device, self.batch = device, batch
        self.cfg = TrainConfig(data=root, out="", batch_size=batch, width=width, image_size=size,
                               precision=precision, compile=compile, kernel_backend=kernel_backend)
        self.loader = make_loader(root, "train", image_size=size, batch_size=batch, device=device,
                                  backend=data_backend, seed=0, threads=threads)
        model = DualVAE(size, 3, self.cfg.latent_dim, len(self.loader.attr_names), width)
        self.model = model.to(device).train()
        self.g, self.g_e = make_optimizers(self.model, self.cfg)
        self.fns = LossFns(self.model, self.cfg.recon_sigma, backend=kernel_backend, compile=compile)
        self.scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
        self.gen = torch.Generator().manual_seed(0)
        self.epoch = 0
        self.last_neg_elbo = None

    def _step(self, batch) -> None:
        from dualvae.training import train_step

        x, y, m, _ = batch
        eps = torch.randn(len(x), self.cfg.latent_dim, generator=self.gen).to(self.device)
        stats = train_step(self.model, self.g, self.g_e, x, y, m, eps, self.cfg, fns=self.fns, scaler=self.scaler)
        self.last_neg_elbo = stats["neg_elbo"]

    def run(self, untimed: int, timed: int) -> list[float]:
        """`untimed` then `timed` steps over the first batches of a fresh epoch: the timed steps' seconds."""
        n = untimed + timed
        if len(self.loader) < n:
            raise ValueError(f"the training split has {len(self.loader)} batches of {self.batch}, fewer than the "
                             f"{n} steps of a round; generate more images (--num)")
        times = []
        it = iter(self.loader.epoch(self.epoch, 0, n))
        self.epoch += 1
        for i in range(n):
            t = time.perf_counter()
            self._step(next(it))
            _sync(self.device)
            if i >= untimed:
                times.append(time.perf_counter() - t)
        for _ in it:  # ends the epoch's iterator inside the round
            pass
        return times

    def close(self) -> None:
        self.loader.close()


def _summary(values: list[float], digits: int) -> dict:
    return {"median": round(statistics.median(values), digits), "min": round(min(values), digits),
            "max": round(max(values), digits)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="CI-sized: 192 images, batch 16, width 8, 1 round of 1 step, no compilation (only runs "
                         "the code)")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS),
                    help=f"comma-separated, from {list(CONFIGS)} (aliases {ALIASES}); default %(default)s")
    ap.add_argument("--data-backend", choices=("dali", "pil"), default="dali",
                    help="the data backend of the rows past eager (default dali; pil runs the ladder without DALI)")
    ap.add_argument("--data", default=None, help="an existing CelebA-format root (default: generate one)")
    ap.add_argument("--num", type=int, default=None, help="images to generate (default: enough for one round)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 256 (quick 16)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--width", type=int, default=None, help="DualVAE conv width (default 32; quick 8)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per configuration per round "
                                                            "(default 20 on CUDA, 7 on CPU; quick 1)")
    ap.add_argument("--rounds", type=int, default=None, help="round-robin rounds (default 3; quick 1)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps per configuration before the rounds "
                                                             "(default 5 on CUDA, 1 on CPU)")
    ap.add_argument("--threads", type=int, default=None, help="K: DALI threads = DataLoader workers (default: cores)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--note", default=None, help="a sentence stored in the JSON (e.g. what else loads the machine)")
    a = ap.parse_args(argv)

    names = []
    for name in (s.strip() for s in a.configs.split(",") if s.strip()):
        name = ALIASES.get(name, name)
        if name not in CONFIGS:
            ap.error(f"unknown configuration {name!r} in --configs; expected names from {list(CONFIGS)} "
                     f"or {list(ALIASES)}")
        if name not in names:
            names.append(name)
    if not names:
        ap.error("--configs names no configuration")
    for flag in ("steps", "rounds", "batch_size", "width", "threads"):
        v = getattr(a, flag)
        if v is not None and v < 1:
            ap.error(f"--{flag.replace('_', '-')} must be >= 1, got {v}")
    if a.warmup is not None and a.warmup < 0:
        ap.error(f"--warmup must be >= 0, got {a.warmup}")

    from dualvae.data.synth import write_synth_celeba

    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    threads = a.threads or os.cpu_count() or 1
    batch = a.batch_size or (16 if a.quick else 256)
    width = a.width or (8 if a.quick else 32)
    steps = a.steps or (1 if a.quick else (20 if cuda else 7))
    rounds = a.rounds or (1 if a.quick else 3)
    warmup = a.warmup if a.warmup is not None else (5 if cuda and not a.quick else 1)
    per_round = 1 + steps
    # Training images are 80% of those generated: one round's batches (an epoch slice) must fit in one epoch.
    num = a.num or max(192, int(max(per_round, warmup) * batch / 0.8) + 64)
    size = a.image_size
    no_dali = dali_missing()
    dev_name = "cpu" if not cuda else re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    report = {"device": device.type, "device_name": torch.cuda.get_device_name() if cuda else cpu_model(),
              "cpu": cpu_report(), "cpu_model": cpu_model(), "cores": os.cpu_count(), "threads": threads,
              "torch_threads": torch.get_num_threads(), "image_size": size, "batch_size": batch, "width": width,
              "latent_dim": 128, "steps_per_round": steps, "rounds": rounds, "warmup": warmup,
              "untimed_per_round": 1, "quick": a.quick, "data_backend": a.data_backend,
              "torch": torch.__version__, "triton": _version("triton"),
              "dali": None if no_dali else _version("nvidia.dali"), "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "note": a.note,
              "loadavg_start": _loadavg(), "configs": names}
    if no_dali:
        report["dali_missing"] = no_dali

    def write(final: bool) -> str:
        """Summarise the rounds so far and write the JSON and the table (after every round: a run cut short
        still leaves its rounds)."""
        base = None
        for name, row in rows.items():
            ts = times.get(name)
            if "error" in row or not ts:
                continue
            row["timed_steps"] = len(ts)
            row["step_s"] = _summary(ts, 4)
            row["images_per_s"] = {"median": round(batch / row["step_s"]["median"], 1),
                                   "min": round(batch / row["step_s"]["max"], 1),
                                   "max": round(batch / row["step_s"]["min"], 1)}
            row["times_s"] = [round(v, 4) for v in ts]
            if name == "eager":
                base = row["images_per_s"]["median"]
        prev = None
        for name, row in rows.items():
            if "images_per_s" in row:
                rate = row["images_per_s"]["median"]
                row["x_eager"] = round(rate / base, 3) if base else None
                row["x_previous_row"] = round(rate / prev, 3) if prev else None
                prev = rate
        report["rows"] = list(rows.values())
        x = {n: r["x_eager"] for n, r in rows.items() if r.get("x_eager") is not None}
        report["x_eager"] = x
        report["ours_over_eager"] = x.get("bf16")
        report["ours_fp32_over_eager"] = x.get("compile")
        report["target"] = "ours >= 1.5x eager images/s on a GPU"
        ours = report["ours_over_eager"]
        report["target_met"] = (ours >= 1.5 if ours is not None else None) if cuda else None  # a GPU target
        report["complete"] = final
        report["loadavg_end"] = _loadavg()

        table = [f"{report['device_name']} ({device.type}, ISA {report['cpu']['cpu_isa_level']}), {size}x{size}, "
                 f"batch {batch}, width {width}, {len(report.get('rounds_info', []))} of {rounds} round(s) x {steps} "
                 f"timed step(s) per configuration "
                 f"(after {warmup} warm-up step(s)), load average {report['loadavg_start'][0]} at start, "
                 f"{report['loadavg_end'][0]} at end", "",
                 "| config | adds | data | kernels | precision | compile | images/s median | min-max | step s median "
                 "| x eager |", "|---|---|---|---|---|---|---|---|---|---|"]
        for row in report["rows"]:
            if "images_per_s" in row:
                ips, st = row["images_per_s"], row["step_s"]
                table.append(f"| {row['config']} | {row['adds']} | {row['data_backend']} | {row['kernel_backend']} | "
                             f"{row['precision']} | {row['compile']} | {ips['median']:.1f} | {ips['min']:.1f}-"
                             f"{ips['max']:.1f} | {st['median']:.3f} | {row['x_eager']} |")
            else:
                why = row.get("skipped") or f"error: {row.get('error')}"
                table.append(f"| {row['config']} | {row['adds']} | {row['data_backend']} | {row['kernel_backend']} | "
                             f"{row['precision']} | {row['compile']} | - | - | - | {why} |")
        os.makedirs(a.out, exist_ok=True)
        path = os.path.join(a.out, f"train-{dev_name}.json")
        write_json_atomic(path, report)
        write_text_atomic(os.path.join(a.out, f"train-{dev_name}.md"), "\n".join(table) + "\n")
        if final:
            print("\n" + "\n".join(table))
            print(f"ours / eager: {report['ours_over_eager']}x (target on a GPU: >= 1.5x)\nwrote {path}")
        return path

    runners: dict[str, Runner] = {}
    rows: dict[str, dict] = {}
    times: dict[str, list[float]] = {}
    failed = False
    with tempfile.TemporaryDirectory() as tmp:
        root = a.data
        if root is None:
            root = os.path.join(tmp, "synth")
            t = time.perf_counter()
            write_synth_celeba(root, num=num, seed=0, workers=threads, progress=False)
            report.update(num_images=num, synth_s=round(time.perf_counter() - t, 2))
        for name in names:
            adds, data, kb, prec, comp = CONFIGS[name]
            data_backend = "pil" if data == "pil" else a.data_backend
            comp = comp and not a.quick
            row = {"config": name, "adds": adds, "data_backend": data_backend, "kernel_backend": kb,
                   "precision": prec, "compile": comp}
            rows[name] = row
            if data_backend == "dali" and no_dali:
                row["skipped"] = f"needs DALI: {no_dali}"
            elif name == "data" and data_backend == "pil":
                row["skipped"] = "--data-backend pil: the same configuration as eager"
            if "skipped" in row:
                print(f"{name:<12} skipped: {row['skipped']}", flush=True)
                continue
            t = time.perf_counter()
            try:
                r = Runner(root, device, data_backend=data_backend, kernel_backend=kb, precision=prec,
                           compile=comp, batch=batch, size=size, width=width, threads=threads)
                r.run(warmup, 0)
            except Exception as e:
                row["error"] = f"{type(e).__name__}: {e}"
                traceback.print_exc()
                failed = True
                continue
            row.update(fullgraph=comp and r.fns.fused, setup_and_warmup_s=round(time.perf_counter() - t, 2))
            runners[name] = r
            times[name] = []
            print(f"{name:<12} ready (setup + warm-up {row['setup_and_warmup_s']} s, load {_loadavg()[0]})",
                  flush=True)
        report["rounds_info"] = []
        for k in range(rounds):
            info = {"round": k, "loadavg_before": _loadavg(), "step_s_median": {}}
            for name, r in list(runners.items()):
                try:
                    ts = r.run(1, steps)
                except Exception as e:
                    rows[name]["error"] = f"round {k}: {type(e).__name__}: {e}"
                    traceback.print_exc()
                    failed = True
                    r.close()
                    del runners[name]
                    continue
                times[name] += ts
                info["step_s_median"][name] = round(statistics.median(ts), 4)
            info["loadavg_after"] = _loadavg()
            report["rounds_info"].append(info)
            write(False)
            print(f"round {k}: load {info['loadavg_before'][0]} -> {info['loadavg_after'][0]}, median step s "
                  f"{info['step_s_median']}", flush=True)
        for name, r in runners.items():
            rows[name]["last_neg_elbo"] = None if r.last_neg_elbo is None else round(r.last_neg_elbo, 2)
            r.close()

    write(True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
