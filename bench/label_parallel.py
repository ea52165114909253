"""Label parallelism on CPU: the label step of `dualvae train --label-parallel` with K gloo processes against one
process, at n = 1,048,576 labels, d = 128: per-rank memory of U's state and step time.

Writes `<out>/label-parallel-cpu.json` and `.md` (out defaults to bench/results) and prints the table.

The step is training's own (dualvae.training.label_parallel.LabelParallel and Algorithm 1's g_e): a stand-in
encoder (one Linear layer from 64 features to (mu, logvar), data parallel, its gradient all-reduced) gives z of
each rank's rows; z of the global batch is all-gathered, each rank takes dual_bce of its rows [lo, hi) of U
over the whole batch (labels: SparseLabels at --density positives, mask: HashedMask at missing ratio 0.3,
both from stand-in labels' labels_for(the batch's global rows)), dz goes back to the rows' owners, and Adam steps
the encoder and this rank's U shard. K = 1 is the single-process baseline (the same code, no collectives).

Per rank: the bytes of U, its gradient and Adam's two moments (exact: the tensors' sizes), VmRSS before U is
allocated and after the steps, the resident high-water mark VmHWM of the timed steps (the process's peak: torch's
import and the step's temporaries included), and the median step time (forward + backward + all-reduce + Adam)
after --warmup untimed steps; the steps are ones that log nothing (the loss without the accuracy, see
losses.dual_head_terms). Every configuration runs in fresh processes (the K ranks of one run side by side, the
runs one after the other). Target: U's state per rank ~ 1/K of one process's.

    .venv/bin/python bench/label_parallel.py                    # n = 1,048,576, B = 1024, K = 1 and 2
    .venv/bin/python bench/label_parallel.py --quick --out /tmp/lp   # n = 16384, B = 64: a check that it runs
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # before the imports below: runnable from a checkout
sys.path.insert(0, HERE)
import torch  # noqa: E402

import harness  # noqa: E402
from dualvae.data.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from dualvae.sysinfo import cpu_model, cpu_report  # noqa: E402

FEATURES = 64
MISSING_RATIO = 0.3


class StandInEncoder(torch.nn.Module):
    """x (B, 64) -> (mu, logvar), each (B, d): what the conv encoder would give the label step."""

    def __init__(self, d: int):
        super().__init__()
        self.fc = torch.nn.Linear(FEATURES, 2 * d)

    def forward(self, x):
        return self.fc(x).chunk(2, dim=1)


class StandInModel(torch.nn.Module):
    def __init__(self, n: int, d: int, lo: int, hi: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.encoder = StandInEncoder(d)
        gen = torch.Generator().manual_seed(seed + 1)
        # this rank's rows only (a run that trains uses shard_model on the full draw; the bench never holds it)
        self.U = torch.nn.Parameter(torch.randn(hi - lo, d, generator=gen) * 0.01)
        self.label_range = (lo, hi)

    def encode(self, x):
        return self.encoder(x)


class StandInLabels:
    """labels_for of any global rows: row r's positives are the density * n labels
    (r * 2654435761 + k * 40503) mod n, k = 0, 1, ... (distinct while density * n < n / gcd(40503, n)), its mask
    the HashedMask of (seed 0, MISSING_RATIO, r): pure functions of r, formed in O(positives)."""

    def __init__(self, n: int, density: float):
        self.n, self.per_row = n, max(1, round(density * n))

    def labels_for(self, idx: torch.Tensor):
        from dualvae.kernels import HashedMask, SparseLabels

        k = torch.arange(self.per_row, dtype=torch.int64)
        cols = (idx.to(torch.int64)[:, None] * 2654435761 + k[None, :] * 40503) % self.n
        indptr = torch.arange(len(idx) + 1, dtype=torch.int64) * self.per_row
        return (SparseLabels(indptr, cols.sort(dim=1).values.reshape(-1), self.n),
                HashedMask(0, MISSING_RATIO, idx.to(torch.int64)))


def worker(args) -> None:
    """One rank (RANK / WORLD_SIZE in the environment): --steps label steps, its measurements to --result."""
    from dualvae.kernels import resolve_backend
    from dualvae.training.distributed import init_from_env, reduce_grads_and_stats, shutdown
    from dualvae.training.label_parallel import LabelParallel, shard_range

    harness._pin_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    d = init_from_env("cpu")
    rss_start = harness._status_kib("VmRSS")
    lo, hi = shard_range(args.n, d.world, d.rank)
    model = StandInModel(args.n, args.d, lo, hi, seed=0)
    labels = StandInLabels(args.n, args.density)
    backend = resolve_backend("auto", device=torch.device("cpu"))
    lp = LabelParallel(model, labels, d, args.batch // d.world, backend)
    opt = torch.optim.Adam([*model.encoder.parameters(), model.U], lr=1e-3)
    gen = torch.Generator().manual_seed(5)
    times = []
    for step in range(args.warmup + args.steps):
        rows = (torch.arange(args.batch, dtype=torch.int64) + step * args.batch)[d.rank::d.world]
        x = torch.randn(args.batch, FEATURES, generator=gen)[d.rank::d.world]
        eps = torch.randn(args.batch, args.d, generator=gen)[d.rank::d.world]
        if step == args.warmup:
            harness._reset_hwm()  # the timed steps' peak, not the first step's one-off allocations
        t0 = time.perf_counter()
        nll, _, _ = lp.label(x, eps, rows, metrics=False)  # a step that logs nothing, as most are
        opt.zero_grad(set_to_none=True)
        nll.backward()
        s = reduce_grads_and_stats(list(model.encoder.parameters()), nll.detach()[None], d)
        opt.step()
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            times.append(dt)
    st = opt.state[model.U]
    u_state = {"U": model.U.nbytes, "grad": model.U.grad.nbytes, "exp_avg": st["exp_avg"].nbytes,
               "exp_avg_sq": st["exp_avg_sq"].nbytes}
    result = {
        "rank": d.rank, "world": d.world, "lo": lo, "hi": hi, "kernel_backend": backend,
        "u_state_mib": round(sum(u_state.values()) / harness.MiB, 2),
        "u_state_bytes": u_state,
        "rss_start_mib": round((rss_start or 0) / 1024, 1),
        "rss_end_mib": round((harness._status_kib("VmRSS") or 0) / 1024, 1),
        "hwm_mib": round((harness._status_kib("VmHWM") or 0) / 1024, 1),
        "maxrss_mib": round(harness._maxrss_kib() / 1024, 1),
        "step_ms": [round(t * 1e3, 2) for t in times],
        "step_ms_median": round(statistics.median(times) * 1e3, 2),
        "last_loss": float(s[0]),
    }
    with open(args.result, "w") as f:
        json.dump(result, f)
    shutdown(d)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_world(args, world: int, tmp: str) -> list[dict]:
    """K = `world` fresh processes side by side; their results, rank order."""
    port = _free_port()
    procs, files = [], []
    for rank in range(world):
        res = os.path.join(tmp, f"w{world}-r{rank}.json")
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--result", res, "--n", str(args.n), "--d",
               str(args.d), "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
               "--density", str(args.density), "--threads", str(args.threads)]
        procs.append(subprocess.Popen(cmd, env=env))
        files.append(res)
    codes = [p.wait(timeout=args.timeout) for p in procs]
    if any(codes):
        raise SystemExit(f"label_parallel: a rank of the K = {world} run failed (exit codes {codes})")
    out = []
    for res in files:
        with open(res) as f:
            out.append(json.load(f))
    return out


def markdown(report: dict) -> str:
    lines = [f"# Label parallelism on CPU: n = {report['n']:,}, d = {report['d']}, B = {report['batch']}",
             "",
             f"{report['device_name']}; torch {report['torch']}; ISA {report['cpu'].get('cpu_isa_level')};"
             f" load average {report['loadavg_start']} -> {report['loadavg_end']}; kernel backend "
             f"{report['kernel_backend']} (sparse labels and the hashed mask read in the kernel).",
             "",
             "| K | rank | U rows | U + grad + Adam (MiB) | RSS start (MiB) | RSS end (MiB) | peak RSS (MiB) "
             "| step (ms) |",
             "|---|---|---|---|---|---|---|---|"]
    for k, ranks in report["runs"].items():
        for r in ranks:
            lines.append(f"| {k} | {r['rank']} | [{r['lo']:,}, {r['hi']:,}) | {r['u_state_mib']:.1f} | "
                         f"{r['rss_start_mib']:.0f} | {r['rss_end_mib']:.0f} | {r['hwm_mib']:.0f} | "
                         f"{r['step_ms_median']:.1f} |")
    t = report["targets"]
    lines += ["", f"U's state per rank: {t['u_state_ratio']:.3f} of one process's (target ~ 1/K = "
                  f"{1 / t['world']:.3f}): {'met' if t['u_state_met'] else 'NOT met'}. Peak RSS per rank: "
                  f"{t['hwm_ratio']:.3f} of one process's. Step time: {t['step_ratio']:.2f}x one process's.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1 << 20)
    p.add_argument("--d", type=int, default=128)
    p.add_argument("--batch", type=int, default=1024, help="the global batch B")
    p.add_argument("--density", type=float, default=1e-4, help="positive labels per entry")
    p.add_argument("--world", type=int, default=2, help="K, the label-parallel processes (against K = 1)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process (0: torch's default)")
    p.add_argument("--timeout", type=float, default=3000)
    p.add_argument("--quick", action="store_true", help="n = 16384, B = 64, 2 steps: a check that it runs")
    p.add_argument("--out", default=os.path.join(HERE, "results"))
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.n, args.batch, args.steps, args.warmup = 16384, 64, 2, 1
    if args.worker:
        worker(args)
        return 0
    if args.batch % args.world:
        raise SystemExit(f"label_parallel: --batch {args.batch} is not a multiple of --world {args.world}")
    load0, t0 = os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {str(k): run_world(args, k, tmp) for k in (1, args.world)}
    one, many = runs["1"][0], runs[str(args.world)]
    u_ratio = max(r["u_state_mib"] for r in many) / one["u_state_mib"]
    report = {
        "bench": "label-parallel", "device": "cpu", "device_name": f"CPU: {cpu_model()}", "quick": args.quick,
        "n": args.n, "d": args.d, "batch": args.batch, "density": args.density, "missing_ratio": MISSING_RATIO,
        "world": args.world, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
        "kernel_backend": one["kernel_backend"],
        "torch": torch.__version__, "triton": harness._triton_version(), "python": sys.version.split()[0],
        "cpu": cpu_report(), "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_start": [round(v, 2) for v in load0], "loadavg_end": [round(v, 2) for v in os.getloadavg()],
        "elapsed_s": round(time.perf_counter() - t0, 1),
        "runs": runs,
        "targets": {"world": args.world, "u_state_ratio": round(u_ratio, 4),
                    "u_state_met": abs(u_ratio - 1 / args.world) <= 0.05 / args.world,
                    "hwm_ratio": round(max(r["hwm_mib"] for r in many) / one["hwm_mib"], 4),
                    "step_ratio": round(max(r["step_ms_median"] for r in many) / one["step_ms_median"], 3)},
    }
    os.makedirs(args.out, exist_ok=True)
    write_json_atomic(os.path.join(args.out, "label-parallel-cpu.json"), report)
    md = markdown(report)
    write_text_atomic(os.path.join(args.out, "label-parallel-cpu.md"), md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
