"""The paper's experiments (Sec. 5) as commands: Table 1, Figures 4, 5 and 6.

    dualvae experiment table1|fig4|fig5|fig6|all --data DIR --out DIR [--seeds 3] [--budget tiny|small|paper]

Every command works from one cache of trained runs in OUT/runs/<model>-s<missing ratio>-seed<seed>/ (model.pt and
eval.json), so table1, fig4 and fig5 share the same runs and a second command trains nothing it already has.
One run = train the model on the training split with the missing-label mask I = draw_label_mask(seed, s), choose
λ by CIS on the validation split (40 domains), then score the test split at every λ candidate (the Fig. 4/6
points) in one pass, and report the val-chosen λ's CIS at 40 domains and at 20 (the first 20 of CelebA's order:
the top-left 20 x 20 block of the same M). One classifier f, trained once (OUT/classifier.pt, on the training
split with every label), scores every model.

Budgets: `tiny` (CI: seconds), `small` (2 cores, no GPU, generated faces: tiny networks at 32x32, hundreds of
steps; under 45 min for 3 seeds with --jobs 2), `paper` (the full protocol: 64x64, the original architectures,
long training; for a GPU and real CelebA).
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
MISSING_RATIOS = (0.0, 0.5, 0.9, 0.99)  # Fig. 6
# Table 1 of the paper (CelebA, Inception-v3 f): mean and std of CIS over repeated runs.
PAPER_TABLE1 = {"cvae": {20: (-0.112, 0.007), 40: (-0.152, 0.006)},
                "fader": {20: (0.075, 0.008), 40: (-0.002, 0.003)},
                "stargan": {20: (0.068, 0.188), 40: (0.050, 0.032)},
                "dualvae": {20: (0.163, 0.025), 40: (0.140, 0.020)}}
FIG6_DOMAINS = ("Blond_Hair", "Eyeglasses", "Mustache")  # the attributes of the paper's Fig. 6 images


@dataclass
class Budget:
    image_size: int
    batch_size: int
    classifier_steps: int
    classifier_width: int
    val_images: int
    test_images: int
    grid_images: int
    steps: dict  # model -> training steps (StarGAN: discriminator steps; G every n_critic-th)
    configs: dict  # model -> network config (keyword arguments)
    lams: dict  # model -> λ candidates (StarGAN ignores λ: one)
    batch_sizes: dict = field(default_factory=dict)  # per-model batch size where it differs


BUDGETS = {
    "tiny": Budget(
        image_size=16, batch_size=8, classifier_steps=3, classifier_width=8, val_images=4, test_images=4,
        grid_images=2,
        steps={"dualvae": 3, "cvae": 3, "fader": 3, "stargan": 5},
        configs={"dualvae": dict(width=8, latent_dim=8), "cvae": dict(width=8, latent_dim=8),
                 "fader": dict(width=8, max_channels=32, ramp_steps=2),
                 "stargan": dict(g_width=8, d_width=8, res_blocks=1)},
        lams={"dualvae": [1.0, 4.0], "cvae": [1.0, 2.0], "fader": [1.0, 2.0], "stargan": [1.0]}),
    "small": Budget(
        image_size=32, batch_size=64, classifier_steps=1500, classifier_width=16, val_images=32, test_images=160,
        grid_images=4,
        steps={"dualvae": 300, "cvae": 300, "fader": 300, "stargan": 300},
        configs={"dualvae": dict(width=16, latent_dim=64), "cvae": dict(width=16, latent_dim=64),
                 "fader": dict(width=8, max_channels=128, ramp_steps=150, lambda_lat_dis=1e-3),
                 "stargan": dict(g_width=12, d_width=16, res_blocks=2)},
        lams={"dualvae": [16.0, 32.0, 64.0, 128.0, 256.0], "cvae": [1.0, 2.0, 4.0, 8.0, 16.0],
              "fader": [1.0, 2.0, 4.0, 8.0, 16.0], "stargan": [1.0]},
        batch_sizes={"stargan": 16}),
    "paper": Budget(
        image_size=64, batch_size=64, classifier_steps=20000, classifier_width=32, val_images=160,
        test_images=160, grid_images=8,
        steps={"dualvae": 50000, "cvae": 50000, "fader": 100000, "stargan": 200000},
        configs={"dualvae": dict(width=32, latent_dim=128), "cvae": dict(width=32, latent_dim=128),
                 "fader": dict(width=16, max_channels=512, ramp_steps=50000, lambda_lat_dis=1e-4),
                 "stargan": dict(g_width=64, d_width=64, res_blocks=6)},
        lams={"dualvae": [8.0, 16.0, 24.0, 32.0, 48.0, 64.0], "cvae": [1.0, 2.0, 4.0, 8.0],
              "fader": [1.0, 2.0, 4.0, 8.0], "stargan": [1.0]},
        batch_sizes={"stargan": 16}),
}


# -------------------------------------------------------------------------------------------------------------
# Data and the classifier, prepared once per output folder
# -------------------------------------------------------------------------------------------------------------


def data_file(out: str, budget: Budget) -> str:
    return os.path.join(out, f"data-{budget.image_size}.pt")


def prepare_data(data: str, out: str, budget: Budget, progress: bool = True) -> str:
    """Decode the splits once at the budget's image size: OUT/data-S.pt (uint8 images, 0/1 labels; train, and
    the first val_images / test_images of val and test) and, for DualVAE's trainer, the HDF5 cache OUT/data-S.h5."""
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
    cache = os.path.join(out, f"data-{budget.image_size}.h5")
    prepare(data, cache, image_size=budget.image_size, progress=False)
    return path


def load_data(out: str, budget: Budget) -> dict:
    from dualvae.checkpoint import load_checkpoint

    return load_checkpoint(data_file(out, budget))


def ensure_classifier(data: str, out: str, budget: Budget, progress: bool = True) -> str:
    """f, trained once on the training split (every label) and shared by every model and seed."""
    from dualvae.classifier import ClassifierConfig, train_classifier
    from dualvae.data import CelebASplit

    path = os.path.join(out, "classifier.pt")
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


# -------------------------------------------------------------------------------------------------------------
# One run: train, choose λ on val, score test
# -------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    model: str
    missing_ratio: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.model}-s{self.missing_ratio:g}-seed{self.seed}"


def run_dir(out: str, run: Run) -> str:
    return os.path.join(out, "runs", run.name)


def train_run(data: str, out: str, budget: Budget, run: Run, progress: bool = False) -> str:
    """Train one model; returns its checkpoint (reused when it exists)."""
    from dualvae.checkpoint import save_atomic, write_json_atomic

    rdir = run_dir(out, run)
    path = os.path.join(rdir, "model.pt")
    if os.path.exists(path):
        return path
    steps = budget.steps[run.model]
    bs = budget.batch_sizes.get(run.model, budget.batch_size)
    if run.model == "dualvae":
        from dualvae.train import TrainConfig, train

        cfg = budget.configs["dualvae"]
        return train(TrainConfig(data=os.path.join(out, f"data-{budget.image_size}.h5"), out=rdir, steps=steps,
                                 batch_size=bs, width=cfg["width"], latent_dim=cfg["latent_dim"],
                                 image_size=budget.image_size, missing_ratio=run.missing_ratio, seed=run.seed,
                                 ckpt_every=max(steps, 1), progress=progress))
    from dualvae import baselines
    from dualvae.data import draw_label_mask

    d = load_data(out, budget)
    images, labels = d["train"]["images"], d["train"]["labels"]
    torch.manual_seed(run.seed)
    model = baselines.build(run.model, image_size=budget.image_size, num_labels=labels.shape[1],
                            **budget.configs[run.model])
    model.attr_names = d["attr_names"]
    # The same indicator I as DualVAE's trainer draws for this (seed, s): over the whole training split.
    mask = draw_label_mask(tuple(labels.shape), run.missing_ratio, run.seed) if run.missing_ratio > 0 else None
    t0 = time.time()
    rows = baselines.fit(model, images, labels, mask, steps=steps, batch_size=bs, seed=run.seed, progress=progress)
    state = model.checkpoint_state()
    state.update(step=steps, train_seconds=round(time.time() - t0, 1))
    write_json_atomic(os.path.join(rdir, "log.json"), rows)
    return save_atomic(state, path)


def load_run_model(out: str, run: Run):
    path = os.path.join(run_dir(out, run), "model.pt")
    if run.model == "dualvae":
        from dualvae.model import DualVAE

        return DualVAE.load(path)
    from dualvae import baselines

    return baselines.load(path)


@torch.no_grad()
def output_spread(model, images: torch.Tensor, lam: float) -> float:
    """How different the transfers of different images are, relative to the originals: the mean over domains
    and pixels of the std across images of x^(i), over the same for x. About 0 when a model outputs the same
    image whatever the input (the paper's StarGAN at s = 0.9)."""
    x_t = model.transfer_all(images, list(range(model.config.num_labels)), lam)
    return (x_t.std(0).mean() / images.std(0).mean().clamp_min(1e-8)).item()


@torch.no_grad()
def evaluate_run(out: str, budget: Budget, run: Run) -> dict:
    """λ chosen on val (40 domains); test CIS at every λ candidate (40 and 20 domains). Reused when it exists."""
    from dualvae.checkpoint import write_json_atomic
    from dualvae.cis import conditional_inception_score, scores_from_M
    from dualvae.classifier import AttributeClassifier
    from dualvae.data import to_unit_range

    path = os.path.join(run_dir(out, run), "eval.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    d = load_data(out, budget)
    model = load_run_model(out, run)
    clf = AttributeClassifier.load(os.path.join(out, "classifier.pt"))
    lams = budget.lams[run.model]
    val, test = to_unit_range(d["val"]["images"]), to_unit_range(d["test"]["images"])
    n = len(d["attr_names"])
    sweep_val = conditional_inception_score(model, clf, val, domains=n, lam=list(lams), keep_M=False)
    best = max(sweep_val, key=lambda lam: sweep_val[lam].cis)
    sweep_test = conditional_inception_score(model, clf, test, domains=n, lam=list(lams))
    test_by_lam = {}
    for lam, r in sweep_test.items():
        ts20, rs20 = scores_from_M(r.M[:, :20, :20])
        test_by_lam[str(lam)] = {"40": {"ts": r.ts, "rs": r.rs, "cis": r.cis},
                                 "20": {"ts": ts20, "rs": rs20, "cis": ts20 + rs20}}
    result = {"model": run.model, "missing_ratio": run.missing_ratio, "seed": run.seed, "lam": best,
              "val": {str(lam): {"ts": r.ts, "rs": r.rs, "cis": r.cis} for lam, r in sweep_val.items()},
              "test": test_by_lam, "chosen": test_by_lam[str(best)],
              "output_spread": output_spread(model, test[:16], best),
              "num_val_images": len(val), "num_test_images": len(test)}
    write_json_atomic(path, result)
    return result


def do_run(args) -> dict:
    """Train (if needed) and evaluate one run; the worker of the run pool."""
    data, out, budget_name, run, threads = args
    if threads:
        torch.set_num_threads(threads)
    budget = BUDGETS[budget_name]
    t0 = time.time()
    train_run(data, out, budget, run)
    res = evaluate_run(out, budget, run)
    res.setdefault("seconds", round(time.time() - t0, 1))
    return res


def ensure_runs(data: str, out: str, budget_name: str, runs: list[Run], jobs: int = 1,
                progress: bool = True) -> dict[Run, dict]:
    """Train and evaluate every run not in the cache yet, `jobs` at a time (one thread each when jobs > 1)."""
    budget = BUDGETS[budget_name]
    os.makedirs(out, exist_ok=True)
    prepare_data(data, out, budget, progress=progress)
    ensure_classifier(data, out, budget, progress=progress)
    # StarGAN (the costliest per step) first, so that the last runs to finish are short ones.
    todo = sorted(set(runs), key=lambda r: (r.model != "stargan", -budget.steps[r.model], r.model,
                                            r.missing_ratio, r.seed))
    threads = 1 if jobs > 1 else None
    tasks = [(data, out, budget_name, r, threads) for r in todo]
    results = {}
    bar = tqdm(total=len(tasks), desc=f"runs ({budget_name} budget)", unit="run", disable=not progress,
               dynamic_ncols=True)
    if jobs > 1 and len(tasks) > 1:
        with multiprocessing.get_context("spawn").Pool(jobs) as pool:
            for run, res in zip(todo, pool.imap(do_run, tasks)):
                results[run] = res
                bar.set_postfix_str(f"{run.name}: CIS40 {res['chosen']['40']['cis']:+.3f}")
                bar.update()
    else:
        for task in tasks:
            res = do_run(task)
            results[task[3]] = res
            bar.set_postfix_str(f"{task[3].name}: CIS40 {res['chosen']['40']['cis']:+.3f}")
            bar.update()
    bar.close()
    return results


# -------------------------------------------------------------------------------------------------------------
# Table 1, Figures 4-6
# -------------------------------------------------------------------------------------------------------------


def mean_std(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    sd = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return m, sd


def table1_runs(seeds: int) -> list[Run]:
    return [Run(m, 0.0, s) for m in MODELS for s in range(seeds)]


def fig6_runs(seeds: int) -> list[Run]:
    return ([Run("dualvae", s, seed) for s in MISSING_RATIOS for seed in range(seeds)]
            + [Run("stargan", s, seed) for s in (0.0, 0.9) for seed in range(seeds)])


def make_table1(out: str, results: dict[Run, dict], seeds: int, budget_name: str) -> dict:
    from dualvae.checkpoint import write_json_atomic, write_text_atomic

    table = {}
    for m in MODELS:
        rs = [results[Run(m, 0.0, s)] for s in range(seeds)]
        table[m] = {}
        for nd in ("20", "40"):
            cis = [r["chosen"][nd]["cis"] for r in rs]
            mean, std = mean_std(cis)
            table[m][nd] = {"mean": mean, "std": std, "per_seed": cis,
                            "ts": mean_std([r["chosen"][nd]["ts"] for r in rs])[0],
                            "rs": mean_std([r["chosen"][nd]["rs"] for r in rs])[0],
                            "paper": dict(zip(("mean", "std"), PAPER_TABLE1[m][int(nd)]))}
        table[m]["lam"] = [r["lam"] for r in rs]
    n_img = results[Run("dualvae", 0.0, 0)]["num_test_images"]
    doc = {"budget": budget_name, "seeds": seeds, "test_images": n_img, "table": table,
           "note": "CIS of the λ chosen on val (per run); mean ± std over seeds (sample std)"}
    write_json_atomic(os.path.join(out, "table1.json"), doc)
    lines = [f"Table 1: CIS on {n_img} test images, mean ± std over {seeds} seeds (`--budget {budget_name}`); "
             f"λ chosen per run on the validation split. Paper: CelebA with a fine-tuned Inception-v3 as f.", "",
             "| Method | 20 domains (ours) | 40 domains (ours) | 20 domains (paper) | 40 domains (paper) "
             "| λ (per seed) |",
             "|---|---|---|---|---|---|"]
    for m in MODELS:
        t = table[m]
        best = {nd: max(MODELS, key=lambda k: table[k][nd]["mean"]) == m for nd in ("20", "40")}
        cell = lambda nd: (("**{:+.3f} ± {:.3f}**" if best[nd] else "{:+.3f} ± {:.3f}")  # noqa: E731
                           .format(t[nd]["mean"], t[nd]["std"]))
        p = PAPER_TABLE1[m]
        lines.append(f"| {LABELS[m]} | {cell('20')} | {cell('40')} | {p[20][0]:+.3f} ± {p[20][1]:.3f} | "
                     f"{p[40][0]:+.3f} ± {p[40][1]:.3f} | {', '.join(f'{v:g}' for v in t['lam'])} |")
    write_text_atomic(os.path.join(out, "table1.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))
    return doc


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def make_fig4(out: str, results: dict[Run, dict], seeds: int, domains: str = "40") -> str:
    """rs on x, ts on y; one colour per model: each seed's point at its val-chosen λ (filled), and the test
    λ sweep of seed 0 (a faint line) to show where the other λ lie."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    for m in MODELS:
        r0 = results[Run(m, 0.0, 0)]
        lams = sorted(r0["test"], key=float)
        if len(lams) > 1:
            ax.plot([r0["test"][l][domains]["rs"] for l in lams], [r0["test"][l][domains]["ts"] for l in lams],
                    "-", color=COLORS[m], alpha=0.3)
        pts = [results[Run(m, 0.0, s)]["chosen"][domains] for s in range(seeds)]
        ax.scatter([p["rs"] for p in pts], [p["ts"] for p in pts], color=COLORS[m], label=LABELS[m], zorder=3)
    ax.set_xlabel("rs (reconstruction score)")
    ax.set_ylabel("ts (transfer score)")
    ax.set_title(f"Fig. 4: {domains} domains, test split (points: seeds at val-chosen λ)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(out, "fig4.png")
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


def make_fig5(out: str, budget: Budget, results: dict[Run, dict]) -> str:
    """Transfer grids, 40 domains, every model (seed 0, val-chosen λ), the same test images."""
    from dualvae.data import to_unit_range
    from dualvae.transfer import save_grid_png

    d = load_data(out, budget)
    images = to_unit_range(d["test"]["images"][:budget.grid_images])
    names = d["attr_names"]
    parts = []
    for i, m in enumerate(MODELS):
        run = Run(m, 0.0, 0)
        lam = results[run]["lam"]
        tiles = transfer_tiles(load_run_model(out, run), images, list(range(len(names))), lam)
        p = os.path.join(out, f"fig5_{m}.png")
        save_grid_png(p, tiles, ["original", *names] if i == 0 else None, scale=max(1, 32 // budget.image_size))
        parts.append((p, f"{LABELS[m]} (seed 0, lambda = {lam:g})"))  # PIL's default font has no λ
    path = stack_pngs(parts, os.path.join(out, "fig5.png"))
    for p, _ in parts:
        os.remove(p)
    return path


def make_fig6(out: str, budget: Budget, results: dict[Run, dict], seeds: int) -> dict:
    """DualVAE at each missing ratio s over the λ sweep (ts/rs of the seed mean), StarGAN at s = 0 and 0.9;
    a JSON of CIS per s; and a grid: test images transferred to blond hair, eyeglasses and a mustache by DualVAE
    and StarGAN trained at s = 0.9 (the paper's Fig. 6 images)."""
    from dualvae.checkpoint import write_json_atomic
    from dualvae.data import to_unit_range
    from dualvae.transfer import save_grid_png

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.8))
    cmap = plt.get_cmap("viridis")
    summary = {"dualvae": {}, "stargan": {}}
    for k, s in enumerate(MISSING_RATIOS):
        rs_ = [results[Run("dualvae", s, seed)] for seed in range(seeds)]
        lams = sorted(rs_[0]["test"], key=float)
        pts = [(mean_std([r["test"][l]["40"]["rs"] for r in rs_])[0], mean_std([r["test"][l]["40"]["ts"]
                                                                                for r in rs_])[0]) for l in lams]
        color = cmap(k / max(1, len(MISSING_RATIOS) - 1))
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=f"DualVAE s={s:g}")
        for l, p in zip(lams, pts):
            ax.annotate(f"{float(l):g}", p, fontsize=6, xytext=(2, 2), textcoords="offset points")
        cis = [r["chosen"]["40"]["cis"] for r in rs_]
        summary["dualvae"][f"{s:g}"] = {"cis40": mean_std(cis), "cis40_per_seed": cis,
                                        "cis20": mean_std([r["chosen"]["20"]["cis"] for r in rs_]),
                                        "lam": [r["lam"] for r in rs_],
                                        "by_lam": {l: {"ts": p[1], "rs": p[0]} for l, p in zip(lams, pts)}}
    for s, marker in ((0.0, "s"), (0.9, "X")):
        rs_ = [results[Run("stargan", s, seed)] for seed in range(seeds)]
        pts = [r["chosen"]["40"] for r in rs_]
        ax.scatter([p["rs"] for p in pts], [p["ts"] for p in pts], marker=marker, color=COLORS["stargan"], s=50,
                   label=f"StarGAN s={s:g}", zorder=3)
        summary["stargan"][f"{s:g}"] = {"cis40": mean_std([p["cis"] for p in pts]),
                                        "cis40_per_seed": [p["cis"] for p in pts],
                                        "cis20": mean_std([r["chosen"]["20"]["cis"] for r in rs_]),
                                        "output_spread": mean_std([r["output_spread"] for r in rs_])}
    for s in MISSING_RATIOS:
        summary["dualvae"][f"{s:g}"]["output_spread"] = mean_std(
            [results[Run("dualvae", s, seed)]["output_spread"] for seed in range(seeds)])
    ax.set_xlabel("rs (reconstruction score)")
    ax.set_ylabel("ts (transfer score)")
    ax.set_title("Fig. 6: missing ratio s x λ sweep, 40 domains, test split (seed mean)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(out, "fig6.png"), dpi=100)
    plt.close(fig)
    write_json_atomic(os.path.join(out, "fig6.json"), {"seeds": seeds, "missing_ratios": list(MISSING_RATIOS),
                                                       "summary": summary,
                                                       "note": "cis40/cis20: (mean, std) over seeds at the "
                                                               "val-chosen λ; by_lam: seed means on test"})
    d = load_data(out, budget)
    names = d["attr_names"]
    doms = [names.index(a) for a in FIG6_DOMAINS if a in names]
    images = to_unit_range(d["test"]["images"][:budget.grid_images])
    parts = []
    for i, m in enumerate(("dualvae", "stargan")):
        run = Run(m, 0.9, 0)
        p = os.path.join(out, f"fig6_{m}.png")
        tiles = transfer_tiles(load_run_model(out, run), images, doms, results[run]["lam"])
        save_grid_png(p, tiles, ["original", *[names[j] for j in doms]] if i == 0 else None,
                      scale=max(1, 64 // budget.image_size))
        parts.append((p, f"{LABELS[m]}, s=0.9"))
    stack_pngs(parts, os.path.join(out, "fig6_images.png"))
    for p, _ in parts:
        os.remove(p)
    return summary


def claims(table: dict, fig6: dict | None) -> list[dict]:
    """The paper's claims, each with a verdict from our numbers. A comparison "holds" when the means are in the
    claimed order; "clearly" when the gap is also larger than twice the larger of the two stds."""
    out = []
    t = table["table"]
    for nd in ("20", "40"):
        for m in ("cvae", "fader", "stargan"):
            a, b = t["dualvae"][nd], t[m][nd]
            gap, noise = a["mean"] - b["mean"], 2 * max(a["std"], b["std"])
            out.append({"claim": f"DualVAE > {LABELS[m]} at {nd} domains", "holds": gap > 0,
                        "clearly": gap > noise, "dualvae": [a["mean"], a["std"]], "other": [b["mean"], b["std"]],
                        "gap": gap})
    if fig6:
        d0, d9 = fig6["dualvae"]["0"]["cis40"], fig6["dualvae"]["0.9"]["cis40"]
        drop = d0[0] - d9[0]
        out.append({"claim": "DualVAE CIS stable up to s = 0.9 (40 domains)",
                    "holds": drop <= 2 * max(d0[1], d9[1], 0.005),
                    "rule": "CIS(s=0.9) >= CIS(s=0) - 2 * max(std, 0.005)", "s0": d0, "s0.9": d9,
                    "s0.5": fig6["dualvae"]["0.5"]["cis40"], "s0.99": fig6["dualvae"]["0.99"]["cis40"]})
        g0, g9 = fig6["stargan"]["0"], fig6["stargan"]["0.9"]
        fails = (g0["cis40"][0] - g9["cis40"][0] > 2 * max(g0["cis40"][1], g9["cis40"][1], 0.005)
                 or g9["output_spread"][0] < 0.1)
        out.append({"claim": "StarGAN fails at s = 0.9 (CIS drops, or identical images)", "holds": fails,
                    "rule": "CIS(s=0.9) < CIS(s=0) - 2 * max(std, 0.005), or output spread < 0.1",
                    "s0": g0["cis40"], "s0.9": g9["cis40"], "output_spread_s0": g0["output_spread"],
                    "output_spread_s0.9": g9["output_spread"]})
    return out


# -------------------------------------------------------------------------------------------------------------
# Command line
# -------------------------------------------------------------------------------------------------------------


def cmd_experiment(a) -> None:
    from dualvae.checkpoint import write_json_atomic

    if a.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {a.seeds}")
    if a.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {a.jobs}")
    if not os.path.isdir(a.data):
        raise FileNotFoundError(f"--data {a.data} is not a folder (make one with `dualvae synth --out DIR`)")
    t0 = time.time()
    out = os.path.abspath(a.out)
    budget = BUDGETS[a.budget]
    which = a.which
    runs = []
    if which in ("table1", "fig4", "fig5", "all"):
        runs += table1_runs(a.seeds)
    if which in ("fig6", "all"):
        runs += fig6_runs(a.seeds)
    results = ensure_runs(a.data, out, a.budget, runs, jobs=a.jobs, progress=not a.quiet)
    table = fig6 = None
    written = []
    if which in ("table1", "all"):
        table = make_table1(out, results, a.seeds, a.budget)
        written += ["table1.md", "table1.json"]
    if which in ("fig4", "all"):
        make_fig4(out, results, a.seeds)
        written.append("fig4.png")
    if which in ("fig5", "all"):
        make_fig5(out, budget, results)
        written.append("fig5.png")
    if which in ("fig6", "all"):
        fig6 = make_fig6(out, budget, results, a.seeds)
        written += ["fig6.png", "fig6.json", "fig6_images.png"]
    if which == "all":
        verdicts = claims(table, fig6)
        write_json_atomic(os.path.join(out, "claims.json"), verdicts)
        written.append("claims.json")
        for c in verdicts:
            print(f"  {'HOLDS' if c['holds'] else 'FAILS':5}  {c['claim']}")
    seconds = round(time.time() - t0, 1)
    write_json_atomic(os.path.join(out, f"timing-{which}.json"),
                      {"command": which, "budget": a.budget, "seeds": a.seeds, "jobs": a.jobs, "seconds": seconds,
                       "run_seconds": {r.name: res.get("seconds") for r, res in results.items()},
                       "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                       "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})
    print(f"experiment {which}: {seconds:.0f} s; wrote " + ", ".join(os.path.join(out, w) for w in written))


def add_experiment_parser(sub) -> None:
    """Register `dualvae experiment` on the CLI's subparsers."""
    e = sub.add_parser("experiment", help="the paper's experiments: Table 1, Figures 4-6 (runs cached in OUT)")
    e.add_argument("which", choices=["table1", "fig4", "fig5", "fig6", "all"])
    e.add_argument("--data", required=True, help="CelebA-format root (real CelebA, or `dualvae synth` output)")
    e.add_argument("--out", required=True, help="output folder; trained runs are cached in OUT/runs/")
    e.add_argument("--seeds", type=int, default=3, help="seeds per model (mean ± std over them)")
    e.add_argument("--budget", choices=sorted(BUDGETS), default="small",
                   help="tiny: CI smoke test; small: 2 CPU cores, generated data; paper: the full protocol (GPU)")
    e.add_argument("--jobs", type=int, default=1, help="runs trained at once, one thread each when > 1")
    e.add_argument("--quiet", action="store_true", help="no progress bars")
    e.set_defaults(func=cmd_experiment)
