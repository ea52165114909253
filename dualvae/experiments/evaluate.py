"""One trained run scored: each strength chosen on the validation split (a grid extended until it brackets the
optimum), test CIS and transfer accuracy at the chosen strengths per protocol and domain count, the failure
checks (reconstruction ratio, realism distance), and the training curve of tuned validation CIS; written to the
run's eval.json."""
from __future__ import annotations

import json
import math
import os

import torch

from dualvae.checkpoint import load_model
from dualvae.experiments.budgets import (BUDGETS, FAILED_RATIO, MAX_GRID_EXTENSIONS, PROTOCOLS, UNIT, Budget,
                                         domain_counts)
from dualvae.experiments.prepare import classifier_file, load_data
from dualvae.experiments.realism import (REALISM_IMAGES, feature_moments, frechet_distance, noise_images,
                                         real_features, transfer_accuracy, transfer_features)
from dualvae.experiments.runs import Run, checkpoint_step, curve_steps, run_dir


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


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
    count in `counts` (blocks of the same M), with f's transfer accuracy and its agreement on untouched
    attributes."""
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
            entry[str(k)]["transfer_accuracy"] = transfer_accuracy(r.M[:, :k, :k], r.f_original[:, :k])
            if subsets:
                size = budget.subset_images
                per = [_scores(r.M[a:a + size], k)["cis"] for a in range(0, len(test) - size + 1, size)]
                entry[str(k)]["subsets"] = per
                entry[str(k)]["subset_std"] = mean_std(per)[1]
        out[proto] = entry
    return out


@torch.no_grad()
def realism(model, clf, d: dict, lams: dict, *, n_dom: int, source_labels: bool = False) -> dict:
    """Fréchet distances in f's pooled features to the real test images: of the transfers of the first
    REALISM_IMAGES test images to every domain at each protocol's strength, of their reconstructions (strength
    0), and of pixel noise with the data's per-pixel statistics (the bar: transfers further from the data than
    that have left it)."""
    from dualvae.data import to_unit_range

    real = to_unit_range(d["test"]["images"])
    ref = feature_moments(real_features(clf, real))
    src = real[:REALISM_IMAGES]
    kw = {}
    if source_labels:
        kw["source_labels"] = d["test"]["labels"][:REALISM_IMAGES, :model.config.num_labels].float()
    dist = {}
    for lam in sorted(set(lams.values())) + [0.0]:
        feats = transfer_features(model, clf, src, lam, n_dom if lam else 1, **kw)
        dist[lam] = frechet_distance(feature_moments(feats), ref)
    noise = frechet_distance(feature_moments(real_features(clf, noise_images(real, len(real)))), ref)
    return {"fd": {proto: dist[lam] for proto, lam in lams.items()}, "fd_reconstruction": dist[0.0],
            "fd_noise": noise, "source_images": len(src), "real_images": len(real)}


def _checkpoint_scores(score_val, grid: list[float], unit: float | None) -> dict:
    """Tuned validation CIS of one checkpoint (its strength chosen on a grid extended until it brackets the
    optimum) and the validation CIS at the unit strength."""
    best, values, _ = choose_strength(score_val, grid)
    if unit is not None and unit not in values:
        values.update(score_val([unit]))
    return {"tuned": values[best], "lam": best, "unit_strength": values[best if unit is None else unit]}


@torch.no_grad()
def evaluate_run(out: str, budget_name: str, run: Run, source_labels: bool = False) -> dict:
    """Strengths chosen on val (every domain of the model) per protocol, with ts/rs/CIS at every strength tried
    (the lines of Figs. 4 and 6); test CIS, transfer accuracy and agreement at the chosen strengths (whole test
    set and per subset); the failure checks (reconstruction ratio and realism distance); and the training curve:
    at every kept checkpoint the tuned validation CIS (its own strength chosen) and the CIS at the unit strength.
    Written to rdir/eval.json (eval-dataset-labels.json with source_labels) and reused when it exists."""
    from dualvae.baselines.common import reconstruction_ratio
    from dualvae.data.atomic import write_json_atomic
    from dualvae.cis import conditional_inception_score
    from dualvae.classifier import AttributeClassifier
    from dualvae.data import to_unit_range
    from dualvae.training import list_checkpoints

    budget = BUDGETS[budget_name]
    rdir = run_dir(out, budget_name, run)
    path = eval_file(rdir, source_labels)
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    d = load_data(out, budget, ("val", "test"))
    model = load_model(os.path.join(rdir, "model.pt"), run.model)
    clf = AttributeClassifier.load(classifier_file(out, budget_name))
    n_dom = model.config.num_labels
    counts = [k for k in domain_counts(len(d["attr_names"])) if k <= n_dom]
    val = to_unit_range(d["val"]["images"])
    val_kw = _labels_kw(d["val"], n_dom, source_labels)

    def val_scorer(m, record=None):
        def score(lams):
            if not lams:
                return {}
            res = conditional_inception_score(m, clf, val, domains=n_dom, lam=list(lams), **val_kw)
            if record is not None:
                for lam, r in res.items():
                    record[lam] = {str(k): _scores(r.M, k) for k in counts}
            return {lam: _scores(r.M, counts[-1])["cis"] for lam, r in res.items()}
        return score

    val_scores = {}
    score_val = val_scorer(model, val_scores)
    best, val_cis, added = choose_strength(score_val, budget.lams[run.model])
    bracketed = is_bracketed(best, val_cis)
    unit = UNIT[run.model]
    lams = {"tuned": best, "unit_strength": unit if unit is not None else best}
    if lams["unit_strength"] not in val_cis:
        val_cis.update(score_val([lams["unit_strength"]]))
    test = score_model(model, clf, d, budget, lams, n_dom=n_dom, counts=counts, source_labels=source_labels)
    real = realism(model, clf, d, lams, n_dom=n_dom, source_labels=source_labels)

    final_step = budget.steps[run.model]
    curve = []
    kept = {checkpoint_step(p): p for p in list_checkpoints(os.path.join(rdir, "ckpt"))}
    for step in curve_steps(final_step, budget.curve_points):
        if step == final_step:
            point = {"tuned": val_cis[best], "lam": best, "unit_strength": val_cis[lams["unit_strength"]]}
        elif step in kept:
            # Each checkpoint at its own best strength, searched from around the final model's.
            point = _checkpoint_scores(val_scorer(load_model(kept[step], run.model)), [best / 2, best, 2 * best],
                                       unit)
        else:
            raise FileNotFoundError(f"{rdir}/ckpt has no checkpoint of step {step} (kept: {sorted(kept)})")
        curve.append({"step": step, **point})
    ratio = reconstruction_ratio(model, to_unit_range(d["test"]["images"][:64]),
                                 **_labels_kw(d["test"], n_dom, source_labels, limit=64))
    failed = {proto: ratio > FAILED_RATIO or real["fd"][proto] > real["fd_noise"] for proto in PROTOCOLS}
    result = {"model": run.model, "missing_ratio": run.missing_ratio, "seed": run.seed, "labels": n_dom,
              "budget": budget_name, "source_labels": "dataset" if source_labels else "predicted",
              "lam": lams, "bracketed": bracketed, "grid_extensions": added,
              "val": {f"{lam:g}": val_scores[lam] for lam in sorted(val_scores)},
              "test": test, "realism": real, "curve": curve, "curve_domains": counts[-1],
              "curve_split": "val", "reconstruction_ratio": ratio, "failed_by_protocol": failed,
              "failed": any(failed.values()), "domain_counts": counts, "num_val_images": len(val),
              "num_test_images": len(d["test"]["images"]), "subset_images": budget.subset_images}
    write_json_atomic(path, result)
    return result


def eval_file(rdir: str, source_labels: bool) -> str:
    return os.path.join(rdir, "eval-dataset-labels.json" if source_labels else "eval.json")
