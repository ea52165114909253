"""The loaders' mask and label sets: the mask is the kernels' HashedMask over split positions (the same entries as
draw_label_mask on a whole split, with a limit and with a corrupt file left out), and labels="attributes,identity"
serves the attributes plus one column per training identity as SparseLabels, equal to the dense one-hot."""
import os

import pytest
import torch

from dualvae.data import IDENTITY_FILE, draw_label_mask, make_loader, prepare, write_celeba_identities
from dualvae.kernels import HashedMask, SparseLabels

from test_loader import ATTRS, N, PARTITION, S, identify, labels_of, root, write_root  # noqa: F401  (fixtures)

# Identities of the 24 fixture images: 16 train, 4 val, 4 test. Identity 9 is in train and val; 40 and 41 only in
# val/test (no column); the training split's identities are 2, 5, 9, 12, 30, so P = 5.
IDENTITIES = [5, 5, 12, 9, 2, 2, 5, 30, 9, 12, 12, 2, 30, 5, 9, 2] + [9, 40, 40, 2] + [41, 30, 41, 5]
TRAIN_IDS = [2, 5, 9, 12, 30]
NAMES = ATTRS + [f"identity_{i}" for i in TRAIN_IDS]


@pytest.fixture(scope="module")
def id_root(tmp_path_factory):
    r = write_root(tmp_path_factory.mktemp("celeba_id"))
    write_celeba_identities(str(r), [f"{i + 1:06d}.jpg" for i in range(N)], IDENTITIES)
    return r


@pytest.fixture(scope="module")
def id_cache(id_root, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cache_id") / "c.h5")
    prepare(str(id_root), path, image_size=S, workers=1, progress=False)
    return path


def expected_labels(i: int) -> list[float]:
    """Image i's dense (40 + P) row: its attributes, then the one-hot of its identity among the train ones."""
    identity = [float(IDENTITIES[i] == t) for t in TRAIN_IDS]
    return [float(v > 0) for v in labels_of(i)] + identity


def id_loader(source, backend, **kw):
    kw = dict(dict(batch_size=4, threads=0 if backend == "pil" else 1, labels="attributes,identity"), **kw)
    return make_loader(str(source), kw.pop("split", "train"), image_size=S, device="cpu", backend=backend, **kw)


def test_draw_label_mask_is_the_hashed_mask():
    full = draw_label_mask((50, 7), 0.4, seed=11)
    assert full.dtype == torch.bool and full.shape == (50, 7)
    assert torch.equal(full, HashedMask(11, 0.4, torch.arange(50)).dense(7))
    assert 0.25 < 1 - full.float().mean().item() < 0.55  # 350 draws at 0.4 missing
    assert not torch.equal(full, draw_label_mask((50, 7), 0.4, seed=12))
    assert bool(draw_label_mask((9, 3), 0.0, seed=1).all())
    assert torch.equal(draw_label_mask((30, 7), 0.4, seed=11), full[:30])  # a row's entries depend on it alone
    for bad in (1.0, -0.1, "0.5", True):
        with pytest.raises(ValueError, match="missing_ratio"):
            draw_label_mask((4, 4), bad, seed=0)


@pytest.mark.parametrize("backend", ["pil", "hdf5"])
def test_the_loaders_mask_is_the_reference_on_a_whole_split_and_a_limit(root, id_cache, backend):
    source = id_cache if backend == "hdf5" else root
    n = len(ATTRS)
    for limit, size in ((None, 16), (5, 5)):
        ld = make_loader(str(source), "train", image_size=S, batch_size=3, device="cpu", backend=backend,
                         threads=0, missing_ratio=0.35, seed=6, limit=limit, shuffle=True, drop_last=False)
        ref = draw_label_mask((size, n), 0.35, seed=6)
        assert isinstance(ld.label_mask, HashedMask) and torch.equal(ld.label_mask.rows, torch.arange(size))
        assert torch.equal(ld.label_mask.dense(n), ref)
        seen = []
        for x, _, m, rows in ld:
            assert torch.equal(m.dense(n), ref[rows]) and torch.equal(m.rows, rows)
            assert [identify(im)[0] for im in x] == rows.tolist()
            seen += rows.tolist()
        assert sorted(seen) == list(range(size))
        assert torch.equal(ld.label_source.labels_for(torch.tensor([4, 0]))[1].dense(n), ref[[4, 0]])


@pytest.mark.parametrize("backend", ["pil", "hdf5"])
def test_identity_labels_are_sparse_attributes_then_identity(id_root, id_cache, backend):
    source = id_cache if backend == "hdf5" else id_root
    ld = id_loader(source, backend, missing_ratio=0.2, seed=3)
    assert ld.attr_names == NAMES and ld.num_labels == len(NAMES)
    seen = []
    for x, y, m, rows in ld:
        assert isinstance(y, SparseLabels) and y.shape == (len(x), len(NAMES)) and y.indptr.dtype == torch.int64
        y.validate()
        ids = [identify(im)[0] for im in x]
        assert y.dense().tolist() == [expected_labels(i) for i in ids]
        assert torch.equal(m.dense(len(NAMES)), draw_label_mask((16, len(NAMES)), 0.2, 3)[rows])
        seen += ids
    assert sorted(seen) == list(range(16))
    rows = torch.tensor([3, 0, 15])
    assert ld.label_source.labels_for(rows)[0].dense().tolist() == [expected_labels(i) for i in (3, 0, 15)]

    # val: the columns are still the training split's; identity 40 has none, so its images have no identity
    val = id_loader(source, backend, split="val", shuffle=False, drop_last=False, batch_size=4)
    assert val.attr_names == NAMES
    (x, y, _, _), = list(val)
    assert y.dense().tolist() == [expected_labels(16 + k) for k in range(4)]
    assert y.dense()[1:3, len(ATTRS):].sum() == 0 and y.dense()[0, NAMES.index("identity_9")] == 1

    # a limit keeps every training identity's column
    first = id_loader(source, backend, limit=3, shuffle=False, drop_last=False)
    assert first.attr_names == NAMES
    assert first.label_source.labels_for(torch.arange(3))[0].dense().tolist() == [expected_labels(i) for i in range(3)]


def test_attributes_only_is_the_default_and_dense(id_root):
    ld = make_loader(str(id_root), "train", image_size=S, batch_size=4, device="cpu", backend="pil", threads=0)
    assert ld.attr_names == ATTRS
    x, y, _, _ = next(iter(ld))
    assert isinstance(y, torch.Tensor) and y.shape == (4, len(ATTRS)) and y.dtype == torch.float32
    assert y.tolist() == [[float(v > 0) for v in labels_of(identify(im)[0])] for im in x]


def test_label_errors(root, id_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"identity_CelebA\.txt"):
        id_loader(root, "pil")
    for bad in ("identity", "attributes,identities", ["attributes"]):
        with pytest.raises(ValueError, match=r"labels must be one of 'attributes', 'attributes,identity'"):
            make_loader(str(id_root), "train", image_size=S, batch_size=4, device="cpu", backend="pil",
                        labels=bad)
    assert id_loader(id_root, "pil", labels="attributes, identity").attr_names == NAMES
    with pytest.raises(ValueError, match="missing_ratio"):
        make_loader(str(id_root), "train", image_size=S, batch_size=4, device="cpu", backend="pil",
                    missing_ratio=1.0)
    with pytest.raises(ValueError, match=r"rows must be a 1-D int64 tensor"):
        id_loader(id_root, "pil").label_source.labels_for(torch.zeros(2, 2, dtype=torch.int64))

    # a cache prepared from a root without the identity file holds none, and says so
    no_ids = write_root(tmp_path / "plain", n=8, partition=[0] * 6 + [1, 2])
    path = str(tmp_path / "plain.h5")
    prepare(str(no_ids), path, image_size=S, workers=1, progress=False)
    with pytest.raises(ValueError, match=r"holds no identities.*identity_CelebA\.txt"):
        id_loader(path, "hdf5")
    assert make_loader(path, "train", image_size=S, batch_size=2, device="cpu", backend=None).attr_names == ATTRS

    # a malformed identity file is the reader's error, naming file and line
    (id_root / IDENTITY_FILE).rename(id_root / "saved.txt")
    try:
        lines = (id_root / "saved.txt").read_text().splitlines()
        lines[4] = "000005.jpg zero"
        (id_root / IDENTITY_FILE).write_text("\n".join(lines) + "\n")
        with pytest.raises(ValueError, match=r"identity_CelebA\.txt.*line 5"):
            id_loader(id_root, "pil")
    finally:
        os.replace(id_root / "saved.txt", id_root / IDENTITY_FILE)
