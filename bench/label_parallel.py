"""Label parallelism on CPU: the label step of `dualvae train --label-parallel` with K gloo processes against one
process, at n = 1,048,576 labels, d = 128: per-rank memory of U's state and step time.

Writes `<out>/label-parallel-cpu.json` and `.md` (out defaults to bench/results) and prints the table.

The step is training's own (dualvae.training.label_parallel.LabelParallel and Algorithm 1's g_e): a stand-in
encoder (one Linear layer from 64 features to (mu, logvar), data parallel, its gradient all-reduced) gives z of
each rank's rows; z of the global batch is all-gathered, each rank takes dual_bce of its rows [lo, hi) of U
over the whole batch (labels: SparseLabels at --density positives, mask: HashedMask at missing ratio 0.3,
both taken from a stand-in loader by the batch's global rows), dz goes back to the rows' owners, and Adam steps
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
from dualvae.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from dualvae.sysinfo import cpu_model, cpu_report  # noqa: E402

MiB = float(1 << 20)
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


class StandInLoader:
    """labels_of / mask_of of any global rows: row r's positives are the density * n labels
    (r * 2654435761 + k * 40503) mod n, k = 0, 1, ... (distinct while density * n < n / gcd(40503, n)), its mask
    the HashedMask of (seed 0, MISSING_RATIO, r): pure functions of r, formed in O(positives)."""

    def __init__(self, n: int, density: float):
        self.n, self.per_row = n, max(1, round(density * n))

    def labels_of(self, idx: torch.Tensor):
        from dualvae.kernels import SparseLabels

        k = torch.arange(self.per_row, dtype=torch.int64)
        cols = (idx.to(torch.int64)[:, None] * 2654435761 + k[None, :] * 40503) % self.n
        indptr = torch.arange(len(idx) + 1, dtype=torch.int64) * self.per_row
        return SparseLabels(indptr, cols.sort(dim=1).values.reshape(-1), self.n)

    def mask_of(self, idx: torch.Tensor):
        from dualvae.kernels import HashedMask

        return HashedMask(0, MISSING_RATIO, idx.to(torch.int64))


def worker(args) -> None:
    """One rank (RANK / WORLD_SIZE in the environment): --steps label steps, its measurements to --result."""
    load0, t0 = os.getloadavg(), time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {str(k): run_world(args, k, tmp) for k in (1, args.world)}
    one, many = runs["1"][0], runs[str(args.world)]
    u_ratio = max(r["u_state_mib"] for r in many) / one["u_state_mib"]
    report = {
        "bench": "label-parallel", "device": "cpu", "device_name": f"CPU: {cpu_model()}", "quick": args.quick,
        "n": args.n, "d": args.d, "batch": args.batch, "density": args.density, "missing_ratio": MISSING_RATIO,
        "world": args.world, "steps": args.steps, "warmup": args.warmup, "threads": args.threads,
        "kernel_backend": one["kernel_backend"], "sparse_in_kernel": one["sparse_in_kernel"],
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
