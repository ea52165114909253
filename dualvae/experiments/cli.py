"""`dualvae experiment`: its options as one dataclass (ExperimentConfig; the command line is generated from it by
dualvae.options) and the command that makes the tables, figures and claims from the cached runs."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import torch

from dualvae.experiments.budgets import BUDGETS, DOMAIN_COUNTS, domain_counts
from dualvae.experiments.claims import claims, claims_markdown
from dualvae.experiments.figures import (make_curves, make_fader_adversary, make_fig4, make_fig5, make_fig6,
                                         make_run_list, make_table1)
from dualvae.experiments.pool import ensure_runs
from dualvae.experiments.runs import fig6_runs, stargan_s09_runs, table1_runs, train_fader_control
from dualvae.options import check_counts, option

COMMANDS = ("table1", "fig4", "fig5", "fig6", "curves", "all")


@dataclass
class ExperimentConfig:
    """The options of `dualvae experiment`: one field per option, with its help, choices and default."""
    which: str = option(help="what to make (all: every table and figure, then the claims)",
                        choices=COMMANDS, positional=True)
    data: str = option(help="CelebA-format root (real CelebA, or `dualvae synth` output)")
    out: str = option(help="output folder; trained runs are cached in OUT/runs/BUDGET/")
    seeds: int = option(3, "seeds per model (mean ± std over them)")
    budget: str = option("long", "tiny: CI smoke test; small: a quick look; medium: 1,500 steps (2 CPU cores, "
                         "generated data, about 1.5 h); long: the committed results, trained toward the plateau (2 "
                         "CPU cores, about 2 h); paper: the full protocol (GPU)", choices=tuple(BUDGETS))
    jobs: int = option(1, "runs trained at once, one thread each when > 1")
    source_labels: str = option("predicted", "the source labels label-conditioned models start a transfer from: "
                                "their own prediction from x (predicted), or the dataset's labels of the image "
                                "(dataset)", choices=("predicted", "dataset"))
    quiet: bool = option(False, "no progress bars")


def _attr_names(data: str) -> list[str]:
    from dualvae.data.celeba import ATTR_FILE, read_celeba_attributes

    if not os.path.exists(os.path.join(data, ATTR_FILE)):
        raise FileNotFoundError(f"--data {data}: no {ATTR_FILE} (a CelebA-format root has one)")
    return read_celeba_attributes(data, check_images=False)[1]


def run_experiment(cfg: ExperimentConfig) -> None:
    """Train and evaluate the runs `cfg.which` needs (those not cached yet), then write its tables and figures,
    the claims for `all`, and OUT/timing-<which>.json."""
    from dualvae.data.atomic import write_json_atomic, write_text_atomic

    check_counts(cfg)  # as the command line names them: --seeds, --jobs
    if not os.path.isdir(cfg.data):
        raise FileNotFoundError(f"--data {cfg.data} is not a folder (make one with `dualvae synth --out DIR`)")
    t0 = time.time()
    out = os.path.abspath(cfg.out)
    n_attrs = len(_attr_names(cfg.data))
    counts = domain_counts(n_attrs)
    skipped = [k for k in DOMAIN_COUNTS if k not in counts]
    if skipped:
        print(f"experiment: {cfg.data} has {n_attrs} attributes; scoring {counts} domains, skipping "
              f"{', '.join(str(k) for k in skipped)} domains" + ("" if n_attrs >= 40 else
                                                                 " and the models trained on 20 attributes"))
    which = cfg.which
    source_labels = cfg.source_labels == "dataset"
    runs = []
    if which in ("table1", "fig4", "fig5", "curves", "all"):
        runs += table1_runs(cfg.seeds, n_attrs) if which in ("table1", "all") else table1_runs(cfg.seeds, 0)
    if which in ("fig6", "all"):
        runs += fig6_runs(cfg.seeds)
    results = ensure_runs(cfg.data, out, cfg.budget, runs, jobs=cfg.jobs, progress=not cfg.quiet,
                          source_labels=source_labels)
    if which in ("fig6", "all"):
        # "StarGAN fails at s = 0.9" is untestable when StarGAN already fails at s = 0: its s = 0.9 runs only
        # cost time then.
        failed0 = [r.seed for r in fig6_runs(cfg.seeds) if r.model == "stargan" and results[r]["failed"]]
        if failed0:
            print(f"experiment: StarGAN fails at s = 0 (seeds {', '.join(map(str, failed0))}); its s = 0.9 runs "
                  f"are not made (the claim that it fails at s = 0.9 is untestable)")
        else:
            results.update(ensure_runs(cfg.data, out, cfg.budget, stargan_s09_runs(cfg.seeds), jobs=cfg.jobs,
                                       progress=not cfg.quiet, source_labels=source_labels))
    table = fig6 = None
    written = []
    if which in ("table1", "all"):
        table = make_table1(out, results, cfg.seeds, cfg.budget)
        written += ["table1.md", "table1.json"]
    if which == "all":
        written.append(os.path.basename(make_run_list(out, results, cfg.budget)))
    if which in ("fig4", "all"):
        written.append(os.path.basename(make_fig4(out, results, cfg.seeds)))
    if which in ("curves", "all"):
        written.append(os.path.basename(make_curves(out, results, cfg.seeds, cfg.budget)))
        train_fader_control(out, cfg.budget, progress=not cfg.quiet)
        fader = make_fader_adversary(out, cfg.budget, cfg.seeds)
        written += [os.path.basename(fader)] if fader else []
    if which in ("fig5", "all"):
        written.append(os.path.basename(make_fig5(out, cfg.budget, results)))
    if which in ("fig6", "all"):
        fig6 = make_fig6(out, cfg.budget, results, cfg.seeds)
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
                      {"command": which, "budget": cfg.budget, "seeds": cfg.seeds, "jobs": cfg.jobs,
                       "seconds": seconds, "run_seconds": {r.name: res.get("seconds") for r, res in results.items()},
                       "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                       "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})
    print(f"experiment {which}: {seconds:.0f} s; wrote " + ", ".join(os.path.join(out, w) for w in written))
