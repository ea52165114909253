"""CIS evaluators, timed in one run: 160 images x 40 domains x 1 lam (the paper's test setting).

    literal_loop     Algorithm 2 as written: per image and domain, one transfer (encode + decode) and one f call
    per_domain_loop  per domain, all images in one batch: model.transfer(images, i, lam), then f
    loop_reference   conditional_inception_score(batched=False): per image, its n transfers as one batch
    batched          conditional_inception_score(batched=True): encode once, stream (image, domain, lam) chunks

The N * n decoder and classifier passes cannot shrink (the batched pass drops only the repeated encodes), so the
result also gives the achieved GFLOP/s against this machine's measured matmul peak. Peak memory of the batched
evaluator is measured in subprocesses (RSS high-water mark on CPU) at two N and several chunk sizes. bf16
(autocast) is timed and compared with fp32.

    .venv/bin/python bench/cis.py [--quick] [--out-dir bench/results] [--model M --classifier C --data DIR]

writes OUT_DIR/cis-<device>.json (cis-<device>-quick.json with --quick) and the PNG beside it, and prints the table.
Without --model the networks are random with the demo's sizes (timings do not depend on the weights); with a
trained model and classifier the fp32/bf16 comparison is on real scores.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from dualvae.data.atomic import write_json_atomic
from dualvae.sysinfo import cpu_model, cpu_report
from dualvae.cis import conditional_inception_score, resolve_domains, scores_from_M
from dualvae.classifier import AttributeClassifier
from dualvae.model import DualVAE

FULL = dict(images=160, domains=40, lam=32.0, repeats=3, sweep_images=64, sweep=[32, 64, 128, 256, 512],
            memory_images=[40, 160], memory_chunks=[32, 256], image_size=64, width=24, latent_dim=128,
            clf_width=32, num_labels=40, matmul=2048)
QUICK = dict(images=6, domains=4, lam=2.0, repeats=1, sweep_images=6, sweep=[4, 8], memory_images=[3, 6],
             memory_chunks=[4], image_size=16, width=8, latent_dim=8, clf_width=8, num_labels=5, matmul=256)


# -- the two baselines ---------------------------------------------------------------------------------------------
@torch.no_grad()
def literal_loop(model, f, images, domain_idx, lam):
    """Algorithm 2 line by line: x^(i) = m^i(x) one image and one domain at a time."""
    dom = torch.tensor(domain_idx)
    Ms = []
    for j in range(len(images)):
        x = images[j:j + 1]
        f_x = f(x)[0, dom]
        Ms.append(torch.stack([f(model.transfer(x, i, lam))[0, dom] - f_x for i in domain_idx]))
    return torch.stack(Ms)


@torch.no_grad()
def per_domain_loop(model, f, images, domain_idx, lam):
    """For each domain, every image in one batch."""
    dom = torch.tensor(domain_idx)
    f0 = f(images)[:, dom]
    M = torch.empty(len(images), len(domain_idx), len(domain_idx))
    for k, i in enumerate(domain_idx):
        M[:, k] = f(model.transfer(images, i, lam))[:, dom] - f0
    return M


def loop_reference(model, f, images, domain_idx, lam):
    return conditional_inception_score(model, f, images, domains=domain_idx, lam=lam, batched=False).M


def batched(model, f, images, domain_idx, lam, **kw):
    return conditional_inception_score(model, f, images, domains=domain_idx, lam=lam, **kw).M


# -- machine -------------------------------------------------------------------------------------------------------
def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, repeats, device):
    """(median seconds, all seconds, last result)."""
    times, out = [], None
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times, out


def matmul_peak_gflops(n, device, dtype, repeats=5):
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = min(timed(lambda: a @ b, repeats, device)[1])
    return 2 * n**3 / best / 1e9


def device_name(device) -> str:
    if device.type == "cuda":
        return "cuda-" + torch.cuda.get_device_name(device).lower().replace(" ", "-")
    return "cpu"


def flops_per_row(model, clf, image_size, device):
    x = torch.zeros(1, 3, image_size, image_size, device=device)
    out = {}
    for name, fn in [("encode", lambda: model.encode(x)), ("decode", lambda: model.decode(model.U[:1].detach())),
                     ("classifier", lambda: clf(x))]:
        with torch.no_grad(), FlopCounterMode(display=False) as fc:
            fn()
        out[name] = fc.get_total_flops()
    return out


def wait_for_load(max_load, max_wait_s=900):
    t0 = time.time()
    while os.getloadavg()[0] > max_load and time.time() - t0 < max_wait_s:
        print(f"  waiting for load < {max_load} (now {os.getloadavg()[0]:.2f})", flush=True)
        time.sleep(20)


# -- networks and data ---------------------------------------------------------------------------------------------
def build(a, p, device):
    if a.model:
        model, clf = DualVAE.load(a.model, device), AttributeClassifier.load(a.classifier, device)
    else:
        torch.manual_seed(0)
        model = DualVAE(image_size=p["image_size"], latent_dim=p["latent_dim"], num_labels=p["num_labels"],
                        width=p["width"]).to(device).eval()
        clf = AttributeClassifier(num_labels=p["num_labels"], image_size=p["image_size"],
                                  width=p["clf_width"]).to(device).eval()
    return model, clf


def load_images(a, p, n, device):
    if a.data:
        from dualvae.data import read_images

        images, _ = read_images(a.data, "test", n, p["image_size"])
        if len(images) < n:
            raise ValueError(f"--data: the test split has {len(images)} images, need {n}")
        return images.to(device)
    g = torch.Generator().manual_seed(1)
    return (torch.rand(n, 3, p["image_size"], p["image_size"], generator=g) * 2 - 1).to(device)


# -- memory --------------------------------------------------------------------------------------------------------
def _status_kib(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak_rss() -> tuple[int, str]:
    """(bytes resident now, how the peak will be read): resets the kernel's VmHWM where Linux allows it, else
    falls back on the process's ru_maxrss (then the baseline is the high-water mark so far)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_kib("VmRSS") * 1024, "VmHWM after resetting it (/proc/self/clear_refs), minus VmRSS before"
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "ru_maxrss growth"


def peak_rss(how: str) -> int:
    if how.startswith("VmHWM"):
        return _status_kib("VmHWM") * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def memory_probe(a, p, n_images, chunk) -> dict:
    """In this (fresh) process: peak memory the batched evaluator adds over what the images and networks hold."""
    device = torch.device(a.device)
    model, clf = build(a, p, device)
    images = load_images(a, p, n_images, device)
    domain_idx = list(range(p["domains"]))
    conditional_inception_score(model, clf, images[:1], domains=domain_idx[:1], lam=p["lam"])  # library init
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        how = "cuda max_memory_allocated minus memory_allocated before"
    else:
        before, how = reset_peak_rss()
    conditional_inception_score(model, clf, images, domains=domain_idx, lam=p["lam"], max_batch=chunk)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss(how)
    return {"images": n_images, "chunk": chunk, "triples": n_images * p["domains"],
            "peak_added_mib": round((peak - before) / 2**20, 1),
            "M_mib": round(n_images * p["domains"] ** 2 * 4 / 2**20, 2),
            "measure": how}


MMAP_THRESHOLD = "262144"


def memory_rows(a, p):
    """Peak memory per (N, chunk), each in a fresh process. glibc's malloc raises its mmap threshold as large
    blocks are freed, after which freed chunk buffers stay in a fragmented heap and the resident peak creeps up with
    the number of chunks; a fixed MALLOC_MMAP_THRESHOLD_ turns that off and shows what the evaluator holds. Both
    are recorded (the allocator's creep for the largest chunk only)."""
    rows = []
    runs = [(c, True) for c in p["memory_chunks"]]
    if not a.quick:
        runs += [("all", True), (p["memory_chunks"][-1], False)]
    for n in p["memory_images"]:
        for c, fixed in runs:
            chunk = n * p["domains"] if c == "all" else c  # all: every transferred image in one chunk
            cmd = [sys.executable, os.path.abspath(__file__), "--memory-probe", f"{n},{chunk}", "--device", a.device,
                   "--threads", str(torch.get_num_threads())]
            if a.quick:
                cmd.append("--quick")
            if a.model:
                cmd += ["--model", a.model, "--classifier", a.classifier]
            if a.data:
                cmd += ["--data", a.data]
            env = dict(os.environ)
            env.pop("MALLOC_MMAP_THRESHOLD_", None)
            if fixed:
                env["MALLOC_MMAP_THRESHOLD_"] = MMAP_THRESHOLD
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            row = json.loads(out.strip().splitlines()[-1])
            row["what"] = "no chunking: every transferred image at once" if c == "all" else "chunked"
            row["malloc"] = f"MALLOC_MMAP_THRESHOLD_={MMAP_THRESHOLD}" if fixed else "glibc default"
            rows.append(row)
            print(f"  memory: N={n:<4} chunk={chunk:<5} {row['malloc']:<30} peak added "
                  f"{row['peak_added_mib']:>8.1f} MiB", flush=True)
    return rows


# -- plot ----------------------------------------------------------------------------------------------------------
def plot(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(res["seconds"])
    secs = [res["seconds"][k]["median"] for k in names]
    bars = ax.barh(names, secs, color=["#bbb", "#999", "#777", "#2a7"])
    for b, k in zip(bars, names):
        s = res["seconds"][k]
        ax.annotate(f" {s['median']:.2f} s, {s['speedup_vs_literal']:.1f}x, {s['useful_gflops']:.0f} GFLOP/s",
                    (b.get_width(), b.get_y() + b.get_height() / 2), va="center", fontsize=8)
    ax.set_xlim(0, max(secs) * 1.8)
    ax.set_xlabel("seconds (median)")
    sz = res["sizes"]
    ax.set_title(f"CIS, {sz['images']} images x {sz['domains']} domains, {res['device']}\n"
                 f"matmul peak {res['peak_gflops']['fp32']:.0f} GFLOP/s", fontsize=9)
    ax.invert_yaxis()
    for n in sorted({r["images"] for r in res["memory"]["rows"]}):
        rows = sorted((r for r in res["memory"]["rows"] if r["images"] == n and r["malloc"] != "glibc default"),
                      key=lambda r: r["chunk"])
        bx.plot([r["chunk"] for r in rows], [r["peak_added_mib"] for r in rows], "o-", label=f"N = {n}")
    bx.set_xscale("log", base=2)
    bx.set_xlabel("chunk (triples); the last point of each line holds all N x n at once")
    bx.set_ylabel("peak memory added (MiB)")
    bx.set_title("peak memory follows the chunk, not N x n", fontsize=9)
    bx.legend()
    bx.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# -- main ----------------------------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI-sized run (tiny networks, a few images)")
    ap.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--model", help="trained DualVAE checkpoint (default: random, the demo's sizes)")
    ap.add_argument("--classifier", help="trained classifier checkpoint (with --model)")
    ap.add_argument("--data", help="CelebA-format root: use its test images (default: random images)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 (autocast) measurement")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    ap.add_argument("--max-load", type=float, default=None, help="first wait (up to 15 min) for a 1-min load below")
    ap.add_argument("--memory-probe", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if bool(a.model) != bool(a.classifier):
        ap.error("--model and --classifier go together")
    p = dict(QUICK if a.quick else FULL)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.memory_probe:
        n, chunk = (int(v) for v in a.memory_probe.split(","))
        print(json.dumps(memory_probe(a, p, n, chunk)))
        return 0

    device = torch.device(a.device)
    model, clf = build(a, p, device)
    images = load_images(a, p, p["images"], device)
    domain_idx = resolve_domains(model, p["domains"])
    N, n, lam = len(images), len(domain_idx), p["lam"]
    f = clf.probs
    if a.max_load is not None:
        wait_for_load(a.max_load)
    load_before = os.getloadavg()
    print(f"CIS benchmark: {N} images x {n} domains x 1 lam on {device_name(device)} "
          f"({torch.get_num_threads()} threads), load {load_before[0]:.2f}", flush=True)

    peak = {"fp32": matmul_peak_gflops(p["matmul"], device, torch.float32)}
    if not a.no_bf16:
        # a CPU without bf16 arithmetic runs a 2048^3 bf16 product for minutes: 512 shows the rate as well
        peak["bf16"] = matmul_peak_gflops(p["matmul"] if device.type == "cuda" else min(p["matmul"], 512), device,
                                          torch.bfloat16)
    fl = flops_per_row(model, clf, p["image_size"], device)
    useful = N * (fl["encode"] + fl["classifier"]) + N * n * (fl["decode"] + fl["classifier"])
    executed = {"literal_loop": N * n * (fl["encode"] + fl["decode"] + fl["classifier"]) + N * fl["classifier"]}
    executed["per_domain_loop"] = executed["loop_reference"] = executed["literal_loop"]
    executed["batched"] = useful

    methods = {"literal_loop": literal_loop, "per_domain_loop": per_domain_loop, "loop_reference": loop_reference,
               "batched": batched}
    batched(model, f, images[:2], domain_idx, lam)  # library init, outside the timings
    # Round robin (one run of each method per round), so that load from other processes on a shared machine
    # falls on every method alike rather than on whichever ran when it came.
    runs, loads, Ms = {name: [] for name in methods}, [], {}
    for r in range(p["repeats"]):
        for name, fn in methods.items():
            sec, _, Ms[name] = timed(lambda: fn(model, f, images, domain_idx, lam), 1, device)
            runs[name].append(sec)
            loads.append(round(os.getloadavg()[0], 2))
            print(f"  round {r + 1}/{p['repeats']}  {name:<16} {sec:8.2f} s  (load {os.getloadavg()[0]:.2f})",
                  flush=True)
    seconds = {name: {"median": statistics.median(t), "runs": t} for name, t in runs.items()}
    for name, s in seconds.items():
        s["speedup_vs_literal"] = seconds["literal_loop"]["median"] / s["median"]
        s["useful_gflops"] = useful / s["median"] / 1e9
        s["executed_gflops"] = executed[name] / s["median"] / 1e9
        s["fraction_of_fp32_matmul_peak"] = s["executed_gflops"] / peak["fp32"]
    ref = Ms["loop_reference"]
    ts, rs = scores_from_M(ref)
    agreement = {f"max_abs_M_diff{'' if k == 'batched' else '_' + k}": (Ms[k] - ref).abs().max().item()
                 for k in ("batched", "literal_loop", "per_domain_loop")}
    agreement["cis_loop_reference"] = ts + rs
    agreement["cis_batched"] = sum(scores_from_M(Ms["batched"]))

    sweep_images = images[:p["sweep_images"]]
    chunk_sweep = []
    for chunk in p["sweep"]:
        med, _, _ = timed(lambda: batched(model, f, sweep_images, domain_idx, lam, max_batch=chunk), p["repeats"],
                          device)
        chunk_sweep.append({"chunk": chunk, "images": len(sweep_images), "seconds_median": med,
                            "ms_per_triple": 1e3 * med / (len(sweep_images) * n)})
        print(f"  batched chunk {chunk:<5} {1e3 * med / (len(sweep_images) * n):.3f} ms per (image, domain)",
              flush=True)

    bf16 = None
    if not a.no_bf16:
        # one timed run: bf16 is a side measurement (an AVX2-only CPU has no bf16 arithmetic to speak of)
        med, all_s, _ = timed(lambda: conditional_inception_score(model, f, images, domains=domain_idx, lam=lam,
                                                                   precision="bf16"), 1, device)
        r16 = conditional_inception_score(model, f, images, domains=domain_idx, lam=lam, precision="bf16")
        r32 = conditional_inception_score(model, f, images, domains=domain_idx, lam=lam)
        bf16 = {"median": med, "runs": all_s, "speedup_vs_fp32_batched": seconds["batched"]["median"] / med,
                "cis_fp32": r32.cis, "cis_bf16": r16.cis, "abs_cis_diff": abs(r16.cis - r32.cis),
                "abs_ts_diff": abs(r16.ts - r32.ts), "abs_rs_diff": abs(r16.rs - r32.rs),
                "max_abs_M_diff": (r16.M - r32.M).abs().max().item(),
                "agrees_to_1e-3": abs(r16.cis - r32.cis) <= 1e-3}
        print(f"  batched bf16     {med:8.2f} s  CIS {r16.cis:+.5f} vs fp32 {r32.cis:+.5f}", flush=True)

    load_after = os.getloadavg()
    memory = {"rows": memory_rows(a, p)}
    res = {
        "what": "CIS evaluators timed in one run (Algorithm 2 literally, per-domain loop, per-image loop reference, "
                "batched one pass), their agreement, GFLOP/s against the matmul peak, batched peak memory at two N",
        "date": datetime.date.today().isoformat(),
        "device": device_name(device),
        "cpu": f"{cpu_model()}, {os.cpu_count()} cores", **cpu_report(), "threads": torch.get_num_threads(),
        "gpu": None if device.type == "cpu" else torch.cuda.get_device_name(device),
        "load_average_1_5_15": {"before": [round(v, 2) for v in load_before],
                                "after_timings": [round(v, 2) for v in load_after],
                                "1min_after_each_timed_run": loads,
                                "note": "this benchmark's own threads count in the load while it runs"},
        "versions": {"python": platform.python_version(), "torch": torch.__version__},
        "sizes": {"images": N, "domains": n, "lams": [lam], "image_size": p["image_size"],
                  "dualvae_width": model.config.width, "latent_dim": model.config.latent_dim,
                  "classifier_width": clf.config["width"], "dtype": "float32", "repeats": p["repeats"],
                  "batched_chunk": "default"},
        "networks": {"model": a.model or "random (seed 0)", "classifier": a.classifier or "random (seed 0)",
                     "images": f"{a.data} test split" if a.data else "random"},
        "flops_per_row": fl, "useful_gflop": useful / 1e9,
        "executed_gflop": {k: v / 1e9 for k, v in executed.items()},
        "peak_gflops": peak, "seconds": seconds, "agreement": agreement, "chunk_sweep": chunk_sweep,
        "bf16": bf16, "memory": memory, "quick": a.quick,
    }
    os.makedirs(a.out_dir, exist_ok=True)
    stem = os.path.join(a.out_dir, f"cis-{device_name(device)}{'-quick' if a.quick else ''}")
    write_json_atomic(stem + ".json", res)
    plot(res, stem + ".png")
    print(f"\n{'method':<16} {'seconds':>8} {'vs literal':>10} {'GFLOP/s':>8} {'of peak':>8}")
    for name, s in seconds.items():
        print(f"{name:<16} {s['median']:>8.2f} {s['speedup_vs_literal']:>9.1f}x {s['executed_gflops']:>8.1f} "
              f"{s['fraction_of_fp32_matmul_peak']:>8.1%}")
    print(f"fp32 matmul peak {peak['fp32']:.0f} GFLOP/s; batched vs loop reference: max |dM| "
          f"{agreement['max_abs_M_diff']:.2e}\nwrote {stem}.json and {stem}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
