"""Sources: the files and labels of a CelebA root as the loaders read them (the source list, identities and
the label sets), and its fingerprint (what a cache records of the root it was prepared from).

Identity labels (labels="attributes,identity"): one column per identity of the source's training split (all of
it, whatever `limit`), in increasing id order, named "identity_<id>" after the attributes; a row's labels are its
attribute positives and its identity's column, as SparseLabels. An image whose identity is not among them (only
in val/test, as in CelebA's identity-based splits) has no identity positive.
"""
from __future__ import annotations

import hashlib
import os

import numpy as np
import torch

from dualvae.kernels import SparseLabels

from .celeba import (
    ATTR_FILE,
    IDENTITY_FILE,
    IMAGE_DIR,
    PARTITION_FILE,
    read_celeba_attributes,
    read_celeba_identities,
    read_celeba_partition,
    split_indices,
)

LABEL_SETS = ("attributes", "attributes,identity")
IDENTITY_PREFIX = "identity_"


def check_label_set(labels) -> str:
    text = ",".join(t.strip() for t in labels.split(",")) if isinstance(labels, str) else labels
    if text not in LABEL_SETS:
        raise ValueError(f"labels must be one of {', '.join(repr(v) for v in LABEL_SETS)}, got {labels!r}")
    return text


def identity_label_names(identities) -> list[str]:
    """The label names of identity columns: "identity_<id>"."""
    return [f"{IDENTITY_PREFIX}{int(i)}" for i in identities]


def identity_columns(identities: np.ndarray, parts: np.ndarray) -> np.ndarray:
    """The identity columns of a source: the identities of its training split (partition 0), increasing."""
    return np.unique(np.asarray(identities, dtype=np.int64)[np.asarray(parts) == 0])


def identity_column_of(identities: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """Each image's identity column (int64), -1 for an identity that has none (not in the training split)."""
    identities = np.asarray(identities, dtype=np.int64)
    col = np.searchsorted(columns, identities)
    found = col < len(columns)
    found[found] = columns[col[found]] == identities[found]
    return np.where(found, col, -1).astype(np.int64)


def attribute_identity_labels(attributes: torch.Tensor, identity_col: torch.Tensor, n: int) -> SparseLabels:
    """SparseLabels (B, n): row b's positives are its attribute positives (columns of attributes (B, a) that are
    1), then column a + identity_col[b] (none where identity_col[b] is -1). Forms (B, a + 1) indices, never
    (B, n)."""
    B, a = attributes.shape
    cols = torch.arange(a, device=attributes.device).expand(B, a)
    keys = torch.cat([torch.where(attributes > 0, cols, -1),
                      torch.where(identity_col >= 0, identity_col + a, -1)[:, None]], 1)
    keep = keys >= 0
    indptr = torch.zeros(B + 1, dtype=torch.int64, device=attributes.device)
    indptr[1:] = torch.cumsum(keep.sum(1), 0)
    return SparseLabels(indptr, keys[keep], n, validate=False)  # row-major, a row's columns increase



def read_source_list(root: str) -> tuple[list[str], list[str], torch.Tensor, np.ndarray]:
    """(filenames, attr_names, labels int8 -1/+1, partition int8) of a CelebA root, every row checked: the
    attribute and partition files must list the same files (a mismatch raises ValueError naming the file)."""
    filenames, attr_names, labels = read_celeba_attributes(root, check_images=False)
    partition = read_celeba_partition(root)
    for split in (0, 1, 2):  # raises naming the first attribute-file row missing from the partition
        split_indices(filenames, partition, split)
    if len(partition) != len(filenames):
        listed = set(filenames)
        extra = next(name for name in partition if name not in listed)
        raise ValueError(f"{extra} is in {os.path.join(root, PARTITION_FILE)} but not in "
                         f"{os.path.join(root, ATTR_FILE)}: the attribute and partition files do not match")
    parts = np.array([partition[f] for f in filenames], dtype=np.int8)
    return filenames, attr_names, labels, parts


def read_source_identities(root: str, filenames: list[str]) -> np.ndarray:
    """The identity of each of `filenames` (int64), from root/identity_CelebA.txt; a clear error when the root
    has no such file."""
    path = os.path.join(root, IDENTITY_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"identity labels need {path} (one identity per image, `000001.jpg 2880`), which "
                                f"is not there: use labels 'attributes', or a root with the file (`dualvae synth` "
                                f"writes one)")
    return read_celeba_identities(root, filenames)


def source_fingerprint(root: str, filenames=None) -> str:
    """sha256 over the attribute and partition files' bytes (and the identity file's, where there is one) and
    each listed image's name, size and mtime."""
    h = hashlib.sha256()
    for name in (ATTR_FILE, PARTITION_FILE):
        with open(os.path.join(root, name), "rb") as f:
            h.update(hashlib.sha256(f.read()).digest())
    if os.path.exists(os.path.join(root, IDENTITY_FILE)):
        with open(os.path.join(root, IDENTITY_FILE), "rb") as f:
            h.update(b"identity\0" + hashlib.sha256(f.read()).digest())
    if filenames is None:
        filenames = read_celeba_attributes(root, check_images=False)[0]
    image_dir = os.path.join(root, IMAGE_DIR)
    for name in filenames:
        try:
            st = os.stat(os.path.join(image_dir, name))
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except FileNotFoundError:
            h.update(f"{name}\0missing\n".encode())
    return h.hexdigest()

