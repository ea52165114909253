"""Generated CelebA-format data: cartoon faces whose 40 CelebA attributes are visible in the pixels.

CelebA itself cannot be downloaded here, so this module is the project's embedded default dataset. It writes a
folder laid out exactly like an aligned-and-cropped CelebA download (see data/celeba.py and
shared/celeba-format.md): img_align_celeba/000001.jpg ..., list_attr_celeba.txt, list_eval_partition.txt and
list_landmarks_align_celeba.txt.

* Labels (`sample_attributes`) follow CelebA's published frequencies and main dependencies, from a small
  hand-written generative process: Male and Young first, then the attributes that depend on them.
* Images (`render_face`, data/face.py) are drawn with PIL ImageDraw in canonical face coordinates that pass
  through a random pose (rotation +-8 deg, scale +-8%, shift +-6 px) before drawing, then lit by a random darkening
  ramp and, for Blurry, Gaussian-blurred. Every attribute has its own cue, made
  large enough to survive the 64x64 preprocessing (crop rows 20:198, downscale x0.36) and a blurry VAE
  reconstruction. All random numbers of an image are drawn up front in a fixed order, independent of its
  attributes, so rendering the same RNG state with one attribute flipped changes only that attribute's cue.
* Persons (`draw_persons`): the images are grouped by split and by the traits a person keeps from photo to
  photo (PERSON_TRAITS: sex, age group, hair colour or baldness, pale skin, big nose), and each group is cut at
  random into persons of about `images_per_person` images, numbered 1 .. P in a random order
  (identity_CelebA.txt). A person's images share those traits and their split, nothing else: each image is still
  drawn on its own. Persons come from their own RNG stream after the labels and images, so the images and
  attributes are those of a run that writes no identities.
* `write_synth_celeba` is deterministic for a seed whatever the number of workers: labels come from one
  seed-derived RNG, each image from its own np.random.SeedSequence([seed, index]), the persons from a third.
"""
from __future__ import annotations

import math
import multiprocessing
import os

import numpy as np
from PIL import Image, ImageDraw

from .celeba import (
    ATTRIBUTE_INDEX,
    CELEBA_ATTRIBUTES,
    IMAGE_DIR,
    celeba_partition_of,
    preprocess_image,
    write_celeba_attributes,
    write_celeba_identities,
    write_celeba_landmarks,
    write_celeba_partition,
)
from .face import NUM_ATTRIBUTES, render_face

HAIR_COLOURS = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
# The attributes every image of a generated person shares: what stays from one photo of a face to the next
# (expression, makeup, accessories, beard, hair style and pose change).
PERSON_TRAITS = ("Male", "Young", "Bald", *HAIR_COLOURS, "Pale_Skin", "Big_Nose")
IMAGES_PER_PERSON = 10

# CelebA's attribute frequencies (share of +1), from shared/celeba-format.md.
CELEBA_FREQUENCIES = {
    "5_o_Clock_Shadow": 0.11, "Arched_Eyebrows": 0.27, "Attractive": 0.51, "Bags_Under_Eyes": 0.20,
    "Bald": 0.02, "Bangs": 0.15, "Big_Lips": 0.24, "Big_Nose": 0.23, "Black_Hair": 0.24, "Blond_Hair": 0.15,
    "Blurry": 0.05, "Brown_Hair": 0.21, "Bushy_Eyebrows": 0.14, "Chubby": 0.06, "Double_Chin": 0.05,
    "Eyeglasses": 0.07, "Goatee": 0.06, "Gray_Hair": 0.04, "Heavy_Makeup": 0.39, "High_Cheekbones": 0.46,
    "Male": 0.42, "Mouth_Slightly_Open": 0.48, "Mustache": 0.04, "Narrow_Eyes": 0.12, "No_Beard": 0.83,
    "Oval_Face": 0.28, "Pale_Skin": 0.04, "Pointy_Nose": 0.28, "Receding_Hairline": 0.08, "Rosy_Cheeks": 0.07,
    "Sideburns": 0.06, "Smiling": 0.48, "Straight_Hair": 0.21, "Wavy_Hair": 0.32, "Wearing_Earrings": 0.19,
    "Wearing_Hat": 0.05, "Wearing_Lipstick": 0.47, "Wearing_Necklace": 0.12, "Wearing_Necktie": 0.07,
    "Young": 0.78,
}


# ---------------------------------------------------------------------------------------------------------------
# Labels
# ---------------------------------------------------------------------------------------------------------------


def sample_attributes(rng: np.random.Generator, num: int) -> np.ndarray:
    """num rows of the 40 CelebA attributes -> int8 (num, 40) of -1/+1, in CelebA's order and frequencies.

    Male and Young are drawn first; the rest conditionally on them (and on each other where CelebA's labels
    depend): makeup and lipstick almost only without Male; facial hair, sideburns, stubble and neckties mostly
    with Male; No_Beard is -1 whenever Goatee, Mustache or a full beard is present; at most one of
    Black/Blond/Brown/Gray_Hair, none when Bald; Smiling drives Mouth_Slightly_Open and High_Cheekbones; gray
    hair mostly when not Young."""
    n = int(num)
    u = rng.random((n, 48))  # one column per decision, in a fixed order
    col = iter(range(48))

    def draw(p) -> np.ndarray:
        return u[:, next(col)] < p

    male = draw(0.42)
    young = draw(np.where(male, 0.68, 0.85))
    m, f, y, o = male, ~male, young, ~young
    out = np.zeros((n, NUM_ATTRIBUTES), dtype=bool)

    def put(name: str, value: np.ndarray) -> np.ndarray:
        out[:, ATTRIBUTE_INDEX[name]] = value
        return value

    put("Male", male)
    put("Young", young)

    # Hair: bald, then gray, then one of black/blond/brown/other.
    bald = put("Bald", draw(np.where(m, np.where(y, 0.02, 0.115), 0.001)))
    gray = put("Gray_Hair", ~bald & draw(np.where(y, 0.008, 0.155)))
    has_colour = ~bald & ~gray
    v = u[:, next(col)]
    p_black = np.where(m, 0.29, 0.23)
    p_blond = np.where(m, 0.045, 0.245)
    p_brown = np.where(m, 0.215, 0.225)
    put("Black_Hair", has_colour & (v < p_black))
    put("Blond_Hair", has_colour & (v >= p_black) & (v < p_black + p_blond))
    put("Brown_Hair", has_colour & (v >= p_black + p_blond) & (v < p_black + p_blond + p_brown))
    wavy = put("Wavy_Hair", ~bald & draw(np.where(m, 0.15, 0.47)))
    put("Straight_Hair", ~bald & ~wavy & draw(np.where(m, 0.30, 0.34)))
    bangs = put("Bangs", ~bald & draw(np.where(m, 0.085, 0.205)))
    # Bangs would hide a receding hairline: the two exclude each other.
    put("Receding_Hairline", ~bald & ~bangs & draw(np.where(m, np.where(y, 0.088, 0.27), np.where(y, 0.045, 0.11))))

    # Facial hair (men): any facial hair, then goatee / mustache; neither of them means a full beard.
    facial = draw(np.where(m, 0.405, 0.003))
    goatee = put("Goatee", facial & draw(0.35))
    mustache = put("Mustache", facial & draw(0.235))
    put("No_Beard", ~facial)
    full_beard = facial & ~goatee & ~mustache
    put("5_o_Clock_Shadow", ~full_beard & draw(np.where(m, np.where(facial, 0.12, 0.41), 0.004)))
    put("Sideburns", draw(np.where(m, np.where(facial, 0.22, 0.075), 0.002)))
    del goatee, mustache

    # Makeup.
    makeup = put("Heavy_Makeup", draw(np.where(m, 0.007, np.where(y, 0.72, 0.34))))
    put("Wearing_Lipstick", draw(np.where(m, 0.008, np.where(makeup, 0.97, 0.47))))

    # Expression.
    smiling = put("Smiling", draw(0.48))
    put("Mouth_Slightly_Open", draw(np.where(smiling, 0.72, 0.25)))
    put("High_Cheekbones", draw(np.where(smiling, np.where(f, 0.84, 0.72), np.where(f, 0.17, 0.10))))

    # Face and features.
    put("Attractive", draw(np.where(f, np.where(y, 0.75, 0.25), np.where(y, 0.40, 0.10))))
    put("Bags_Under_Eyes", draw(np.where(y, 0.14, 0.42)))
    put("Arched_Eyebrows", draw(np.where(f, 0.42, 0.06)))
    put("Bushy_Eyebrows", draw(np.where(m, 0.25, 0.06)))
    put("Big_Lips", draw(np.where(f, 0.27, 0.20)))
    put("Big_Nose", draw(np.where(m, 0.40, np.where(y, 0.08, 0.20))))
    put("Pointy_Nose", draw(np.where(f, 0.35, 0.18)))
    put("Narrow_Eyes", draw(0.12))
    chubby = put("Chubby", draw(np.where(y, 0.04, 0.13)))
    put("Double_Chin", draw(np.where(chubby, 0.5, np.where(y, 0.017, 0.055))))
    put("Oval_Face", ~chubby & draw(np.where(f, 0.35, 0.23)))
    put("Pale_Skin", draw(np.where(f, 0.06, 0.015)))
    put("Rosy_Cheeks", draw(np.where(f, 0.11, 0.01)))
    put("Blurry", draw(0.05))
    put("Eyeglasses", draw(np.where(y, 0.05, 0.14)))

    # Accessories.
    put("Wearing_Earrings", draw(np.where(f, 0.31, 0.03)))
    put("Wearing_Hat", draw(0.05))
    put("Wearing_Necklace", draw(np.where(f, 0.20, 0.01)))
    put("Wearing_Necktie", draw(np.where(m, 0.16, 0.005)))
    return np.where(out, 1, -1).astype(np.int8)


# ---------------------------------------------------------------------------------------------------------------
# Writing a dataset
# ---------------------------------------------------------------------------------------------------------------


def _image_rng(seed: int, index: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(index)])))  # = default_rng


def _label_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(7,)))


def _person_rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(int(seed), spawn_key=(11,)))


def _check_images_per_person(images_per_person) -> None:
    if isinstance(images_per_person, bool) or not isinstance(images_per_person, (int, np.integer)) or \
            images_per_person < 1:
        raise ValueError(f"images_per_person must be a positive integer, got {images_per_person!r}")


def draw_persons(labels: np.ndarray, partition, rng: np.random.Generator,
                 images_per_person: int = IMAGES_PER_PERSON) -> np.ndarray:
    """The person (an identity in 1 .. P) of each image, int64 (num,): the images are grouped by split and by
    their PERSON_TRAITS; each group, shuffled, is cut into round(size / images_per_person) persons (at least
    one) of near-equal sizes; the persons are numbered in a random order."""
    _check_images_per_person(images_per_person)
    labels = np.asarray(labels)
    traits = labels[:, [ATTRIBUTE_INDEX[name] for name in PERSON_TRAITS]] > 0
    keys = np.concatenate([np.asarray(partition, dtype=np.int64)[:, None], traits.astype(np.int64)], 1)
    _, group = np.unique(keys, axis=0, return_inverse=True)
    group = group.reshape(-1)
    person = np.empty(len(labels), dtype=np.int64)
    count = 0
    for g in range(int(group.max()) + 1 if len(group) else 0):
        members = rng.permutation(np.flatnonzero(group == g))
        parts = max(1, int(round(len(members) / images_per_person)))
        for part in np.array_split(members, parts):
            person[part] = count
            count += 1
    return (rng.permutation(count) + 1)[person].astype(np.int64)


def _filename(index: int) -> str:
    return f"{index + 1:06d}.jpg"


def _render_chunk(task) -> tuple[int, np.ndarray]:
    """Pool worker: render and save images start.. of the chunk -> (start, landmarks (k, 10))."""
    image_dir, seed, start, labels = task
    marks = np.empty((len(labels), 10), dtype=np.float64)
    for j, row in enumerate(labels):
        index = start + j
        img, marks[j] = render_face(row, _image_rng(seed, index))
        img.save(os.path.join(image_dir, _filename(index)), format="JPEG", quality=90)
    return start, marks


def write_synth_celeba(out: str, num: int = 6000, seed: int = 0, workers: int | None = None,
                       progress: bool = True, images_per_person: int = IMAGES_PER_PERSON) -> None:
    """Write `num` generated faces as a CelebA-format folder at `out` (created if needed; files overwritten).

    out/img_align_celeba/000001.jpg ... (178x218 RGB JPEG), then list_attr_celeba.txt, list_eval_partition.txt
    (CelebA's train/val/test proportions, in order), identity_CelebA.txt (`draw_persons`: persons of about
    `images_per_person` images) and list_landmarks_align_celeba.txt, written last so that a half-written folder
    has no annotation files. Byte-identical output for a seed, whatever `workers` (None: os.cpu_count(); 1: no
    pool)."""
    from tqdm import tqdm

    num = int(num)
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num!r}")
    workers = (os.cpu_count() or 1) if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers!r}")
    _check_images_per_person(images_per_person)  # before any file is written
    image_dir = os.path.join(out, IMAGE_DIR)
    os.makedirs(image_dir, exist_ok=True)

    labels = sample_attributes(_label_rng(seed), num)
    filenames = [_filename(i) for i in range(num)]
    chunk = max(1, min(200, math.ceil(num / (workers * 4))))
    tasks = [(image_dir, seed, i, labels[i : i + chunk]) for i in range(0, num, chunk)]
    workers = min(workers, len(tasks))
    landmarks = np.empty((num, 10), dtype=np.float64)
    with tqdm(total=num, unit="img", desc="synth CelebA", disable=not progress) as bar:
        if workers <= 1:
            results = map(_render_chunk, tasks)
            for start, marks in results:
                landmarks[start : start + len(marks)] = marks
                bar.update(len(marks))
        else:
            with multiprocessing.get_context().Pool(workers) as pool:
                for start, marks in pool.imap_unordered(_render_chunk, tasks):
                    landmarks[start : start + len(marks)] = marks
                    bar.update(len(marks))

    partition = [celeba_partition_of(i, num) for i in range(num)]
    write_celeba_attributes(out, filenames, CELEBA_ATTRIBUTES, labels)
    write_celeba_partition(out, filenames, partition)
    write_celeba_identities(out, filenames, draw_persons(labels, partition, _person_rng(seed), images_per_person))
    write_celeba_landmarks(out, filenames, landmarks)


# ---------------------------------------------------------------------------------------------------------------
# Preview
# ---------------------------------------------------------------------------------------------------------------


def write_preview(root: str, path: str, per_attribute: int = 6, negatives: int = 2) -> str:
    """A PNG contact sheet of a CelebA-format root (generated or real): one row per attribute with its name,
    `per_attribute` images that have it and, after a gap, `negatives` that do not, each shown as the model sees
    it (preprocess_image: 64x64 face square) scaled x2. Returns path."""
    from .celeba import read_celeba_attributes

    filenames, attr_names, labels = read_celeba_attributes(root, check_images=False)
    labels = labels.numpy()
    image_dir = os.path.join(root, IMAGE_DIR)
    cell, label_w, gap = 128, 150, 16
    ncols = per_attribute + negatives
    width = label_w + ncols * (cell + 2) + gap
    sheet = Image.new("RGB", (width, len(attr_names) * (cell + 4) + 4), (255, 255, 255))
    dr = ImageDraw.Draw(sheet)
    cache: dict[int, Image.Image] = {}

    def thumb(i: int) -> Image.Image:
        if i not in cache:
            with Image.open(os.path.join(image_dir, filenames[i])) as im:
                cache[i] = Image.fromarray(preprocess_image(im)).resize((cell, cell), Image.NEAREST)
        return cache[i]

    for r, name in enumerate(attr_names):
        y = 4 + r * (cell + 4)
        dr.text((4, y + cell // 2 - 6), name, fill=(0, 0, 0))
        pos = np.flatnonzero(labels[:, r] > 0)[:per_attribute]
        neg = np.flatnonzero(labels[:, r] < 0)[:negatives]
        for j, i in enumerate(pos):
            sheet.paste(thumb(int(i)), (label_w + j * (cell + 2), y))
        x0 = label_w + per_attribute * (cell + 2) + gap
        dr.rectangle([x0 - gap + 4, y, x0 - 6, y + cell], fill=(200, 0, 0))
        for j, i in enumerate(neg):
            sheet.paste(thumb(int(i)), (x0 + j * (cell + 2), y))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    sheet.save(path)
    return path
