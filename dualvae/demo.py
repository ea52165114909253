"""`dualvae demo` (`make demo`): the whole job on generated data, in five stages.

    1. synth     CelebA-format cartoon faces with 40 attributes (dualvae.data.synth)
    2. train     DualVAE (Algorithm 1) on an HDF5 cache of them, and in parallel the attribute classifier f
    3. wait      for f, and report its test AUC
    4. lam       choose the transfer strength lam on the validation split (CIS of each candidate, one pass)
    5. CIS       Algorithm 2 on the test split at that lam; the transfer grids, the sweep plot and cis.json
"""
from __future__ import annotations

import json
import multiprocessing
import os
import time
from dataclasses import dataclass

from dualvae.options import option


@dataclass
class DemoConfig:
    out: str = option("demo-out", "output folder (data, run, classifier, pictures)")
    num: int = option(6000, "generated images")
    steps: int = option(800, "DualVAE training steps")
    classifier_steps: int = option(900, "attribute classifier training steps")
    batch_size: int = option(64, "DualVAE batch size")
    width: int = option(24, "DualVAE conv width (channels of the first conv)")
    missing_ratio: float = option(0.0, "share s of training labels hidden (mask I)")
    num_images: int = option(160, "test images for CIS")
    val_images: int = option(64, "validation images for choosing lam")
    lams: list[float] = option([16.0, 24.0, 32.0, 40.0, 48.0, 64.0], "lam candidates, separated by commas")
    domains: int = option(40, "domains scored (the first k attributes)")
    seed: int = option(0, "seed of the data, the models and the label mask", min=0)


def _train_classifier_with_threads(cfg, threads: int):
    import torch

    from dualvae.classifier import train_classifier

    torch.set_num_threads(threads)
    return train_classifier(cfg)


def _start_classifier(c: DemoConfig, data: str, out: str):
    """f trains in a second process while DualVAE trains here: on these small convs two single-threaded
    processes get more done than one process with two threads. Returns (process, checkpoint path, its threads)."""
    import torch

    from dualvae.classifier import ClassifierConfig

    cfg = ClassifierConfig(data=data, out=os.path.join(out, "classifier.pt"), steps=c.classifier_steps,
                           seed=c.seed, progress=False)
    threads = max(1, torch.get_num_threads() // 3)
    # spawn: a fork after OpenMP has run can hang the child; non-daemonic, so its loading may use a pool
    proc = multiprocessing.get_context("spawn").Process(
        target=_train_classifier_with_threads, args=(cfg, threads), name="train-classifier")
    proc.start()
    return proc, cfg.out, threads


def _train_dualvae(c: DemoConfig, data: str, cache: str, out: str, threads: int) -> str:
    import torch

    from dualvae.data import prepare
    from dualvae.training import TrainConfig, train

    all_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        prepare(data, cache, image_size=64, progress=False)  # decoded once; batches gathered from memory
        return train(TrainConfig(data=cache, out=os.path.join(out, "run"), steps=c.steps, batch_size=c.batch_size,
                                 width=c.width, missing_ratio=c.missing_ratio, seed=c.seed))
    finally:
        torch.set_num_threads(all_threads)


def run_demo(c: DemoConfig) -> None:
    import torch

    from dualvae.data.atomic import write_json_atomic
    from dualvae.cis import conditional_inception_score, plot_sweep, sweep_lam
    from dualvae.classifier import AttributeClassifier
    from dualvae.data import read_images
    from dualvae.data.synth import write_preview, write_synth_celeba
    from dualvae.model import DualVAE
    from dualvae.transfer import write_transfer_grid

    t_start = time.time()
    out = os.path.abspath(c.out)
    data = os.path.join(out, "data")
    cache = os.path.join(out, "data-64.h5")  # the decoded images, for training and for scoring
    timings = {}

    def stage(name):
        timings[name] = round(time.time() - t_start - sum(timings.values()), 1)

    print(f"[1/5] generating {c.num} CelebA-format cartoon faces -> {data}")
    write_synth_celeba(data, num=c.num, seed=c.seed)
    preview = write_preview(data, os.path.join(out, "synth_preview.png"))
    stage("synth")
    print(f"[2/5] training DualVAE ({c.steps} steps, batch {c.batch_size}) and, in parallel, the attribute "
          f"classifier ({c.classifier_steps} steps)")
    clf_proc, clf_path, clf_threads = _start_classifier(c, data, out)
    try:
        model_path = _train_dualvae(c, data, cache, out, max(1, torch.get_num_threads() - clf_threads))
    except BaseException:
        clf_proc.terminate()
        raise
    stage("train")
    print("[3/5] waiting for the attribute classifier")
    clf_proc.join()
    if clf_proc.exitcode != 0:
        raise RuntimeError(f"training the attribute classifier failed (exit code {clf_proc.exitcode}); "
                           f"its traceback is printed above")
    report_path = os.path.splitext(clf_path)[0] + ".json"
    with open(report_path) as f:
        report = json.load(f)
    stage("classifier")
    print(f"  classifier test AUC: mean {report['mean_auc']:.3f}, min {report['min_auc']:.3f} "
          f"(report: {report_path})")

    model, clf = DualVAE.load(model_path), AttributeClassifier.load(clf_path)
    val_images, _ = read_images(cache, "val", c.val_images, model.config.image_size)
    test_images, _ = read_images(cache, "test", c.num_images, model.config.image_size)
    print(f"[4/5] choosing lam on {len(val_images)} validation images over {c.lams}")
    with torch.no_grad():
        best_lam, sweep = sweep_lam(model, clf, val_images, c.lams, domains=c.domains, progress=True)
    for lam, r in sweep.items():
        print(f"  val lam={lam:<5g} ts {r.ts:+.4f}  rs {r.rs:+.4f}  CIS {r.cis:+.4f}")
    sweep_png = plot_sweep(sweep, os.path.join(out, "lam_sweep_val.png"),
                           title=f"DualVAE, {len(val_images)} val images, {c.domains} domains")
    grid = write_transfer_grid(model, test_images[:8], os.path.join(out, "transfer_grid.png"), lam=best_lam,
                               domains=c.domains)
    best_grid = write_best_transfers(model, test_images[:6], sweep[best_lam], os.path.join(out, "transfer_best.png"))
    stage("lam_sweep_and_grid")

    print(f"[5/5] CIS on {len(test_images)} test images, {c.domains} domains, lam={best_lam:g}")
    result = conditional_inception_score(model, clf, test_images, domains=c.domains, lam=best_lam, progress=True)
    stage("cis")
    cis = result.as_dict(model.attr_names)
    cis.update(lam_chosen_on="val",
               val_sweep={str(k): {"ts": v.ts, "rs": v.rs, "cis": v.cis} for k, v in sweep.items()},
               classifier_test_mean_auc=report["mean_auc"], classifier_test_min_auc=report["min_auc"],
               seconds=timings, total_seconds=round(time.time() - t_start, 1))
    cis_path = write_json_atomic(os.path.join(out, "cis.json"), cis)
    print(f"\nCIS = {result.cis:.4f} (ts {result.ts:.4f}, rs {result.rs:.4f}), test split, lam={best_lam:g}, "
          f"{time.time() - t_start:.0f} s in all")
    for what, path in [("data", data), ("synth preview", preview), ("model", model_path),
                       ("loss plot", os.path.join(out, "run", "loss.png")), ("classifier", clf_path),
                       ("classifier report", report_path), ("transfer grid", grid), ("best transfers", best_grid),
                       ("lam sweep (val)", sweep_png), ("CIS", cis_path)]:
        print(f"  {what:<18} {path}")


def best_domains(result, k: int, min_ts: float = 0.5) -> list[int]:
    """From a CIS result with its M (the lam chosen on validation): the k domains whose transfers keep the rest
    of the face best (highest rs_i, the other attributes' mean |change|) among those whose target f reads as
    risen by at least `min_ts` (ts_i); the best first, topped up by ts_i when fewer pass."""
    import torch

    M = result.M  # (N, n, n)
    n = M.shape[-1]
    ts = torch.diagonal(M, dim1=-2, dim2=-1).mean(0)
    off = ~torch.eye(n, dtype=torch.bool)
    rs = -torch.stack([M[:, i][:, off[i]].abs().mean() for i in range(n)]) if n > 1 else torch.zeros(n)
    passed = sorted((i for i in range(n) if ts[i] >= min_ts), key=lambda i: -rs[i].item())
    rest = sorted((i for i in range(n) if ts[i] < min_ts), key=lambda i: -ts[i].item())
    return [result.domains[i] for i in (passed + rest)[:k]]


def write_best_transfers(model, images, val_result, path: str, k: int = 8) -> str:
    """The picture of what the model does at its best: each image, its reconstruction (lam = 0), then its
    transfers at the lam chosen on validation to the k domains of `best_domains` (the target changes, the rest
    of the face stays)."""
    import torch

    from dualvae.transfer import save_grid_png

    doms = best_domains(val_result, k)
    with torch.no_grad():
        recon = model.transfer_all(images, doms[:1], 0.0)
        moved = model.transfer_all(images, doms, val_result.lam)
    tiles = torch.cat([images[:, None], recon, moved], 1)
    names = ["original", "reconstruction", *[model.attr_names[d] for d in doms]]
    return save_grid_png(path, tiles, names)
