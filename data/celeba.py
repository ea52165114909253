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
# Each attribute's column in that order.
ATTRIBUTE_INDEX = {name: i for i, name in enumerate(CELEBA_ATTRIBUTES)}

import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from .atomic import write_text_atomic

IMAGE_DIR = "img_align_celeba"
ATTR_FILE = "list_attr_celeba.txt"
PARTITION_FILE = "list_eval_partition.txt"
LANDMARKS_FILE = "list_landmarks_align_celeba.txt"
IDENTITY_FILE = "identity_CelebA.txt"
LANDMARK_NAMES = (
    "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
).split()
SPLITS = {"train": 0, "val": 1, "test": 2}

# Aligned CelebA images are 178 wide x 218 high. The face square is rows 20:198 (all 178 columns): the crop
# of FaderNetworks (rows 20:198) and StarGAN (CenterCrop(178)) alike, which keeps hair, hats and neckwear.
CELEBA_WIDTH, CELEBA_HEIGHT = 178, 218
FACE_BOX = (0, 20, 178, 198)  # PIL box: left, upper, right, lower


def format_attribute_rows(filenames: Sequence[str], labels: np.ndarray) -> list[str]:
    """Rows of list_attr_celeba.txt: name, then each value right-aligned in width 2 after a space."""
    return [name + "".join(f" {int(v):>2}" for v in row) for name, row in zip(filenames, labels)]


def write_celeba_attributes(root: str, filenames: Sequence[str], attr_names: Sequence[str], labels) -> None:
    """Write list_attr_celeba.txt exactly as CelebA ships it (count line; names line ending with a space)."""
    labels = np.asarray(labels)
    lines = [str(len(filenames)), " ".join(attr_names) + " ", *format_attribute_rows(filenames, labels)]
    write_text_atomic(os.path.join(root, ATTR_FILE), "\n".join(lines) + "\n")


def write_celeba_partition(root: str, filenames: Sequence[str], partition: Sequence[int]) -> None:
    """Write list_eval_partition.txt: `file split` per line (0 train, 1 val, 2 test)."""
    lines = [f"{name} {int(p)}" for name, p in zip(filenames, partition)]
    write_text_atomic(os.path.join(root, PARTITION_FILE), "\n".join(lines) + "\n")


def write_celeba_identities(root: str, filenames: Sequence[str], identities: Sequence[int]) -> None:
    """Write identity_CelebA.txt: `file identity` per line, identities numbered from 1."""
    lines = [f"{name} {int(i)}" for name, i in zip(filenames, identities)]
    write_text_atomic(os.path.join(root, IDENTITY_FILE), "\n".join(lines) + "\n")


def write_celeba_landmarks(root: str, filenames: Sequence[str], landmarks) -> None:
    """Write list_landmarks_align_celeba.txt: count, the 10 column names, then 10 integer coordinates a row."""
    landmarks = np.asarray(landmarks).round().astype(int)
    rows = [f"{name:<10}" + "".join(f" {int(v):>5}" for v in row) for name, row in zip(filenames, landmarks)]
    lines = [str(len(filenames)), " ".join(LANDMARK_NAMES), *rows]
    write_text_atomic(os.path.join(root, LANDMARKS_FILE), "\n".join(lines) + "\n")


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


# ---------------------------------------------------------------------------------------------------------------
# Readers
#
# The annotation files are whitespace-separated tables. Real CelebA has 202,599 rows x 41 columns (8.3 M tokens),
# and making one Python object per token costs seconds, so the tables are tokenized with numpy on the raw bytes:
# a token is a maximal run of non-whitespace bytes, a line ends at "\n" ("\r" and tabs count as whitespace,
# so CRLF files, tabs and trailing spaces need no special handling). Only the file-name column becomes Python
# strings. Every malformation is reported as CelebAFormatError (a ValueError) naming the file and 1-based line.
# ---------------------------------------------------------------------------------------------------------------


class CelebAFormatError(ValueError):
    """A CelebA annotation file (or image) that does not have the expected format; the message names the file,
    the 1-based line where one applies, and the offending value."""


_ORD_0, _ORD_1, _ORD_2, _ORD_MINUS, _ORD_PLUS = (ord(c) for c in "012-+")


def _format_error(path: str, line: int, what: str) -> CelebAFormatError:
    return CelebAFormatError(f"{path}, line {line}: {what}")


class _Table:
    """The whitespace-separated tokens of a text file, located by byte offsets and grouped by line.

    `starts[k]:ends[k]` are the bytes of the k-th token; the tokens of 0-based line i are
    `tok_offset[i]:tok_offset[i + 1]`. Trailing blank lines are dropped (`num_lines` counts up to the last line
    that has a token), so a file with or without a final newline, or with blank lines at the end, reads the same.
    """

    def __init__(self, path: str):
        self.path = path
        if not os.path.isfile(path):
            raise FileNotFoundError(f"CelebA annotation file not found: {path}")
        with open(path, "rb") as f:
            buf = f.read()
        if buf.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark left by some editors
            buf = buf[3:]
        if b"\n" not in buf and b"\r" in buf:  # classic-Mac line endings: lines end at a bare "\r"
            buf = buf.replace(b"\r", b"\n")
        try:
            buf.decode("utf-8")  # validate once, so that slices between whitespace always decode
        except UnicodeDecodeError as e:
            line = buf.count(b"\n", 0, e.start) + 1
            raise _format_error(path, line, f"not UTF-8 text (byte {buf[e.start]:#04x})") from None
        self.buf = buf
        # For ASCII files (CelebA's are) byte offsets are character offsets: slice one decoded str instead of
        # decoding 200k byte slices.
        self.text = buf.decode("ascii") if buf.isascii() else None
        self.bytes = np.frombuffer(buf, dtype=np.uint8)

        # Token bytes are those above 0x20 (space, tabs, "\r", "\n" and other control bytes separate tokens).
        # Tokens start and end where "is token byte" changes; with a False pad at both ends the changes
        # alternate start, end, start, end, ...
        is_token = np.zeros(len(buf) + 2, dtype=bool)
        np.greater(self.bytes, 32, out=is_token[1:-1])
        edges = np.flatnonzero(is_token[1:] != is_token[:-1])
        self.starts, self.ends = edges[0::2], edges[1::2]

        # (After a final newline comes an empty last "line": it has no tokens and is dropped below.)
        line_starts = np.concatenate(([0], np.flatnonzero(self.bytes == 10) + 1))
        # Index of the first token at or after each line start; a line's tokens run to the next line's first.
        tok_offset = np.append(np.searchsorted(self.starts, line_starts), len(self.starts))
        counts = np.diff(tok_offset)
        nonblank = np.flatnonzero(counts)
        self.num_lines = int(nonblank[-1]) + 1 if len(nonblank) else 0
        self.counts = counts[: self.num_lines]
        self.tok_offset = tok_offset[: self.num_lines + 1]

    def token(self, k: int) -> str:
        return self.buf[self.starts[k] : self.ends[k]].decode("utf-8")

    def line_tokens(self, i: int) -> list[str]:
        """Tokens of 0-based line i."""
        return [self.token(k) for k in range(self.tok_offset[i], self.tok_offset[i + 1])]

    def check_columns(self, first: int, expected: int, what: str) -> None:
        """Every line from 0-based `first` on must have exactly `expected` tokens."""
        bad = np.flatnonzero(self.counts[first:] != expected)
        if len(bad):
            i = first + int(bad[0])
            raise _format_error(self.path, i + 1, f"expected {expected} columns ({what}), found {int(self.counts[i])}")

    def columns(self, first: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        """(starts, ends) of the tokens of lines first.. as (rows, width) arrays; call check_columns first."""
        k = self.tok_offset[first]
        return self.starts[k:].reshape(-1, width), self.ends[k:].reshape(-1, width)

    def strings(self, starts: np.ndarray, ends: np.ndarray) -> list[str]:
        """The tokens at the given offsets, as str."""
        if self.text is not None:
            text = self.text
            return [text[s:e] for s, e in zip(starts.tolist(), ends.tolist())]
        buf = self.buf
        return [buf[s:e].decode("utf-8") for s, e in zip(starts.tolist(), ends.tolist())]


def _check_unique(path: str, names: list[str], first_line: int) -> None:
    """File names must be unique; `first_line` is the 1-based line of names[0]."""
    if len(set(names)) == len(names):
        return
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise _format_error(
                path, first_line + i, f"duplicate file name {name!r} (first listed on line {first_line + seen[name]})"
            )
        seen[name] = i


def check_images_exist(root: str, attr_path: str, filenames: Sequence[str], rows: Sequence[int] | None = None) -> None:
    """The listed images (all, or the given rows of the attribute file) must be in root/img_align_celeba.

    One directory listing and set look-ups, not one stat() per image (CelebA has 202,599 of them)."""
    image_dir = os.path.join(root, IMAGE_DIR)
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"CelebA image folder not found: {image_dir}")
    present = set(os.listdir(image_dir))
    rows = range(len(filenames)) if rows is None else rows
    missing = [int(r) for r in rows if filenames[r] not in present]
    if missing:
        r = missing[0]
        more = f" ({len(missing) - 1} more listed images are missing too)" if len(missing) > 1 else ""
        raise _format_error(
            attr_path, r + 3, f"image {os.path.join(image_dir, filenames[r])} is listed but not on disk{more}"
        )


def read_celeba_attributes(root: str, check_images: bool = True) -> tuple[list[str], list[str], torch.Tensor]:
    """Read root/list_attr_celeba.txt -> (filenames, attr_names, labels: int8 tensor N x n of -1/+1).

    Line 1 is the image count, line 2 the attribute names (any number, taken from the file), then one row per
    image: the file name and one value (`1`, `-1`; `+1` is accepted) per attribute, separated by any whitespace.
    With check_images (the default) every listed image must exist in root/img_align_celeba.
    Raises FileNotFoundError for a missing file or image folder and CelebAFormatError (ValueError) naming the
    file and line for anything malformed: bad count line, empty header, wrong column count, a value that is not
    +-1, a duplicate file name, a listed image missing on disk.
    """
    path = os.path.join(root, ATTR_FILE)
    table = _Table(path)
    if table.num_lines == 0:
        raise _format_error(path, 1, "empty file; expected the image count")
    count_tokens = table.line_tokens(0)
    if len(count_tokens) != 1 or not (count_tokens[0].isascii() and count_tokens[0].isdigit()):
        raise _format_error(path, 1, f"expected the image count (one non-negative integer), "
                                     f"found {' '.join(count_tokens)!r}")
    count = int(count_tokens[0])
    attr_names = table.line_tokens(1) if table.num_lines > 1 else []
    if not attr_names:
        raise _format_error(path, 2, "empty header; expected the attribute names")
    n = len(attr_names)
    if len(set(attr_names)) != n:
        dup = next(a for i, a in enumerate(attr_names) if a in attr_names[:i])
        raise _format_error(path, 2, f"duplicate attribute name {dup!r} in the header")

    table.check_columns(2, n + 1, f"file name and {n} attribute values")
    num_rows = max(table.num_lines - 2, 0)
    if count != num_rows:
        raise _format_error(path, 1, f"the count line says {count} images but the file has {num_rows} rows")

    starts, ends = table.columns(2, n + 1) if num_rows else (np.zeros((0, n + 1), np.int64),) * 2
    filenames = table.strings(starts[:, 0], ends[:, 0])
    _check_unique(path, filenames, 3)

    # A value is valid when its last byte is "1" and it is "1" or a sign followed by "1".
    a = table.bytes
    value_starts, value_ends = starts[:, 1:], ends[:, 1:]
    length = value_ends - value_starts
    first, last = a[value_starts], a[value_ends - 1]
    negative = first == _ORD_MINUS
    valid = (last == _ORD_1) & ((length == 1) | ((length == 2) & (negative | (first == _ORD_PLUS))))
    if not valid.all():
        r, c = (int(x) for x in np.argwhere(~valid)[0])
        value = table.buf[value_starts[r, c] : value_ends[r, c]].decode("utf-8")
        raise _format_error(path, r + 3, f"value {value!r} for attribute {attr_names[c]!r} of {filenames[r]} "
                                         f"is not 1 or -1")
    labels = torch.from_numpy(np.int8(1) - np.int8(2) * negative.view(np.int8))

    if check_images:
        check_images_exist(root, path, filenames)
    return filenames, attr_names, labels


def _name_value_rows(path: str, value: str, what: str):
    """A file of `file_name value` rows with no header: (table, starts, ends, file names), the token offsets as
    (rows, 2) arrays; an empty file or a row of another width raises naming the file and line."""
    table = _Table(path)
    if table.num_lines == 0:
        raise _format_error(path, 1, f"empty file; expected `file_name {value}` rows")
    table.check_columns(0, 2, f"file name and {what}")
    starts, ends = table.columns(0, 2)
    return table, starts, ends, table.strings(starts[:, 0], ends[:, 0])


def read_celeba_partition(root: str) -> dict[str, int]:
    """Read root/list_eval_partition.txt -> {file name: split} (0 train, 1 val, 2 test).

    Rows are `000001.jpg 0`, separated by any whitespace. Raises FileNotFoundError for a missing file and
    CelebAFormatError (ValueError) naming the file and line for a wrong column count, a split not in {0, 1, 2},
    a duplicate file name, or a file with no rows."""
    path = os.path.join(root, PARTITION_FILE)
    table, starts, ends, filenames = _name_value_rows(path, "split", "split 0/1/2")
    a = table.bytes
    value = a[starts[:, 1]]
    valid = (ends[:, 1] - starts[:, 1] == 1) & (value >= _ORD_0) & (value <= _ORD_2)
    if not valid.all():
        r = int(np.flatnonzero(~valid)[0])
        bad = table.buf[starts[r, 1] : ends[r, 1]].decode("utf-8")
        raise _format_error(path, r + 1, f"split {bad!r} of {filenames[r]} is not 0 (train), 1 (val) or 2 (test)")
    _check_unique(path, filenames, 1)
    return dict(zip(filenames, (value - _ORD_0).tolist()))


def read_celeba_identities(root: str, filenames: Sequence[str] | None = None):
    """Read root/identity_CelebA.txt: rows `000001.jpg 2880`, the person (an integer >= 1) in each image.

    Returns {file name: identity}, or with `filenames` (e.g. the attribute file's) an int64 array of their
    identities in that order, every one of them required. Raises FileNotFoundError for a missing file and
    CelebAFormatError (ValueError) naming the file and line for a wrong column count, an identity that is not an
    integer >= 1, a duplicate file name, a file with no rows, or an image of `filenames` the file does not list."""
    path = os.path.join(root, IDENTITY_FILE)
    table, starts, ends, names = _name_value_rows(path, "identity", "identity")
    values = table.strings(starts[:, 1], ends[:, 1])
    for r, v in enumerate(values):  # a plain loop: 200k short strings, and the first bad one is named
        if not (v.isascii() and v.isdigit() and len(v) <= 9 and int(v) >= 1):
            raise _format_error(path, r + 1, f"identity {v!r} of {names[r]} is not an integer >= 1")
    _check_unique(path, names, 1)
    ids = dict(zip(names, map(int, values)))
    if filenames is None:
        return ids
    missing = [f for f in filenames if f not in ids]
    if missing:
        more = f" ({len(missing) - 1} more are missing too)" if len(missing) > 1 else ""
        raise CelebAFormatError(f"{path}: no identity for {missing[0]}, an image the attribute file lists{more}")
    return np.array([ids[f] for f in filenames], dtype=np.int64)


def split_id(split: str | int) -> int:
    """The partition number (0 train, 1 val, 2 test) of a split given by name or number."""
    if isinstance(split, str) and split in SPLITS:
        return SPLITS[split]
    if isinstance(split, (int, np.integer)) and not isinstance(split, bool) and int(split) in SPLITS.values():
        return int(split)
    raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLITS)} or 0/1/2")


def split_indices(filenames: Sequence[str], partition: dict[str, int], split: str | int) -> np.ndarray:
    """Row indices (into filenames, in their order) of the files whose partition is `split`
    ("train"/"val"/"test" or 0/1/2). Every file must be in the partition: a mismatch between the attribute
    and partition files would silently change the splits, so it raises ValueError naming the file."""
    target = split_id(split)
    parts = np.fromiter((partition.get(f, -1) for f in filenames), dtype=np.int64, count=len(filenames))
    missing = np.flatnonzero(parts < 0)
    if len(missing):
        name = filenames[int(missing[0])]
        raise ValueError(
            f"{name} (row {int(missing[0])} of the attribute list) is not in {PARTITION_FILE}: the attribute "
            f"and partition files do not match ({len(missing)} file(s) missing from the partition)"
        )
    return np.flatnonzero(parts == target)


# ---------------------------------------------------------------------------------------------------------------
# Image loading
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class CelebASplit:
    """One decoded split: images uint8 (N, 3, S, S), labels int8 (N, n) of -1/+1, aligned with filenames."""

    images: torch.Tensor
    labels: torch.Tensor
    filenames: list[str]
    attr_names: list[str]

    def __len__(self) -> int:
        return len(self.filenames)


def load_celeba_image(path: str, image_size: int = 64) -> np.ndarray:
    """Decode one CelebA image and preprocess it (preprocess_image) -> uint8 (S, S, 3).
    An unreadable or corrupt file raises CelebAFormatError (ValueError) naming the path."""
    try:
        with Image.open(path) as img:
            return preprocess_image(img, image_size)
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        raise CelebAFormatError(f"cannot decode image {path}: {type(e).__name__}: {e}") from None


def to_unit_range(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 images in [0, 255] -> float32 in [-1, 1] ((x / 127.5) - 1), the range the decoder's tanh outputs."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8:
        raise ValueError(f"to_unit_range expects uint8 images, got {images.dtype}")
    return images.to(torch.float32) / 127.5 - 1.0


def labels_to_binary(labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """CelebA labels -1/+1 -> float32 0/1 (for BCE targets and conditioning vectors)."""
    labels = torch.as_tensor(labels)
    if labels.numel() and not ((labels == 1) | (labels == -1)).all():
        bad = labels[(labels != 1) & (labels != -1)][0].item()
        raise ValueError(f"labels_to_binary expects values -1/+1, found {bad!r}")
    return (labels > 0).to(torch.float32)
