"""Data throughput: images/s of every make_loader backend on CelebA-format data from `dualvae synth`.

Writes `<out>/data-<device>.json` and `<out>/data-<device>.md` (out defaults to bench/results) and prints the
table. Rows, at 64x64 and batch 256 (full size) on the same generated root:

  pil       torch DataLoader, K worker processes decoding with PIL (the reference path)
  dali-cpu  DALI's CPU mode, K threads
  hdf5      the cache written by `dualvae prepare`, split resident in memory, batches are index gathers
  dali-gpu  DALI with the `mixed` (GPU) decoder; hdf5-gpu: the cache resident in GPU memory (CUDA only)

Rows that need DALI (dali-cpu, dali-gpu; `prepare`, which writes the hdf5 cache, decodes with it) are recorded
under `skipped` with the reason where nvidia.dali is not importable; the others run. `--cache` reads an existing
cache (from `dualvae prepare` on a machine with DALI), so the hdf5 rows run without DALI too.

Each backend runs `--epochs` epochs of the train split (shuffled, drop_last); the first batch (pipeline build,
worker start) is timed apart as `first_batch_s` and images/s counts the rest, each batch consumed (summed) on
its device. Also measured: the training step's consumption rate (DualVAE width 32, batch 256, Algorithm 1, on
the device), so `targets` can compare DALI with it (GPU target: DALI >= 3x the step's rate), `prepare`'s time,
and the data part of `make demo`'s training two ways: "before", the train split read whole with PIL
(`read_split(..., backend="pil")`) then batches gathered by index, and "after", `prepare` then the hdf5 loader
(800 batches of 64).

    .venv/bin/python bench/data_throughput.py                      # full size: 8192 generated images
    .venv/bin/python bench/data_throughput.py --quick --out /tmp/d  # CI-sized (tests/test_bench_data.py)
    python bench/data_throughput.py --data ROOT --cache ROOT.h5     # on a host without DALI
"""
from __future__ import annotations

import argparse
import os
import platform
import re
import sys
import tempfile
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from dualvae.sysinfo import cpu_model, cpu_report  # noqa: E402  (after the path: runnable from a checkout)
from dualvae.data.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from dualvae.data import dali_missing  # noqa: E402

DEFAULT_OUT = os.path.join(HERE, "results")


def dali_version() -> tuple[str | None, str | None]:
    """(nvidia.dali's version, None), or (None, why it cannot be used)."""
    why = dali_missing()
    if why:
        return None, why
    import nvidia.dali

    return nvidia.dali.__version__, None


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_loader(make, epochs: int, device: str) -> dict:
    """Run `epochs` epochs of a fresh loader; the first batch is timed apart."""
    t0 = time.perf_counter()
    ld = make()
    build_s = time.perf_counter() - t0
    images, first_s, t_start, sink = 0, None, None, 0.0
    t_first = time.perf_counter()
    for e in range(epochs):
        for x, y, m, _ in ld.epoch(e):
            sink += float(x[:, :, 0, 0].sum()) + float(y.sum()) + float(m.rows.sum())  # consume on the device
            if first_s is None:
                _sync(device)
                first_s = time.perf_counter() - t_first
                t_start = time.perf_counter()
                continue
            images += len(x)
    _sync(device)
    dt = time.perf_counter() - t_start
    ld.close()
    return {"images": images, "seconds": round(dt, 3), "images_per_s": round(images / dt, 1) if dt > 0 else None,
            "first_batch_s": round(first_s, 3), "setup_s": round(build_s, 3), "batches_per_epoch": len(ld)}


def train_step_rate(device: str, batch: int, image_size: int, steps: int, width: int = 32) -> float:
    """Images/s Algorithm 1 consumes at this batch size (DualVAE width 32, latent 128, 40 labels)."""
    from dualvae.model import DualVAE
    from dualvae.training import TrainConfig, make_optimizers, train_step

    torch.manual_seed(0)
    cfg = TrainConfig(data="", out="", width=width)
    model = DualVAE(image_size, 3, cfg.latent_dim, 40, cfg.width).to(device).train()
    g, g_e = make_optimizers(model, cfg)
    x = torch.rand(batch, 3, image_size, image_size, device=device) * 2 - 1
    y = (torch.rand(batch, 40, device=device) > 0.5).float()
    m = torch.ones_like(y)
    eps = torch.randn(batch, cfg.latent_dim, device=device)
    train_step(model, g, g_e, x, y, m, eps, cfg)  # warm-up
    _sync(device)
    t = time.perf_counter()
    for _ in range(steps):
        train_step(model, g, g_e, x, y, m, eps, cfg)
    _sync(device)
    return batch * steps / (time.perf_counter() - t)


def demo_data_part(root: str, cache_dir: str, threads: int, steps: int = 800, batch: int = 64,
                   repeats: int = 3) -> dict:
    """The data work of `make demo`'s DualVAE training two ways: "before" (the train split read whole through
    PIL, `threads` worker processes, then index gathers) and "after" (prepare of all splits + the hdf5 loader):
    decode, then `steps` batches. The two alternate `repeats` times (the machine is shared; the minimum of each
    is the comparison)."""
    from dualvae.data import labels_to_binary, make_loader, prepare, read_split, to_unit_range

    def before():
        split = read_split(root, "train", image_size=64, backend="pil", threads=threads)
        images, labels = split.images, labels_to_binary(split.labels)
        gen = torch.Generator().manual_seed(0)
        n = len(images)
        for step in range(steps):
            pos = step % (n // batch)
            if pos == 0:
                order = torch.randperm(n, generator=gen)
            idx = order[pos * batch:(pos + 1) * batch]
            x, y = to_unit_range(images[idx]), labels[idx]

    def after():
        cache = os.path.join(cache_dir, "demo.h5")
        t = time.perf_counter()
        prepare(root, cache, image_size=64, workers=threads, progress=False, force=True)
        prep.append(time.perf_counter() - t)
        ld = make_loader(cache, "train", batch_size=batch, device="cpu", backend="hdf5")
        it, epoch = iter(ld.epoch(0)), 0
        for _ in range(steps):
            b = next(it, None)
            if b is None:
                epoch += 1
                it = iter(ld.epoch(epoch))
                b = next(it)

    threads_before = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the demo, where DualVAE trains with 1 torch thread beside the classifier
    times: dict[str, list[float]] = {"before": [], "after": []}
    prep: list[float] = []
    for _ in range(repeats):
        for name, fn in (("before", before), ("after", after)):
            t = time.perf_counter()
            fn()
            times[name].append(round(time.perf_counter() - t, 2))
    torch.set_num_threads(threads_before)
    return {"steps": steps, "batch": batch, "repeats": repeats,
            "before_load_split_plus_gathers_s": min(times["before"]),
            "after_prepare_plus_hdf5_loader_s": min(times["after"]), "of_which_prepare_s": round(min(prep), 2),
            "all_s": times,
            "torch_threads": 1,
            "note": "prepare decodes all splits (train+val+test) with DALI; before decodes the train split "
                    "only, with PIL worker processes"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="CI-sized: 96 images, batch 16, 1 epoch")
    ap.add_argument("--data", default=None, help="an existing CelebA-format root (default: generate one)")
    ap.add_argument("--num", type=int, default=None, help="images to generate (default 8192; quick 96)")
    ap.add_argument("--batch-size", type=int, default=None, help="default 256 (quick 16)")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=None, help="K: DALI threads = DataLoader workers (default: cores)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per backend (default 2; quick 1)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    ap.add_argument("--cache", default=None,
                    help="an existing cache from `dualvae prepare` for the hdf5 rows (default: prepare one, with DALI)")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--no-demo", action="store_true", help="skip the demo data-part comparison")
    a = ap.parse_args(argv)

    dali, no_dali = dali_version()

    from dualvae.data import make_loader, prepare, read_cache_info
    from dualvae.data.sources import read_source_list
    from dualvae.data.synth import write_synth_celeba

    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    threads = a.threads or os.cpu_count() or 1
    num = a.num or (96 if a.quick else 8192)
    batch = a.batch_size or (16 if a.quick else 256)
    epochs = a.epochs or (1 if a.quick else 2)
    size = a.image_size
    dev_name = "cpu" if device == "cpu" else re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    report = {"device": device, "device_name": cpu_model() if device == "cpu" else torch.cuda.get_device_name(),
              **cpu_report(), "threads": threads, "image_size": size,
              "batch_size": batch, "epochs": epochs, "quick": a.quick, "torch": torch.__version__,
              "dali": dali, "python": platform.python_version(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "loadavg_start": os.getloadavg()}

    with tempfile.TemporaryDirectory() as tmp:
        root = a.data
        if root is None:
            root = os.path.join(tmp, "synth")
            t = time.perf_counter()
            write_synth_celeba(root, num=num, seed=0, workers=threads)
            report["synth_s"] = round(time.perf_counter() - t, 2)
        cache, no_cache = a.cache, None
        prep_s = None
        if cache is None and no_dali:
            no_cache = f"needs a cache and `prepare` decodes with DALI: {no_dali}; pass --cache"
        elif cache is None:
            cache = os.path.join(tmp, f"cache-{size}.h5")
            t = time.perf_counter()
            prepare(root, cache, image_size=size, workers=threads, progress=False)
            prep_s = time.perf_counter() - t
        if cache is not None:
            n_cache = sum(read_cache_info(cache)["split_sizes"])
            if prep_s is not None:
                report.update(prepare_s=round(prep_s, 2), prepare_images_per_s=round(n_cache / prep_s, 1))
            report["cache"] = a.cache or "prepared here"
            report["cache_images"] = n_cache
        report["num_images"] = len(read_source_list(root)[0])

        def mk(backend, dev, src):
            return lambda: make_loader(src, "train", image_size=size, batch_size=batch, device=dev, backend=backend,
                                       seed=0, threads=threads)

        plan = [("pil", "pil", "cpu", root), ("dali-cpu", "dali", "cpu", root), ("hdf5", "hdf5", "cpu", cache)]
        if device == "cuda":
            plan += [("dali-gpu", "dali", "cuda", root), ("hdf5-gpu", "hdf5", "cuda", cache)]
        rows, skipped = [], []
        for name, backend, dev, src in plan:
            why = {"dali": no_dali, "hdf5": no_cache}.get(backend)
            if why:
                skipped.append({"backend": name, "device": dev, "reason": why})
                print(f"{name:<9} skipped: {why}", flush=True)
                continue
            r = {"backend": name, "device": dev, "threads": threads if backend != "hdf5" else None,
                 **time_loader(mk(backend, dev, src), epochs, dev)}
            rows.append(r)
            print(f"{name:<9} {r['images_per_s']:>10} images/s  (first batch {r['first_batch_s']} s)", flush=True)
        report["rows"], report["skipped"] = rows, skipped
        report["train_split_images"] = rows[0]["batches_per_epoch"] * batch
        step_rate = train_step_rate(device, batch, size, steps=1 if a.quick else (5 if device == "cpu" else 50),
                                    width=8 if a.quick else 32)  # quick: a tiny model, only to run the code
        report["train_step_images_per_s"] = round(step_rate, 1)
        rate = {r["backend"]: r["images_per_s"] for r in rows}
        report["targets"] = {}
        if "dali-cpu" in rate:
            report["targets"].update(dali_cpu_over_pil=round(rate["dali-cpu"] / rate["pil"], 3),
                                     dali_cpu_ge_pil=rate["dali-cpu"] >= rate["pil"],
                                     dali_cpu_over_train_step=round(rate["dali-cpu"] / step_rate, 2))
        if "dali-gpu" in rate:
            report["targets"].update(dali_gpu_over_train_step=round(rate["dali-gpu"] / step_rate, 2),
                                     dali_gpu_ge_3x_train_step=rate["dali-gpu"] >= 3 * step_rate)
        if not a.no_demo and not a.quick:
            if no_dali:
                skipped.append({"backend": "demo_data_part", "device": "cpu",
                                "reason": f"`prepare` decodes with DALI: {no_dali}"})
            else:
                report["demo_data_part"] = demo_data_part(root, tmp, threads)
    report["loadavg_end"] = os.getloadavg()

    os.makedirs(a.out, exist_ok=True)
    base = os.path.join(a.out, f"data-{dev_name}")
    write_json_atomic(base + ".json", report)
    source = f"{report['num_images']} {'generated ' if a.data is None else ''}CelebA-format images"
    md = [f"# Data throughput, {report['device_name']} ({device}), {report['date']}", "",
          f"{source} ({report['train_split_images']} per train epoch "
          f"at batch {batch}), {size}x{size}, K = {threads} threads/workers, {epochs} epoch(s) per backend, "
          f"load average at start {report['loadavg_start'][0]:.2f}; CPU ISA {report['cpu_isa_level']}.", "",
          "| backend | device | K | images/s | first batch s |", "|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['backend']} | {r['device']} | {r['threads'] or '-'} | {r['images_per_s']:.0f} | "
                  f"{r['first_batch_s']} |")
    md += [""] * bool(report["skipped"]) + [f"skipped: {r['backend']} ({r['device']}): {r['reason']}"
                                            for r in report["skipped"]]
    prep = (f"prepare (DALI, all splits): {report['prepare_images_per_s']:.0f} images/s; "
            if "prepare_images_per_s" in report else "")
    md += ["", f"{prep}training step (DualVAE width {8 if a.quick else 32}, batch {batch}): "
           f"{report['train_step_images_per_s']:.0f} images/s.", "",
           "targets: " + (", ".join(f"{k} = {v}" for k, v in report["targets"].items()) or "none (no DALI rows)")]
    if "demo_data_part" in report:
        d = report["demo_data_part"]
        md += ["", f"demo data part ({d['steps']} batches of {d['batch']}): before (read_split pil + gathers) "
               f"{d['before_load_split_plus_gathers_s']} s, after (prepare + hdf5 loader) "
               f"{d['after_prepare_plus_hdf5_loader_s']} s (prepare {d['of_which_prepare_s']} s)"]
    write_text_atomic(base + ".md", "\n".join(md) + "\n")
    print("\n".join(md))
    print(f"\nwrote {base}.json and {base}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
