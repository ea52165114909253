"""`dualvae experiment`: the command that makes the tables, figures and claims from the cached runs."""
from __future__ import annotations

import os
import time

import torch

from dualvae.experiments.budgets import BUDGETS, DOMAIN_COUNTS, domain_counts
from dualvae.experiments.claims import claims, claims_markdown
from dualvae.experiments.figures import make_curves, make_fig4, make_fig5, make_fig6, make_table1
from dualvae.experiments.pool import ensure_runs
from dualvae.experiments.runs import fig6_runs, table1_runs


def _attr_names(data: str) -> list[str]:
    from dualvae.data.celeba import read_celeba_attributes

    if not os.path.exists(os.path.join(data, "list_attr_celeba.txt")):
        raise FileNotFoundError(f"--data {data}: no list_attr_celeba.txt (a CelebA-format root has one)")
    return read_celeba_attributes(data, check_images=False)[1]


def cmd_experiment(a) -> None:
    from dualvae.atomic import write_json_atomic, write_text_atomic

    if a.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {a.seeds}")
    if a.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {a.jobs}")
    if not os.path.isdir(a.data):
        raise FileNotFoundError(f"--data {a.data} is not a folder (make one with `dualvae synth --out DIR`)")
    t0 = time.time()
    out = os.path.abspath(a.out)
    n_attrs = len(_attr_names(a.data))
    counts = domain_counts(n_attrs)
    skipped = [k for k in DOMAIN_COUNTS if k not in counts]
    if skipped:
        print(f"experiment: {a.data} has {n_attrs} attributes; scoring {counts} domains, skipping "
              f"{', '.join(str(k) for k in skipped)} domains" + ("" if n_attrs >= 40 else
                                                                 " and the models trained on 20 attributes"))
    which = a.which
    source_labels = a.source_labels == "dataset"
    runs = []
    if which in ("table1", "fig4", "fig5", "curves", "all"):
        runs += table1_runs(a.seeds, n_attrs) if which in ("table1", "all") else table1_runs(a.seeds, 0)
    if which in ("fig6", "all"):
        runs += fig6_runs(a.seeds)
    results = ensure_runs(a.data, out, a.budget, runs, jobs=a.jobs, progress=not a.quiet,
                          source_labels=source_labels)
    table = fig6 = None
    written = []
    if which in ("table1", "all"):
        table = make_table1(out, results, a.seeds, a.budget)
        written += ["table1.md", "table1.json"]
    if which in ("fig4", "all"):
        written.append(os.path.basename(make_fig4(out, results, a.seeds)))
    if which in ("curves", "all"):
        written.append(os.path.basename(make_curves(out, results, a.seeds)))
    if which in ("fig5", "all"):
        written.append(os.path.basename(make_fig5(out, a.budget, results)))
    if which in ("fig6", "all"):
        fig6 = make_fig6(out, a.budget, results, a.seeds)
        written += ["fig6.png", "fig6.json", "fig6_images.png"]
    if which == "all":
        verdicts = claims(table, fig6)
        write_json_atomic(os.path.join(out, "claims.json"), verdicts)
        write_text_atomic(os.path.join(out, "claims.md"), claims_markdown(verdicts))
        written += ["claims.json", "claims.md"]
        for c in verdicts:
            v = c["holds"]
            print(f"  {c['protocol']:13} {v if isinstance(v, str) else ('HOLDS' if v else 'FAILS'):10} {c['claim']}")
    seconds = round(time.time() - t0, 1)
    write_json_atomic(os.path.join(out, f"timing-{which}.json"),
                      {"command": which, "budget": a.budget, "seeds": a.seeds, "jobs": a.jobs, "seconds": seconds,
                       "run_seconds": {r.name: res.get("seconds") for r, res in results.items()},
                       "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                       "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})
    print(f"experiment {which}: {seconds:.0f} s; wrote " + ", ".join(os.path.join(out, w) for w in written))


def add_experiment_parser(sub) -> None:
    """Register `dualvae experiment` on the CLI's subparsers."""
    e = sub.add_parser("experiment", help="the paper's experiments: Table 1, Figures 4-6, training curves "
                                          "(runs cached in OUT)")
    e.add_argument("which", choices=["table1", "fig4", "fig5", "fig6", "curves", "all"])
    e.add_argument("--data", required=True, help="CelebA-format root (real CelebA, or `dualvae synth` output)")
    e.add_argument("--out", required=True, help="output folder; trained runs are cached in OUT/runs/BUDGET/")
    e.add_argument("--seeds", type=int, default=3, help="seeds per model (mean ± std over them; default 3)")
    e.add_argument("--budget", choices=list(BUDGETS), default="medium",
                   help="tiny: CI smoke test; small: a quick look; medium: the committed results (2 CPU cores, "
                        "generated data, under 2 h); paper: the full protocol (GPU). Default medium")
    e.add_argument("--jobs", type=int, default=1, help="runs trained at once, one thread each when > 1 (default 1)")
    e.add_argument("--source-labels", choices=["predicted", "dataset"], default="predicted",
                   help="the source labels label-conditioned models start a transfer from: their own prediction "
                        "from x (default), or the dataset's labels of the image")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_experiment)
