"""Generated CelebA-format data (dualvae.data.synth): layout, determinism, label statistics, visible attributes,
persons."""
import collections
import filecmp
import hashlib
import io
import os
import re

import numpy as np
import pytest
from PIL import Image

from dualvae.data.celeba import (
    CELEBA_ATTRIBUTES,
    preprocess_image,
    read_celeba_attributes,
    read_celeba_identities,
    read_celeba_partition,
)
from dualvae.data.synth import (
    CELEBA_FREQUENCIES,
    PERSON_TRAITS,
    draw_persons,
    render_face,
    sample_attributes,
    write_preview,
    write_synth_celeba,
)

A = {name: i for i, name in enumerate(CELEBA_ATTRIBUTES)}
HAIR = ("Black_Hair", "Blond_Hair", "Brown_Hair", "Gray_Hair")
TEXT_FILES = ("list_attr_celeba.txt", "list_eval_partition.txt", "list_landmarks_align_celeba.txt",
              "identity_CelebA.txt")


@pytest.fixture(scope="module")
def synth_dirs(tmp_path_factory):
    """The same seed written twice (1 worker, 2 workers) and another seed once."""
    base = tmp_path_factory.mktemp("synth")
    dirs = {}
    for key, seed, workers in (("a1", 3, 1), ("a2", 3, 2), ("b", 4, 1)):
        dirs[key] = str(base / key)
        write_synth_celeba(dirs[key], num=40, seed=seed, workers=workers, progress=False)
    return dirs


@pytest.fixture(scope="module")
def labels():
    return sample_attributes(np.random.default_rng(123), 20000)


def _files(root):
    return sorted(os.listdir(os.path.join(root, "img_align_celeba")))


def test_deterministic_whatever_the_workers(synth_dirs):
    a1, a2 = synth_dirs["a1"], synth_dirs["a2"]
    names = _files(a1)
    assert names == _files(a2)
    match, mismatch, errors = filecmp.cmpfiles(
        os.path.join(a1, "img_align_celeba"), os.path.join(a2, "img_align_celeba"), names, shallow=False
    )
    assert not mismatch and not errors and len(match) == 40
    for name in TEXT_FILES:
        assert filecmp.cmp(os.path.join(a1, name), os.path.join(a2, name), shallow=False), name


def test_another_seed_differs(synth_dirs):
    a1, b = synth_dirs["a1"], synth_dirs["b"]
    with open(os.path.join(a1, "list_attr_celeba.txt")) as f1, open(os.path.join(b, "list_attr_celeba.txt")) as f2:
        assert f1.read() != f2.read()
    same = sum(
        filecmp.cmp(os.path.join(a1, "img_align_celeba", n), os.path.join(b, "img_align_celeba", n), shallow=False)
        for n in _files(a1)
    )
    assert same == 0


def test_layout_and_text_formats(synth_dirs):
    root = synth_dirs["a1"]
    names = [f"{i:06d}.jpg" for i in range(1, 41)]
    assert _files(root) == names
    for name in names[:5]:
        with Image.open(os.path.join(root, "img_align_celeba", name)) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (178, 218)

    with open(os.path.join(root, "list_attr_celeba.txt"), newline="") as f:
        lines = f.read().split("\n")
    assert lines[-1] == "" and len(lines) == 43
    assert lines[0] == "40"
    assert lines[1] == " ".join(CELEBA_ATTRIBUTES) + " "
    row = re.compile(r"^\d{6}\.jpg( (-1| 1)){40}$")
    for i, line in enumerate(lines[2:-1]):
        assert row.match(line), line
        assert line.startswith(names[i])

    with open(os.path.join(root, "list_eval_partition.txt")) as f:
        parts = [line.split() for line in f.read().splitlines()]
    assert [p[0] for p in parts] == names
    splits = [int(p[1]) for p in parts]
    assert set(splits) <= {0, 1, 2} and splits == sorted(splits) and splits[0] == 0 and splits[-1] == 2

    with open(os.path.join(root, "list_landmarks_align_celeba.txt")) as f:
        lm = f.read().splitlines()
    assert lm[0] == "40" and lm[1].split() == (
        "lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y leftmouth_x leftmouth_y rightmouth_x rightmouth_y"
    ).split()
    coords = np.array([[int(v) for v in line.split()[1:]] for line in lm[2:]])
    assert coords.shape == (40, 10)
    assert (coords[:, 0::2] > 0).all() and (coords[:, 0::2] < 178).all()
    assert (coords[:, 1::2] > 20).all() and (coords[:, 1::2] < 198).all()
    assert (coords[:, 0] < coords[:, 2]).all() and (coords[:, 1] < coords[:, 5]).all()  # left eye left, eyes above nose

    # The project's readers accept it.
    filenames, attr_names, labels = read_celeba_attributes(root)
    assert filenames == names and attr_names == list(CELEBA_ATTRIBUTES) and tuple(labels.shape) == (40, 40)
    assert set(read_celeba_partition(root).values()) <= {0, 1, 2}


def test_labels_written_are_the_sampled_ones(synth_dirs):
    from dualvae.data.synth import _label_rng

    _, _, labels = read_celeba_attributes(synth_dirs["a1"])
    assert np.array_equal(labels.numpy(), sample_attributes(_label_rng(3), 40))


def test_sample_attributes_shape_and_values(labels):
    assert labels.dtype == np.int8 and labels.shape == (20000, 40)
    assert set(np.unique(labels).tolist()) == {-1, 1}
    again = sample_attributes(np.random.default_rng(123), 20000)
    assert np.array_equal(labels, again)


@pytest.mark.parametrize("name", CELEBA_ATTRIBUTES)
def test_frequencies_match_celeba(labels, name):
    freq = float((labels[:, A[name]] > 0).mean())
    assert abs(freq - CELEBA_FREQUENCIES[name]) <= 0.04, (name, freq)


def test_dependencies(labels):
    on = {name: labels[:, i] > 0 for name, i in A.items()}
    male, young = on["Male"], on["Young"]
    assert on["Heavy_Makeup"][male].mean() < 0.05
    assert on["Wearing_Lipstick"][male].mean() < 0.05
    for name in ("Mustache", "Goatee", "Sideburns", "5_o_Clock_Shadow", "Wearing_Necktie"):
        assert male[on[name]].mean() > 0.9, name
    # No_Beard is -1 whenever a goatee or mustache is present
    assert not (on["No_Beard"] & (on["Goatee"] | on["Mustache"])).any()
    hair = np.stack([on[h] for h in HAIR])
    assert hair.sum(0).max() <= 1
    assert not (on["Bald"] & hair.any(0)).any()
    assert not (on["Straight_Hair"] & on["Wavy_Hair"]).any()
    smiling = labels[:, A["Smiling"]].astype(float)
    assert np.corrcoef(smiling, labels[:, A["Mouth_Slightly_Open"]])[0, 1] > 0.3
    assert np.corrcoef(smiling, labels[:, A["High_Cheekbones"]])[0, 1] > 0.3
    assert on["Gray_Hair"][young].mean() < on["Gray_Hair"][~young].mean()
    assert on["Bald"][young].mean() < on["Bald"][~young].mean()


def test_render_face_output():
    row = sample_attributes(np.random.default_rng(0), 1)[0]
    img, marks = render_face(row, np.random.default_rng(1))
    assert img.mode == "RGB" and img.size == (178, 218)
    assert marks.shape == (10,)
    img2, marks2 = render_face(row, np.random.default_rng(1))
    assert np.array_equal(np.asarray(img), np.asarray(img2)) and np.array_equal(marks, marks2)
    with pytest.raises(ValueError):
        render_face(row[:39], np.random.default_rng(1))


def _with(row, name, value):
    """row with attribute `name` set to value, and the attributes that contradict it switched off."""
    row = row.copy()
    row[A[name]] = value
    if value > 0:
        if name in HAIR:
            row[[A[h] for h in HAIR if h != name]] = -1
            row[A["Bald"]] = -1
        if name == "Bald":
            row[[A[h] for h in HAIR]] = -1
        if name in ("Goatee", "Mustache"):
            row[A["No_Beard"]] = -1
        if name == "No_Beard":
            row[[A["Goatee"], A["Mustache"]]] = -1
        if name == "5_o_Clock_Shadow" and row[A["Goatee"]] < 0 and row[A["Mustache"]] < 0:
            row[A["No_Beard"]] = 1  # stubble is not drawn under a full beard
        pairs = {"Wavy_Hair": "Straight_Hair", "Straight_Hair": "Wavy_Hair",
                 "Bangs": "Receding_Hairline", "Receding_Hairline": "Bangs"}
        if name in pairs:
            row[A[pairs[name]]] = -1
    return row


def test_every_attribute_is_visible_at_64px():
    """Flipping one attribute (same RNG state) must change a patch of the 64x64 preprocessed image, for every
    attribute and several faces (men, women, young, old)."""
    bases = sample_attributes(np.random.default_rng(11), 8)
    bases[:, [A["Bald"], A["Wearing_Hat"], A["Blurry"], A["Eyeglasses"]]] = -1  # they hide other cues
    bases[:4, A["Male"]] = 1
    bases[4:, A["Male"]] = -1
    bases[::2, A["Young"]] = -1
    weak = []
    for name in CELEBA_ATTRIBUTES:
        counts = []
        for b, base in enumerate(bases):
            hi = _with(base, name, 1)
            lo = hi.copy()
            lo[A[name]] = -1
            x1 = preprocess_image(render_face(hi, np.random.default_rng(b))[0]).astype(int)
            x0 = preprocess_image(render_face(lo, np.random.default_rng(b))[0]).astype(int)
            counts.append(int((np.abs(x1 - x0).max(-1) > 24).sum()))
        if min(counts) < 6 or np.median(counts) < 15:
            weak.append((name, counts))
    assert not weak, weak


def test_write_preview(synth_dirs, tmp_path):
    path = write_preview(synth_dirs["a1"], str(tmp_path / "sub" / "preview.png"), per_attribute=3)
    assert path == str(tmp_path / "sub" / "preview.png")
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert h >= 40 * 128 and w >= 5 * 128


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        write_synth_celeba(str(tmp_path / "x"), num=0, progress=False)
    with pytest.raises(ValueError):
        write_synth_celeba(str(tmp_path / "x"), num=5, workers=0, progress=False)
    with pytest.raises(ValueError, match="images_per_person"):
        write_synth_celeba(str(tmp_path / "x"), num=5, images_per_person=0, progress=False)
    assert not os.path.exists(tmp_path / "x")


# sha256 of seed 3's 40-image attribute and partition files as written before the generator drew persons: pure
# functions of the seed's random numbers, the same on every CPU.
UNCHANGED = {
    "list_attr_celeba.txt": "1f17ed8bc0b7577b77d6eeee9f8031cdcd9231921138ae528499bc14a3f9e13e",
    "list_eval_partition.txt": "821d83f4de83a6e29f97cf9b9ca7a0b39f433cb419030df320f1d5bf0b9e55f2",
}


def _persons(ids: np.ndarray) -> dict[int, np.ndarray]:
    return {int(p): np.flatnonzero(ids == p) for p in np.unique(ids)}


def _check_persons(ids, labels, partition):
    """Identities 1 .. P, each person's images in one split and sharing every PERSON_TRAITS value."""
    assert ids.dtype == np.int64 and sorted(set(ids.tolist())) == list(range(1, len(set(ids.tolist())) + 1))
    cols = [A[name] for name in PERSON_TRAITS]
    for p, rows in _persons(ids).items():
        assert len(set(np.asarray(partition)[rows].tolist())) == 1, p
        assert (labels[rows][:, cols] == labels[rows[0]][cols]).all(), p


def test_identities_written_and_images_unchanged(synth_dirs):
    from dualvae.data.synth import _image_rng

    root = synth_dirs["a1"]
    for name, digest in UNCHANGED.items():
        with open(os.path.join(root, name), "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, name
    filenames, _, labels = read_celeba_attributes(root)
    ids = read_celeba_identities(root, filenames)  # every image listed once, with an identity >= 1
    assert len(ids) == 40 and len(read_celeba_identities(root)) == 40
    partition = read_celeba_partition(root)
    _check_persons(ids, labels.numpy(), [partition[f] for f in filenames])
    assert max(collections.Counter(ids.tolist()).values()) >= 2  # persons of several images, even at 40
    # the JPEG bytes are the render of (attributes, the image's own RNG) alone, as before persons existed
    for i in (0, 17, 39):
        img, _ = render_face(labels.numpy()[i], _image_rng(3, i))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        with open(os.path.join(root, "img_align_celeba", f"{i + 1:06d}.jpg"), "rb") as f:
            assert f.read() == buf.getvalue(), i


def test_persons_at_the_default_size():
    """At the default 6,000 images: several images per person, about images_per_person on average."""
    from dualvae.data.celeba import celeba_partition_of
    from dualvae.data.synth import _label_rng

    num = 6000
    labels = sample_attributes(_label_rng(0), num)
    partition = [celeba_partition_of(i, num) for i in range(num)]
    ids = draw_persons(labels, partition, np.random.default_rng(1))
    _check_persons(ids, labels, partition)
    sizes = np.array([len(r) for r in _persons(ids).values()])
    assert 7 <= sizes.mean() <= 11 and np.median(sizes) >= 8, (sizes.mean(), np.median(sizes))
    assert (sizes >= 5).mean() > 0.75 and sizes.max() <= 15
    train = set(ids[np.asarray(partition) == 0].tolist())
    assert len(train) > 400 and not train & set(ids[np.asarray(partition) != 0].tolist())
    again = draw_persons(labels, partition, np.random.default_rng(1))
    assert np.array_equal(ids, again) and not np.array_equal(ids, draw_persons(labels, partition,
                                                                               np.random.default_rng(2)))
    small = draw_persons(labels, partition, np.random.default_rng(1), images_per_person=3)
    _check_persons(small, labels, partition)
    assert 2.5 <= np.mean([len(r) for r in _persons(small).values()]) <= 3.5
    with pytest.raises(ValueError, match="images_per_person"):
        draw_persons(labels, partition, np.random.default_rng(1), images_per_person=0)


def test_synth_cli_writes_persons(tmp_path, capsys):
    from dualvae.cli import main

    out = str(tmp_path / "s")
    assert main(["synth", "--out", out, "--num", "12", "--seed", "3", "--workers", "1",
                 "--images-per-person", "2"]) == 0
    assert "identity_CelebA.txt (persons of about 2 images)" in capsys.readouterr().out
    filenames, _, labels = read_celeba_attributes(out)
    ids = read_celeba_identities(out, filenames)
    partition = read_celeba_partition(out)
    _check_persons(ids, labels.numpy(), [partition[f] for f in filenames])
