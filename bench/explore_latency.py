"""What one slider move of `dualvae explore` costs on the CPU: `Explorer.transfer` of one picture (DualVAE: one
decode of z + sum lam_i u_i; with a classifier, f of the result too), on the demo's model sizes.

    python bench/explore_latency.py [--moves 200] [--threads 1,2] [--model RUN/model.pt] [--out FILE]

Without --model, the demo's DualVAE (64x64, conv width 24, latent 128, 40 labels) and classifier (width 32) with
fresh weights: the time does not depend on what the weights are. Each move sets three sliders to new values;
the report keeps the median and the 90th percentile over `moves` moves after 20 warmup moves, per thread count.
The browser adds the request, the PNG and the display (tests/test_explore_browser.py prints that total).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import time

import torch

from dualvae.classifier import AttributeClassifier
from dualvae.data import CELEBA_ATTRIBUTES
from dualvae.data.atomic import write_json_atomic
from dualvae.explore import Explorer
from dualvae.model import DualVAE
from dualvae.sysinfo import cpu_report

HERE = os.path.dirname(os.path.abspath(__file__))


def models(path: str | None):
    if path:
        from dualvae.checkpoint import kinds_of, load_model
        from dualvae.transfer_model import TransferModel

        model = load_model(path, kinds_of(TransferModel))
    else:
        torch.manual_seed(0)
        model = DualVAE(64, 3, 128, 40, 24).eval()
        model.attr_names = list(CELEBA_ATTRIBUTES)
    size = model.config.image_size
    clf = AttributeClassifier(model.num_labels, size, 3, 32).eval()
    clf.attr_names = list(model.attr_names)
    return model, clf


def time_moves(ex: Explorer, moves: int, warmup: int = 20) -> dict:
    pic = ex.pick(0)
    lo, hi = ex.lam_range
    names = ex.attributes
    times = []
    for k in range(warmup + moves):
        values = {names[31]: hi * ((k % 7) / 7), names[20]: lo * ((k % 5) / 5), names[15]: hi * ((k % 3) / 3 + 0.1)}
        t0 = time.perf_counter()
        ex.transfer(pic, values)
        if k >= warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    return {"median_ms": round(statistics.median(times) * 1e3, 3),
            "p90_ms": round(times[int(0.9 * (len(times) - 1))] * 1e3, 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--moves", type=int, default=200)
    p.add_argument("--threads", default="1,2", help="thread counts, separated by commas")
    p.add_argument("--model", default=None, help="a transfer model checkpoint (default: the demo's sizes, fresh)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "explore-cpu.json"))
    a = p.parse_args(argv)
    model, clf = models(a.model)
    images = torch.randint(0, 256, (1, 3, model.config.image_size, model.config.image_size), dtype=torch.uint8)
    rows, load_before = [], os.getloadavg()
    for threads in [int(t) for t in a.threads.split(",")]:
        torch.set_num_threads(threads)
        for with_f in (False, True):
            ex = Explorer(model, images, ["bench.jpg"], clf if with_f else None)
            rows.append({"threads": threads, "classifier": with_f, **time_moves(ex, a.moves)})
    print(f"{'threads':>7}  {'with f':>6}  {'median ms':>9}  {'p90 ms':>7}")
    for r in rows:
        print(f"{r['threads']:>7}  {str(r['classifier']):>6}  {r['median_ms']:>9.2f}  {r['p90_ms']:>7.2f}")
    cfg = model.config
    report = {"what": "Explorer.transfer of one picture, three sliders nonzero (one slider move of dualvae explore)",
              "model": a.model or "DualVAE at the demo's sizes, fresh weights", "kind": model.kind,
              "image_size": cfg.image_size, "num_labels": cfg.num_labels, "dtype": "float32", "device": "cpu",
              "moves": a.moves, "rows": rows,
              "load_average_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)], "cpu": cpu_report(),
              "torch": torch.__version__,
              "python": platform.python_version(), "date": _dt.date.today().isoformat()}
    print(f"wrote {write_json_atomic(a.out, report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
