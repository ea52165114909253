"""Table 1 (markdown and JSON), Figures 4, 5 and 6, and the training curves, drawn from the evaluated runs."""
from __future__ import annotations

import os

import torch

from dualvae.checkpoint import load_model
from dualvae.experiments.budgets import (BUDGETS, COLORS, COLUMN_TITLES, FAILED_RATIO, FIG6_DOMAINS, LABELS,
                                         MISSING_RATIOS, MODELS, PAPER_TABLE1, PLATEAU_TOL, PROTOCOL_TITLES,
                                         PROTOCOLS)
from dualvae.experiments.evaluate import mean_std
from dualvae.experiments.prepare import load_data
from dualvae.experiments.runs import Run, control_dir, run_dir
from dualvae.transfer import transfer_tiles


def _columns(results: dict[Run, dict]) -> list[str]:
    """Table 1's columns: "20" / "40" (blocks of the all-attribute models) and "20_trained" (the -n20 runs)."""
    r0 = next(r for run, r in results.items() if run.labels is None)
    cols = [str(k) for k in r0["domain_counts"]]
    if any(run.labels == 20 for run in results):
        cols.insert(cols.index("20") + 1, "20_trained")
    return cols


def plateau_status(runs: list[dict]) -> list[str]:
    """Per run (the seeds of one model and setting): "plateaued" when its last two curve points (tuned validation
    CIS) differ by at most max(PLATEAU_TOL, the std over seeds of the last point), else "still rising" or
    "falling"."""
    last = [r["curve"][-1]["tuned"] for r in runs]
    tol = max(PLATEAU_TOL, mean_std(last)[1])
    out = []
    for r in runs:
        c = r["curve"]
        step = c[-1]["tuned"] - c[-2]["tuned"] if len(c) > 1 else float("nan")
        out.append("plateaued" if abs(step) <= tol else "still rising" if step > 0 else
                   "falling" if step < 0 else "too few points")
    return out


def _cell(results: dict[Run, dict], model: str, seeds: int, proto: str, col: str) -> dict:
    labels, key = (20, "20") if col == "20_trained" else (None, col)
    rs = [results[Run(model, 0.0, seed, labels=labels)] for seed in range(seeds)]
    vals = [r["test"][proto][key] for r in rs]
    cis = [v["cis"] for v in vals]
    mean, std = mean_std(cis)
    cell = {"mean": mean, "std_seeds": std, "std_subsets": mean_std([v["subset_std"] for v in vals])[0],
            "per_seed": cis, "ts": mean_std([v["ts"] for v in vals])[0], "rs": mean_std([v["rs"] for v in vals])[0],
            "lam": [r["lam"][proto] for r in rs], "failed": [r["failed_by_protocol"][proto] for r in rs],
            "bracketed": [r["bracketed"] for r in rs], "plateau": plateau_status(rs)}
    cell["transfer_accuracy"] = mean_std([v["transfer_accuracy"]["all"] for v in vals])
    cell["flip_accuracy"] = mean_std([v["transfer_accuracy"]["flip"] for v in vals])
    cell["realism_fd"] = mean_std([r["realism"]["fd"][proto] for r in rs])
    cell["realism_fd_reconstruction"] = mean_std([r["realism"]["fd_reconstruction"] for r in rs])
    cell["realism_fd_noise"] = mean_std([r["realism"]["fd_noise"] for r in rs])
    cell["reconstruction_ratio"] = mean_std([r["reconstruction_ratio"] for r in rs])
    if key in ("20", "40"):
        cell["paper"] = dict(zip(("mean", "std"), PAPER_TABLE1[model][int(key)]))
    return cell


def _status_note(cell: dict) -> str:
    notes = []
    if any(cell["failed"]):
        notes.append("failed: " + ",".join(str(s) for s, f in enumerate(cell["failed"]) if f))
    rising = [s for s, p in enumerate(cell["plateau"]) if p != "plateaued"]
    if rising:
        notes.append(", ".join(sorted(set(cell["plateau"][s] for s in rising))) + ": " +
                     ",".join(str(s) for s in rising))
    return f" ({'; '.join(notes)})" if notes else ""


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
             f"fine-tuned Inception-v3 as f (mean ± std). Bold: the best model that did not fail. After a cell: the "
             f"seeds the failure checks flag (reconstruction ratio > {FAILED_RATIO}, or transfers further from the "
             f"real images than pixel noise in f's features), and the seeds whose tuned validation CIS had not "
             f"plateaued.", ""]
    last = cols[-1]
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
                working = [k for k in MODELS if not any(table[k][c]["failed"])] or list(MODELS)
                best = max(working, key=lambda k: table[k][c]["mean"]) == m  # a failed model is never the best
                txt = f"{t['mean']:+.3f} ± {t['std_seeds']:.3f} [{t['std_subsets']:.3f}]"
                cells.append((f"**{txt}**" if best else txt) + _status_note(t))
            p = PAPER_TABLE1[m]
            lams = table[m][last]["lam"]
            row = [LABELS[m], *cells, *(f"{p[int(c)][0]:+.3f} ± {p[int(c)][1]:.3f}" for c in paper_cols),
                   ", ".join(f"{v:g}" for v in lams)]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
        lines += [f"The field's metrics, {COLUMN_TITLES.get(last, last)}, {proto}: transfer accuracy (share of "
                  f"transfers toward domain i that f reads as having attribute i; flip: among the images f reads "
                  f"as lacking it), Fréchet distance in f's pooled features to the real test images "
                  f"(transfers; reconstructions; the pixel-noise bar), reconstruction ratio.", "",
                  "| Method | transfer accuracy | flip accuracy | FD transfers | FD reconstructions | "
                  "FD noise (bar) | reconstruction ratio |", "|---|---|---|---|---|---|---|"]
        for m in MODELS:
            t = table[m][last]
            lines.append(f"| {LABELS[m]} | {t['transfer_accuracy'][0]:.3f} ± {t['transfer_accuracy'][1]:.3f} | "
                         f"{t['flip_accuracy'][0]:.3f} ± {t['flip_accuracy'][1]:.3f} | "
                         f"{t['realism_fd'][0]:.2f} ± {t['realism_fd'][1]:.2f} | "
                         f"{t['realism_fd_reconstruction'][0]:.2f} | {t['realism_fd_noise'][0]:.2f} | "
                         f"{t['reconstruction_ratio'][0]:.2f} |")
        lines.append("")
    write_json_atomic(os.path.join(out, "table1.json"), doc)
    write_text_atomic(os.path.join(out, "table1.md"), "\n".join(lines))
    print("\n".join(lines))
    return doc


def run_statuses(results: dict[Run, dict]) -> dict[Run, str]:
    """Every run's plateau status, judged among the seeds of its setting (model, labels, missing ratio)."""
    groups = {}
    for run in results:
        groups.setdefault((run.model, run.labels, run.missing_ratio), []).append(run)
    out = {}
    for runs in groups.values():
        runs = sorted(runs, key=lambda r: r.seed)
        out.update(zip(runs, plateau_status([results[r] for r in runs])))
    return out


def make_run_list(out: str, results: dict[Run, dict], budget_name: str) -> str:
    """runs.md: one line per run: its setting, steps, the tuned validation CIS at its last two checkpoints, the
    plateau status, the failure checks and the test CIS of both protocols."""
    from dualvae.data.atomic import write_text_atomic

    status = run_statuses(results)
    lines = [f"Every run of `--budget {budget_name}`: the tuned validation CIS ({PLATEAU_TOL} or the seed std decides "
             f"plateaued) at the last two of its checkpoints, the failure checks (reconstruction ratio > "
             f"{FAILED_RATIO}, or the realism distance (FD) above the pixel-noise bar), and the test CIS at the "
             f"largest domain count.", "",
             "| run | steps | val CIS, last two checkpoints | status | reconstruction ratio | FD tuned / noise | "
             "failed | test CIS tuned | test CIS unit_strength |", "|---" * 9 + "|"]
    for run in sorted(results, key=lambda r: (MODELS.index(r.model), r.labels or 0, r.missing_ratio, r.seed)):
        r = results[run]
        c = r["curve"]
        col = str(r["domain_counts"][-1])
        failed = [p for p in PROTOCOLS if r["failed_by_protocol"][p]]
        lines.append(f"| {run.name} | {c[-1]['step']} | {c[-2]['tuned']:+.3f} → {c[-1]['tuned']:+.3f} | "
                     f"{status[run]} | {r['reconstruction_ratio']:.2f} | {r['realism']['fd']['tuned']:.2f} / "
                     f"{r['realism']['fd_noise']:.2f} | {', '.join(failed) or 'no'} | "
                     f"{r['test']['tuned'][col]['cis']:+.3f} | {r['test']['unit_strength'][col]['cis']:+.3f} |")
    path = os.path.join(out, "runs.md")
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


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


def make_curves(out: str, results: dict[Run, dict], seeds: int, budget_name: str) -> str:
    """Tuned validation CIS at each kept checkpoint (each checkpoint at its own chosen strength) of the s = 0 runs,
    and the CIS at the unit strength, against the training examples seen (mean ± std over seeds); the legend
    says how many seeds plateaued."""
    plt = _plt()
    budget = BUDGETS[budget_name]
    r0 = results[Run("dualvae", 0.0, 0)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for ax, proto in zip(axes, PROTOCOLS):
        for m in MODELS:
            runs = [results[Run(m, 0.0, s)] for s in range(seeds)]
            curves = [r["curve"] for r in runs]
            bs = budget.batch_sizes.get(m, budget.batch_size)
            steps = [c["step"] for c in curves[0]]
            ms = [mean_std([c[k][proto] for c in curves]) for k in range(len(steps))]
            status = plateau_status(runs)
            flat = sum(p == "plateaued" for p in status)
            failed = sum(r["failed"] for r in runs)
            note = f"{flat}/{len(runs)} plateaued" + (f", {failed} failed" if failed else "")
            ax.errorbar([s * bs / 1000 for s in steps], [v[0] for v in ms], yerr=[v[1] for v in ms], marker="o",
                        ms=3, color=COLORS[m], label=f"{LABELS[m]} ({note})", capsize=2)
        ax.set_xlabel("training examples seen (thousands; StarGAN: critic batches × 16)")
        ax.set_title(PROTOCOL_TITLES[proto], fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"validation CIS, {r0['curve_domains']} domains")
    axes[0].legend(fontsize=7)
    fig.suptitle("Training curves: CIS at every kept checkpoint, mean ± std over seeds (tuned: each checkpoint "
                 "at its own best strength)", fontsize=10)
    fig.tight_layout()
    path = os.path.join(out, "curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def make_fader_adversary(out: str, budget_name: str, seeds: int) -> str | None:
    """FaderNetworks' latent adversary over training (the s = 0, 40-attribute runs' log.json): the latent
    discriminator's accuracy on the observed attributes (smoothed over 10 logged steps) against the accuracy of
    always answering each attribute's majority value, and against the control run without the adversary when it
    exists (`runs.train_fader_control`), with the adversarial weight on a second axis. None when no run has a
    log with these fields."""
    import json

    logs = []
    for seed in range(seeds):
        path = os.path.join(run_dir(out, budget_name, Run("fader", 0.0, seed)), "log.json")
        if os.path.exists(path):
            with open(path) as f:
                rows = json.load(f)
            if rows and "dis_acc" in rows[0]:
                logs.append(rows)
    if not logs:
        return None
    control = os.path.join(control_dir(out, budget_name), "log.json")
    if os.path.exists(control):
        with open(control) as f:
            control = json.load(f)
    else:
        control = None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    ax2 = ax.twinx()
    for seed, rows in enumerate(logs + ([control] if control else [])):
        is_control = control is not None and seed == len(logs)
        steps = [r["step"] for r in rows]
        w = min(10, len(rows))

        def smooth(key):
            v = torch.tensor([r[key] for r in rows], dtype=torch.float64)
            return torch.nn.functional.avg_pool1d(v[None, None], w, 1)[0, 0].tolist()

        if is_control:
            ax.plot(steps[w - 1:], smooth("dis_acc"), color="black", alpha=0.7,
                    label="the same without the adversary (λ_dis = 0), seed 0")
            continue
        ax.plot(steps[w - 1:], smooth("dis_acc"), color=COLORS["fader"], alpha=0.5 + 0.2 * seed,
                label="latent discriminator accuracy" if seed == 0 else None)
        ax.plot(steps[w - 1:], smooth("dis_chance"), "--", color="gray",
                label="majority answer (chance)" if seed == 0 else None)
        if seed == 0:
            ax2.plot(steps, [r["lambda_dis"] for r in rows], ":", color="black", label="adversarial weight")
    ax.set_xlabel("step")
    ax.set_ylabel("accuracy on the observed attributes")
    ax2.set_ylabel("adversarial weight λ_dis")
    ax.grid(alpha=0.3)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="lower left")
    ax.set_title(f"FaderNetworks' latent adversary, {len(logs)} seeds (s = 0, 40 attributes)", fontsize=9)
    fig.tight_layout()
    path = os.path.join(out, "fader_adversary.png")
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


def _fig6_column(results: dict[Run, dict]) -> str:
    return str(results[Run("dualvae", 0.0, 0)]["domain_counts"][-1])


def fig6_summary(results: dict[Run, dict], seeds: int) -> dict:
    """Fig. 6's numbers: DualVAE at each missing ratio s and StarGAN at s = 0 and 0.9 (where run): test CIS per
    protocol (mean, std over seeds), the failure checks and plateau per seed, and DualVAE's validation sweep
    (seed means of ts and rs per strength)."""
    col = _fig6_column(results)

    def entry(rs_):
        return {**{proto: {"cis": mean_std([r["test"][proto][col]["cis"] for r in rs_]),
                           "cis_per_seed": [r["test"][proto][col]["cis"] for r in rs_],
                           "std_subsets": mean_std([r["test"][proto][col]["subset_std"] for r in rs_])[0],
                           "lam": [r["lam"][proto] for r in rs_]} for proto in PROTOCOLS},
                "failed": [r["failed"] for r in rs_], "plateau": plateau_status(rs_),
                "reconstruction_ratio": mean_std([r["reconstruction_ratio"] for r in rs_])}

    summary = {"dualvae": {}, "stargan": {}}
    for s in MISSING_RATIOS:
        rs_ = [results[Run("dualvae", s, seed)] for seed in range(seeds)]
        lams = sorted(set.intersection(*(set(r["val"]) for r in rs_)), key=float)
        by_lam = {l: {"ts": mean_std([r["val"][l][col]["ts"] for r in rs_])[0],
                      "rs": mean_std([r["val"][l][col]["rs"] for r in rs_])[0]} for l in lams}
        summary["dualvae"][f"{s:g}"] = {**entry(rs_), "by_lam": by_lam}
    for s in (0.0, 0.9):
        if all(Run("stargan", s, seed) in results for seed in range(seeds)):
            summary["stargan"][f"{s:g}"] = entry([results[Run("stargan", s, seed)] for seed in range(seeds)])
    return summary


def make_fig6(out: str, budget_name: str, results: dict[Run, dict], seeds: int) -> dict:
    """DualVAE at each missing ratio s over its strength sweep (seed means, validation), StarGAN at s = 0
    and 0.9 at both protocols' strengths; a JSON of CIS per s and protocol; and a grid: test images transferred
    to blond hair, eyeglasses and a mustache by DualVAE and StarGAN trained at s = 0.9 (the paper's Fig. 6)."""
    from dualvae.data.atomic import write_json_atomic
    from dualvae.data import to_unit_range
    from dualvae.transfer import save_grid_png

    budget = BUDGETS[budget_name]
    col = _fig6_column(results)
    summary = fig6_summary(results, seeds)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    cmap = plt.get_cmap("viridis")
    for k, s in enumerate(MISSING_RATIOS):
        by_lam = summary["dualvae"][f"{s:g}"]["by_lam"]
        color = cmap(k / max(1, len(MISSING_RATIOS) - 1))
        ax.plot([p["rs"] for p in by_lam.values()], [p["ts"] for p in by_lam.values()], "-", color=color,
                alpha=0.6, label=f"DualVAE s={s:g}")
        chosen = [results[Run("dualvae", s, seed)]["test"]["tuned"][col] for seed in range(seeds)]
        ax.scatter([c["rs"] for c in chosen], [c["ts"] for c in chosen], color=color, zorder=3, s=25)
        for l, p in by_lam.items():
            ax.annotate(f"{float(l):g}", (p["rs"], p["ts"]), fontsize=6, xytext=(2, 2), textcoords="offset points")
    for s, marker in ((0.0, "s"), (0.9, "X")):
        if f"{s:g}" not in summary["stargan"]:
            continue
        rs_ = [results[Run("stargan", s, seed)] for seed in range(seeds)]
        for proto, fill in zip(PROTOCOLS, (COLORS["stargan"], "none")):
            pts = [r["test"][proto][col] for r in rs_]
            ax.scatter([p["rs"] for p in pts], [p["ts"] for p in pts], marker=marker, s=50, zorder=3,
                       edgecolors=COLORS["stargan"], facecolors=fill, label=f"StarGAN s={s:g} ({proto})")
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
        if run not in results:
            continue
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
