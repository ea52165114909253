"""Every run a command needs, trained and evaluated once: the data and classifier prepared, the cached runs
counted, and the rest run `jobs` at a time."""
from __future__ import annotations

import multiprocessing
import os
import time

import torch
from tqdm import tqdm

from dualvae.experiments.budgets import BUDGETS
from dualvae.experiments.evaluate import eval_file, evaluate_run
from dualvae.experiments.prepare import ensure_classifier, prepare_data
from dualvae.experiments.runs import Run, run_dir, train_run


def do_run(args) -> dict:
    """Train (if needed) and evaluate one run; the worker of the run pool."""
    data, out, budget_name, run, threads, source_labels = args
    if threads:
        torch.set_num_threads(threads)
    t0 = time.time()
    train_run(data, out, budget_name, run)
    res = evaluate_run(out, budget_name, run, source_labels=source_labels)
    res.setdefault("seconds", round(time.time() - t0, 1))
    return res


def _finished(out: str, budget_name: str, run: Run, source_labels: bool) -> bool:
    return os.path.exists(eval_file(run_dir(out, budget_name, run), source_labels))


def ensure_runs(data: str, out: str, budget_name: str, runs: list[Run], jobs: int = 1, progress: bool = True,
                source_labels: bool = False) -> dict[Run, dict]:
    """Train and evaluate every run not in the cache yet, `jobs` at a time (one thread each when jobs > 1);
    prints how many are cached and which remain."""
    budget = BUDGETS[budget_name]
    os.makedirs(out, exist_ok=True)
    prepare_data(data, out, budget, [r.labels for r in runs if r.labels])
    ensure_classifier(data, out, budget_name, progress=progress)
    runs = sorted(set(runs), key=lambda r: (r.model != "stargan", -budget.steps[r.model], r.model,
                                            r.labels or 0, r.missing_ratio, r.seed))  # the costliest first
    todo = [r for r in runs if not _finished(out, budget_name, r, source_labels)]
    print(f"experiment ({budget_name} budget): {len(runs) - len(todo)} of {len(runs)} runs cached"
          + (f"; to run: {', '.join(r.name for r in todo)}" if todo else ""), flush=True)
    threads = 1 if jobs > 1 else None
    tasks = [(data, out, budget_name, r, threads, source_labels) for r in runs]
    results = {}
    bar = tqdm(total=len(tasks), desc=f"runs ({budget_name} budget)", unit="run", disable=not progress,
               dynamic_ncols=True)

    def done(run, res):
        results[run] = res
        t = res["test"]["tuned"]
        bar.set_postfix_str(f"{run.name}: CIS {t[str(res['domain_counts'][-1])]['cis']:+.3f}")
        bar.update()

    if jobs > 1 and len(todo) > 1:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            for run, res in zip(runs, pool.imap(do_run, tasks)):
                done(run, res)
    else:
        for task in tasks:
            done(task[3], do_run(task))
    bar.close()
    return results
