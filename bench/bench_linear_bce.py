"""Benchmark of linear_binary_cross_entropy_with_logits (dualvae.kernels), forward and forward+backward w.r.t.
input, weight and bias, against eager, torch.compile and a chunked plain-PyTorch implementation.

    python bench/bench_linear_bce.py [--device cpu|cuda] [--threads N] [--rounds R] [--out DIR] [--quick]
                                     [--sizes BxDxN,...]

Implementations ("impl"), all on one problem: soft targets, bias, reduction="mean", fp32:
    eager          F.linear + F.binary_cross_entropy_with_logits, autograd backward
    compile        torch.compile of that same function
    chunked        Liger's fused-linear-cross-entropy way (and Inductor's auto-chunking's): a custom
                   autograd.Function whose forward loops over CHUNK-column slices of the weight with a compiled
                   chunk function returning the slice's loss and gradients; the backward only scales them
    ours           backend "cpu" (the C++ kernels) on CPU, "triton" on CUDA
    ours-weighted  ours with pos_weight and label_weight (per label) on: what the options cost
    gemm-floor     the GEMMs alone at the BLAS's own rate, measured in the same run: the logits x W^T (forward);
                   with backward also G W and G^T x (three GEMMs, G a preallocated (B, n) buffer)
and at small n (B = 64 and 1024, n = 40) also dual_bce's eager reference and its backend, the per-call
overhead rows ("dual_bce-eager", "dual_bce-ours").

Modes: "fwd" (the loss under torch.no_grad, as in evaluation) and "fwd+bwd" (loss.backward()).
Measurement: for each size every impl is warmed up (compilation excluded), then `--rounds` interleaved rounds
run each impl once per round in a rotating order; within a round an impl repeats until 20 ms have passed (small
sizes) and its time is the mean per call; the reported time is the median over rounds. Extra peak memory (CPU):
VmHWM during one step minus VmRSS before it (the high-water mark reset through /proc/self/clear_refs; glibc's
mmap threshold pinned, so freed tensors leave the resident set); CUDA: max_memory_allocated minus the memory
allocated before the step. The load average before and after each size is recorded.
Writes `<out>/linear_bce-<device>.json`, `.md` (the table, also printed) and one plot per mode,
`linear_bce-<device>-fwd.png` and `-fwdbwd.png`.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import DEFAULT_OUT, _pin_malloc, _reset_hwm, _status_kib, _triton_version  # noqa: E402

from dualvae.data.atomic import write_text_atomic  # noqa: E402
from dualvae.sysinfo import cpu_model, cpu_report  # noqa: E402

CHUNK = 4096  # columns of the weight per chunk in the chunked implementation
SIZES = [(1024, 128, n) for n in (40, 1024, 8192, 65536, 262144, 1 << 20)] + \
        [(1024, 512, n) for n in (40, 8192, 65536)] + [(64, 128, 40)]
SMALL = {(64, 128, 40), (1024, 128, 40)}  # dual_bce rows too
EAGER_ENTRIES_CAP = 1 << 28  # eager / compile above 1024 x 262144 entries: several 4 GiB tensors, minutes per step
MODES = ("fwd", "fwd+bwd")


def _chunk_grads(x, W_c, b_c, y_c, scale):
    """Loss and gradients of one slice of columns, computed explicitly (compiled by the chunked impl)."""
    logits = torch.addmm(b_c, x, W_c.t())
    loss = F.binary_cross_entropy_with_logits(logits, y_c, reduction="sum") * scale
    g = (torch.sigmoid(logits) - y_c) * scale
    return loss, g @ W_c, g.t() @ x, g.sum(0)


class ChunkedLinearBCE(torch.autograd.Function):
    """Never the whole B x n logits: the forward makes each slice's loss and gradients, the backward scales them."""

    @staticmethod
    def forward(ctx, x, W, b, y, chunk_fn, chunk):
        n = W.shape[0]
        scale = 1.0 / (x.shape[0] * n)
        loss = x.new_zeros(())
        dx, dW, db = torch.zeros_like(x), torch.empty_like(W), torch.empty_like(b)
        for s in range(0, n, chunk):
            l_c, dx_c, dW[s:s + chunk], db[s:s + chunk] = chunk_fn(x, W[s:s + chunk], b[s:s + chunk],
                                                                   y[:, s:s + chunk], scale)
            loss += l_c
            dx += dx_c
        ctx.save_for_backward(dx, dW, db)
        return loss

    @staticmethod
    def backward(ctx, grad):
        dx, dW, db = ctx.saved_tensors
        return grad * dx, grad * dW, grad * db, None, None, None


def build(B, d, n, device, impls):
    """(inputs, {impl: fwd()}) for one size."""
    import dualvae.kernels as K
    g = torch.Generator(device=device).manual_seed(B * 7919 + n + d)
    x = (torch.randn(B, d, generator=g, device=device) * 0.5).requires_grad_()
    W = (torch.randn(n, d, generator=g, device=device) / d ** 0.5).requires_grad_()
    b = (torch.randn(n, generator=g, device=device) * 0.1).requires_grad_()
    y = torch.rand(B, n, generator=g, device=device)
    pw = torch.rand(n, generator=g, device=device) * 2
    lw = torch.rand(n, generator=g, device=device)
    ours = "triton" if device == "cuda" else "cpu"
    torch._dynamo.reset()

    def eager(x, W, b):
        return F.binary_cross_entropy_with_logits(F.linear(x, W, b), y)

    fns = {}
    if "eager" in impls:
        fns["eager"] = lambda: eager(x, W, b)
    if "compile" in impls:
        ce = torch.compile(eager, dynamic=False)
        fns["compile"] = lambda: ce(x, W, b)
    if "chunked" in impls:
        chunk_fn = torch.compile(_chunk_grads, dynamic=False)
        fns["chunked"] = lambda: ChunkedLinearBCE.apply(x, W, b, y, chunk_fn, CHUNK)
    fns["ours"] = lambda: K.linear_binary_cross_entropy_with_logits(x, W, y, b, backend=ours)
    fns["ours-weighted"] = lambda: K.linear_binary_cross_entropy_with_logits(x, W, y, b, pos_weight=pw,
                                                                             label_weight=lw, backend=ours)
    if (B, d, n) in SMALL:
        y01 = (y > 0.5).float()
        fns["dual_bce-eager"] = lambda: K.reference.dual_bce(x, W, y01, bias=b, reduction="mean")
        fns["dual_bce-ours"] = lambda: K.dual_bce(x, W, y01, bias=b, reduction="mean", backend=ours)
    buf = torch.empty(B, n, device=device)
    dx, dW = torch.empty(B, d, device=device), torch.empty(n, d, device=device)

    def floor(grad):
        with torch.no_grad():
            torch.mm(x, W.t(), out=buf)
            if grad:
                torch.mm(buf, W, out=dx)
                torch.mm(buf.t(), x, out=dW)
    fns["gemm-floor"] = floor
    return (x, W, b), fns


def step(fn, impl, mode, leaves):
    for t in leaves:
        t.grad = None
    if impl == "gemm-floor":
        return fn(mode == "fwd+bwd")
    if mode == "fwd":
        with torch.no_grad():
            return fn()
    fn().backward()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, impl, mode, leaves, device, min_s=0.02) -> float:
    """Mean ms per call over a burst of at least min_s."""
    calls, t0 = 0, time.perf_counter()
    while True:
        step(fn, impl, mode, leaves)
        calls += 1
        sync(device)
        el = time.perf_counter() - t0
        if el >= min_s:
            return el / calls * 1e3


def peak(fn, impl, mode, leaves, device) -> float | None:
    """Extra peak memory of one step, MiB."""
    gc.collect()
    if device == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(fn, impl, mode, leaves)
        sync(device)
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    if not _reset_hwm():
        return None
    base = _status_kib("VmRSS")
    _reset_hwm()
    step(fn, impl, mode, leaves)
    return (_status_kib("VmHWM") - base) / 1024


def measure_size(B, d, n, device, rounds, impls_all) -> list[dict]:
    big = B * n > EAGER_ENTRIES_CAP
    impls = [i for i in impls_all if not (big and i in ("eager", "compile"))]
    leaves, fns = build(B, d, n, device, impls)
    rows = []
    for mode in MODES:
        load0 = os.getloadavg()[0]
        times = {k: [] for k in fns}
        mem = {}
        for k, fn in fns.items():  # warmup: compilation, first-touch of the buffers
            for _ in range(2 if k in ("compile", "chunked") else 1):
                step(fn, k, mode, leaves)
            mem[k] = peak(fn, k, mode, leaves, device)
        order = list(fns)
        for r in range(rounds):
            for k in order[r % len(order):] + order[:r % len(order)]:
                times[k].append(timed(fns[k], k, mode, leaves, device))
        for k in fns:
            rows.append(dict(B=B, d=d, n=n, mode=mode, impl=k, threads=torch.get_num_threads(),
                             ms=statistics.median(times[k]), ms_rounds=times[k],
                             extra_peak_mib=mem[k], loadavg=[round(load0, 2), round(os.getloadavg()[0], 2)]))
        print(" ".join(f"{k}={statistics.median(v):.3f}ms" for k, v in times.items()),
              f"[B={B} d={d} n={n} {mode}, load {load0:.1f}]", flush=True)
    del leaves, fns
    gc.collect()
    return rows


def add_ratios(rows):
    by = {(r["B"], r["d"], r["n"], r["mode"], r["impl"]): r for r in rows}
    for r in rows:
        key = (r["B"], r["d"], r["n"], r["mode"])
        for base in ("eager", "compile", "gemm-floor"):
            other = by.get(key + (base,))
            if other and r["impl"] != base:
                r[f"speedup_vs_{base}"] = other["ms"] / r["ms"]
        e = by.get(key + ("eager",))
        if e and e.get("extra_peak_mib") and r.get("extra_peak_mib") is not None:
            r["mem_vs_eager"] = r["extra_peak_mib"] / e["extra_peak_mib"]
        plain = by.get(key + ("ours",))
        if r["impl"] == "ours-weighted" and plain:
            r["vs_unweighted"] = r["ms"] / plain["ms"]
        dual = by.get(key + ("dual_bce-eager",))
        if r["impl"] == "dual_bce-ours" and dual:
            r["speedup_vs_eager"] = dual["ms"] / r["ms"]


def targets(rows):
    """The issue's CPU targets (fp32, 2 threads)."""
    by = {(r["B"], r["d"], r["n"], r["mode"], r["impl"]): r for r in rows}
    out = {}
    o = by.get((1024, 128, 8192, "fwd+bwd", "ours"))
    if o:
        floor = by[(1024, 128, 8192, "fwd+bwd", "gemm-floor")]["ms"]
        out["speed_n8192"] = dict(vs_eager=o.get("speedup_vs_eager"), vs_compile=o.get("speedup_vs_compile"),
                                  vs_gemm_floor=o["ms"] / floor,
                                  ok=bool((o.get("speedup_vs_eager", 0) >= 3 and o.get("speedup_vs_compile", 0) >= 1.5)
                                          or o["ms"] <= 1.15 * floor))
        w = by.get((1024, 128, 8192, "fwd+bwd", "ours-weighted"))
        out["options_cost_n8192"] = dict(ratio=w and w.get("vs_unweighted"),
                                         ok=bool(w and w["vs_unweighted"] <= 1.1))
    o = by.get((1024, 128, 262144, "fwd+bwd", "ours"))
    if o:
        out["memory_n262144"] = dict(mem_vs_eager=o.get("mem_vs_eager"),
                                     ok=o.get("mem_vs_eager") is not None and o["mem_vs_eager"] <= 0.10)
    for B in (64, 1024):
        for impl in ("ours", "dual_bce-ours"):
            o = by.get((B, 128, 40, "fwd+bwd", impl))
            if o:
                out[f"small_n_B{B}_{impl}"] = dict(vs_eager=o.get("speedup_vs_eager"),
                                                   ok=o.get("speedup_vs_eager", 0) >= 1.0)
    out["all_ok"] = all(v["ok"] for v in out.values())
    return out


def markdown(report) -> str:
    rows = report["rows"]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    main_threads = statistics.mode(r.get("threads") for r in rows)
    lines = [f"# linear_bce on {report['device_name']}, {main_threads} threads (unless a row says), fp32, "
             "reduction=mean",
             "", f"torch {report['torch']}; C++ build {report['cpu_isa']}; runs (sizes, date, load average):", ""]
    lines += [f"- {[tuple(s) for s in run['sizes']]}: {run['date']}, load {run['loadavg_start']} -> "
              f"{run['loadavg_end']}" for run in report.get("runs", [])] + [""]
    for mode in MODES:
        lines += [f"## {mode}: median ms (extra peak MiB)", "",
                  "| B | d | n | " + " | ".join(impls) + " | ours ×eager | ours ×compile | ours / floor |",
                  "|" + "---|" * (len(impls) + 6)]
        sizes = sorted({(r["B"], r["d"], r["n"]) for r in rows if r["mode"] == mode}, key=lambda s: (s[1], s[0], s[2]))
        for s in sizes:
            cell = {r["impl"]: r for r in rows if (r["B"], r["d"], r["n"]) == s and r["mode"] == mode}
            fmt = (lambda r: f"{r['ms']:.3g} ({r['extra_peak_mib']:.0f})" if r.get("extra_peak_mib") is not None
                   else f"{r['ms']:.3g}")
            o = cell.get("ours", {})
            ratios = [f"{o[k]:.2f}" if k in o else "" for k in ("speedup_vs_eager", "speedup_vs_compile")]
            ratios.append(f"{1 / o['speedup_vs_gemm-floor']:.2f}" if "speedup_vs_gemm-floor" in o else "")
            threads = {r.get("threads") for r in cell.values()} - {main_threads, None}
            note = f" ({threads.pop()} thread)" if threads else ""
            lines.append(f"| {s[0]} | {s[1]} | {s[2]}{note} | "
                         + " | ".join(fmt(cell[i]) if i in cell else "—" for i in impls)
                         + " | " + " | ".join(ratios) + " |")
        lines.append("")
    lines += ["Targets: " + json.dumps(report["targets"]), ""]
    return "\n".join(lines)


def plot(report, base):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    top = max(r["B"] for r in report["rows"])  # the n sweep's batch
    rows = [r for r in report["rows"] if r["B"] == top and not r["impl"].startswith("dual_bce")]
    for mode in MODES:
        ds = sorted({r["d"] for r in rows})
        fig, axes = plt.subplots(1, len(ds), figsize=(6 * len(ds), 4.5), squeeze=False)
        for ax, d in zip(axes[0], ds):
            for impl in dict.fromkeys(r["impl"] for r in rows):
                pts = sorted((r["n"], r["ms"]) for r in rows if r["d"] == d and r["mode"] == mode and r["impl"] == impl)
                if pts:
                    ax.plot(*zip(*pts), marker="o", label=impl, linestyle="--" if impl == "gemm-floor" else "-")
            ax.set(xscale="log", yscale="log", xlabel="n (labels)", ylabel="ms", title=f"B={top}, d={d}, {mode}")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"linear_bce, {report['device_name']}, {report['threads']} threads")
        fig.tight_layout()
        fig.savefig(f"{base}-{mode.replace('+', '')}.png", dpi=90)
        plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--quick", action="store_true", help="two tiny sizes, one round (CI)")
    ap.add_argument("--sizes", default=None, help="comma list of BxDxN to keep")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of the other sizes from an existing <out>/linear_bce-<device>.json")
    args = ap.parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    _pin_malloc()
    sizes = [(64, 128, 40), (32, 16, 300)] if args.quick else SIZES
    if args.sizes:
        keep = {s.strip() for s in args.sizes.split(",")}
        sizes = [s for s in sizes if "x".join(map(str, s)) in keep]
    impls = ["eager", "compile", "chunked"]
    load0, t0, rows = [round(v, 2) for v in os.getloadavg()], time.perf_counter(), []
    for B, d, n in sizes:
        rows += measure_size(B, d, n, device, 1 if args.quick else args.rounds, impls)
    base = os.path.join(args.out, f"linear_bce-{device}")
    runs = [dict(sizes=[list(s) for s in sizes], loadavg_start=load0,
                 loadavg_end=[round(v, 2) for v in os.getloadavg()],
                 date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))]
    if args.merge and os.path.exists(base + ".json"):
        with open(base + ".json") as f:
            old = json.load(f)
        rows = [r for r in old["rows"] if (r["B"], r["d"], r["n"]) not in set(sizes)] + rows
        runs = old.get("runs", []) + (runs if sizes else [])  # no sizes: the report re-rendered
    for r in rows:
        for k in [k for k in r if k.startswith(("speedup_", "mem_vs", "vs_"))]:
            del r[k]
    add_ratios(rows)
    import dualvae.kernels as K
    report = dict(benchmark="linear_bce", device=device,
                  device_name=torch.cuda.get_device_name() if device == "cuda" else f"CPU: {cpu_model()}",
                  date=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), torch=torch.__version__,
                  triton=_triton_version(), cpu=cpu_report(), cpu_isa=K.cpu_isa() if K.has_compiled_ops() else None,
                  threads=torch.get_num_threads(), rounds=args.rounds, chunk=CHUNK, dtype="fp32",
                  loadavg_start=load0, loadavg_end=[round(v, 2) for v in os.getloadavg()],
                  elapsed_s=round(time.perf_counter() - t0, 1),
                  skipped=[dict(B=B, d=d, n=n, impl="eager, compile",
                                reason=f"B*n > {EAGER_ENTRIES_CAP}: several 4 GiB tensors, minutes a step")
                           for B, d, n in SIZES if B * n > EAGER_ENTRIES_CAP],
                  runs=runs, rows=rows)
    report["targets"] = targets(rows)
    os.makedirs(args.out, exist_ok=True)
    md = markdown(report)
    write_text_atomic(base + ".json", json.dumps(report, indent=1, default=str) + "\n")
    write_text_atomic(base + ".md", md)
    plot(report, base)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
