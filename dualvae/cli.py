"""`dualvae` command line: synth | prepare | train | train-classifier | transfer | cis | explore | demo | experiment.

Each subcommand's options are the fields of its config dataclass (dualvae.options), so defaults and help are
written once, beside the code that uses them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass

from dualvae.cis import CIS_PRECISIONS
from dualvae.options import add_options, config_from, option

SPLIT_CHOICES = ("train", "val", "test")


@dataclass
class SynthConfig:
    out: str = option(help="output CelebA-format root")
    num: int = option(6000, "number of generated images")
    seed: int = option(0, "seed of the faces and their labels", min=0)
    workers: int | None = option(None, "rendering processes", none="all cores")
    images_per_person: int = option(10, "images per generated person (identity_CelebA.txt), on average")
    preview: bool = option(False, "also write OUT/preview.png, a contact sheet")


@dataclass
class PrepareConfig:
    celeba: str = option(help="CelebA-format root")
    out: str = option(help="cache file (.h5), written atomically")
    image_size: int = option(64, "side of the square images")
    workers: int | None = option(None, "DALI decoding threads", none="all cores")
    skip_corrupt: bool = option(False, "leave corrupt/truncated JPEGs out (logged and counted) instead of stopping")
    force: bool = option(False, "rewrite the cache even if it is up to date")


@dataclass
class TransferConfig:
    model: str = option(help="DualVAE checkpoint (RUN_DIR/model.pt)")
    data: str = option(help="CelebA-format root, or a cache written by `dualvae prepare`")
    out: str = option(help="PNG path")
    split: str = option("test", "split the images come from", choices=SPLIT_CHOICES)
    num_images: int = option(8, "images (rows of the grid)")
    lam: float = option(32.0, "lam of Eq. 3, in latent units (32: the demo's choice on val; pick yours on val)")
    domains: str | None = option(None, "a count (the first k) or label names separated by commas: attributes, or "
                                 "identity_<id> for a model trained with identities", none="all")


@dataclass
class CISConfig:
    model: str = option(help="DualVAE checkpoint (RUN_DIR/model.pt)")
    classifier: str = option(help="attribute classifier f (`dualvae train-classifier`)")
    data: str = option(help="CelebA-format root, or a cache written by `dualvae prepare`")
    out: str = option(help="cis.json path (one lam: an object; several: a list, one per lam)")
    split: str = option("test", "split the images come from", choices=SPLIT_CHOICES)
    num_images: int = option(160, "images scored")
    domains: str = option("40", "a count (the first k) or attribute names separated by commas (attribute domains "
                          "only: f predicts no identities)")
    lam: list[float] = option([32.0], "lam of Eq. 3 in latent units, or several separated by commas (e.g. 16,32,64), "
                              "all in one pass")
    plot: str | None = option(None, "also write this PNG: rs on x, ts on y, a point per lam")
    max_batch: int | None = option(None, "(image, domain, lam) triples per chunk",
                                   none="from the free GPU memory; 128 on CPU")
    precision: str = option("fp32", "bf16: autocast", choices=CIS_PRECISIONS)
    loop: bool = option(False, "the per-image reference loop instead of the batched pass")


def parse_domains(text: str | None):
    """'40' -> 40 (the first 40); 'Smiling,Male' -> names; None -> all. A count must be >= 1."""
    if text is None:
        return None
    text = text.strip()
    if text.lstrip("-").isdigit():
        if int(text) < 1:
            raise ValueError(f"--domains must be a count >= 1 or label names, got {text}")
        return int(text)
    return [t for t in (s.strip() for s in text.split(",")) if t]


def cmd_synth(c: SynthConfig) -> None:
    from dualvae.data.synth import write_preview, write_synth_celeba

    t0 = time.time()
    write_synth_celeba(c.out, num=c.num, seed=c.seed, workers=c.workers, images_per_person=c.images_per_person)
    dt = time.time() - t0
    print(f"wrote {c.num} CelebA-format images to {c.out} in {dt:.1f} s ({c.num / max(dt, 1e-9):.0f} images/s), "
          f"with identity_CelebA.txt (persons of about {c.images_per_person} images)")
    if c.preview:
        print(f"preview: {write_preview(c.out, os.path.join(c.out, 'preview.png'))}")


def cmd_prepare(c: PrepareConfig) -> None:
    from dualvae.data import prepare

    t0 = time.time()
    r = prepare(c.celeba, c.out, image_size=c.image_size, workers=c.workers, skip_corrupt=c.skip_corrupt,
                force=c.force)
    if r["up_to_date"]:
        print(f"{r['out']} is up to date with {c.celeba} (same fingerprint); nothing to do (--force rewrites it)")
        return
    dt = time.time() - t0
    print(f"wrote {r['images']} images ({c.image_size}x{c.image_size}) to {r['out']} in {dt:.1f} s "
          f"({r['images'] / max(dt, 1e-9):.0f} images/s)")
    if r["skipped"]:
        print(f"skipped {len(r['skipped'])} corrupt image(s): {', '.join(r['skipped'][:10])}"
              f"{' ...' if len(r['skipped']) > 10 else ''}")


def cmd_train(c) -> None:
    from dualvae.training import TrainingError, train

    try:
        path = train(c)
    except TrainingError as exc:  # NaN/inf loss, out of memory: the message says what was kept and what to do
        print(f"dualvae train: error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 wrote the files
        print(f"model: {path}\nloss log: {os.path.join(c.out, 'log.csv')}, plot: {os.path.join(c.out, 'loss.png')}")


def cmd_train_classifier(c) -> None:
    from dualvae.classifier import train_classifier

    path, report = train_classifier(c)
    print_classifier_report(report)
    print(f"classifier: {path}\nreport: {os.path.splitext(path)[0] + '.json'}")


def print_classifier_report(report: dict) -> None:
    print(f"test split ({report['num_images']} images): mean accuracy {report['mean_accuracy']:.3f}, "
          f"mean AUC {report['mean_auc']:.3f}, min AUC {report['min_auc']}")
    for name, r in report["attributes"].items():
        print(f"  {name:<20} acc {r['accuracy']:.3f}  AUC {r['auc'] if r['auc'] is not None else 'n/a'}")


def cmd_transfer(c: TransferConfig) -> None:
    from dualvae.data import read_images
    from dualvae.model import DualVAE
    from dualvae.transfer import write_transfer_grid

    domains = parse_domains(c.domains)
    model = DualVAE.load(c.model)
    images, _ = read_images(c.data, c.split, c.num_images, model.config.image_size)
    path = write_transfer_grid(model, images, c.out, domains=domains, lam=c.lam)
    print(f"transfer grid ({len(images)} images, domains: {c.domains or 'all'}, lam={c.lam:g}): {path}")


def cmd_cis(c: CISConfig) -> None:
    from dualvae.cis import conditional_inception_score, plot_sweep
    from dualvae.classifier import AttributeClassifier
    from dualvae.data import read_images
    from dualvae.data.atomic import write_json_atomic
    from dualvae.model import DualVAE

    if not c.lam:
        raise ValueError("--lam: give at least one number")
    domains = parse_domains(c.domains)
    model, clf = DualVAE.load(c.model), AttributeClassifier.load(c.classifier)
    images, _ = read_images(c.data, c.split, c.num_images, model.config.image_size)
    results = conditional_inception_score(model, clf, images, domains=domains, lam=c.lam,
                                          batched=not c.loop, max_batch=c.max_batch, precision=c.precision,
                                          progress=True)
    entries = [results[lam].as_dict(model.attr_names) for lam in results]
    write_json_atomic(c.out, entries[0] if len(entries) == 1 else entries)  # one lam: one object
    print(f"{'lam':>8}  {'ts':>8}  {'rs':>8}  {'CIS':>8}")
    for r in results.values():
        print(f"{r.lam:>8g}  {r.ts:>8.4f}  {r.rs:>8.4f}  {r.cis:>8.4f}")
    n_dom = len(next(iter(results.values())).domains)
    print(f"{len(images)} {c.split} images, {n_dom} domains, {'loop' if c.loop else 'batched'} {c.precision}: "
          f"{c.out}")
    if c.plot:
        title = f"CIS, {len(images)} {c.split} images, {n_dom} domains"
        print(f"plot (rs on x, ts on y, one point per lam): {plot_sweep(results, c.plot, title=title)}")


def _commands():
    """(name, help, config class, function) of every subcommand."""
    from dualvae.classifier import ClassifierConfig
    from dualvae.demo import DemoConfig, run_demo
    from dualvae.experiments import ExperimentConfig, run_experiment
    from dualvae.explore import ExploreConfig, serve
    from dualvae.training import TrainConfig

    return [
        ("synth", "write generated CelebA-format cartoon faces", SynthConfig, cmd_synth),
        ("prepare", "decode a CelebA root once (DALI) into an HDF5 cache of uint8 images", PrepareConfig,
         cmd_prepare),
        ("train", "train DualVAE with Algorithm 1", TrainConfig, cmd_train),
        ("train-classifier", "train the attribute classifier f used by CIS", ClassifierConfig,
         cmd_train_classifier),
        ("transfer", "transfer grid PNG: rows images, columns original + each domain", TransferConfig,
         cmd_transfer),
        ("cis", "conditional inception score (Algorithm 2), one pass over one or several lam", CISConfig, cmd_cis),
        ("explore", "a local web page: one slider per domain, live transfers of test images or your own",
         ExploreConfig, serve),
        ("demo", "synth -> train -> classifier -> transfer grid -> CIS, on generated data", DemoConfig, run_demo),
        ("experiment", "the paper's experiments: Table 1, Figures 4-6, training curves (runs cached in OUT)",
         ExperimentConfig, run_experiment),
    ]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dualvae", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_, cls, fn in _commands():
        s = add_options(sub.add_parser(name, help=help_, description=help_), cls)
        s.set_defaults(func=lambda a, cls=cls, fn=fn: fn(config_from(cls, a)))
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
