"""read_split: a whole split in memory through make_loader, for every backend, with the loader's exact pixels,
aligned labels and file names."""
import numpy as np
import pytest
import torch

from dualvae.data import CelebASplit, make_loader, read_split

from test_loader import ATTRS, PARTITION, S, cache, labels_of, root, write_root  # noqa: F401  (fixtures)


def loader_images(source, split, backend, **kw) -> torch.Tensor:
    ld = make_loader(source, split, image_size=S, batch_size=5, device="cpu", backend=backend, shuffle=False,
                     drop_last=False, threads=0 if backend == "pil" else 1, **kw)
    return torch.cat([b.images for b in ld])


@pytest.mark.parametrize("backend", ["pil", "dali", "hdf5"])
def test_read_split_holds_the_loaders_pixels_in_order(root, cache, backend):
    source = cache if backend == "hdf5" else str(root)
    s = read_split(source, "train", image_size=S, backend=backend, threads=0 if backend == "pil" else 1)
    n_train = PARTITION.count(0)
    assert isinstance(s, CelebASplit) and len(s) == n_train and s.attr_names == ATTRS
    assert s.images.dtype == torch.uint8 and s.images.shape == (n_train, 3, S, S)
    assert s.labels.dtype == torch.int8
    assert s.filenames == [f"{i + 1:06d}.jpg" for i in range(n_train)]
    assert s.labels.tolist() == [labels_of(i) for i in range(n_train)]
    # exactly the loader's images: uint8 -> [-1, 1] as the loaders normalize
    torch.testing.assert_close(s.images.float() / 127.5 - 1, loader_images(source, "train", backend),
                               rtol=0, atol=1e-6)


def test_backends_agree_and_the_cache_is_dalis(root, cache):
    dali = read_split(str(root), "val", image_size=S, threads=1)  # backend None on a folder: dali
    pil = read_split(str(root), "val", image_size=S, backend="pil", threads=0)
    hdf5 = read_split(cache, "val", image_size=S)  # backend None on a file: hdf5
    assert torch.equal(dali.images, hdf5.images)
    assert (dali.images.float() - pil.images.float()).abs().mean() <= 2.0
    assert dali.filenames == pil.filenames == hdf5.filenames


def test_limit_empty_and_bad_arguments(root, cache):
    first = read_split(cache, "train", image_size=S, limit=3)
    assert first.filenames == ["000001.jpg", "000002.jpg", "000003.jpg"]
    none = read_split(str(root), "test", image_size=S, limit=0, backend="pil", threads=0)
    assert none.images.shape == (0, 3, S, S) and none.labels.shape == (0, len(ATTRS)) and none.filenames == []
    with pytest.raises(ValueError, match="image_size"):
        read_split(cache, "train", image_size=0)
    with pytest.raises(ValueError, match="limit"):
        read_split(cache, "train", image_size=S, limit=-2)


def test_skip_corrupt_leaves_the_image_and_its_row_out(tmp_path):
    root = write_root(tmp_path / "celeba")
    (root / "img_align_celeba" / "000003.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"cannot decode image .*000003\.jpg"):
        read_split(str(root), "train", image_size=S, backend="pil", threads=0)
    s = read_split(str(root), "train", image_size=S, backend="pil", threads=0, skip_corrupt=True)
    kept = [i for i in range(PARTITION.count(0)) if i != 2]
    assert s.filenames == [f"{i + 1:06d}.jpg" for i in kept]
    assert s.labels.tolist() == [labels_of(i) for i in kept] and len(s.images) == len(kept)


def test_read_split_pil_labels_in_split_order(root):
    b = read_split(str(root), "test", image_size=S, backend="pil", threads=0)
    assert np.array_equal(b.labels.numpy(), np.array([labels_of(i) for i in range(20, 24)], dtype=np.int8))
