"""CelebA on disk: readers, writers and the 64x64 preprocessing shared by every backend."""
from __future__ import annotations

# CelebA's 40 attributes, in the order of list_attr_celeba.txt.
CELEBA_ATTRIBUTES = (
    "5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose Black_Hair "
    "Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee Gray_Hair Heavy_Makeup "
    "High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard Oval_Face Pale_Skin Pointy_Nose "
    "Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair Wavy_Hair Wearing_Earrings Wearing_Hat "
    "Wearing_Lipstick Wearing_Necklace Wearing_Necktie Young"
).split()

import os
from typing import Sequence

import numpy as np
from PIL import Image

IMAGE_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
LANDMARKS_FILE = "list_landmarks_align_celeba.txt"
LANDMARK_NAMES = (
    "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
).split()
SPLITS = {"train": 0, "val": 1, "test": 2}

# Aligned CelebA images are 178 wide x 218 high. The face square is rows 20:198 (all 178 columns): the crop
# of FaderNetworks (rows 20:198) and StarGAN (CenterCrop(178)) alike, which keeps hair, hats and neckwear.
CELEBA_WIDTH, CELEBA_HEIGHT = 178, 218
FACE_BOX = (0, 20, 178, 198)  # PIL box: left, upper, right, lower


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="\n") as f:
        f.write(text)
    os.replace(tmp, path)


def format_attribute_rows(filenames: Sequence[str], labels: np.ndarray) -> list[str]:
    """Rows of list_attr_celeba.txt: name, then each value right-aligned in width 2 after a space."""
    return [name + "".join(f" {int(v):>2}" for v in row) for name, row in zip(filenames, labels)]


def write_celeba_attributes(root: str, filenames: Sequence[str], attr_names: Sequence[str], labels) -> None:
    """Write list_attr_celeba.txt exactly as CelebA ships it (count line; names line ending with a space)."""
    labels = np.asarray(labels)
    lines = [str(len(filenames)), " ".join(attr_names) + " ", *format_attribute_rows(filenames, labels)]
    _write_atomic(os.path.join(root, ATTR_FILE), "\n".join(lines) + "\n")


def write_celeba_partition(root: str, filenames: Sequence[str], partition: Sequence[int]) -> None:
    """Write list_eval_partition.txt: `file split` per line (0 train, 1 val, 2 test)."""
    lines = [f"{name} {int(p)}" for name, p in zip(filenames, partition)]
    _write_atomic(os.path.join(root, PARTITION_FILE), "\n".join(lines) + "\n")


def write_celeba_landmarks(root: str, filenames: Sequence[str], landmarks) -> None:
    """Write list_landmarks_align_celeba.txt: count, the 10 column names, then 10 integer coordinates a row."""
    landmarks = np.asarray(landmarks).round().astype(int)
    rows = [f"{name:<10}" + "".join(f" {int(v):>5}" for v in row) for name, row in zip(filenames, landmarks)]
    _write_atomic(os.path.join(root, LANDMARKS_FILE), "\n".join([str(len(filenames)), " ".join(LANDMARK_NAMES), *rows]) + "\n")


def celeba_partition_of(index: int, num: int) -> int:
    """Split of the index-th of num images in CelebA's proportions and order (train, then val, then test)."""
    frac = index / max(num, 1)
    return 0 if frac < 162770 / 202599 else (1 if frac < 182637 / 202599 else 2)


def preprocess_image(img: Image.Image, image_size: int = 64) -> np.ndarray:
    """CelebA image -> uint8 (image_size, image_size, 3): crop the face square FACE_BOX, resize (bilinear,
    antialiased as PIL does when shrinking). Images of another size are center-cropped to a square first."""
    img = img.convert("RGB")
    if img.size == (CELEBA_WIDTH, CELEBA_HEIGHT):
        img = img.crop(FACE_BOX)
    else:
        w, h = img.size
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if img.size != (image_size, image_size):
        img = img.resize((image_size, image_size), Image.BILINEAR)
    return np.asarray(img, dtype=np.uint8)
