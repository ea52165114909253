"""The data and the classifier, prepared once per output folder and shared by every run: the HDF5 caches of the
decoded images at the budget's image size (every attribute, and the first k for the models trained on k), and f."""
from __future__ import annotations

import os

import torch

from dualvae.experiments.budgets import BUDGETS, Budget


def first_attributes_root(data: str, out: str, k: int) -> str:
    """A CelebA-format root holding only the first k attributes of `data` (the same images, linked), for the
    models trained on k labels: OUT/celeba-first<k>/."""
    from dualvae.data.atomic import write_text_atomic
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


def prepare_data(data: str, out: str, budget: Budget, label_counts=()) -> None:
    """Decode every split once at the budget's image size into the HDF5 caches: OUT/data-S.h5, the pixels every
    model trains and is scored on, and OUT/data-S-first<k>.h5 for each k of `label_counts` (the models trained
    on the first k attributes)."""
    from dualvae.data import prepare

    for k in (None, *sorted(set(label_counts))):
        root = data if k is None else first_attributes_root(data, out, k)
        prepare(root, cache_file(out, budget, k), image_size=budget.image_size, progress=False)


def load_data(out: str, budget: Budget, splits: tuple[str, ...]) -> dict:
    """From the cache, the `splits` a caller needs: train whole, the first V / T images of val and test (uint8
    images, 0/1 labels, file names); and the attribute names."""
    from dualvae.data import labels_to_binary, read_split

    limits = {"train": None, "val": budget.val_images, "test": budget.test_images}
    data = {}
    for split in splits:
        s = read_split(cache_file(out, budget), split, image_size=budget.image_size, limit=limits[split])
        data[split] = {"images": s.images, "labels": labels_to_binary(s.labels), "filenames": s.filenames}
    data["attr_names"] = list(s.attr_names)
    return data


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
    d = load_data(out, budget, ("train", "test"))

    def split(name):  # the -1/+1 labels CelebASplit holds
        s = d[name]
        return CelebASplit(s["images"], (s["labels"] * 2 - 1).to(torch.int8), s["filenames"], d["attr_names"])

    cfg = ClassifierConfig(data=data, out=path, steps=budget.classifier_steps, width=budget.classifier_width,
                           image_size=budget.image_size, batch_size=budget.batch_size, seed=0, progress=progress)
    train_classifier(cfg, train_split=split("train"), test_split=split("test"))
    return path
