"""Table 1 (markdown and JSON), Figures 4, 5 and 6, and the training curves, drawn from the evaluated runs."""
from __future__ import annotations

import os

import torch

from dualvae.checkpoint import load_model
from dualvae.experiments.budgets import (BUDGETS, COLORS, COLUMN_TITLES, FIG6_DOMAINS, LABELS, MISSING_RATIOS,
                                         MODELS, PAPER_TABLE1, PROTOCOL_TITLES, PROTOCOLS)
from dualvae.experiments.evaluate import mean_std
from dualvae.experiments.prepare import load_data
from dualvae.experiments.runs import Run, run_dir
from dualvae.transfer import transfer_tiles


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


def make_table1(out: str, results: dict[Run, dict], seeds: int, budget_name: str) -> dict:
    from dualvae.data.atomic import write_json_atomic, write_text_atomic

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
    # An adaptive 256-colour palette: noisy decoded tiles compress badly as RGB.
    sheet.convert("P", palette=Image.ADAPTIVE, colors=256).save(path, optimize=True)
    return path


def make_fig5(out: str, budget_name: str, results: dict[Run, dict]) -> str:
    """Transfer grids, every domain, every model (seed 0, tuned strength), the same test images."""
    from dualvae.data import to_unit_range
    from dualvae.transfer import save_grid_png

    budget = BUDGETS[budget_name]
    d = load_data(out, budget, ("test",))
    images = to_unit_range(d["test"]["images"][:budget.grid_images])
    names = d["attr_names"]
    parts = []
    for i, m in enumerate(MODELS):
        run = Run(m, 0.0, 0)
        lam = results[run]["lam"]["tuned"]
        model = load_model(os.path.join(run_dir(out, budget_name, run), "model.pt"), m)
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
    from dualvae.data.atomic import write_json_atomic
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
    d = load_data(out, budget, ("train", "test"))
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
        model = load_model(os.path.join(run_dir(out, budget_name, run), "model.pt"), m)
        lam = results[run]["lam"]["tuned"]
        tiles = transfer_tiles(model, images, doms, lam)
        save_grid_png(p, tiles, ["original", *[names[j] for j in doms]] if i == 0 else None,
                      scale=max(1, 64 // budget.image_size))
        parts.append((p, f"{LABELS[m]}, s=0.9, tuned strength {lam:g}"))
    stack_pngs(parts, os.path.join(out, "fig6_images.png"))
    for p, _ in parts:
        os.remove(p)
    return summary
