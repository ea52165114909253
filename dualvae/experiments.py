"""The paper's experiments (Sec. 5) as commands: Table 1, Figures 4, 5 and 6, and training curves.

    dualvae experiment table1|fig4|fig5|fig6|curves|all --data DIR --out DIR [--seeds 3]
                       [--budget tiny|small|medium|paper] [--jobs 1] [--source-labels predicted|dataset]

Every command works from one cache of trained runs, OUT/runs/<budget>/<model>[-n20]-s<missing ratio>-seed<seed>/,
so the commands share their runs, a second command trains nothing it already has, and an interrupted command
picks up where it stopped (DualVAE resumes from its last step checkpoint; a baseline that was cut short retrains).
A cached run trained with other steps than the budget's is refused, not silently reused.

One run = train the model on the training split with the missing-label mask I = draw_label_mask(seed, s), keeping
`curve_points` checkpoints along the way; choose each transfer strength on the validation split; score the test
split. Two protocols:
- paper_default: each label-conditioned baseline at its own unit strength (CVAE y_i <- 1, FaderNetworks alpha = 1,
  StarGAN c_i = 1); DualVAE at the lambda chosen on validation (lambda is its only knob);
- tuned: every model's strength chosen on validation from a grid that brackets the optimum (a choice on a grid
  edge extends the grid: doubled above, halved below, until the optimum is interior).
The test split is scored as `test_subsets` disjoint subsets of `subset_images` images (CIS mean and std over them,
as the paper's "calculated several times"), at 40 domains and at 20 (the top-left 20 x 20 block of the same M);
models trained on the first 20 attributes only (`-n20` runs) are scored at 20 domains. With fewer attributes than
40 the domain counts that do not exist are skipped (and the command says so). One classifier f, trained once per
budget on the training split with every label, scores every model. A failed model (noise, or one image for every
input) is told apart by its reconstruction ratio (`baselines.common.reconstruction_ratio`).

Budgets: `tiny` (CI: seconds), `small` (a quick look: 32x32, hundreds of steps), `medium` (the committed results:
32x32, thousands of steps, sized for 2 CPU cores with --jobs 2), `paper` (the full protocol: 64x64, the original
architectures, long training; for a GPU and real CelebA).
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

MODELS = ("dualvae", "cvae", "fader", "stargan")
LABELS = {"dualvae": "DualVAE", "cvae": "CVAE", "fader": "FaderNetworks", "stargan": "StarGAN"}
COLORS = {"dualvae": "tab:red", "cvae": "tab:blue", "fader": "tab:green", "stargan": "tab:purple"}
PROTOCOLS = ("paper_default", "tuned")
PROTOCOL_TITLES = {"paper_default": "paper-default strengths", "tuned": "strengths tuned on validation"}
MISSING_RATIOS = (0.0, 0.5, 0.9, 0.99)  # Fig. 6
DOMAIN_COUNTS = (20, 40)  # Table 1's columns
# Table 1 of the paper (CelebA, Inception-v3 f): mean and std of CIS over repeated runs.
PAPER_TABLE1 = {"cvae": {20: (-0.112, 0.007), 40: (-0.152, 0.006)},
                "fader": {20: (0.075, 0.008), 40: (-0.002, 0.003)},
                "stargan": {20: (0.068, 0.188), 40: (0.050, 0.032)},
                "dualvae": {20: (0.163, 0.025), 40: (0.140, 0.020)}}
FIG6_DOMAINS = ("Blond_Hair", "Eyeglasses", "Mustache")  # the attributes of the paper's Fig. 6 images
FAILED_RATIO = 0.8  # reconstruction ratio above which a model counts as failed (noise or one image for all)
MAX_GRID_EXTENSIONS = 8


@dataclass
class Budget:
    image_size: int
    batch_size: int
    classifier_steps: int
    classifier_width: int
    val_images: int
    subset_images: int  # images per test subset
    test_subsets: int  # disjoint test subsets (CIS mean and std over them)
    grid_images: int
    steps: dict  # model -> training steps (StarGAN: discriminator steps; G every n_critic-th)
    configs: dict  # model -> network config (keyword arguments)
    lams: dict  # model -> the starting strength grid of the tuned protocol (extended when the choice is an edge)
    batch_sizes: dict = field(default_factory=dict)  # per-model batch size where it differs
    curve_points: int = 3  # checkpoints per run scored for the training curves (the last is the final model)

    @property
    def test_images(self) -> int:
        return self.subset_images * self.test_subsets


UNIT = {"dualvae": None, "cvae": 1.0, "fader": 1.0, "stargan": 1.0}  # paper-default strength (None: tuned)
# The networks of the CPU budgets (32x32) and the starting grids of the tuned protocol (extended as needed).
CPU_NETS = {"dualvae": dict(width=16, latent_dim=64), "cvae": dict(width=16, latent_dim=64),
            "fader": dict(width=8, max_channels=128), "stargan": dict(g_width=12, d_width=16, res_blocks=2)}
GRIDS = {"dualvae": [8.0, 16.0, 32.0, 64.0, 128.0], "cvae": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0],
         "fader": [0.5, 1.0, 2.0, 4.0, 8.0, 16.0], "stargan": [0.5, 1.0, 2.0, 4.0]}

BUDGETS = {
    "tiny": Budget(
        image_size=16, batch_size=8, classifier_steps=3, classifier_width=8, val_images=4, subset_images=2,
        test_subsets=2, grid_images=2,
        steps={"dualvae": 3, "cvae": 3, "fader": 3, "stargan": 5},
        configs={"dualvae": dict(width=8, latent_dim=8), "cvae": dict(width=8, latent_dim=8),
                 "fader": dict(width=8, max_channels=32), "stargan": dict(g_width=8, d_width=8, res_blocks=1)},
        lams={"dualvae": [1.0, 4.0], "cvae": [1.0, 2.0], "fader": [1.0, 2.0], "stargan": [1.0, 2.0]},
        curve_points=2),
    "small": Budget(
        image_size=32, batch_size=64, classifier_steps=1500, classifier_width=16, val_images=160,
        subset_images=160, test_subsets=1, grid_images=4,
        steps={"dualvae": 300, "cvae": 300, "fader": 300, "stargan": 300}, configs=CPU_NETS, lams=GRIDS,
        batch_sizes={"stargan": 16}),
    "medium": Budget(
        image_size=32, batch_size=64, classifier_steps=4000, classifier_width=32, val_images=160,
        subset_images=160, test_subsets=5, grid_images=4,
        steps={"dualvae": 1500, "cvae": 1500, "fader": 1500, "stargan": 6000}, configs=CPU_NETS, lams=GRIDS,
        batch_sizes={"stargan": 16}),
    "paper": Budget(
        image_size=64, batch_size=64, classifier_steps=20000, classifier_width=32, val_images=160,
        subset_images=160, test_subsets=5, grid_images=8,
        steps={"dualvae": 50000, "cvae": 50000, "fader": 100000, "stargan": 200000},
        configs={"dualvae": dict(width=32, latent_dim=128), "cvae": dict(width=32, latent_dim=128),
                 "fader": dict(width=16, max_channels=512), "stargan": dict(g_width=64, d_width=64, res_blocks=6)},
        lams=GRIDS, batch_sizes={"stargan": 16}, curve_points=5),
}


# -------------------------------------------------------------------------------------------------------------
# Data and the classifier, prepared once per output folder
# -------------------------------------------------------------------------------------------------------------


def data_file(out: str, budget: Budget) -> str:
    return os.path.join(out, f"data-{budget.image_size}-v{budget.val_images}-t{budget.test_images}.pt")


def first_attributes_root(data: str, out: str, k: int) -> str:
    """A CelebA-format root holding only the first k attributes of `data` (the same images, linked), for the
    models trained on k labels: OUT/celeba-first<k>/."""
    from dualvae.atomic import write_text_atomic
    from dualvae.data.celeba import ATTR_FILE, read_celeba_attributes

    root = os.path.join(out, f"celeba-first{k}")
    os.makedirs(root, exist_ok=True)
    for name in os.listdir(data):
        if name != ATTR_FILE and not os.path.lexists(os.path.join(root, name)):
            os.symlink(os.path.abspath(os.path.join(data, name)), os.path.join(root, name))
    files, names, labels = read_celeba_attributes(data, check_images=False)
    rows = [f"{f} " + " ".join(str(int(v)) for v in row[:k].tolist()) for f, row in zip(files, labels)]
    text = "\n".join([str(len(files)), " ".join(names[:k]), *rows]) + "\n"
    path = os.path.join(root, ATTR_FILE)
    old = None
    if os.path.exists(path):
        with open(path) as f:
            old = f.read()
    if old != text:  # every command calls this; rewrite only a change
        write_text_atomic(path, text)
    return root


def cache_file(out: str, budget: Budget, labels: int | None = None) -> str:
    """DualVAE's HDF5 cache: OUT/data-S.h5, or OUT/data-S-first<k>.h5 for the first k attributes."""
    return os.path.join(out, f"data-{budget.image_size}" + (f"-first{labels}" if labels else "") + ".h5")


def prepare_data(data: str, out: str, budget: Budget, progress: bool = True) -> str:
    """Decode the splits once at the budget's image size: OUT/data-S-vV-tT.pt (uint8 images, 0/1 labels; train,
    and the first V / T images of val and test) and, for DualVAE's trainer, the HDF5 cache OUT/data-S.h5."""
    from dualvae.checkpoint import save_atomic
    from dualvae.data import labels_to_binary, load_split, prepare

    path = data_file(out, budget)
    if not os.path.exists(path):
        splits = {}
        for split, limit in (("train", None), ("val", budget.val_images), ("test", budget.test_images)):
            s = load_split(data, split, image_size=budget.image_size, limit=limit, progress=progress)
            splits[split] = {"images": s.images, "labels": labels_to_binary(s.labels), "filenames": s.filenames}
        splits["attr_names"] = list(s.attr_names)
        save_atomic(splits, path)
    prepare(data, cache_file(out, budget), image_size=budget.image_size, progress=False)
    return path


def load_data(out: str, budget: Budget) -> dict:
    from dualvae.checkpoint import load_checkpoint

    return load_checkpoint(data_file(out, budget))


def classifier_file(out: str, budget_name: str) -> str:
    return os.path.join(out, f"classifier-{budget_name}.pt")


def ensure_classifier(data: str, out: str, budget_name: str, progress: bool = True) -> str:
    """f, trained once per budget on the training split (every label) and shared by every model and seed."""
    from dualvae.classifier import ClassifierConfig, train_classifier
    from dualvae.data import CelebASplit

    budget = BUDGETS[budget_name]
    path = classifier_file(out, budget_name)
    if os.path.exists(path):
        return path
    d = load_data(out, budget)

    def split(name):  # the -1/+1 labels CelebASplit holds
        s = d[name]
        return CelebASplit(s["images"], (s["labels"] * 2 - 1).to(torch.int8), s["filenames"], d["attr_names"])

    cfg = ClassifierConfig(data=data, out=path, steps=budget.classifier_steps, width=budget.classifier_width,
                           image_size=budget.image_size, batch_size=budget.batch_size, seed=0, progress=progress)
    train_classifier(cfg, train_split=split("train"), test_split=split("test"))
    return path


def domain_counts(num_attrs: int) -> list[int]:
    """Table 1's domain counts that exist for a dataset of `num_attrs` attributes (all of them when it has fewer
    than 20)."""
    return [k for k in DOMAIN_COUNTS if k <= num_attrs] or [num_attrs]


# -------------------------------------------------------------------------------------------------------------
# One run: train, choose strengths on val, score test
# -------------------------------------------------------------------------------------------------------------


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
    from dualvae.atomic import write_json_atomic
    from dualvae.checkpoint import save_atomic

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
        from dualvae.training.loop import TrainConfig, list_checkpoints, train

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

        d = load_data(out, budget)
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
            save_atomic(state, os.path.join(rdir, "ckpt", f"step-{step}.pt"))

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


def load_model_file(path: str, kind: str):
    if kind == "dualvae":
        from dualvae.model import DualVAE

        return DualVAE.load(path)
    from dualvae import baselines

    return baselines.load(path)


def choose_strength(score, grid, max_extensions: int = MAX_GRID_EXTENSIONS):
    """The strength with the best score on a grid that brackets it. score(list of strengths) -> {strength:
    value}. While the best sits on an edge of the grid, the grid is extended there (the top doubled, the bottom
    halved) and the new point scored; a single-point grid is extended both ways. Returns (best, {strength: value},
    extensions: the added strengths in order). Stops after `max_extensions` additions (the best is then an edge,
    and `bracketed` in the caller's record says so)."""
    grid = sorted(float(v) for v in grid)
    if not grid or any(v <= 0 for v in grid):
        raise ValueError(f"choose_strength: the grid must hold positive strengths, got {grid}")
    values = dict(score(grid))
    added = []
    while len(added) < max_extensions:
        lo, hi = min(values), max(values)
        best = max(values, key=values.get)
        if is_bracketed(best, values):
            break
        new = [v for v in ((2 * hi,) if best == hi else ()) + ((lo / 2,) if best == lo else ())]
        new = new[:max_extensions - len(added)]
        values.update(score(new))
        added += new
    return max(values, key=values.get), values, added


def is_bracketed(best: float, values: dict) -> bool:
    return len(values) > 1 and min(values) < best < max(values)


def agreement(M: torch.Tensor, f0: torch.Tensor) -> float:
    """How often f's verdict (p > 0.5) on an untouched attribute k != i stays the same after the transfer to
    domain i, over images and domains: near 1 for a model that keeps the face, lower for noise."""
    n = M.shape[-1]
    after = (M + f0[:, None, :]) > 0.5
    before = (f0 > 0.5)[:, None, :].expand_as(after)
    off = ~torch.eye(n, dtype=torch.bool)
    return (after == before)[:, off].float().mean().item()


def _labels_kw(split: dict, n: int, source_labels: bool, limit: int | None = None) -> dict:
    """{"source_labels": the split's first n labels} for the dataset-labels option, else {}."""
    return {"source_labels": split["labels"][:limit, :n].float()} if source_labels else {}


def _scores(M: torch.Tensor, k: int) -> dict:
    from dualvae.cis import scores_from_M

    ts, rs = scores_from_M(M[:, :k, :k])
    return {"ts": ts, "rs": rs, "cis": ts + rs}


@torch.no_grad()
def score_model(model, clf, d: dict, budget: Budget, lams: dict, *, n_dom: int, counts: list[int],
                source_labels: bool = False, subsets: bool = True) -> dict:
    """Test CIS of `model` at each protocol's strength: over the whole test set and per subset, at each domain
    count in `counts` (blocks of the same M), with f's agreement on untouched attributes."""
    from dualvae.cis import conditional_inception_score
    from dualvae.data import to_unit_range

    test = to_unit_range(d["test"]["images"])
    kw = _labels_kw(d["test"], model.config.num_labels, source_labels)
    uniq = sorted(set(lams.values()))
    res = conditional_inception_score(model, clf, test, domains=n_dom, lam=uniq, **kw)
    out = {}
    for proto, lam in lams.items():
        r = res[lam]
        entry = {"lam": lam, "agreement": agreement(r.M, r.f_original)}
        for k in counts:
            entry[str(k)] = _scores(r.M, k)
            if subsets:
                size = budget.subset_images
                per = [_scores(r.M[a:a + size], k)["cis"] for a in range(0, len(test) - size + 1, size)]
                entry[str(k)]["subsets"] = per
                entry[str(k)]["subset_std"] = mean_std(per)[1]
        out[proto] = entry
    return out


@torch.no_grad()
def evaluate_run(out: str, budget_name: str, run: Run, source_labels: bool = False) -> dict:
    """Strengths chosen on val (every domain of the model) per protocol, with ts/rs/CIS at every strength tried
    (the lines of Figs. 4 and 6); test CIS at the chosen strengths (whole test set and per subset); the failure
    detector; and the training curve (test CIS at each kept checkpoint, at the final model's strengths). Written
    to rdir/eval.json (eval-dataset-labels.json with source_labels) and reused when it exists."""
    from dualvae.baselines.common import reconstruction_ratio
    from dualvae.atomic import write_json_atomic
    from dualvae.cis import conditional_inception_score
    from dualvae.classifier import AttributeClassifier
    from dualvae.data import to_unit_range
    from dualvae.training.loop import list_checkpoints

    budget = BUDGETS[budget_name]
    rdir = run_dir(out, budget_name, run)
    path = eval_file(rdir, source_labels)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    d = load_data(out, budget)
    model = load_model_file(os.path.join(rdir, "model.pt"), run.model)
    clf = AttributeClassifier.load(classifier_file(out, budget_name))
    n_dom = model.config.num_labels
    counts = [k for k in domain_counts(len(d["attr_names"])) if k <= n_dom]
    val = to_unit_range(d["val"]["images"])
    val_kw = _labels_kw(d["val"], n_dom, source_labels)

    val_scores = {}

    def score_val(lams):
        if not lams:
            return {}
        res = conditional_inception_score(model, clf, val, domains=n_dom, lam=list(lams), **val_kw)
        for lam, r in res.items():
            val_scores[lam] = {str(k): _scores(r.M, k) for k in counts}
        return {lam: r.cis for lam, r in res.items()}

    best, val_cis, added = choose_strength(score_val, budget.lams[run.model])
    bracketed = is_bracketed(best, val_cis)
    lams = {"paper_default": UNIT[run.model] if UNIT[run.model] is not None else best, "tuned": best}
    if lams["paper_default"] not in val_cis:
        val_cis.update(score_val([lams["paper_default"]]))
    test = score_model(model, clf, d, budget, lams, n_dom=n_dom, counts=counts, source_labels=source_labels)

    # The training curve: the kept checkpoints on the first test subset, at the final model's strengths.
    final_step = budget.steps[run.model]
    curve_col = str(counts[-1])
    d_first = {**d, "test": {k: v[:budget.subset_images] for k, v in d["test"].items() if k != "filenames"}}
    curve = []
    wanted = curve_steps(final_step, budget.curve_points)
    kept = {checkpoint_step(p): p for p in list_checkpoints(os.path.join(rdir, "ckpt"))}
    for step in wanted:
        if step not in kept:
            raise FileNotFoundError(f"{rdir}/ckpt has no checkpoint of step {step} (kept: {sorted(kept)})")
        p = kept[step]
        if step == final_step:
            s = {proto: test[proto][curve_col]["subsets"][0] for proto in PROTOCOLS}
        else:
            r = score_model(load_model_file(p, run.model), clf, d_first, budget, lams, n_dom=n_dom,
                            counts=counts[-1:], source_labels=source_labels, subsets=False)
            s = {proto: r[proto][curve_col]["cis"] for proto in PROTOCOLS}
        curve.append({"step": step, **s})
    ratio = reconstruction_ratio(model, to_unit_range(d["test"]["images"][:64]),
                                 **_labels_kw(d["test"], n_dom, source_labels, limit=64))
    result = {"model": run.model, "missing_ratio": run.missing_ratio, "seed": run.seed, "labels": n_dom,
              "budget": budget_name, "source_labels": "dataset" if source_labels else "predicted",
              "lam": lams, "bracketed": bracketed, "grid_extensions": added,
              "val": {f"{lam:g}": val_scores[lam] for lam in sorted(val_scores)},
              "test": test, "curve": curve, "curve_domains": counts[-1],
              "reconstruction_ratio": ratio, "failed": ratio > FAILED_RATIO, "domain_counts": counts,
              "num_val_images": len(val), "num_test_images": len(d["test"]["images"]),
              "subset_images": budget.subset_images}
    write_json_atomic(path, result)
    return result


def checkpoint_step(path: str) -> int:
    from dualvae.training.loop import CKPT_NAME

    return int(CKPT_NAME.search(os.path.basename(path)).group(1))


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


def eval_file(rdir: str, source_labels: bool) -> str:
    return os.path.join(rdir, "eval-dataset-labels.json" if source_labels else "eval.json")


def _finished(out: str, budget_name: str, run: Run, source_labels: bool) -> bool:
    return os.path.exists(eval_file(run_dir(out, budget_name, run), source_labels))


def ensure_runs(data: str, out: str, budget_name: str, runs: list[Run], jobs: int = 1, progress: bool = True,
                source_labels: bool = False) -> dict[Run, dict]:
    """Train and evaluate every run not in the cache yet, `jobs` at a time (one thread each when jobs > 1);
    prints how many are cached and which remain."""
    budget = BUDGETS[budget_name]
    os.makedirs(out, exist_ok=True)
    prepare_data(data, out, budget, progress=progress)
    from dualvae.data import prepare

    for k in sorted({r.labels for r in runs if r.labels}):
        prepare(first_attributes_root(data, out, k), cache_file(out, budget, k), image_size=budget.image_size,
                progress=False)
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


# -------------------------------------------------------------------------------------------------------------
# Which runs each command needs
# -------------------------------------------------------------------------------------------------------------


def table1_runs(seeds: int, num_attrs: int = 40) -> list[Run]:
    runs = [Run(m, 0.0, s) for m in MODELS for s in range(seeds)]
    if num_attrs >= 40:  # models trained on the first 20 attributes: Table 1's other 20-domain column
        runs += [Run(m, 0.0, s, labels=20) for m in MODELS for s in range(seeds)]
    return runs


def fig6_runs(seeds: int) -> list[Run]:
    return ([Run("dualvae", s, seed) for s in MISSING_RATIOS for seed in range(seeds)]
            + [Run("stargan", s, seed) for s in (0.0, 0.9) for seed in range(seeds)])


# -------------------------------------------------------------------------------------------------------------
# Table 1, Figures 4-6, training curves, claims
# -------------------------------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def _columns(results: dict[Run, dict]) -> list[str]:
    """Table 1's columns: "20" / "40" (blocks of the all-attribute models) and "20_trained" (the -n20 runs)."""
    r0 = next(r for run, r in results.items() if run.labels is None)
    cols = [str(k) for k in r0["domain_counts"]]
    if any(run.labels == 20 for run in results):
        cols.insert(cols.index("20") + 1, "20_trained")
    return cols


def _cell(results: dict[Run, dict], model: str, seeds: int, proto: str, col: str) -> dict:
    labels, key = (20, "20") if col == "20_trained" else (None, col)
    rs = [results[Run(model, 0.0, s, labels=labels)] for s in range(seeds)]
    vals = [r["test"][proto][key] for r in rs]
    cis = [v["cis"] for v in vals]
    mean, std = mean_std(cis)
    cell = {"mean": mean, "std_seeds": std, "std_subsets": mean_std([v["subset_std"] for v in vals])[0],
            "per_seed": cis, "ts": mean_std([v["ts"] for v in vals])[0], "rs": mean_std([v["rs"] for v in vals])[0],
            "lam": [r["lam"][proto] for r in rs], "failed": [r["failed"] for r in rs],
            "bracketed": [r["bracketed"] for r in rs]}
    if key in ("20", "40"):
        cell["paper"] = dict(zip(("mean", "std"), PAPER_TABLE1[model][int(key)]))
    return cell


COLUMN_TITLES = {"20": "20 domains (block)", "20_trained": "20 domains (trained on 20)", "40": "40 domains"}


def make_table1(out: str, results: dict[Run, dict], seeds: int, budget_name: str) -> dict:
    from dualvae.atomic import write_json_atomic, write_text_atomic

    cols = _columns(results)
    doc = {"budget": budget_name, "seeds": seeds, "columns": cols}
    r0 = results[Run("dualvae", 0.0, 0)]
    doc.update(test_images=r0["num_test_images"], subset_images=r0["subset_images"],
               val_images=r0["num_val_images"], source_labels=r0["source_labels"])
    lines = [f"Table 1: test CIS, mean over {seeds} seeds ± std over seeds [std over disjoint "
             f"{r0['subset_images']}-image test subsets], `--budget {budget_name}`; {r0['num_test_images']} test "
             f"images; strengths chosen on {r0['num_val_images']} validation images. Paper: CelebA with a "
             f"fine-tuned Inception-v3 as f (mean ± std).", ""]
    for proto in PROTOCOLS:
        table = {m: {c: _cell(results, m, seeds, proto, c) for c in cols} for m in MODELS}
        doc[proto] = table
        head = [COLUMN_TITLES.get(c, f"{c} domains") for c in cols]
        paper_cols = [c for c in cols if c in ("20", "40")]
        header = ["Method", *head, *(f"paper {c}" for c in paper_cols), "strength (per seed)"]
        lines += [f"**{proto}** ({PROTOCOL_TITLES[proto]})", "", "| " + " | ".join(header) + " |",
                  "|---" * len(header) + "|"]
        for m in MODELS:
            cells = []
            for c in cols:
                t = table[m][c]
                best = max(MODELS, key=lambda k: table[k][c]["mean"]) == m
                txt = f"{t['mean']:+.3f} ± {t['std_seeds']:.3f} [{t['std_subsets']:.3f}]"
                if any(t["failed"]):
                    txt += " (failed: " + ",".join(str(s) for s, f in enumerate(t["failed"]) if f) + ")"
                cells.append(f"**{txt}**" if best else txt)
            p = PAPER_TABLE1[m]
            lams = table[m][cols[-1]]["lam"]
            row = [LABELS[m], *cells, *(f"{p[int(c)][0]:+.3f} ± {p[int(c)][1]:.3f}" for c in paper_cols),
                   ", ".join(f"{v:g}" for v in lams)]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    write_json_atomic(os.path.join(out, "table1.json"), doc)
    write_text_atomic(os.path.join(out, "table1.md"), "\n".join(lines))
    print("\n".join(lines))
    return doc


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def make_fig4(out: str, results: dict[Run, dict], seeds: int) -> str:
    """rs on x, ts on y, one panel per protocol; one colour per model: each seed's point at its chosen strength
    (filled), and seed 0's validation sweep over every strength tried (a faint line)."""
    plt = _plt()
    col = str(results[Run("dualvae", 0.0, 0)]["domain_counts"][-1])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5), sharex=True, sharey=True)
    for ax, proto in zip(axes, PROTOCOLS):
        for m in MODELS:
            r0 = results[Run(m, 0.0, 0)]
            lams = sorted(r0["val"], key=float)
            if len(lams) > 1:
                ax.plot([r0["val"][l][col]["rs"] for l in lams], [r0["val"][l][col]["ts"] for l in lams],
                        "-", color=COLORS[m], alpha=0.3)
            pts = [results[Run(m, 0.0, s)]["test"][proto][col] for s in range(seeds)]
            ax.scatter([p["rs"] for p in pts], [p["ts"] for p in pts], color=COLORS[m], label=LABELS[m], zorder=3)
        ax.set_xlabel("rs (reconstruction score)")
        ax.set_title(f"{PROTOCOL_TITLES[proto]}", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("ts (transfer score)")
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Fig. 4: {col} domains (points: seeds on the test split; lines: seed 0 over strengths, "
                 f"validation)", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out, "fig4.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def make_curves(out: str, results: dict[Run, dict], seeds: int) -> str:
    """Test CIS at each kept checkpoint of the s = 0 runs (mean ± std over seeds), one panel per protocol."""
    plt = _plt()
    r0 = results[Run("dualvae", 0.0, 0)]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, proto in zip(axes, PROTOCOLS):
        for m in MODELS:
            curves = [results[Run(m, 0.0, s)]["curve"] for s in range(seeds)]
            steps = [c["step"] for c in curves[0]]
            total = steps[-1]
            ms = [mean_std([c[k][proto] for c in curves]) for k in range(len(steps))]
            ax.errorbar([s / total for s in steps], [v[0] for v in ms], yerr=[v[1] for v in ms], marker="o",
                        color=COLORS[m], label=f"{LABELS[m]} ({total} steps)", capsize=3)
        ax.set_xlabel("fraction of training")
        ax.set_title(PROTOCOL_TITLES[proto], fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"test CIS, {r0['curve_domains']} domains (first subset)")
    axes[0].legend(fontsize=7)
    fig.suptitle("Training curves: CIS at the final model's strengths, mean ± std over seeds", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out, "curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _label_image(text: str, width: int, height: int = 14):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), "white")
    ImageDraw.Draw(img).text((2, 1), text, fill="black")
    return img


def stack_pngs(paths_titles: list[tuple[str, str]], path: str) -> str:
    """Stack PNGs vertically, each under a title line."""
    from PIL import Image

    imgs = [(Image.open(p).convert("RGB"), t) for p, t in paths_titles]
    width = max(i.width for i, _ in imgs)
    height = sum(i.height + 14 for i, _ in imgs)
    sheet = Image.new("RGB", (width, height), "white")
    y = 0
    for img, title in imgs:
        sheet.paste(_label_image(title, width), (0, y))
        sheet.paste(img, (0, y + 14))
        y += img.height + 14
    # An adaptive 256-colour palette: the grids stay well under 1 MB (noisy decoded tiles compress badly as RGB).
    sheet.convert("P", palette=Image.ADAPTIVE, colors=256).save(path, optimize=True)
    return path


@torch.no_grad()
def transfer_tiles(model, images: torch.Tensor, domains: list[int], lam: float) -> torch.Tensor:
    """(N, 1 + len(domains), C, H, W): each image, then its transfer to each domain."""
    return torch.cat([images[:, None], model.transfer_all(images, domains, lam)], 1)


def make_fig5(out: str, budget_name: str, results: dict[Run, dict]) -> str:
    """Transfer grids, every domain, every model (seed 0, tuned strength), the same test images."""
    from dualvae.data import to_unit_range
    from dualvae.transfer import save_grid_png

    budget = BUDGETS[budget_name]
    d = load_data(out, budget)
    images = to_unit_range(d["test"]["images"][:budget.grid_images])
    names = d["attr_names"]
    parts = []
    for i, m in enumerate(MODELS):
        run = Run(m, 0.0, 0)
        lam = results[run]["lam"]["tuned"]
        model = load_model_file(os.path.join(run_dir(out, budget_name, run), "model.pt"), m)
        tiles = transfer_tiles(model, images, list(range(len(names))), lam)
        p = os.path.join(out, f"fig5_{m}.png")
        save_grid_png(p, tiles, ["original", *names] if i == 0 else None, scale=max(1, 32 // budget.image_size))
        parts.append((p, f"{LABELS[m]} (seed 0, tuned strength {lam:g})"))
    path = stack_pngs(parts, os.path.join(out, "fig5.png"))
    for p, _ in parts:
        os.remove(p)
    return path


def make_fig6(out: str, budget_name: str, results: dict[Run, dict], seeds: int) -> dict:
    """DualVAE at each missing ratio s over its strength sweep (seed means, validation), StarGAN at s = 0
    and 0.9 at both protocols' strengths; a JSON of CIS per s and protocol; and a grid: test images transferred
    to blond hair, eyeglasses and a mustache by DualVAE and StarGAN trained at s = 0.9 (the paper's Fig. 6)."""
    from dualvae.atomic import write_json_atomic
    from dualvae.data import to_unit_range
    from dualvae.transfer import save_grid_png

    budget = BUDGETS[budget_name]
    col = str(results[Run("dualvae", 0.0, 0)]["domain_counts"][-1])
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    cmap = plt.get_cmap("viridis")
    summary = {"dualvae": {}, "stargan": {}}

    def per_protocol(rs_):
        return {proto: {"cis": mean_std([r["test"][proto][col]["cis"] for r in rs_]),
                        "cis_per_seed": [r["test"][proto][col]["cis"] for r in rs_],
                        "std_subsets": mean_std([r["test"][proto][col]["subset_std"] for r in rs_])[0],
                        "lam": [r["lam"][proto] for r in rs_]} for proto in PROTOCOLS}

    for k, s in enumerate(MISSING_RATIOS):
        rs_ = [results[Run("dualvae", s, seed)] for seed in range(seeds)]
        lams = sorted(set.intersection(*(set(r["val"]) for r in rs_)), key=float)
        pts = [(mean_std([r["val"][l][col]["rs"] for r in rs_])[0],
                mean_std([r["val"][l][col]["ts"] for r in rs_])[0]) for l in lams]
        color = cmap(k / max(1, len(MISSING_RATIOS) - 1))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "-", color=color, alpha=0.6, label=f"DualVAE s={s:g}")
        chosen = [r["test"]["tuned"][col] for r in rs_]  # the test points at each seed's chosen lambda
        ax.scatter([c["rs"] for c in chosen], [c["ts"] for c in chosen], color=color, zorder=3, s=25)
        for l, p in zip(lams, pts):
            ax.annotate(f"{float(l):g}", p, fontsize=6, xytext=(2, 2), textcoords="offset points")
        summary["dualvae"][f"{s:g}"] = {**per_protocol(rs_),
                                        "by_lam": {l: {"ts": p[1], "rs": p[0]} for l, p in zip(lams, pts)},
                                        "failed": [r["failed"] for r in rs_],
                                        "reconstruction_ratio": mean_std([r["reconstruction_ratio"] for r in rs_])}
    for s, marker in ((0.0, "s"), (0.9, "X")):
        rs_ = [results[Run("stargan", s, seed)] for seed in range(seeds)]
        for proto, fill in zip(PROTOCOLS, ("none", COLORS["stargan"])):
            pts = [r["test"][proto][col] for r in rs_]
            ax.scatter([p["rs"] for p in pts], [p["ts"] for p in pts], marker=marker, s=50, zorder=3,
                       edgecolors=COLORS["stargan"], facecolors=fill, label=f"StarGAN s={s:g} ({proto})")
        summary["stargan"][f"{s:g}"] = {**per_protocol(rs_), "failed": [r["failed"] for r in rs_],
                                        "reconstruction_ratio": mean_std([r["reconstruction_ratio"] for r in rs_])}
    ax.set_xlabel("rs (reconstruction score)")
    ax.set_ylabel("ts (transfer score)")
    ax.set_title(f"Fig. 6: missing ratio s, {col} domains\nlines: λ sweep on validation (seed means); "
                 f"points: test at the chosen strength (seeds)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "fig6.png"), dpi=100)
    plt.close(fig)
    d = load_data(out, budget)
    write_json_atomic(os.path.join(out, "fig6.json"), {
        "seeds": seeds, "missing_ratios": list(MISSING_RATIOS), "domains": int(col),
        "train_images": len(d["train"]["images"]), "summary": summary,
        "note": "cis: (mean, std over seeds) of test CIS at each protocol's strength; std_subsets: mean over seeds "
                "of the std over test subsets; by_lam: seed means on the validation split"})
    names = d["attr_names"]
    doms = [names.index(a) for a in FIG6_DOMAINS if a in names] or list(range(min(3, len(names))))
    images = to_unit_range(d["test"]["images"][:budget.grid_images])
    parts = []
    for i, m in enumerate(("dualvae", "stargan")):
        run = Run(m, 0.9, 0)
        p = os.path.join(out, f"fig6_{m}.png")
        model = load_model_file(os.path.join(run_dir(out, budget_name, run), "model.pt"), m)
        lam = results[run]["lam"]["tuned"]
        tiles = transfer_tiles(model, images, doms, lam)
        save_grid_png(p, tiles, ["original", *[names[j] for j in doms]] if i == 0 else None,
                      scale=max(1, 64 // budget.image_size))
        parts.append((p, f"{LABELS[m]}, s=0.9, tuned strength {lam:g}"))
    stack_pngs(parts, os.path.join(out, "fig6_images.png"))
    for p, _ in parts:
        os.remove(p)
    return summary


def claims(table: dict, fig6: dict | None) -> list[dict]:
    """The paper's claims, each with a verdict per protocol from our numbers. A comparison "holds" when the means
    are in the claimed order; "clearly" when the gap is also larger than twice the larger of the two seed stds.
    StarGAN's failure at s = 0.9 is "untestable" when StarGAN already fails at s = 0 (the detector)."""
    out = []
    for proto in PROTOCOLS:
        t = table[proto]
        for col in table.get("columns", [c for c in t["dualvae"]]):
            for m in ("cvae", "fader", "stargan"):
                a, b = t["dualvae"][col], t[m][col]
                sa, sb = a.get("std_seeds", a.get("std", 0.0)), b.get("std_seeds", b.get("std", 0.0))
                gap, noise = a["mean"] - b["mean"], 2 * max(sa, sb)
                out.append({"protocol": proto, "claim": f"DualVAE > {LABELS[m]} at {COLUMN_TITLES.get(col, col)}",
                            "holds": gap > 0, "clearly": gap > noise, "dualvae": [a["mean"], sa],
                            "other": [b["mean"], sb], "gap": gap,
                            "failed_seeds": {"dualvae": sum(a.get("failed", [])), m: sum(b.get("failed", []))}})
        if not fig6:
            continue
        f = {k: {s: v[proto]["cis"] for s, v in fig6[k].items()} for k in ("dualvae", "stargan")}
        d0, d9 = f["dualvae"]["0"], f["dualvae"]["0.9"]
        out.append({"protocol": proto, "claim": "DualVAE CIS stable up to s = 0.9",
                    "holds": d0[0] - d9[0] <= 2 * max(d0[1], d9[1], 0.005),
                    "rule": "CIS(s=0.9) >= CIS(s=0) - 2 * max(std over seeds, 0.005)", "s0": d0, "s0.9": d9,
                    "s0.5": f["dualvae"]["0.5"], "s0.99": f["dualvae"]["0.99"]})
        g0, g9 = f["stargan"]["0"], f["stargan"]["0.9"]
        failed0 = any(fig6["stargan"]["0"].get("failed", []))
        failed9 = any(fig6["stargan"]["0.9"].get("failed", []))
        drop = g0[0] - g9[0] > 2 * max(g0[1], g9[1], 0.005)
        verdict = "untestable" if failed0 else (drop or failed9)
        out.append({"protocol": proto, "claim": "StarGAN fails at s = 0.9 (CIS drops, or the model fails)",
                    "holds": verdict, "rule": "untestable when a seed fails at s = 0; else CIS(s=0.9) < CIS(s=0) - "
                    "2 * max(std, 0.005), or a seed fails at s = 0.9 (reconstruction ratio > "
                    f"{FAILED_RATIO})", "s0": g0, "s0.9": g9, "failed_s0": fig6["stargan"]["0"].get("failed"),
                    "failed_s0.9": fig6["stargan"]["0.9"].get("failed")})
    return out


def claims_markdown(verdicts: list[dict]) -> str:
    """The claims as a table: one row per claim, one column per protocol (verdict and the numbers behind it)."""
    def fmt(c):
        v = c["holds"]
        word = v if isinstance(v, str) else ("holds" if v else "does not hold")
        if "gap" in c:
            word += (" (clearly)" if c["clearly"] else "") + (f": {c['dualvae'][0]:+.3f} ± {c['dualvae'][1]:.3f} vs "
                                                               f"{c['other'][0]:+.3f} ± {c['other'][1]:.3f}")
            failed = {LABELS[k]: v for k, v in c.get("failed_seeds", {}).items() if v}
            if failed:
                word += "; failed seeds: " + ", ".join(f"{k} {v}" for k, v in failed.items())
        else:
            word += f": s=0 {c['s0'][0]:+.3f} ± {c['s0'][1]:.3f}, s=0.9 {c['s0.9'][0]:+.3f} ± {c['s0.9'][1]:.3f}"
        return word

    rows, order = {}, []
    for c in verdicts:
        if c["claim"] not in rows:
            rows[c["claim"]] = {}
            order.append(c["claim"])
        rows[c["claim"]][c["protocol"]] = fmt(c)
    lines = ["| claim | " + " | ".join(PROTOCOLS) + " |", "|---" * (1 + len(PROTOCOLS)) + "|"]
    lines += [f"| {k} | " + " | ".join(rows[k].get(p, "") for p in PROTOCOLS) + " |" for k in order]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------------------------
# Command line
# -------------------------------------------------------------------------------------------------------------


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
