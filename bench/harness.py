"""Shared harness of the kernel benchmarks (bench/bench_dual_bce.py, bench/bench_reparam_kl.py): building and
timing cases, process isolation, and the one report file both scripts write, `<out>/kernels-<device>.json` and
`.md` (out defaults to bench/results; <device> is "cpu" or the GPU's name as a slug, e.g.
"nvidia-h100-80gb-hbm3"). Each script measures its op and rewrites the report with its rows, keeping the other
op's rows there: run both for the full table. The files are rewritten after every measurement ("partial": true
until the run ends); `--resume` keeps the op's rows already there and measures the rest.

Measurement: warmup calls first (compilation excluded), then the median of repeated forward+backward steps.
CUDA: torch.cuda.Event timing behind a queued spin kernel (torch.cuda._sleep), so the host's dispatch is not
timed (host_dispatch_ms and launch_bound_repeats say how often it still was); extra peak memory =
torch.cuda.max_memory_allocated() during one step minus the
memory allocated before it (the inputs); kernel launches of each direction counted with torch.profiler; the
reparam rows report their bandwidth as a fraction of a measured device-to-device copy (torch.clone).
CPU: time.perf_counter; peak memory from the process's resident set: every (op, dtype, impl) runs in a fresh
spawned process, and each size in it resets the kernel's high-water mark (/proc/self/clear_refs, "5") after its
warmup, so the extra peak is VmHWM during the timed steps minus VmRSS before them. Where that reset is not
allowed, every (op, size, dtype, impl) gets its own process and the extra peak is its ru_maxrss growth after the
inputs were allocated (warmup and compilation included; the JSON says which method was used). glibc's mmap
threshold is pinned (mallopt) so freed tensors go back to the OS instead of hiding in the heap.
"""
from __future__ import annotations

import argparse
import ctypes
import datetime as _dt
import functools
import gc
import importlib
import json
import logging
import os
import platform
import queue
import re
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field

import torch

from dualvae.data.atomic import write_text_atomic
from dualvae.sysinfo import cpu_model, cpu_report

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.join(HERE, "results")
MiB = float(1 << 20)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
INTERP_IMPLS = ("ours", "ours-packed", "ours-seeded")  # the Triton backend: interpreted on CPU
# The op scripts, in the report's order: the report's targets and tables are made by each op's own module.
OP_MODULES = {"dual_bce": "bench_dual_bce", "reparameterize_kl": "bench_reparam_kl"}


def implementations(impls, triton_ok: bool) -> tuple[list[str], list[dict]]:
    """(`impls` that can run here, a skipped entry for each Triton one when triton is not installed)."""
    if triton_ok:
        return list(impls), []
    skipped = [dict(op="all", impl=impl, reason="triton is not installed") for impl in INTERP_IMPLS]
    return [i for i in impls if i not in INTERP_IMPLS], skipped


def kernels():
    """dualvae.kernels, imported when a case is built (after the command line has set up the process)."""
    import dualvae.kernels as K
    return K


def op_module(op: str):
    """The benchmark script of `op`, as a module (this folder is on sys.path when a script in it runs)."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    return importlib.import_module(OP_MODULES[op])


# --- memory of the CPU process ---------------------------------------------------------------------------------
def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    """Reset this process's resident high-water mark (VmHWM); False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmHWM") is not None
    except OSError:
        return False


def _maxrss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _pin_malloc() -> bool:
    """Fix glibc's mmap threshold at 128 KiB (no dynamic growth) so every tensor-sized block is mmapped and
    returned to the OS when freed: RSS then follows live tensor bytes."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(-3, 128 * 1024)) and bool(libc.mallopt(-1, 128 * 1024))  # M_MMAP/M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        return False


def compiled(fn):
    torch._dynamo.reset()  # a fresh compile per measurement: no recompile limits, no dynamic-shape reuse
    # the reference dual_bce's label check (bool(...all())) is a graph break: expected, so not worth a warning
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    return torch.compile(fn, dynamic=False)


@dataclass
class Case:
    """One (op, size, dtype, impl): inputs plus fwd() -> out and bwd(out)."""
    op: str
    impl: str
    fwd: object
    bwd: object
    leaves: list
    input_bytes: int
    bytes_fwd: int = 0   # reparam: the bytes a single pass must move (for the bandwidth fraction)
    bytes_bwd: int = 0
    keep: list = field(default_factory=list)

    def zero_grad(self):
        for t in self.leaves:
            t.grad = None


# --- measuring -------------------------------------------------------------------------------------------------
def _step(case: Case):
    case.zero_grad()
    out = case.fwd()
    case.bwd(out)


def _count_launches(case: Case) -> dict:
    """CUDA kernels launched by one forward and by one backward (device-side events of torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    def kernels(prof):
        names = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        kern = [nm for nm in names if not nm.startswith(("Memcpy", "Memset"))]
        return kern, len(names) - len(kern)

    case.zero_grad()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as pf:
        out = case.fwd()
        torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as pb:
        case.bwd(out)
        torch.cuda.synchronize()
    kf, mf = kernels(pf)
    kb, mb = kernels(pb)
    del out
    case.zero_grad()
    return {"launches_fwd": len(kf), "launches_bwd": len(kb), "memcpy_memset_fwd": mf, "memcpy_memset_bwd": mb,
            "kernels_fwd": sorted(set(kf))[:12], "kernels_bwd": sorted(set(kb))[:12]}


def measure(case: Case, device: str, warmup: int, repeats: int, budget_s: float) -> dict:
    """Warmup, then repeats of forward+backward: median ms (total, fwd, bwd) and extra peak memory."""
    for _ in range(warmup):
        _step(case)
    case.zero_grad()
    gc.collect()
    res: dict = {}
    tot, tf, tb = [], [], []
    if device == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        _step(case)
        torch.cuda.synchronize()
        res["extra_peak_mib"] = (torch.cuda.max_memory_allocated() - base) / MiB
        res["memory_method"] = "cuda.max_memory_allocated - allocated before the step"
        case.zero_grad()
        # Events recorded on an idle GPU would time the host's dispatch too (the GPU waits for each launch), which
        # at small sizes is most of the step. A spin kernel queued first keeps the GPU busy while the host queues
        # the step, so the events time the device work. The spin is sized from the previous repeat's dispatch
        # time; a repeat whose dispatch outlasted its spin (or that synced inside, e.g. a label check) is counted
        # in launch_bound_repeats, its time then includes host gaps.
        cycles_per_ms = _spin_cycles_per_ms()
        spin_ms, dispatch, bound = 1.0, [], 0
        t_start = time.perf_counter()
        for i in range(repeats):
            case.zero_grad()
            e0, e1, e2 = (torch.cuda.Event(enable_timing=True) for _ in range(3))
            torch.cuda.synchronize()
            torch.cuda._sleep(int(spin_ms * cycles_per_ms))
            h0 = time.perf_counter()
            e0.record()
            out = case.fwd()
            e1.record()
            case.bwd(out)
            e2.record()
            h1 = time.perf_counter()
            torch.cuda.synchronize()
            del out
            dispatch.append((h1 - h0) * 1e3)
            bound += dispatch[-1] >= spin_ms  # the spin had ended before the host had queued the step
            spin_ms = min(max(1.0, 2.0 * dispatch[-1]), 200.0)
            tf.append(e0.elapsed_time(e1))
            tb.append(e1.elapsed_time(e2))
            tot.append(e0.elapsed_time(e2))
            if i + 1 >= 3 and time.perf_counter() - t_start > budget_s:
                break
        res.update(_count_launches(case))
        res.update(host_dispatch_ms=statistics.median(dispatch), launch_bound_repeats=bound)
    else:
        hwm = _reset_hwm()
        base_kib = _status_kib("VmRSS") if hwm else None
        if hwm:
            _reset_hwm()
        t_start = time.perf_counter()
        for i in range(repeats):
            case.zero_grad()
            t0 = time.perf_counter()
            out = case.fwd()
            t1 = time.perf_counter()
            case.bwd(out)
            t2 = time.perf_counter()
            del out
            tf.append((t1 - t0) * 1e3)
            tb.append((t2 - t1) * 1e3)
            tot.append((t2 - t0) * 1e3)
            if i + 1 >= min(3, repeats) and time.perf_counter() - t_start > budget_s:
                break
        if hwm:
            res["extra_peak_mib"] = (_status_kib("VmHWM") - base_kib) * 1024 / MiB
            res["memory_method"] = "VmHWM during the timed steps - VmRSS before them (HWM reset after warmup)"
    case.zero_grad()
    res.update(median_ms=statistics.median(tot), min_ms=min(tot), fwd_ms=statistics.median(tf),
               bwd_ms=statistics.median(tb), repeats=len(tot), warmup=warmup)
    if case.bytes_fwd:
        res["bytes_fwd"], res["bytes_bwd"] = case.bytes_fwd, case.bytes_bwd
        res["gbps"] = (case.bytes_fwd + case.bytes_bwd) / (res["median_ms"] * 1e-3) / 1e9
        res["gbps_fwd"] = case.bytes_fwd / (res["fwd_ms"] * 1e-3) / 1e9
        res["gbps_bwd"] = case.bytes_bwd / (res["bwd_ms"] * 1e-3) / 1e9
    return res


def run_one(spec: dict, device: str, settings: dict) -> dict:
    """Build and measure one case; returns the row (or a row with "error")."""
    row = dict(spec)
    row["interpreted"] = spec["impl"] in INTERP_IMPLS and device == "cpu"
    compiled = spec["impl"] in ("compile", "chunked")
    warmup = settings["warmup_compile"] if compiled else settings["warmup"]
    if row["interpreted"]:
        warmup = min(warmup, 1)
    case = None
    t_row = time.perf_counter()
    try:
        maxrss0 = _maxrss_kib()
        case = op_module(spec["op"]).make_case(spec, device)
        row["input_mib"] = case.input_bytes / MiB
        maxrss_inputs = _maxrss_kib()
        row.update(measure(case, device, warmup, settings["repeats"], settings["budget_s"]))
        if device == "cpu":
            row["maxrss_delta_mib"] = (_maxrss_kib() - maxrss_inputs) * 1024 / MiB
            row["maxrss_inputs_mib"] = (maxrss_inputs - maxrss0) * 1024 / MiB
            if "extra_peak_mib" not in row:  # no HWM reset: a fresh process per measurement, ru_maxrss growth
                row["extra_peak_mib"] = row["maxrss_delta_mib"]
                row["memory_method"] = "ru_maxrss growth after the inputs (fresh process; includes warmup/compile)"
    except Exception as exc:  # noqa: BLE001 - a failed measurement is recorded, the run goes on
        oom = isinstance(exc, torch.OutOfMemoryError) if hasattr(torch, "OutOfMemoryError") else False
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        row["error"] = ("OOM: " if oom else "") + f"{type(exc).__name__}: {first}"
    finally:
        del case
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    row["wall_s"] = round(time.perf_counter() - t_row, 2)  # setup, warmup/compilation and timing
    return row


def _child(specs: list, device: str, settings: dict, q) -> None:
    """Entry point of a spawned measuring process: one row per spec into the queue, then 'done'."""
    _pin_malloc()
    torch.set_num_threads(settings["threads"])
    for spec in specs:
        q.put(("row", run_one(spec, device, settings)))
    q.put(("done", None))


def run_isolated(groups: list[list[dict]], device: str, settings: dict, timeout_s: float, on_row) -> None:
    """Each group of specs in a fresh spawned process (sequentially); a hung or crashed process is recorded."""
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    for specs in groups:
        q = ctx.Queue()
        p = ctx.Process(target=_child, args=(specs, device, settings, q), daemon=True)
        p.start()
        got = 0
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                kind, row = q.get(timeout=5.0)
            except queue.Empty:
                if not p.is_alive() or time.monotonic() > deadline:
                    reason = "timed out" if p.is_alive() else f"process exited with code {p.exitcode}"
                    if p.is_alive():
                        p.kill()
                    for spec in specs[got:]:
                        on_row(dict(spec, error=f"measurement process {reason}"))
                    break
                continue
            if kind == "done":
                break
            got += 1
            on_row(row)
        p.join(timeout=30)
        if p.is_alive():
            p.kill()


def _row_line(row: dict) -> str:
    size = f"B={row['B']} d={row['d']}" + (f" n={row['n']}" if row.get("n") is not None else "")
    if "error" in row:
        return f"  {row['op']:<17} {size:<24} {row['dtype']} {row['impl']:<12} ERROR {row['error']}"
    mem = row.get("extra_peak_mib")
    return (f"  {row['op']:<17} {size:<24} {row['dtype']} {row['impl']:<12} {row['median_ms']:10.3f} ms"
            f"  {('%.1f MiB' % mem) if mem is not None else '-':>12}"
            + ("  (interp)" if row.get("interpreted") else ""))


# --- summary ------------------------------------------------------------------------------------------------------
def _key(row):
    return (row["op"], row["B"], row["d"], row.get("n"), row["dtype"])


def add_ratios(rows: list[dict]) -> None:
    by = {}
    for r in rows:
        if "error" not in r:
            by[_key(r) + (r["impl"],)] = r
    for r in rows:
        if "error" in r:
            continue
        eager = by.get(_key(r) + ("eager",))
        comp = by.get(_key(r) + ("compile",))
        r["speedup_vs_eager"] = eager["median_ms"] / r["median_ms"] if eager else None
        r["speedup_vs_compile"] = comp["median_ms"] / r["median_ms"] if comp else None
        em = eager.get("extra_peak_mib") if eager else None
        r["mem_vs_eager"] = (r["extra_peak_mib"] / em if em and r.get("extra_peak_mib") is not None else None)


def add_bandwidth(rows: list[dict], copy_gbps: float | None) -> None:
    for r in rows:
        if copy_gbps and r.get("gbps") is not None:
            r["bw_frac"] = r["gbps"] / copy_gbps
            r["bw_frac_fwd"] = r["gbps_fwd"] / copy_gbps
            r["bw_frac_bwd"] = r["gbps_bwd"] / copy_gbps


def _fmt_ms(v):
    return "-" if v is None else (f"{v:.3f}" if v < 10 else f"{v:.1f}" if v < 1000 else f"{v:.0f}")


def _fmt_mib(v):
    return "-" if v is None else (f"{v:.2f}" if abs(v) < 10 else f"{v:.0f}")


def markdown(report: dict) -> str:
    rows, device = report["rows"], report["device"]
    cuda = device == "cuda"
    head_impl = "ours" if cuda else "ours-cpu"
    lines = [f"# Fused kernels benchmark: {report['device_name']}", "",
             f"{report['date']} · torch {report['torch']} · triton {report['triton']} · "
             f"python {report['python']} · "
             f"{report['cpu_model']} (threads={report['threads']}) · load avg {report['loadavg_start']} → "
             f"{report['loadavg_end']}" + (f" · {len(report['runs'])} runs (both scripts, or --resume)"
                                           if len(report.get('runs', [])) > 1
                                           else ""), "",
             "Forward + backward, median ms / extra peak MiB (over the inputs) per implementation. "
             f"×eager and ×compile: speedup of `{head_impl}`."]
    if not cuda:
        lines += ["", "CPU run: `ours`/`ours-packed`/`ours-seeded` are the Triton kernels under the interpreter (†), "
                  "at tiny sizes only: a correctness run, not a performance number. `ours-cpu` is backend=\"cpu\", "
                  f"which currently {report['ours_cpu_backend']}"
                  + ("; being eager's own code, its ratio to eager shows the timing noise of the run (see the load "
                     "average)." if report["ours_cpu_backend"].startswith("runs the reference") else ".")]
    for op in OP_MODULES:
        title = op_module(op).TITLE
        op_rows = [r for r in rows if r["op"] == op]
        if not op_rows:
            continue
        impls = [i for i in report["impls"][op] if any(r["impl"] == i for r in op_rows)]
        keys = sorted({_key(r) for r in op_rows}, key=lambda k: (k[4] != "fp32", k[4], k[1] * k[2] * (k[3] or 1), k[1]))
        by = {_key(r) + (r["impl"],): r for r in op_rows}
        cols = ["B", "d"] + (["n"] if op == "dual_bce" else []) + ["dtype"] + [f"{i} ms / MiB" for i in impls]
        cols += ["×eager", "×compile"]
        if cuda:
            cols += ["ours launches f/b"] + (["ours BW (frac of copy)"] if op != "dual_bce" else [])
        lines += ["", f"## {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for k in keys:
            cells = [str(k[1]), str(k[2])] + ([str(k[3])] if op == "dual_bce" else []) + [k[4]]
            for i in impls:
                r = by.get(k + (i,))
                if r is None:
                    cells.append("–")
                elif "error" in r:
                    cells.append("error" if not r["error"].startswith("OOM") else "OOM")
                else:
                    cells.append(f"{_fmt_ms(r['median_ms'])} / {_fmt_mib(r.get('extra_peak_mib'))}"
                                 + (" †" if r.get("interpreted") else ""))
            h = by.get(k + (head_impl,))
            ok = h is not None and "error" not in h
            se = h.get("speedup_vs_eager") if ok else None
            sc = h.get("speedup_vs_compile") if ok else None
            cells += [f"{se:.2f}" if se else "–", f"{sc:.2f}" if sc else "–"]
            if cuda:
                cells.append(f"{h.get('launches_fwd')}/{h.get('launches_bwd')}" if ok else "–")
                if op != "dual_bce":
                    bf = h.get("bw_frac") if ok else None
                    cells.append(f"{bf:.2f} (f {h.get('bw_frac_fwd', 0):.2f}, b {h.get('bw_frac_bwd', 0):.2f})"
                                 if bf else "–")
            lines.append("| " + " | ".join(cells) + " |")
    if cuda and report.get("copy_gbps"):
        lines += ["", f"Measured copy bandwidth (torch.clone, 1 GiB): {report['copy_gbps']:.0f} GB/s."]
    t = report.get("targets", {})
    if "all_ok" in t:
        lines += ["", f"Targets ({t['targets']}): **{'met' if t['all_ok'] else 'NOT met'}**"]
        for name in [k for k, v in t.items() if isinstance(v, list)]:
            bad = [e for e in t[name] if not e["ok"]]
            lines.append(f"- {name}: {len(t[name]) - len(bad)}/{len(t[name])} ok"
                         + (f"; failing: {bad[:4]}" if bad else ""))
    errs = [r for r in rows if "error" in r]
    if errs:
        lines += ["", "Errors:"] + [f"- {r['op']} B={r['B']} d={r['d']} n={r.get('n')} {r['dtype']} {r['impl']}: "
                                    f"{r['error']}" for r in errs]
    if report["skipped"]:
        lines += ["", "Skipped:"]
        for s in report["skipped"]:
            what = " ".join(f"{k}={s[k]}" for k in ("op", "B", "d", "n", "dtype", "impl") if s.get(k) is not None)
            lines.append(f"- {what}: {s['reason']}")
    lines += ["", f"Memory: {report['memory_method']}"]
    return "\n".join(lines) + "\n"


# --- environment ------------------------------------------------------------------------------------------------


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@functools.cache
def _spin_cycles_per_ms() -> float:
    """GPU clock cycles of torch.cuda._sleep per millisecond, measured once (the clock varies by card and state)."""
    n = 2_000_000
    torch.cuda._sleep(n)  # warm the clock up
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    e0.record()
    torch.cuda._sleep(n)
    e1.record()
    torch.cuda.synchronize()
    return n / max(e0.elapsed_time(e1), 1e-3)


def copy_bandwidth_gbps() -> float:
    """Measured HBM bandwidth: median of a 1 GiB device-to-device clone, bytes read + written over time."""
    x = torch.empty(1 << 28, dtype=torch.float32, device="cuda").fill_(1.0)
    for _ in range(3):
        y = x.clone()
    del y
    ts = []
    for _ in range(10):
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(int(_spin_cycles_per_ms()))  # hides the clone's dispatch, as in measure()
        e0.record()
        y = x.clone()
        e1.record()
        torch.cuda.synchronize()
        ts.append(e0.elapsed_time(e1))
        del y
    nbytes = 2 * x.numel() * x.element_size()
    del x
    torch.cuda.empty_cache()
    return nbytes / (statistics.median(ts) * 1e-3) / 1e9


def _triton_version() -> str | None:
    try:
        import triton
        return triton.__version__
    except ImportError:
        return None


def main(op: str, description: str, argv=None) -> int:
    """The command line of the op's script: plan, measure, write the report (see the module docstring)."""
    mod = op_module(op)
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--quick", action="store_true", help="CI-sized: tiny sizes, 1-2 repeats, in-process")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default bench/results)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default: 20 cuda, 5 cpu, 2 quick)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (default: torch's default; 1 with --quick). On a shared, oversubscribed "
                         "machine 1 thread avoids OpenMP barrier stalls that dominate tiny ops")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="stop repeating a measurement after this many seconds (at least 3 repeats)")
    ap.add_argument("--dtypes", default=None, help="comma list of fp32, bf16 (default: the device's grid)")
    ap.add_argument("--impls", default=None, help="comma list of implementations (default: all)")
    ap.add_argument("--sizes", default=None,
                    help="comma list of sizes of the device's grid to keep: BxDxN (dual_bce) and BxD (reparam), "
                         "e.g. 4096x128x65536,256x128x4096,65536x256 (default: all)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows of an existing kernels-<device>.json in --out and measure only the missing "
                         "(or failed) ones; the files are rewritten after every measurement, so a run cut short "
                         "(e.g. by a time limit) can be resumed")
    args = ap.parse_args(argv)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda":
        if not torch.cuda.is_available():
            ap.error("--device cuda: no CUDA device is available")
        if os.environ.get("TRITON_INTERPRET", "0") == "1":
            ap.error("TRITON_INTERPRET=1 is set: on CUDA the 'ours' rows would run the interpreter; unset it")
    else:
        # the Triton rows on CPU run under the interpreter (read when the ops run)
        os.environ["TRITON_INTERPRET"] = "1"
        # compile in-process: a pool of compile workers costs more than it saves on a few CPU cores
        os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
    triton_ok = _triton_version() is not None

    quick = args.quick
    repeats = args.repeats or (2 if quick else 20 if device == "cuda" else 5)
    settings = {
        "repeats": repeats,
        "warmup": 1 if (quick or device == "cpu") else 5,
        "warmup_compile": 2 if (quick or device == "cpu") else 5,
        "budget_s": (args.budget_s if args.budget_s is not None
                     else 1.0 if quick else 4.0 if device == "cpu" else 10.0),
        "threads": args.threads or (1 if quick else torch.get_num_threads()),
    }
    torch.set_num_threads(settings["threads"])
    specs, skipped = mod.plan(device, quick, triton_ok)
    for name, allowed in (("dtype", args.dtypes), ("impl", args.impls)):
        if allowed:
            keep = {v.strip() for v in allowed.split(",") if v.strip()}
            specs = [s for s in specs if s[name] in keep]
    if args.sizes:
        want = {v.strip().lower() for v in args.sizes.split(",") if v.strip()}
        bad = [w for w in want if not re.fullmatch(r"\d+x\d+(x\d+)?", w)]
        if bad:
            ap.error(f"--sizes: {bad[0]!r} is not BxDxN or BxD")
        # one list serves both scripts: the sizes of the other op's form (BxDxN or BxD) are its, not an error
        want = {w for w in want if w.count("x") == len(mod.SIZE_KEYS) - 1}

        def size(s):
            return "x".join(str(s[k]) for k in mod.SIZE_KEYS)

        grid = {size(s) for s in specs}
        if want - grid:
            ap.error(f"--sizes: {sorted(want - grid)[0]} is not in this run's grid ({', '.join(sorted(grid))})")
        specs = [s for s in specs if size(s) in want]
    dev_name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    slug = _slug(dev_name) if device == "cuda" else "cpu"
    os.makedirs(args.out, exist_ok=True)
    base = os.path.join(args.out, f"kernels-{slug}")
    old_rows: list[dict] = []  # the other op's rows, and with --resume this op's finished ones
    old_runs: list[dict] = []
    if os.path.exists(base + ".json"):
        with open(base + ".json") as f:
            old = json.load(f)
        old_rows = [r for r in old.get("rows", []) if r["op"] != op or (args.resume and "error" not in r)]
        if old_rows:
            old_runs = old.get("runs") or [{k: old.get(k) for k in ("date", "loadavg_start", "loadavg_end",
                                                                     "elapsed_s")}]
        done = {_key(r) + (r["impl"],) for r in old_rows}
        skipped += [s for s in old.get("skipped", []) if s not in skipped and (s.get("op") != op or args.resume)]
        specs = [s for s in specs if _key(s) + (s["impl"],) not in done]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    print(f"{mod.__name__}: {len(specs)} measurements on {device}" + (" (quick)" if quick else "")
          + (f", {len(old_rows)} kept from {base}.json" if old_rows else "") + f", {len(skipped)} skipped", flush=True)

    hwm_ok = device == "cpu" and _reset_hwm()
    copy_gbps = None
    if device == "cuda":
        memory_method = "torch.cuda.max_memory_allocated during one step minus memory allocated before it"
    elif quick:
        memory_method = ("in-process (quick): VmHWM during the timed steps minus VmRSS before them"
                         if hwm_ok else "in-process (quick): ru_maxrss growth, includes warmup (approximate)")
    elif hwm_ok:
        memory_method = ("fresh spawned process per (op, dtype, impl); per size VmHWM during the timed steps "
                         "minus VmRSS before them (HWM reset via /proc/self/clear_refs after warmup); "
                         "glibc mmap threshold pinned at 128 KiB")
    else:
        memory_method = ("fresh spawned process per (op, size, dtype, impl); ru_maxrss growth after the "
                         "inputs were allocated (includes warmup and compilation)")
    rows: list[dict] = list(old_rows)
    ctx = dict(device=device, dev_name=dev_name, slug=slug, quick=quick, settings=settings, load0=load0, t0=t0,
               memory_method=memory_method, skipped=skipped, base=base, old_runs=old_runs,
               filters={"ops": op, "dtypes": args.dtypes, "impls": args.impls, "resume": args.resume},
               n_specs=len(specs))

    def on_row(row):
        rows.append(row)
        print(_row_line(row), flush=True)
        write_report(rows, copy_gbps, ctx, partial=True)

    if device == "cuda":
        copy_gbps = copy_bandwidth_gbps()
        print(f"  copy bandwidth {copy_gbps:.0f} GB/s", flush=True)
        for spec in specs:
            on_row(run_one(spec, device, settings))
    elif quick:
        # CI-sized: everything in this process (one import of inductor); HWM reset per measurement
        _pin_malloc()
        for spec in specs:
            on_row(run_one(spec, device, settings))
    else:
        if hwm_ok:
            groups: dict = {}
            for s in specs:
                groups.setdefault((s["op"], s["dtype"], s["impl"]), []).append(s)
            group_list = list(groups.values())
        else:
            group_list = [[s] for s in specs]
        run_isolated(group_list, device, settings, timeout_s=900.0, on_row=on_row)

    report, md = write_report(rows, copy_gbps, ctx, partial=False)
    print()
    print(md)
    print(f"wrote {base}.json and {base}.md ({report['elapsed_s']} s)")
    return 0 if not any("error" in r for r in rows) else 1


def write_report(rows: list[dict], copy_gbps: float | None, ctx: dict, partial: bool) -> tuple[dict, str]:
    """Ratios, bandwidth fractions, targets; write <base>.json and <base>.md (atomically)."""
    device, settings = ctx["device"], ctx["settings"]
    add_ratios(rows)
    add_bandwidth(rows, copy_gbps)
    K = kernels()
    ours_cpu = K.resolve_backend("cpu", device="cpu", dtype=torch.float32)
    ops = [op for op in OP_MODULES if any(r["op"] == op for r in rows)]
    report = {
        "benchmark": "kernels",
        "partial": partial,
        "device": device,
        "device_name": ctx["dev_name"] if device == "cuda" else f"CPU: {cpu_model()}",
        "device_slug": ctx["slug"],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": ctx["quick"],
        "torch": torch.__version__,
        "triton": _triton_version(),
        "python": platform.python_version(),
        "cuda": torch.version.cuda if device == "cuda" else None,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu_report(),
        "threads": settings["threads"],
        "loadavg_start": [round(v, 2) for v in ctx["load0"]],
        "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
        "compiled_cpu_ops": K.has_compiled_ops(),
        "ours_cpu_backend": ("runs the reference (the compiled CPU kernels are not built)"
                             if ours_cpu == "reference" else "runs the C++ kernels of kernels/csrc"),
        "dtypes": sorted({r["dtype"] for r in rows}),
        "sizes": {
            "dual_bce": sorted({(r["B"], r["d"], r["n"]) for r in rows if r["op"] == "dual_bce"}),
            "reparameterize_kl": sorted({(r["B"], r["d"]) for r in rows if r["op"] == "reparameterize_kl"}),
        },
        "impls": {op: getattr(op_module(op), "IMPLS_CPU" if device == "cpu" else "IMPLS_GPU") for op in ops},
        "labels": "y and mask are (B, n) tensors of the compute dtype (ours-packed: pack_labels words)",
        "chunk": op_module("dual_bce").CHUNK,
        "settings": settings,
        "memory_method": ctx["memory_method"],
        "copy_gbps": copy_gbps,
        "elapsed_s": round(time.perf_counter() - ctx["t0"], 1),
        "skipped": ctx["skipped"],
        "rows": rows,
    }
    # every run that contributed rows (a --resume run adds to the list): when, under what load, what it measured
    this_run = {k: report[k] for k in ("date", "loadavg_start", "loadavg_end", "elapsed_s")}
    this_run.update(measurements=ctx["n_specs"], filters=ctx["filters"])
    report["runs"] = ctx["old_runs"] + [this_run]
    report["targets"] = targets(rows, device, ops)
    base = ctx["base"]
    md = markdown(report)
    write_text_atomic(base + ".json", json.dumps(report, indent=1, default=str) + "\n")
    write_text_atomic(base + ".md", md)
    return report, md


def targets(rows: list[dict], device: str, ops: list[str]) -> dict:
    """Each op's targets (its module's `targets`) in one dict: the entries per target, "all_ok", and the text."""
    out, texts, ok = {}, [], True
    for op in ops:
        entries, op_ok, text = op_module(op).targets(rows, device)
        out.update(entries)
        ok = ok and op_ok
        texts += [text] if text else []
    out["all_ok"] = ok
    out["targets"] = "; ".join(texts)
    return out
