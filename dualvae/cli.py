"""`dualvae` command line: synth | prepare | train | train-classifier | transfer | cis | demo | experiment."""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time

DEMO_DEFAULTS = dict(num=6000, steps=800, classifier_steps=900, batch_size=64, width=24)


def _domains_arg(text: str | None):
    """'40' -> 40 (the first 40); 'Smiling,Male' -> names; None -> all."""
    if text is None:
        return None
    text = text.strip()
    if text.isdigit():
        return int(text)
    return [t for t in (s.strip() for s in text.split(",")) if t]


def _lams_arg(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None


def _load_images(data: str, split: str, num: int, image_size: int):
    from dualvae.data import load_split, to_unit_range

    s = load_split(data, split, image_size=image_size, limit=num, progress=False)
    if len(s.images) == 0:
        raise ValueError(f"the {split} split of {data} has no images")
    return to_unit_range(s.images), s


def cmd_synth(a) -> None:
    from dualvae.data.synth import write_preview, write_synth_celeba

    t0 = time.time()
    write_synth_celeba(a.out, num=a.num, seed=a.seed, workers=a.workers)
    dt = time.time() - t0
    print(f"wrote {a.num} CelebA-format images to {a.out} in {dt:.1f} s ({a.num / max(dt, 1e-9):.0f} images/s)")
    if a.preview:
        print(f"preview: {write_preview(a.out, os.path.join(a.out, 'preview.png'))}")


def _train_config(a):
    from dualvae.training.loop import TrainConfig

    return TrainConfig(data=a.data, out=a.out, steps=a.steps, batch_size=a.batch_size, lr=a.lr,
                       label_lr=a.label_lr, label_optimizer=a.label_optimizer, alpha=a.alpha,
                       kernel_backend=a.kernel_backend,
                       missing_ratio=a.missing_ratio, recon_sigma=a.recon_sigma, latent_dim=a.latent_dim,
                       width=a.width, image_size=a.image_size, limit=a.limit, seed=a.seed, ckpt_every=a.ckpt_every,
                       workers=a.workers, data_backend=a.data_backend, skip_corrupt=a.skip_corrupt, keep_ckpts=a.keep_ckpts,
                       device=a.device, precision=a.precision, compile=a.compile, deterministic=a.deterministic,
                       resume=a.resume, skip_nonfinite=a.skip_nonfinite)


def cmd_prepare(a) -> None:
    from dualvae.data import prepare

    t0 = time.time()
    r = prepare(a.celeba, a.out, image_size=a.image_size, workers=a.workers, skip_corrupt=a.skip_corrupt,
                force=a.force)
    if r["up_to_date"]:
        print(f"{r['out']} is up to date with {a.celeba} (same fingerprint); nothing to do (--force rewrites it)")
        return
    dt = time.time() - t0
    print(f"wrote {r['images']} images ({a.image_size}x{a.image_size}) to {r['out']} in {dt:.1f} s "
          f"({r['images'] / max(dt, 1e-9):.0f} images/s)")
    if r["skipped"]:
        print(f"skipped {len(r['skipped'])} corrupt image(s): {', '.join(r['skipped'][:10])}"
              f"{' ...' if len(r['skipped']) > 10 else ''}")


def cmd_train(a) -> None:
    from dualvae.training.loop import TrainingError, train

    try:
        path = train(_train_config(a))
    except TrainingError as exc:  # NaN/inf loss, out of memory: the message says what was kept and what to do
        print(f"dualvae train: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 wrote the files
        print(f"model: {path}\nloss log: {os.path.join(a.out, 'log.csv')}, plot: {os.path.join(a.out, 'loss.png')}")


def cmd_train_classifier(a) -> None:
    from dualvae.classifier import ClassifierConfig, train_classifier

    path, report = train_classifier(ClassifierConfig(data=a.data, out=a.out, steps=a.steps, batch_size=a.batch_size,
                                                     lr=a.lr, limit=a.limit, seed=a.seed, workers=a.workers))
    _print_classifier_report(report)
    print(f"classifier: {path}\nreport: {os.path.splitext(path)[0] + '.json'}")


def _print_classifier_report(report: dict) -> None:
    print(f"test split ({report['num_images']} images): mean accuracy {report['mean_accuracy']:.3f}, "
          f"mean AUC {report['mean_auc']:.3f}, min AUC {report['min_auc']}")
    for name, r in report["attributes"].items():
        print(f"  {name:<20} acc {r['accuracy']:.3f}  AUC {r['auc'] if r['auc'] is not None else 'n/a'}")


def cmd_transfer(a) -> None:
    from dualvae.cis import resolve_domains
    from dualvae.model import DualVAE
    from dualvae.transfer import write_transfer_grid

    model = DualVAE.load(a.model)
    images, _ = _load_images(a.data, a.split, a.num_images, model.config.image_size)
    domains = resolve_domains(model, _domains_arg(a.domains))
    path = write_transfer_grid(model, images, a.out, domains=domains, lam=a.lam)
    print(f"transfer grid ({len(images)} images x {len(domains)} domains, lam={a.lam:g}): {path}")


def cmd_cis(a) -> None:
    from dualvae.atomic import write_json_atomic
    from dualvae.cis import conditional_inception_score, plot_sweep
    from dualvae.classifier import AttributeClassifier
    from dualvae.model import DualVAE

    if not a.lam:
        raise ValueError("--lam: give at least one number")
    model, clf = DualVAE.load(a.model), AttributeClassifier.load(a.classifier)
    images, _ = _load_images(a.data, a.split, a.num_images, model.config.image_size)
    results = conditional_inception_score(model, clf, images, domains=_domains_arg(a.domains), lam=a.lam,
                                          batched=not a.loop, max_batch=a.max_batch, precision=a.precision,
                                          progress=True)
    entries = [results[lam].as_dict(model.attr_names) for lam in results]
    write_json_atomic(a.out, entries[0] if len(entries) == 1 else entries)  # one lam: the object as before
    print(f"{'lam':>8}  {'ts':>8}  {'rs':>8}  {'CIS':>8}")
    for r in results.values():
        print(f"{r.lam:>8g}  {r.ts:>8.4f}  {r.rs:>8.4f}  {r.cis:>8.4f}")
    n_dom = len(next(iter(results.values())).domains)
    print(f"{len(images)} {a.split} images, {n_dom} domains, {'loop' if a.loop else 'batched'} {a.precision}: "
          f"{a.out}")
    if a.plot:
        title = f"CIS, {len(images)} {a.split} images, {n_dom} domains"
        print(f"plot (rs on x, ts on y, one point per lam): {plot_sweep(results, a.plot, title=title)}")


def _train_classifier_with_threads(cfg, threads: int):
    import torch

    from dualvae.classifier import train_classifier

    torch.set_num_threads(threads)
    return train_classifier(cfg)


def cmd_demo(a) -> None:
    """synth -> train DualVAE -> train classifier -> transfer grid -> lam on val -> CIS on test."""
    import torch

    from dualvae.atomic import write_json_atomic
    from dualvae.cis import conditional_inception_score, plot_sweep, sweep_lam
    from dualvae.classifier import AttributeClassifier, ClassifierConfig
    from dualvae.data import prepare
    from dualvae.data.synth import write_preview, write_synth_celeba
    from dualvae.model import DualVAE
    from dualvae.training.loop import TrainConfig, train
    from dualvae.transfer import write_transfer_grid

    t_start = time.time()
    out = os.path.abspath(a.out)
    data = os.path.join(out, "data")
    timings = {}

    def stage(name):
        timings[name] = round(time.time() - t_start - sum(timings.values()), 1)

    print(f"[1/5] generating {a.num} CelebA-format cartoon faces -> {data}")
    write_synth_celeba(data, num=a.num, seed=a.seed)
    preview = write_preview(data, os.path.join(out, "synth_preview.png"))
    stage("synth")
    # The classifier trains in a second process while DualVAE trains here, splitting the cores (one each on two):
    # on these small convs two single-threaded processes get more done than one process with two threads
    # (measured here: 2 threads run a DualVAE step 1.4x faster than 1 thread, two processes give 2x).
    clf_cfg = ClassifierConfig(data=data, out=os.path.join(out, "classifier.pt"), steps=a.classifier_steps,
                               seed=a.seed, progress=False)
    print(f"[2/5] training DualVAE ({a.steps} steps, batch {a.batch_size}) and, in parallel, the attribute "
          f"classifier ({a.classifier_steps} steps)")
    threads = torch.get_num_threads()
    clf_threads = max(1, threads // 3)
    # A plain (non-daemonic) process, so that its split loading may use a decoding pool of its own.
    clf_proc = multiprocessing.get_context("spawn").Process(  # fork after OpenMP has run can hang the child
        target=_train_classifier_with_threads, args=(clf_cfg, clf_threads), name="train-classifier")
    clf_proc.start()
    try:
        torch.set_num_threads(max(1, threads - clf_threads))
        # The data are decoded once (DALI) into an HDF5 cache; training then gathers batches from memory.
        cache = os.path.join(out, "data-64.h5")
        prepare(data, cache, image_size=64, progress=False)
        model_path = train(TrainConfig(data=cache, out=os.path.join(out, "run"), steps=a.steps,
                                       batch_size=a.batch_size, width=a.width, missing_ratio=a.missing_ratio,
                                       seed=a.seed))
    except BaseException:
        clf_proc.terminate()
        raise
    finally:
        torch.set_num_threads(threads)
    stage("train")
    print("[3/5] waiting for the attribute classifier")
    clf_proc.join()
    if clf_proc.exitcode != 0:
        raise RuntimeError(f"training the attribute classifier failed (exit code {clf_proc.exitcode}); "
                           f"its traceback is printed above")
    clf_path = clf_cfg.out
    with open(os.path.splitext(clf_path)[0] + ".json") as f:
        report = json.load(f)
    stage("classifier")
    print(f"  classifier test AUC: mean {report['mean_auc']:.3f}, min {report['min_auc']:.3f} "
          f"(report: {os.path.splitext(clf_path)[0] + '.json'})")
    model, clf = DualVAE.load(model_path), AttributeClassifier.load(clf_path)
    val_images, _ = _load_images(data, "val", a.val_images, model.config.image_size)
    test_images, _ = _load_images(data, "test", a.num_images, model.config.image_size)
    print(f"[4/5] choosing lam on {len(val_images)} validation images over {a.lams}")
    with torch.no_grad():
        best_lam, sweep = sweep_lam(model, clf, val_images, a.lams, domains=a.domains, progress=True)
    for lam, r in sweep.items():
        print(f"  val lam={lam:<5g} ts {r.ts:+.4f}  rs {r.rs:+.4f}  CIS {r.cis:+.4f}")
    sweep_png = plot_sweep(sweep, os.path.join(out, "lam_sweep_val.png"),
                           title=f"DualVAE, {len(val_images)} val images, {a.domains} domains")
    grid = write_transfer_grid(model, test_images[:8], os.path.join(out, "transfer_grid.png"), lam=best_lam,
                               domains=a.domains)
    stage("lam_sweep_and_grid")
    print(f"[5/5] CIS on {len(test_images)} test images, {a.domains} domains, lam={best_lam:g}")
    result = conditional_inception_score(model, clf, test_images, domains=a.domains, lam=best_lam, progress=True)
    stage("cis")
    cis = result.as_dict(model.attr_names)
    cis.update(lam_chosen_on="val", val_sweep={str(k): {"ts": v.ts, "rs": v.rs, "cis": v.cis} for k, v in sweep.items()},
               classifier_test_mean_auc=report["mean_auc"], classifier_test_min_auc=report["min_auc"],
               seconds=timings, total_seconds=round(time.time() - t_start, 1))
    cis_path = os.path.join(out, "cis.json")
    write_json_atomic(cis_path, cis)
    print(f"\nCIS = {result.cis:.4f} (ts {result.ts:.4f}, rs {result.rs:.4f}), test split, lam={best_lam:g}, "
          f"{time.time() - t_start:.0f} s in all")
    for what, path in [("data", data), ("synth preview", preview), ("model", model_path),
                       ("loss plot", os.path.join(out, "run", "loss.png")), ("classifier", clf_path),
                       ("classifier report", os.path.splitext(clf_path)[0] + ".json"), ("transfer grid", grid),
                       ("lam sweep (val)", sweep_png), ("CIS", cis_path)]:
        print(f"  {what:<18} {path}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dualvae", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("synth", help="write generated CelebA-format cartoon faces")
    s.add_argument("--out", required=True, help="output CelebA root")
    s.add_argument("--num", type=int, default=6000, help="number of images (default 6000)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    s.add_argument("--preview", action="store_true", help="also write OUT/preview.png, a contact sheet")
    s.set_defaults(func=cmd_synth)

    r = sub.add_parser("prepare", help="decode a CelebA root once (DALI) into an HDF5 cache of uint8 images")
    r.add_argument("--celeba", required=True, help="CelebA-format root")
    r.add_argument("--out", required=True, help="cache file (.h5), written atomically")
    r.add_argument("--image-size", type=int, default=64)
    r.add_argument("--workers", type=int, default=None, help="DALI decoding threads (default: all cores)")
    r.add_argument("--skip-corrupt", action="store_true",
                   help="leave corrupt/truncated JPEGs out (logged and counted) instead of stopping")
    r.add_argument("--force", action="store_true", help="rewrite the cache even if it is up to date")
    r.set_defaults(func=cmd_prepare)

    t = sub.add_parser("train", help="train DualVAE with Algorithm 1")
    t.add_argument("--data", required=True, help="CelebA-format root, or a cache written by `dualvae prepare`")
    t.add_argument("--data-backend", choices=["dali", "pil", "hdf5"], default=None,
                   help="batches from DALI (default for a root), the PIL DataLoader, or the HDF5 cache "
                        "(default for a cache file)")
    t.add_argument("--skip-corrupt", action="store_true", help="leave corrupt JPEGs out instead of stopping")
    t.add_argument("--out", required=True, help="run folder (model.pt, log.csv, loss.png)")
    t.add_argument("--steps", type=int, default=3000)
    t.add_argument("--batch-size", type=int, default=64)
    t.add_argument("--alpha", type=float, default=1.0, help="weight of the label step (acts with SGD only; see docs)")
    t.add_argument("--missing-ratio", type=float, default=0.0, help="share s of labels hidden (mask I)")
    t.add_argument("--lr", type=float, default=1e-3, help="learning rate of g (encoder + decoder)")
    t.add_argument("--label-lr", type=float, default=1e-3, help="learning rate of g_e (encoder + U)")
    t.add_argument("--label-optimizer", choices=["adam", "sgd"], default="adam", help="g_e")
    t.add_argument("--kernel-backend", choices=["auto", "triton", "reference", "cpu"], default="auto",
                   help="dualvae.kernels backend for reparameterization+KL and the dual-head loss (default auto: "
                        "Triton on CUDA, the CPU path on CPU)")
    t.add_argument("--recon-sigma", type=float, default=0.2, help="sigma of the Gaussian decoder")
    t.add_argument("--latent-dim", type=int, default=128)
    t.add_argument("--width", type=int, default=32, help="channels of the first conv (doubled per stage)")
    t.add_argument("--image-size", type=int, default=64, help="side of the square images (a power of two)")
    t.add_argument("--limit", type=int, default=None, help="use only the first N training images")
    t.add_argument("--ckpt-every", type=int, default=1000,
                   help="write RUN_DIR/ckpt/step-N.pt (and update model.pt) every N steps and at the end")
    t.add_argument("--keep-ckpts", type=int, default=3, help="step checkpoints kept (the newest K)")
    t.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="continue a run: 'auto' takes the newest valid checkpoint in RUN_DIR/ckpt (falling back to "
                        "the previous one if it is corrupt; starts fresh if there is none), or a checkpoint path")
    t.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: the GPU of this process (LOCAL_RANK under torchrun) when there is one, else CPU")
    t.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="autocast dtype (fp16 adds a GradScaler)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model + losses")
    t.add_argument("--deterministic", action="store_true",
                   help="deterministic algorithms only: repeatable runs, and resumes equal to uninterrupted runs")
    t.add_argument("--skip-nonfinite", action="store_true",
                   help="skip (and count) an optimizer step whose loss is NaN/inf instead of stopping the run")
    t.add_argument("--workers", type=int, default=None,
                   help="JPEG decoding threads (DALI) or DataLoader workers (pil); default: all cores")
    t.add_argument("--seed", type=int, default=0)
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("train-classifier", help="train the attribute classifier f used by CIS")
    c.add_argument("--data", required=True)
    c.add_argument("--out", required=True, help="checkpoint file (a .json report is written beside it)")
    c.add_argument("--steps", type=int, default=1500)
    c.add_argument("--batch-size", type=int, default=64)
    c.add_argument("--lr", type=float, default=2e-3)
    c.add_argument("--limit", type=int, default=None)
    c.add_argument("--workers", type=int, default=None)
    c.add_argument("--seed", type=int, default=0)
    c.set_defaults(func=cmd_train_classifier)

    g = sub.add_parser("transfer", help="transfer grid PNG: rows images, columns original + each domain")
    g.add_argument("--model", required=True)
    g.add_argument("--data", required=True)
    g.add_argument("--split", default="test", choices=["train", "val", "test"])
    g.add_argument("--num-images", type=int, default=8)
    g.add_argument("--lam", type=float, default=32.0,
                   help="lam of Eq. 3, in latent units (32: the demo's choice on val; pick yours on val)")
    g.add_argument("--domains", default=None, help="a count (first k) or names separated by commas; default all")
    g.add_argument("--out", required=True, help="PNG path")
    g.set_defaults(func=cmd_transfer)

    k = sub.add_parser("cis", help="conditional inception score (Algorithm 2), one pass over one or several lam")
    k.add_argument("--model", required=True)
    k.add_argument("--classifier", required=True)
    k.add_argument("--data", required=True)
    k.add_argument("--split", default="test", choices=["train", "val", "test"])
    k.add_argument("--num-images", type=int, default=160)
    k.add_argument("--domains", default="40", help="a count (first k) or names separated by commas")
    k.add_argument("--lam", type=_lams_arg, default=[32.0],
                   help="lam of Eq. 3 in latent units, or several separated by commas (e.g. 16,32,64), all in one "
                        "pass (32: the demo's choice on val; pick yours on val)")
    k.add_argument("--out", required=True, help="cis.json path (one lam: an object; several: a list, one per lam)")
    k.add_argument("--plot", default=None, help="also write this PNG: rs on x, ts on y, one point per lam")
    k.add_argument("--max-batch", type=int, default=None,
                   help="(image, domain, lam) triples per chunk (default: from free GPU memory; 128 on CPU)")
    k.add_argument("--precision", choices=["fp32", "bf16"], default="fp32", help="bf16: autocast")
    k.add_argument("--loop", action="store_true", help="the per-image reference loop instead of the batched pass")
    k.set_defaults(func=cmd_cis)

    d = sub.add_parser("demo", help="synth -> train -> classifier -> transfer grid -> CIS, on generated data")
    d.add_argument("--out", default="demo-out")
    d.add_argument("--num", type=int, default=DEMO_DEFAULTS["num"], help="generated images")
    d.add_argument("--steps", type=int, default=DEMO_DEFAULTS["steps"], help="DualVAE training steps")
    d.add_argument("--classifier-steps", type=int, default=DEMO_DEFAULTS["classifier_steps"])
    d.add_argument("--batch-size", type=int, default=DEMO_DEFAULTS["batch_size"])
    d.add_argument("--width", type=int, default=DEMO_DEFAULTS["width"], help="DualVAE conv width")
    d.add_argument("--missing-ratio", type=float, default=0.0)
    d.add_argument("--num-images", type=int, default=160, help="test images for CIS")
    d.add_argument("--val-images", type=int, default=64, help="validation images for choosing lam")
    d.add_argument("--lams", type=_lams_arg, default=[16.0, 24.0, 32.0, 40.0, 48.0, 64.0],
                   help="lam candidates, e.g. 16,32,64")
    d.add_argument("--domains", type=int, default=40)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=cmd_demo)

    from dualvae.experiments import add_experiment_parser

    add_experiment_parser(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, ImportError) as exc:
        print(f"dualvae {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
