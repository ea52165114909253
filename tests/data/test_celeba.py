"""CelebA readers, writers, preprocessing and split loading, on small CelebA-format fixtures built in tmp_path.

Annotation files are written here as literal strings (not with the writers under test), so a reader and a writer
that agree on a wrong format would still fail.
"""
from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from dualvae.data import (
    CELEBA_ATTRIBUTES,
    CelebASplit,
    labels_to_binary,
    preprocess_image,
    read_celeba_attributes,
    read_celeba_identities,
    read_celeba_partition,
    read_split,
    split_indices,
    to_unit_range,
    write_celeba_attributes,
    write_celeba_identities,
    write_celeba_partition,
)

ATTR = "list_attr_celeba.txt"
PART = "list_eval_partition.txt"
IMAGES = "img_align_celeba"

# The first two rows of a real-format list_attr_celeba.txt, exactly as CelebA spaces them.
CELEBA_HEADER = " ".join(CELEBA_ATTRIBUTES) + " "
ROW1 = "000001.jpg -1  1  1 -1 -1 -1 -1 -1 -1 -1 -1  1 -1 -1 -1 -1 -1 -1  1  1 -1  1 -1 -1  1 -1 -1  1 -1 -1 -1  1  1 -1  1 -1  1 -1 -1  1"
ROW2 = "000002.jpg -1 -1 -1  1 -1 -1 -1  1 -1 -1 -1  1 -1 -1 -1 -1 -1 -1 -1  1 -1  1 -1 -1  1 -1 -1  1 -1 -1 -1  1 -1 -1 -1 -1 -1 -1 -1  1"
VALUES1 = [-1, 1, 1, -1, -1, -1, -1, -1, -1, -1, -1, 1, -1, -1, -1, -1, -1, -1, 1, 1,
           -1, 1, -1, -1, 1, -1, -1, 1, -1, -1, -1, 1, 1, -1, 1, -1, 1, -1, -1, 1]
VALUES2 = [-1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1, -1, -1, -1, -1, 1,
           -1, 1, -1, -1, 1, -1, -1, 1, -1, -1, -1, 1, -1, -1, -1, -1, -1, -1, -1, 1]


def write_text(root, name: str, text: str) -> str:
    """Write text byte for byte (no newline translation)."""
    path = os.path.join(root, name)
    with open(path, "w", newline="") as f:
        f.write(text)
    return path


def touch_images(root, names) -> None:
    """Empty placeholder files: enough for the readers' on-disk check (they never decode)."""
    os.makedirs(os.path.join(root, IMAGES), exist_ok=True)
    for name in names:
        open(os.path.join(root, IMAGES, name), "wb").close()


# --------------------------------------------------------------------------------------------- attribute reader


def test_reads_exact_celeba_spacing(tmp_path):
    write_text(tmp_path, ATTR, f"2\n{CELEBA_HEADER}\n{ROW1}\n{ROW2}\n")
    touch_images(tmp_path, ["000001.jpg", "000002.jpg"])
    filenames, attr_names, labels = read_celeba_attributes(tmp_path)
    assert filenames == ["000001.jpg", "000002.jpg"]
    assert attr_names == list(CELEBA_ATTRIBUTES)
    assert labels.dtype == torch.int8 and labels.shape == (2, 40)
    assert labels.tolist() == [VALUES1, VALUES2]


def test_runs_of_spaces_and_tabs_three_attributes(tmp_path):
    text = "3\nSmiling \t Male\tYoung\n" "a.jpg\t1 \t -1   1\n" "b.jpg  -1\t\t-1 -1\n" "   c.jpg 1 1   +1   \n"
    write_text(tmp_path, ATTR, text)
    filenames, attr_names, labels = read_celeba_attributes(tmp_path, check_images=False)
    assert filenames == ["a.jpg", "b.jpg", "c.jpg"]
    assert attr_names == ["Smiling", "Male", "Young"]
    assert labels.tolist() == [[1, -1, 1], [-1, -1, -1], [1, 1, 1]]


def test_crlf_trailing_spaces_no_final_newline_one_attribute(tmp_path):
    text = "2  \r\nSmiling \r\nx.jpg  1  \r\ny.jpg -1 "
    write_text(tmp_path, ATTR, text)
    filenames, attr_names, labels = read_celeba_attributes(tmp_path, check_images=False)
    assert (filenames, attr_names, labels.tolist()) == (["x.jpg", "y.jpg"], ["Smiling"], [[1], [-1]])


def test_trailing_blank_lines_are_ignored(tmp_path):
    write_text(tmp_path, ATTR, "1\r\nSmiling\r\nx.jpg -1\r\n\r\n  \r\n\n")
    filenames, _, labels = read_celeba_attributes(tmp_path, check_images=False)
    assert filenames == ["x.jpg"] and labels.tolist() == [[-1]]


def test_header_names_come_from_the_file_not_the_constant(tmp_path):
    write_text(tmp_path, ATTR, "1\nA B C D E\nx.jpg 1 -1 1 -1 1\n")
    _, attr_names, labels = read_celeba_attributes(tmp_path, check_images=False)
    assert attr_names == ["A", "B", "C", "D", "E"] and labels.shape == (1, 5)


GOOD_3 = "3\nA B C\n000001.jpg  1 -1  1\n000002.jpg -1 -1  1\n000003.jpg  1  1 -1\n"


@pytest.mark.parametrize(
    "text, line, message",
    [
        # wrong column count (too few, too many, a blank line inside the table)
        ("3\nA B C\n000001.jpg  1 -1  1\n000002.jpg -1 -1\n000003.jpg  1  1 -1\n", 4, "expected 4 columns.*found 3"),
        ("3\nA B C\n000001.jpg  1 -1  1\n000002.jpg -1 -1  1\n000003.jpg  1  1 -1 1\n", 5, "expected 4 columns.*found 5"),
        ("3\nA B C\n000001.jpg  1 -1  1\n\n000002.jpg -1 -1  1\n000003.jpg  1  1 -1\n", 4, "found 0"),
        # values that are not +-1
        ("3\nA B C\n000001.jpg  1 -1  1\n000002.jpg -1  0  1\n000003.jpg  1  1 -1\n", 4, r"'0'.*'B'.*000002\.jpg"),
        ("3\nA B C\n000001.jpg  1 -1  1\n000002.jpg -1 -1  1\n000003.jpg  1  1  2\n", 5, r"'2'.*'C'"),
        ("3\nA B C\n000001.jpg  x -1  1\n000002.jpg -1 -1  1\n000003.jpg  1  1 -1\n", 3, r"'x'.*'A'"),
        ("3\nA B C\n000001.jpg  1 -1  1\n000002.jpg -1 -11  1\n000003.jpg  1  1 -1\n", 4, r"'-11'"),
        ("3\nA B C\n000001.jpg  1 -1  1\n000002.jpg -1 -1  1\n000003.jpg  1  1 -2\n", 5, r"'-2'"),
        # count line
        ("three\nA B C\n000001.jpg  1 -1  1\n", 1, "image count.*'three'"),
        ("3 4\nA B C\n000001.jpg  1 -1  1\n", 1, "image count"),
        ("4\nA B C\n000001.jpg  1 -1  1\n000002.jpg -1 -1  1\n000003.jpg  1  1 -1\n", 1, "says 4 images.*3 rows"),
        ("2\nA B C\n000001.jpg  1 -1  1\n000002.jpg -1 -1  1\n000003.jpg  1  1 -1\n", 1, "says 2 images.*3 rows"),
        # duplicates and header
        ("3\nA B C\n000001.jpg  1 -1  1\n000002.jpg -1 -1  1\n000001.jpg  1  1 -1\n", 5, r"duplicate.*000001\.jpg.*line 3"),
        ("3\n   \n000001.jpg  1 -1  1\n000002.jpg -1 -1  1\n000003.jpg  1  1 -1\n", 2, "empty header"),
        ("3\nA B A\n000001.jpg  1 -1  1\n000002.jpg -1 -1  1\n000003.jpg  1  1 -1\n", 2, "duplicate attribute.*'A'"),
        ("", 1, "empty file"),
    ],
)
def test_malformed_attribute_file_names_file_and_line(tmp_path, text, line, message):
    write_text(tmp_path, ATTR, text)
    with pytest.raises(ValueError, match=rf"list_attr_celeba\.txt, line {line}: .*{message}"):
        read_celeba_attributes(tmp_path, check_images=False)


def test_good_three_row_fixture_parses(tmp_path):
    # The base of the malformed cases above is itself valid, so each error comes from its one change.
    write_text(tmp_path, ATTR, GOOD_3)
    _, _, labels = read_celeba_attributes(tmp_path, check_images=False)
    assert labels.tolist() == [[1, -1, 1], [-1, -1, 1], [1, 1, -1]]


def test_missing_image_on_disk_names_path_and_line(tmp_path):
    write_text(tmp_path, ATTR, GOOD_3)
    touch_images(tmp_path, ["000001.jpg", "000003.jpg", "unrelated.jpg"])
    missing = re.escape(os.path.join(str(tmp_path), IMAGES, "000002.jpg"))
    with pytest.raises(ValueError, match=rf"list_attr_celeba\.txt, line 4: image {missing} is listed but not on disk"):
        read_celeba_attributes(tmp_path)
    # check_images=False skips the disk check altogether.
    assert read_celeba_attributes(tmp_path, check_images=False)[0] == ["000001.jpg", "000002.jpg", "000003.jpg"]


def test_missing_image_folder_and_missing_files(tmp_path):
    write_text(tmp_path, ATTR, GOOD_3)
    with pytest.raises(FileNotFoundError, match=re.escape(os.path.join(str(tmp_path), IMAGES))):
        read_celeba_attributes(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(os.path.join(str(empty), ATTR))):
        read_celeba_attributes(empty)
    with pytest.raises(FileNotFoundError, match=re.escape(os.path.join(str(empty), PART))):
        read_celeba_partition(empty)


# --------------------------------------------------------------------------------------------- partition reader


def test_partition_parsing(tmp_path):
    write_text(tmp_path, PART, "000001.jpg 0\r\n000002.jpg\t1  \r\n  000003.jpg   2\r\n000004.jpg 0\r\n\r\n")
    assert read_celeba_partition(tmp_path) == {"000001.jpg": 0, "000002.jpg": 1, "000003.jpg": 2, "000004.jpg": 0}


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("000001.jpg 0\n000002.jpg 3\n000003.jpg 2\n", 2, r"split '3' of 000002\.jpg"),
        ("000001.jpg 0\n000002.jpg 1\n000003.jpg x\n", 3, r"split 'x'"),
        ("000001.jpg 0\n000002.jpg 1\n000003.jpg -1\n", 3, r"split '-1'"),
        ("000001.jpg 0\n000002.jpg 10\n", 2, r"split '10'"),
        ("000001.jpg 0\n000002.jpg\n000003.jpg 2\n", 2, "expected 2 columns.*found 1"),
        ("000001.jpg 0\n000002.jpg 1 1\n", 2, "expected 2 columns.*found 3"),
        ("000001.jpg 0\n000002.jpg 1\n000001.jpg 2\n", 3, r"duplicate.*000001\.jpg.*line 1"),
        ("\n\n", 1, "empty file"),
    ],
)
def test_malformed_partition_file_names_file_and_line(tmp_path, text, line, message):
    write_text(tmp_path, PART, text)
    with pytest.raises(ValueError, match=rf"list_eval_partition\.txt, line {line}: .*{message}"):
        read_celeba_partition(tmp_path)


# --------------------------------------------------------------------------------------------- identity reader
IDENT = "identity_CelebA.txt"


def test_identities_round_trip_and_align_with_the_attribute_file(tmp_path):
    names = [f"{i:06d}.jpg" for i in range(1, 6)]
    write_celeba_identities(str(tmp_path), names, [2880, 2937, 2880, 1, 10177])
    assert read_celeba_identities(tmp_path) == dict(zip(names, [2880, 2937, 2880, 1, 10177]))
    aligned = read_celeba_identities(tmp_path, names[::-1])
    assert aligned.dtype == np.int64 and aligned.tolist() == [10177, 1, 2880, 2937, 2880]
    with pytest.raises(ValueError, match=r"identity_CelebA\.txt: no identity for 000009\.jpg.*1 more"):
        read_celeba_identities(tmp_path, names + ["000009.jpg", "000010.jpg"])


def test_identity_parsing_takes_any_whitespace(tmp_path):
    write_text(tmp_path, IDENT, "000001.jpg 2880\r\n000002.jpg\t7  \r\n  000003.jpg   07\r\n\r\n")
    assert read_celeba_identities(tmp_path) == {"000001.jpg": 2880, "000002.jpg": 7, "000003.jpg": 7}


@pytest.mark.parametrize(
    "text, line, message",
    [
        ("000001.jpg 1\n000002.jpg 0\n", 2, r"identity '0' of 000002\.jpg is not an integer >= 1"),
        ("000001.jpg 1\n000002.jpg -3\n", 2, r"identity '-3'"),
        ("000001.jpg 1\n000002.jpg 2.5\n", 2, r"identity '2\.5'"),
        ("000001.jpg x\n", 1, r"identity 'x'"),
        ("000001.jpg 1\n000002.jpg\n", 2, "expected 2 columns.*found 1"),
        ("000001.jpg 1 1\n", 1, "expected 2 columns.*found 3"),
        ("000001.jpg 1\n000002.jpg 1\n000001.jpg 2\n", 3, r"duplicate.*000001\.jpg.*line 1"),
        ("\n", 1, "empty file"),
    ],
)
def test_malformed_identity_file_names_file_and_line(tmp_path, text, line, message):
    write_text(tmp_path, IDENT, text)
    with pytest.raises(ValueError, match=rf"identity_CelebA\.txt, line {line}: .*{message}"):
        read_celeba_identities(tmp_path)


def test_missing_identity_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(os.path.join(str(tmp_path), IDENT))):
        read_celeba_identities(tmp_path)


def test_split_indices():
    filenames = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg"]
    partition = {"e.jpg": 2, "d.jpg": 0, "c.jpg": 1, "b.jpg": 0, "a.jpg": 0}
    assert split_indices(filenames, partition, "train").tolist() == [0, 1, 3]
    assert split_indices(filenames, partition, 0).tolist() == [0, 1, 3]
    assert split_indices(filenames, partition, "val").tolist() == [2]
    assert split_indices(filenames, partition, 2).tolist() == [4]
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        split_indices(filenames, partition, "valid")
    with pytest.raises(ValueError, match="unknown split 3"):
        split_indices(filenames, partition, 3)
    del partition["c.jpg"]
    with pytest.raises(ValueError, match=r"c\.jpg.*not in list_eval_partition\.txt"):
        split_indices(filenames, partition, "train")


# --------------------------------------------------------------------------------------------- writers round trip


def test_attribute_writer_round_trip_and_exact_format(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"{i:06d}.jpg" for i in range(1, 6)]
    labels = np.where(rng.random((5, 40)) < 0.4, 1, -1)
    labels[0] = VALUES1
    write_celeba_attributes(str(tmp_path), names, CELEBA_ATTRIBUTES, labels)
    text = (tmp_path / ATTR).read_bytes().decode()
    lines = text.split("\n")
    assert lines[0] == "5"
    assert lines[1] == CELEBA_HEADER and lines[1].endswith("Young ")
    assert lines[2] == ROW1
    assert text.endswith("\n") and "\r" not in text
    for name, row, line in zip(names, labels, lines[2:]):
        assert line == name + "".join("  1" if v == 1 else " -1" for v in row)
    filenames, attr_names, read = read_celeba_attributes(tmp_path, check_images=False)
    assert filenames == names and attr_names == list(CELEBA_ATTRIBUTES)
    assert np.array_equal(read.numpy(), labels)


def test_partition_writer_round_trip(tmp_path):
    names = [f"{i:06d}.jpg" for i in range(1, 8)]
    parts = [0, 0, 0, 1, 1, 2, 2]
    write_celeba_partition(str(tmp_path), names, parts)
    assert (tmp_path / PART).read_text().splitlines()[3] == "000004.jpg 1"
    assert read_celeba_partition(tmp_path) == dict(zip(names, parts))


# --------------------------------------------------------------------------------------------- preprocessing

RED, GRAY, BLUE = (255, 0, 0), (128, 128, 128), (0, 0, 255)


def banded_image() -> Image.Image:
    """178x218 gray image; rows 0:20 and 198:218 red (outside the face square); a blue block at square
    coordinates x 89:125, y 44:89 (image rows 64:109)."""
    a = np.empty((218, 178, 3), dtype=np.uint8)
    a[:] = GRAY
    a[:20] = RED
    a[198:] = RED
    a[20 + 44 : 20 + 89, 89:125] = BLUE
    return Image.fromarray(a)


def test_preprocess_crops_rows_20_to_198_and_resizes():
    out = preprocess_image(banded_image(), 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    out = out.astype(int)
    # No trace of the red bands: every pixel is gray or blue-ish (R == G), the border rows are pure gray.
    assert np.abs(out[..., 0] - out[..., 1]).max() <= 2
    assert np.abs(out[0] - 128).max() <= 2 and np.abs(out[-1] - 128).max() <= 2
    # The blue block maps to x 32..45, y 15.8..32 at 64/178 scale: its center (38, 24) is blue, outside is gray.
    assert tuple(out[24, 38]) == BLUE
    assert np.abs(out[24, 20] - 128).max() <= 2 and np.abs(out[40, 38] - 128).max() <= 2
    blue = np.argwhere(out[..., 2] - out[..., 0] > 100)
    assert blue[:, 0].min() in (15, 16, 17) and blue[:, 0].max() in (31, 32)
    assert blue[:, 1].min() in (31, 32, 33) and blue[:, 1].max() in (44, 45)


def test_preprocess_other_sizes_and_full_resolution():
    assert preprocess_image(banded_image(), 128).shape == (128, 128, 3)
    full = preprocess_image(banded_image(), 178)  # no resize: exactly the face square
    assert np.array_equal(full, np.asarray(banded_image())[20:198])
    square = Image.fromarray(np.full((100, 60, 3), 7, np.uint8))  # not CelebA-sized: center square
    assert preprocess_image(square, 32).shape == (32, 32, 3)


def test_to_unit_range_and_labels_to_binary():
    x = torch.tensor([0, 127, 255], dtype=torch.uint8)
    y = to_unit_range(x)
    assert y.dtype == torch.float32 and torch.allclose(y, torch.tensor([-1.0, 127 / 127.5 - 1, 1.0]))
    with pytest.raises(ValueError, match="uint8"):
        to_unit_range(x.float())
    b = labels_to_binary(torch.tensor([[1, -1], [-1, 1]], dtype=torch.int8))
    assert b.dtype == torch.float32 and b.tolist() == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match="-1/\\+1.*0"):
        labels_to_binary(torch.tensor([1, 0, -1]))


# --------------------------------------------------------------------------------------------- read_split

N_IMAGES = 8
PARTITION = [0, 0, 0, 0, 0, 1, 1, 2]  # train 000001-000005, val 000006-000007, test 000008


def color_of(i: int) -> tuple[int, int, int]:
    """A distinct solid color for image i (0-based), far from its neighbours' so JPEG noise cannot confuse them."""
    return (30 * i + 10, 230 - 25 * i, (90 * i + 40) % 256)


def labels_of(i: int) -> list[int]:
    """Three attributes: the bits of i (unique per image, so misaligned labels are caught)."""
    return [1 if (i >> bit) & 1 else -1 for bit in range(3)]


@pytest.fixture
def celeba_root(tmp_path):
    """A CelebA-format folder of 8 solid-color 178x218 JPEGs, each with a distinctive face-square color and red
    bands outside the square, three attributes and a train/val/test partition."""
    os.makedirs(tmp_path / IMAGES)
    names = [f"{i + 1:06d}.jpg" for i in range(N_IMAGES)]
    for i, name in enumerate(names):
        a = np.empty((218, 178, 3), dtype=np.uint8)
        a[:] = RED
        a[20:198] = color_of(i)
        Image.fromarray(a).save(tmp_path / IMAGES / name, quality=95)
    rows = "".join(f"{name}" + "".join(f" {v:>2}" for v in labels_of(i)) + "\n" for i, name in enumerate(names))
    write_text(tmp_path, ATTR, f"{N_IMAGES}\nBangs Male Smiling \n{rows}")
    write_text(tmp_path, PART, "".join(f"{name} {p}\n" for name, p in zip(names, PARTITION)))
    return tmp_path


def assert_aligned(data: CelebASplit) -> None:
    """Each row's pixels and labels are those of the image its file name says."""
    for k, name in enumerate(data.filenames):
        i = int(name[:6]) - 1
        mean = data.images[k].float().mean(dim=(1, 2))
        assert torch.allclose(mean, torch.tensor(color_of(i), dtype=torch.float32), atol=6), (name, mean)
        assert data.labels[k].tolist() == labels_of(i), name


def test_read_split_shapes_dtypes_and_alignment(celeba_root):
    data = read_split(str(celeba_root), "train", image_size=32, backend="pil", threads=0)
    assert isinstance(data, CelebASplit) and len(data) == 5
    assert data.images.dtype == torch.uint8 and data.images.shape == (5, 3, 32, 32)
    assert data.labels.dtype == torch.int8 and data.labels.shape == (5, 3)
    assert data.filenames == [f"{i:06d}.jpg" for i in range(1, 6)]
    assert data.attr_names == ["Bangs", "Male", "Smiling"]
    assert_aligned(data)
    # The red bands are cropped away: every pixel is within JPEG noise of the image's color.
    for k in range(5):
        color = torch.tensor(color_of(k), dtype=torch.int16).view(3, 1, 1)
        assert (data.images[k].to(torch.int16) - color).abs().max() <= 12


def test_read_split_selection_and_limit(celeba_root):
    root = str(celeba_root)
    val = read_split(root, "val", image_size=16, backend="pil", threads=0)
    assert val.filenames == ["000006.jpg", "000007.jpg"]
    assert_aligned(val)
    test = read_split(root, 2, image_size=16, backend="pil", threads=0)
    assert test.filenames == ["000008.jpg"] and test.images.shape == (1, 3, 16, 16)
    assert_aligned(test)
    first3 = read_split(root, "train", image_size=16, limit=3, backend="pil", threads=0)
    assert first3.filenames == ["000001.jpg", "000002.jpg", "000003.jpg"]
    assert_aligned(first3)
    none = read_split(root, "train", image_size=16, limit=0, backend="pil", threads=0)
    assert none.images.shape == (0, 3, 16, 16) and none.labels.shape == (0, 3)


def test_read_split_pil_workers_give_identical_results(celeba_root):
    one = read_split(str(celeba_root), "train", image_size=24, backend="pil", threads=0)
    two = read_split(str(celeba_root), "train", image_size=24, backend="pil", threads=2, progress=True)
    assert torch.equal(one.images, two.images) and torch.equal(one.labels, two.labels)
    assert one.filenames == two.filenames


@pytest.mark.parametrize("threads", [0, 2])
def test_read_split_corrupt_jpeg_names_file(celeba_root, threads):
    images = celeba_root / IMAGES
    (images / "000002.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(ValueError, match=r"cannot decode image .*img_align_celeba[/\\]000002\.jpg"):
        read_split(str(celeba_root), "train", image_size=16, backend="pil", threads=threads)
    # Repaired, the next corrupt file is the one reported: a truncated JPEG.
    Image.fromarray(np.zeros((218, 178, 3), np.uint8)).save(images / "000002.jpg")
    truncated = images / "000004.jpg"
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"cannot decode image .*img_align_celeba[/\\]000004\.jpg"):
        read_split(str(celeba_root), "train", image_size=16, backend="pil", threads=threads)


def test_read_split_needs_only_the_selected_images(celeba_root):
    os.remove(celeba_root / IMAGES / "000008.jpg")  # a test image: training still loads
    assert len(read_split(str(celeba_root), "train", image_size=8, backend="pil", threads=0)) == 5
    with pytest.raises(ValueError, match=r"list_attr_celeba\.txt, line 10: image .*000008\.jpg is listed but not"):
        read_split(str(celeba_root), "test", image_size=8, backend="pil", threads=0)
    with pytest.raises(ValueError, match="limit"):
        read_split(str(celeba_root), "train", limit=-1, backend="pil", threads=0)
