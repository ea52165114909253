"""One run (model, missing ratio, seed, labels) and its cache folder OUT/runs/<budget>/<name>/: training with the
kept checkpoints, the finished marker train.json, resume, and which runs each command needs."""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass

import torch

from dualvae.experiments.budgets import BUDGETS, MISSING_RATIOS, MODELS
from dualvae.experiments.prepare import cache_file, load_data


@dataclass(frozen=True)
class Run:
    model: str
    missing_ratio: float
    seed: int
    labels: int | None = None  # train on the first `labels` attributes only (None: all)

    @property
    def name(self) -> str:
        n = f"-n{self.labels}" if self.labels else ""
        return f"{self.model}{n}-s{self.missing_ratio:g}-seed{self.seed}"


def run_dir(out: str, budget_name: str, run: Run) -> str:
    return os.path.join(out, "runs", budget_name, run.name)


def _done_file(rdir: str) -> str:
    return os.path.join(rdir, "train.json")


def train_run(data: str, out: str, budget_name: str, run: Run, progress: bool = False) -> str:
    """Train one model, keeping `curve_points` checkpoints (rdir/ckpt/step-N.pt); returns rdir/model.pt. A run is
    finished when rdir/train.json exists; DualVAE resumes an interrupted run from its newest step checkpoint."""
    from dualvae.data.atomic import write_json_atomic
    from dualvae.checkpoint import save_atomic
    from dualvae.training import checkpoint_path

    budget = BUDGETS[budget_name]
    rdir = run_dir(out, budget_name, run)
    path = os.path.join(rdir, "model.pt")
    steps = budget.steps[run.model]
    points = curve_steps(steps, budget.curve_points)
    if os.path.exists(_done_file(rdir)):
        with open(_done_file(rdir)) as f:
            done = json.load(f)
        if done.get("steps") != steps or done.get("checkpoints", points) != points:
            raise ValueError(f"{rdir} was trained for {done.get('steps')} steps (checkpoints "
                             f"{done.get('checkpoints')}), the {budget_name} budget now says {steps} ({points}); "
                             f"remove that folder or use another --out")
        return path
    bs = budget.batch_sizes.get(run.model, budget.batch_size)
    t0 = time.time()
    if run.model == "dualvae":
        from dualvae.training import TrainConfig, list_checkpoints, train

        cfg = budget.configs["dualvae"]
        train(TrainConfig(data=cache_file(out, budget, run.labels), out=rdir, steps=steps, batch_size=bs,
                          width=cfg["width"], latent_dim=cfg["latent_dim"], image_size=budget.image_size,
                          missing_ratio=run.missing_ratio, seed=run.seed, ckpt_every=points[0],
                          keep_ckpts=len(points) + 1, resume="auto", progress=progress))
        newest = list_checkpoints(os.path.join(rdir, "ckpt"))
        if not newest or checkpoint_step(newest[0]) != steps:  # stopped early (SIGTERM): not finished
            raise RuntimeError(f"{run.name}: training stopped before step {steps}; run the command again to "
                               f"resume it")
    else:
        from dualvae import baselines
        from dualvae.data import draw_label_mask

        d = load_data(out, budget, ("train",))
        images, labels = d["train"]["images"], d["train"]["labels"]
        names = d["attr_names"]
        if run.labels:
            labels, names = labels[:, :run.labels], names[:run.labels]
        torch.manual_seed(run.seed)
        model = baselines.build(run.model, image_size=budget.image_size, num_labels=labels.shape[1],
                                **budget.configs[run.model])
        model.attr_names = list(names)
        # The same indicator I as DualVAE's trainer draws for this (seed, s): over the whole training split.
        mask = draw_label_mask(tuple(labels.shape), run.missing_ratio, run.seed) if run.missing_ratio > 0 else None
        os.makedirs(os.path.join(rdir, "ckpt"), exist_ok=True)

        def keep(step: int):
            state = model.checkpoint_state()
            state.update(step=step)
            save_atomic(state, checkpoint_path(os.path.join(rdir, "ckpt"), step))

        rows = baselines.fit(model, images, labels, mask, steps=steps, batch_size=bs, seed=run.seed,
                             progress=progress, checkpoint_steps=points, on_checkpoint=keep)
        write_json_atomic(os.path.join(rdir, "log.json"), rows)
        state = model.checkpoint_state()
        state.update(step=steps)
        save_atomic(state, path)
    write_json_atomic(_done_file(rdir), {"steps": steps, "train_seconds": round(time.time() - t0, 1),
                                         "checkpoints": points})
    return path


def curve_steps(steps: int, points: int) -> list[int]:
    """The kept checkpoints: multiples of steps // points (DualVAE's trainer saves at multiples of its
    ckpt_every), then `steps`; distinct, at least 1."""
    every = max(1, steps // points)
    return sorted({every * k for k in range(1, points) if every * k < steps} | {steps})


def checkpoint_step(path: str) -> int:
    from dualvae.training import CKPT_NAME

    return int(CKPT_NAME.search(os.path.basename(path)).group(1))


def table1_runs(seeds: int, num_attrs: int = 40) -> list[Run]:
    runs = [Run(m, 0.0, s) for m in MODELS for s in range(seeds)]
    if num_attrs >= 40:  # models trained on the first 20 attributes: Table 1's other 20-domain column
        runs += [Run(m, 0.0, s, labels=20) for m in MODELS for s in range(seeds)]
    return runs


def fig6_runs(seeds: int) -> list[Run]:
    """DualVAE at every missing ratio and StarGAN at s = 0; StarGAN at s = 0.9 is `stargan_s09_runs`, needed
    only when StarGAN works at s = 0."""
    return ([Run("dualvae", s, seed) for s in MISSING_RATIOS for seed in range(seeds)]
            + [Run("stargan", 0.0, seed) for seed in range(seeds)])


def stargan_s09_runs(seeds: int) -> list[Run]:
    return [Run("stargan", 0.9, seed) for seed in range(seeds)]


RUN_NAME = re.compile(r"^(?P<model>[a-z]+)(?:-n(?P<labels>\d+))?-s(?P<s>[0-9.]+)-seed(?P<seed>\d+)$")


def parse_run(name: str) -> Run:
    """The Run whose folder is called `name` (Run.name's inverse)."""
    m = RUN_NAME.match(name)
    if not m or m["model"] not in MODELS:
        raise ValueError(f"{name!r} is not a run folder name (<model>[-n<labels>]-s<missing ratio>-seed<seed>)")
    return Run(m["model"], float(m["s"]), int(m["seed"]), int(m["labels"]) if m["labels"] else None)


def read_evaluated(budget_dir: str, eval_name: str = "eval.json") -> dict[Run, dict]:
    """Every evaluated run under OUT/runs/<budget>/: {Run: its eval.json}."""
    out = {}
    for name in sorted(os.listdir(budget_dir)):
        path = os.path.join(budget_dir, name, eval_name)
        if os.path.exists(path):
            with open(path) as f:
                out[parse_run(name)] = json.load(f)
    return out


def control_dir(out: str, budget_name: str, seed: int = 0) -> str:
    return os.path.join(out, "runs", f"{budget_name}-controls", f"fader-no-adversary-seed{seed}")


def train_fader_control(out: str, budget_name: str, seed: int = 0, progress: bool = False) -> str:
    """FaderNetworks as the s = 0 run of `seed`, but with no latent adversary (lambda_lat_dis = 0): the control
    that shows what the latent discriminator's accuracy does when nothing fights it. Only its training log is
    kept: OUT/runs/<budget>-controls/fader-no-adversary-seed<seed>/log.json (cached)."""
    from dualvae import baselines
    from dualvae.data.atomic import write_json_atomic

    budget = BUDGETS[budget_name]
    path = os.path.join(control_dir(out, budget_name, seed), "log.json")
    if os.path.exists(path):
        return path
    d = load_data(out, budget, ("train",))
    torch.manual_seed(seed)
    model = baselines.build("fader", image_size=budget.image_size, num_labels=d["train"]["labels"].shape[1],
                            **{**budget.configs["fader"], "lambda_lat_dis": 0.0})
    model.attr_names = list(d["attr_names"])
    rows = baselines.fit(model, d["train"]["images"], d["train"]["labels"], None, steps=budget.steps["fader"],
                         batch_size=budget.batch_sizes.get("fader", budget.batch_size), seed=seed,
                         progress=progress)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json_atomic(path, rows)
    return path
