"""Benchmark of dual_bce with sparse positive labels and the in-kernel hashed mask, on CPU: forward + backward
(dz, dU) of `dualvae.kernels.dual_bce(z, U, y, mask, backend=..., reduction="sum")` per way of passing the labels.

    python bench/bench_sparse.py [--quick] [--out DIR] [--repeats N] [--threads N] [--mem-budget-gib G]
                                 [--variants V,...] [--sizes N,...] [--densities D,...]

Grid: B = 1024, d = 128, n in {65536, 1048576}, positive density in {1e-4, 1e-3, 1e-2}; the mask is a
HashedMask (missing ratio 0.3), the same entries in every variant (its dense form where a variant needs one), so
every variant computes the same loss (checked: `loss_rel_diff`). Variants:
    dense          backend="cpu", y and mask as (B, n) float32 tensors
    packed         backend="cpu", PackedLabels (2 bits an entry, the mask inside)
    sparse-hashed  backend="cpu", SparseLabels (int32 indices) and the HashedMask evaluated in the kernel
    eager          kernels/reference.py dual_bce on the dense float32 tensors, autograd backward
    compile        torch.compile of that same function
A variant whose estimated memory (its label inputs plus its working set, `est_gib`) exceeds the budget
(--mem-budget-gib, default 12) is skipped with the estimate as its reason.

Timing: per size, after a warmup (two for compile), `repeats` rounds each running every variant once, in an order
rotated between rounds (interleaved, so a change of the machine's load hits every variant alike); the median and
the min over rounds, and per round the sparse-hashed / packed ratio. Extra peak memory: before each timed step the
process's resident high-water mark is reset (/proc/self/clear_refs, "5") and VmRSS read; after it, VmHWM - VmRSS
before is the step's extra peak (the gradients it makes included); the max over rounds is reported. glibc's mmap
threshold is pinned (bench/harness.py) so freed tensors leave the resident set. Where the reset is not allowed the
column is empty. Label bytes: the bytes of the label inputs a variant passes (dense: y and mask; packed: the words;
sparse-hashed: indptr, indices and the mask's row indices).

Writes `<out>/sparse-cpu.json` and `.md` (out defaults to bench/results), with the targets: sparse-hashed time
<= 1.1 x packed's at every measured size and density, and sparse-hashed label bytes <= 1% of packed's at density
1e-3. --quick: a small smoke size (B = 64, d = 16, n = 4096), one thread, two rounds, written to
`sparse-cpu-quick.json` / `.md` unless --out is given.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import math
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import (DEFAULT_OUT, MiB, _pin_malloc, _reset_hwm, _status_kib, _triton_version,  # noqa: E402
                     compiled)

from dualvae.data.atomic import write_text_atomic  # noqa: E402
from dualvae.sysinfo import cpu_model, cpu_report  # noqa: E402

VARIANTS = ("dense", "packed", "sparse-hashed", "eager", "compile")
CPU_VARIANTS = ("dense", "packed", "sparse-hashed")  # backend="cpu"
B, D = 1024, 128
SIZES = (65536, 1048576)
DENSITIES = (1e-4, 1e-3, 1e-2)
QUICK = dict(B=64, d=16, sizes=(4096,), densities=(1e-2,))
MISSING_RATIO, MASK_SEED = 0.3, 17
GiB = float(1 << 30)
TIME_TARGET, BYTES_TARGET, BYTES_DENSITY = 1.1, 0.01, 1e-3
# What the bytes target measures: sparse-hashed passes 4 nnz + 16 B + 8 bytes (int32 indices, indptr, the mask's
# rows), packed B * n / 4, so their ratio is about 16 x density.
LABEL_BYTES_NOTE = ("sparse-hashed label bytes = 4 nnz (int32 indices) + 8 (B + 1) (indptr) + 8 B (mask rows); packed "
                    "= 4 B ceil(n / 16); the ratio is about 16 x density (plus 64 / n)")
BUILD_ROWS = 32  # rows at a time when forming dense or packed labels (pack_labels' int64 codes are 8 B an entry)


def kernels():
    import dualvae.kernels as K
    return K


def label_bytes(variant: str, B: int, n: int, nnz: int) -> int:
    if variant in ("dense", "eager", "compile"):
        return 2 * B * n * 4
    if variant == "packed":
        return B * -(-n // 16) * 4
    return 8 * (B + 1) + 4 * nnz + 8 * B  # indptr, int32 indices, the mask's rows


def estimate_bytes(variant: str, B: int, d: int, n: int, nnz: int) -> int:
    """Label inputs plus an estimate of the step's working set: the C++ kernels keep dU made in the forward and
    its scaled copy (2 n d fp32) plus 16 MiB of partials; eager keeps about six (B, n) fp32 tensors alive
    (logits, loss terms, the mask product, and their gradients), torch.compile about three. The variants that
    take the mask as a tensor also hold its bool form (B n bytes), formed once per n."""
    grads = (B + n) * d * 4
    work = {"eager": 6 * B * n * 4, "compile": 3 * B * n * 4}.get(variant, 2 * n * d * 4 + (16 << 20))
    mask = 0 if variant == "sparse-hashed" else B * n
    return label_bytes(variant, B, n, nnz) + grads + work + mask


def make_labels(B: int, n: int, density: float, seed: int):
    """(SparseLabels with int32 indices, HashedMask): each label positive with probability `density` (drawn
    BUILD_ROWS rows at a time); the mask of rows 0 .. B - 1, the same at every density."""
    K = kernels()
    g = torch.Generator().manual_seed(seed)
    counts, parts = [], []
    for r0 in range(0, B, BUILD_ROWS):
        pos = torch.rand(min(B, r0 + BUILD_ROWS) - r0, n, generator=g) < density
        counts.append(pos.sum(1))
        parts.append(torch.nonzero(pos)[:, 1].to(torch.int32))  # row-major: sorted within each row
    indptr = torch.zeros(B + 1, dtype=torch.int64)
    indptr[1:] = torch.cumsum(torch.cat(counts), 0)
    sp = K.SparseLabels(indptr, torch.cat(parts), n)
    hm = K.HashedMask(MASK_SEED, MISSING_RATIO, torch.arange(B, dtype=torch.int64))
    return sp, hm


def dense_mask(hm, n: int):
    """HashedMask.dense(n) as bool, BUILD_ROWS rows at a time (the reference hash's int64 temporaries are 8 bytes
    an entry, several at once). Slow at n = 2**20 (minutes: the reference hash is plain tensor arithmetic), so
    main() forms it once per n."""
    B = len(hm.rows)
    mask = torch.empty(B, n, dtype=torch.bool)
    for r0 in range(0, B, BUILD_ROWS):
        r1 = min(B, r0 + BUILD_ROWS)
        mask[r0:r1] = hm.select(torch.arange(r0, r1)).dense(n)
    return mask


def dense_y_rows(sp, r0: int, r1: int) -> torch.Tensor:
    """Rows [r0, r1) of the labels as a float32 (r1 - r0, n) tensor."""
    lo, hi = int(sp.indptr[r0]), int(sp.indptr[r1])
    y = torch.zeros(r1 - r0, sp.n)
    rows = torch.repeat_interleave(torch.arange(r1 - r0), sp.indptr[r0 + 1:r1 + 1] - sp.indptr[r0:r1])
    y[rows, sp.indices[lo:hi].to(torch.int64)] = 1.0
    return y


def dense_labels(sp, mask_bool):
    """(y, mask) as (B, n) float32 tensors."""
    B, n = sp.shape
    y = torch.empty(B, n)
    for r0 in range(0, B, BUILD_ROWS):
        r1 = min(B, r0 + BUILD_ROWS)
        y[r0:r1] = dense_y_rows(sp, r0, r1)
    return y, mask_bool.to(torch.float32)


def packed_labels(sp, mask_bool):
    K = kernels()
    B, n = sp.shape
    words = torch.empty(B, -(-n // 16), dtype=torch.int32)
    for r0 in range(0, B, BUILD_ROWS):
        r1 = min(B, r0 + BUILD_ROWS)
        words[r0:r1] = K.pack_labels(dense_y_rows(sp, r0, r1), mask_bool[r0:r1]).words
    return K.PackedLabels(words, n)


class Variant:
    """One way of passing the labels: fwd() -> loss over fresh leaves z, U (requires_grad), bwd(loss)."""

    def __init__(self, name, fwd, nbytes):
        self.name, self.fwd, self.label_bytes = name, fwd, nbytes


def build_variants(names, z, U, sp, hm, mask_bool, dense):
    K = kernels()
    out = []
    for name in names:
        if name == "dense":
            y, mask = dense
            out.append(Variant(name, lambda y=y, m=mask: K.dual_bce(z, U, y, m, backend="cpu", reduction="sum"),
                               y.nbytes + mask.nbytes))
        elif name == "packed":
            p = packed_labels(sp, mask_bool)
            out.append(Variant(name, lambda p=p: K.dual_bce(z, U, p, None, backend="cpu", reduction="sum"),
                               p.words.nbytes))
        elif name == "sparse-hashed":
            out.append(Variant(name, lambda: K.dual_bce(z, U, sp, hm, backend="cpu", reduction="sum"),
                               sp.indptr.nbytes + sp.indices.nbytes + hm.rows.nbytes))
        elif name == "eager":
            y, mask = dense
            ref = K.reference.dual_bce
            out.append(Variant(name, lambda y=y, m=mask: ref(z, U, y, m, reduction="sum"), y.nbytes + mask.nbytes))
        elif name == "compile":
            y, mask = dense
            fn = compiled(K.reference.dual_bce)
            out.append(Variant(name, lambda y=y, m=mask: fn(z, U, y, m, reduction="sum"), y.nbytes + mask.nbytes))
    return out


def step(v: Variant, leaves, hwm: bool):
    """One forward + backward of v: (seconds, extra peak bytes or None, loss)."""
    for t in leaves:
        t.grad = None
    gc.collect()
    base = None
    if hwm:
        _reset_hwm()
        base = _status_kib("VmRSS")
    t0 = time.perf_counter()
    loss = v.fwd()
    loss.backward()
    dt = time.perf_counter() - t0
    peak = (_status_kib("VmHWM") - base) * 1024 if hwm else None
    value = float(loss.detach())
    del loss
    return dt, peak, value


def measure_size(n, density, names, settings, skipped, log, masks):
    """Rows of every variant at (B, d, n, density) that fits the memory budget, timed interleaved."""
    Bq, d = settings["B"], settings["d"]
    seed = int(round(-math.log10(density))) * 10 + int(math.log2(n))
    sp, hm = make_labels(Bq, n, density, seed)
    budget = settings["mem_budget_gib"] * GiB
    run = []
    for name in names:
        est = estimate_bytes(name, Bq, d, n, sp.nnz)
        if est > budget:
            skipped.append(dict(B=Bq, d=d, n=n, density=density, variant=name, est_gib=round(est / GiB, 2),
                                reason=f"estimated memory {est / GiB:.2f} GiB > budget {budget / GiB:g} GiB"))
            log(f"  n={n} density={density:g} {name}: skipped (est {est / GiB:.1f} GiB)")
        else:
            run.append(name)
    g = torch.Generator().manual_seed(seed)
    z = (torch.randn(Bq, d, generator=g) * 0.5).requires_grad_()
    U = (torch.randn(n, d, generator=g) / math.sqrt(d)).requires_grad_()
    mask_bool = None
    if set(run) - {"sparse-hashed"}:  # the variants that take the mask as a tensor
        if n not in masks:
            t = time.perf_counter()
            masks[n] = dense_mask(hm, n)
            log(f"  n={n}: formed the dense mask in {time.perf_counter() - t:.1f} s")
        mask_bool = masks[n]
    dense = dense_labels(sp, mask_bool) if set(run) & {"dense", "eager", "compile"} else None
    variants = build_variants(run, z, U, sp, hm, mask_bool, dense)
    hwm = settings["hwm"]
    rows = {v.name: dict(B=Bq, d=d, n=n, density=density, variant=v.name, nnz=sp.nnz, label_bytes=v.label_bytes,
                         est_gib=round(estimate_bytes(v.name, Bq, d, n, sp.nnz) / GiB, 3), times_ms=[], peaks=[])
            for v in variants}
    alive = []
    for v in variants:  # warmup (compilation excluded from the timing)
        try:
            for _ in range(2 if v.name == "compile" else 1):
                _, _, rows[v.name]["loss"] = step(v, (z, U), False)
            alive.append(v)
        except Exception as exc:  # noqa: BLE001 - a failed variant is recorded, the others go on
            first = str(exc).splitlines()[0][:300] if str(exc) else ""
            rows[v.name]["error"] = f"{type(exc).__name__}: {first}"
            log(f"  n={n} density={density:g} {v.name}: ERROR {rows[v.name]['error']}")
    t_start = time.perf_counter()
    for r in range(settings["repeats"]):
        order = alive[r % len(alive):] + alive[:r % len(alive)] if alive else []
        for v in order:
            dt, peak, _ = step(v, (z, U), hwm)
            rows[v.name]["times_ms"].append(dt * 1e3)
            rows[v.name]["peaks"].append(peak)
        if r + 1 >= min(3, settings["repeats"]) and time.perf_counter() - t_start > settings["budget_s"]:
            break
    for t in (z, U):
        t.grad = None
    ref_loss = rows.get("packed", {}).get("loss")
    for row in rows.values():
        t = row.pop("times_ms")
        peaks = [p for p in row.pop("peaks") if p is not None]
        if t:
            row.update(median_ms=statistics.median(t), min_ms=min(t), rounds_ms=[round(x, 3) for x in t],
                       repeats=len(t))
        if peaks:
            row["extra_peak_mib"] = max(peaks) / MiB
        if ref_loss is not None and row.get("loss") is not None:
            row["loss_rel_diff"] = abs(row["loss"] - ref_loss) / max(1.0, abs(ref_loss))
    sh, pk = rows.get("sparse-hashed"), rows.get("packed")
    if sh and pk and sh.get("rounds_ms") and pk.get("rounds_ms"):
        sh["rounds_vs_packed"] = [round(a / b, 3) for a, b in zip(sh["rounds_ms"], pk["rounds_ms"])]
    out = list(rows.values())
    for row in out:
        log(_row_line(row))
    del variants, dense, z, U, sp, hm
    gc.collect()
    return out


def _row_line(row):
    if "error" in row:
        return f"  n={row['n']:<8} density={row['density']:<7g} {row['variant']:<14} ERROR {row['error']}"
    mem = row.get("extra_peak_mib")
    return (f"  n={row['n']:<8} density={row['density']:<7g} {row['variant']:<14} {row.get('median_ms', 0):11.2f} ms"
            f"  {('%.1f MiB' % mem) if mem is not None else '-':>12}  labels {row['label_bytes'] / MiB:10.3f} MiB")


def add_ratios(rows):
    by = {(r["n"], r["density"], r["variant"]): r for r in rows if "error" not in r and "median_ms" in r}
    for r in rows:
        pk = by.get((r["n"], r["density"], "packed"))
        if pk is None or "error" in r:
            continue
        if "median_ms" in r:
            r["time_vs_packed"] = r["median_ms"] / pk["median_ms"]
        r["label_bytes_vs_packed"] = r["label_bytes"] / pk["label_bytes"]


def targets(rows, quick):
    """Sparse-hashed time <= 1.1 x packed at every (n, density); label bytes <= 1% of packed's at density 1e-3
    (quick: at its one density)."""
    speed, nbytes = [], []
    for r in rows:
        if r["variant"] != "sparse-hashed" or "time_vs_packed" not in r:
            continue
        key = dict(B=r["B"], d=r["d"], n=r["n"], density=r["density"])
        speed.append(dict(key, time_vs_packed=round(r["time_vs_packed"], 4), ok=r["time_vs_packed"] <= TIME_TARGET))
        if quick or r["density"] == BYTES_DENSITY:
            nbytes.append(dict(key, label_bytes_vs_packed=round(r["label_bytes_vs_packed"], 5),
                               ok=r["label_bytes_vs_packed"] <= BYTES_TARGET))
    ok = bool(speed) and bool(nbytes) and all(e["ok"] for e in speed + nbytes)
    return {"sparse_time": speed, "sparse_label_bytes": nbytes, "all_ok": ok,
            "targets": f"sparse-hashed time <= {TIME_TARGET} x packed's; sparse-hashed label bytes <= "
                       f"{BYTES_TARGET:.0%} of packed's at density {BYTES_DENSITY:g}"}


def markdown(report):
    lines = [f"# dual_bce with sparse labels and the in-kernel mask: {report['device_name']}", "",
             f"{report['date']} · torch {report['torch']} · python {report['python']} · C++ kernels "
             f"`{report['cpu_kernels_isa']}` · threads={report['threads']} · load avg {report['loadavg_start']} → "
             f"{report['loadavg_end']}" + (" · **quick**" if report["quick"] else ""), "",
             "Forward + backward (dz, dU), reduction=\"sum\", HashedMask missing ratio "
             f"{MISSING_RATIO}; median ms over interleaved rounds / extra peak MiB / label input MiB. "
             "×packed: time over packed's.", "",
             "| B | d | n | density | variant | median ms | min ms | extra peak MiB | label MiB | ×packed time | "
             "label bytes / packed |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if "error" in r:
            lines.append(f"| {r['B']} | {r['d']} | {r['n']} | {r['density']:g} | {r['variant']} | error: "
                         f"{r['error']} | | | | | |")
            continue
        mem = r.get("extra_peak_mib")
        tvp, bvp = r.get("time_vs_packed"), r.get("label_bytes_vs_packed")
        lines.append(f"| {r['B']} | {r['d']} | {r['n']} | {r['density']:g} | {r['variant']} | "
                     f"{r.get('median_ms', float('nan')):.1f} | {r.get('min_ms', float('nan')):.1f} | "
                     f"{'%.1f' % mem if mem is not None else '–'} | {r['label_bytes'] / MiB:.3f} | "
                     f"{'%.3f' % tvp if tvp is not None else '–'} | {'%.5f' % bvp if bvp is not None else '–'} |")
    t = report["targets"]
    lines += ["", f"Targets ({t['targets']}): **{'met' if t['all_ok'] else 'NOT met'}**"]
    for name in ("sparse_time", "sparse_label_bytes"):
        bad = [e for e in t[name] if not e["ok"]]
        lines.append(f"- {name}: {len(t[name]) - len(bad)}/{len(t[name])} ok" + (f"; failing: {bad}" if bad else ""))
    if report["skipped"]:
        lines += ["", "Skipped:"] + [f"- n={s['n']} density={s['density']:g} {s['variant']}: {s['reason']}"
                                     for s in report["skipped"]]
    lines += ["", f"Label bytes: {report['label_bytes_note']}.", "", f"Memory: {report['memory_method']}"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke size: B=64, d=16, n=4096, density 1e-2, 2 rounds")
    ap.add_argument("--out", default=None, help="output folder (default bench/results)")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds (default 5; quick 2)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default torch's; quick 1)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop adding rounds at a size after this many seconds (at least 3 rounds; default 300)")
    ap.add_argument("--mem-budget-gib", type=float, default=12.0,
                    help="skip variants whose estimated memory exceeds this (default 12)")
    ap.add_argument("--variants", default=None, help=f"comma list of {', '.join(VARIANTS)} (default: all)")
    ap.add_argument("--sizes", default=None, help="comma list of n of the grid (default: all)")
    ap.add_argument("--densities", default=None, help="comma list of densities of the grid (default: all)")
    args = ap.parse_args(argv)
    K = kernels()
    if not K.has_compiled_ops():
        ap.error("the compiled CPU kernels (dualvae.kernels._C) are not built: backend 'cpu' would time the "
                 "reference")
    quick = args.quick
    names = list(VARIANTS)
    if args.variants:
        names = [v.strip() for v in args.variants.split(",") if v.strip()]
        bad = [v for v in names if v not in VARIANTS]
        if bad:
            ap.error(f"--variants: unknown {bad[0]!r} (known: {', '.join(VARIANTS)})")
    sizes, densities = (QUICK["sizes"], QUICK["densities"]) if quick else (SIZES, DENSITIES)
    if args.sizes:
        sizes = tuple(int(v) for v in args.sizes.split(","))
    if args.densities:
        densities = tuple(float(v) for v in args.densities.split(","))
    os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    threads = args.threads or (1 if quick else torch.get_num_threads())
    torch.set_num_threads(threads)
    _pin_malloc()
    hwm = _reset_hwm()
    settings = dict(B=QUICK["B"] if quick else B, d=QUICK["d"] if quick else D,
                    repeats=args.repeats or (2 if quick else 5),
                    budget_s=args.budget_s if args.budget_s is not None else (5.0 if quick else 300.0),
                    mem_budget_gib=args.mem_budget_gib, threads=threads, hwm=hwm)
    out_dir = args.out or DEFAULT_OUT
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, "sparse-cpu-quick" if quick and args.out is None else "sparse-cpu")
    memory_method = ("per timed step: VmHWM after it minus VmRSS before it (HWM reset via /proc/self/clear_refs "
                     "before each step; glibc mmap threshold pinned at 128 KiB); max over rounds; includes the "
                     "gradients dz, dU the step makes" if hwm else
                     "not measured: /proc/self/clear_refs is not allowed here")
    load0, t0 = os.getloadavg(), time.perf_counter()
    rows, skipped = [], []

    def write(partial):
        add_ratios(rows)
        report = {
            "benchmark": "dual_bce sparse labels + in-kernel mask",
            "partial": partial, "quick": quick, "device": "cpu", "device_name": f"CPU: {cpu_model()}",
            "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "triton": _triton_version(), "python": platform.python_version(),
            "cpu": cpu_report(), "cpu_kernels_isa": K.cpu_isa(), "threads": threads,
            "loadavg_start": [round(v, 2) for v in load0], "loadavg_end": [round(v, 2) for v in os.getloadavg()],
            "settings": settings, "missing_ratio": MISSING_RATIO, "indices_dtype": "int32",
            "variants": names, "sizes": list(sizes), "densities": list(densities),
            "label_bytes_note": LABEL_BYTES_NOTE,
            "memory_method": memory_method,
            "timing": "median (and min) of interleaved rounds, every variant once a round in a rotated order, after "
                      "a warmup (two for compile)",
            "elapsed_s": round(time.perf_counter() - t0, 1), "skipped": skipped, "rows": rows,
            "targets": targets(rows, quick),
        }
        md = markdown(report)
        write_text_atomic(base + ".json", json.dumps(report, indent=1, default=str) + "\n")
        write_text_atomic(base + ".md", md)
        return md

    print(f"bench_sparse: B={settings['B']} d={settings['d']} n in {list(sizes)} density in {list(densities)}, "
          f"variants {', '.join(names)}, {threads} threads" + (" (quick)" if quick else ""), flush=True)
    for n in sizes:
        masks = {}  # the dense mask of this n, formed once for every density
        for density in densities:
            rows += measure_size(n, density, names, settings, skipped, lambda s: print(s, flush=True), masks)
            write(partial=True)
        del masks
        gc.collect()
    md = write(partial=False)
    print()
    print(md)
    print(f"wrote {base}.json and {base}.md")
    return 0 if not any("error" in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
