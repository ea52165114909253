"""make_loader (DALI CPU mode, PIL DataLoader, HDF5 cache), prepare, sharding, determinism, bad input.

The fixture is a CelebA-format root of 24 solid-colour 178x218 JPEGs: image i has its own colour (its red channel
identifies it) in the face square, red-free bands outside it, and a white marker square drawn into the images
whose first attribute "Marked" is 1. The other attributes are the bits of i. Every yielded image is identified
from its pixels, so a label that travels with the wrong image is caught.
"""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dualvae.data import (
    CelebAFormatError,
    MissingBackendError,
    StaleCacheError,
    draw_label_mask,
    epoch_order,
    make_loader,
    prepare,
    read_cache_info,
    shard_batches,
)
from dualvae.data import batch as batch_mod
from dualvae.data import cache as cache_mod
from dualvae.kernels import HashedMask

N = 24
PARTITION = [0] * 16 + [1] * 4 + [2] * 4
ATTRS = ["Marked", "b0", "b1", "b2", "b3", "b4"]
MARKED = {1, 4, 6, 11, 15, 17, 22}
S = 32
# Marker: rows 30:70, cols 10:50 of the 178x218 image -> about rows 3.6:18, cols 3.6:18 of the 64px crop.
MARK_BOX = (slice(30, 70), slice(10, 50))


def color_of(i: int) -> tuple[int, int, int]:
    return (10 + 9 * i, 200 - 6 * i, 60 + 5 * i)


def labels_of(i: int) -> list[int]:
    return [1 if i in MARKED else -1] + [1 if (i >> b) & 1 else -1 for b in range(5)]


def write_root(root, n=N, partition=PARTITION):
    os.makedirs(root / "img_align_celeba", exist_ok=True)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        a = np.empty((218, 178, 3), np.uint8)
        a[:] = (0, 40, 255)
        a[20:198] = color_of(i)
        if i in MARKED:
            a[MARK_BOX] = 255
        Image.fromarray(a).save(root / "img_align_celeba" / name, quality=95)
    rows = "".join(name + "".join(f" {v:>2}" for v in labels_of(i)) + "\n" for i, name in enumerate(names))
    (root / "list_attr_celeba.txt").write_text(f"{n}\n{' '.join(ATTRS)} \n{rows}")
    (root / "list_eval_partition.txt").write_text("".join(f"{nm} {p}\n" for nm, p in zip(names, partition)))
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return write_root(tmp_path_factory.mktemp("celeba"))


@pytest.fixture(scope="module")
def cache(root, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cache") / "c.h5")
    prepare(str(root), path, image_size=S, workers=1, progress=False)
    return path


@pytest.fixture
def fresh_root(tmp_path):
    return write_root(tmp_path / "celeba")


def identify(image: torch.Tensor) -> tuple[int, bool]:
    """(index, marked) of one yielded image [3, S, S] in [-1, 1], from its pixels."""
    px = (image + 1) * 127.5
    red = px[0, S // 2:, S // 2:].mean().item()
    i = int(round((red - 10) / 9))
    assert abs(red - color_of(i)[0]) < 3.5, red
    marked = px[:, 3:7, 3:7].mean().item() > 245
    return i, marked


def loader(source, backend, **kw):
    kw.setdefault("batch_size", 4)
    kw.setdefault("threads", 1)
    return make_loader(str(source), kw.pop("split", "train"), image_size=S, device="cpu", backend=backend, **kw)


def check_batches(ld, expected_rows=None):
    """Every batch: shapes, dtypes, ranges, and labels + file names aligned with the pixels. Returns the rows."""
    seen = []
    n = len(ld.attr_names)
    for x, y, m, rows in ld:
        B = len(x)
        assert x.shape == (B, 3, S, S) and x.dtype == torch.float32
        assert y.shape == (B, n) and y.dtype == torch.float32
        assert isinstance(m, HashedMask) and (m.seed, m.missing_ratio) == (ld.seed, ld.missing_ratio)
        assert torch.equal(m.rows, ld.label_mask.rows[rows])  # the images' split positions
        again_y, again_m = ld.label_source.labels_for(rows)
        assert torch.equal(m.dense(n), again_m.dense(n)) and torch.equal(y, again_y)
        assert x.min() >= -1 and x.max() <= 1
        assert set(y.unique().tolist()) <= {0.0, 1.0}
        for k in range(B):
            i, marked = identify(x[k])
            assert y[k].tolist() == [float(v > 0) for v in labels_of(i)], (i, y[k])
            assert marked == (i in MARKED) == bool(y[k, 0])
            assert ld.filenames[int(rows[k])] == f"{i + 1:06d}.jpg"
        seen += rows.tolist()
    if expected_rows is not None:
        assert sorted(seen) == expected_rows
    return seen


@pytest.mark.parametrize("backend", ["dali", "pil", "hdf5"])
def test_shapes_ranges_and_labels_aligned_with_pixels(root, cache, backend):
    source = cache if backend == "hdf5" else root
    ld = loader(source, backend, seed=3)
    assert len(ld) == 4 and ld.attr_names == ATTRS
    check_batches(ld, expected_rows=list(range(16)))
    val = loader(source, backend, split="val", batch_size=3, drop_last=False, shuffle=False)
    assert len(val) == 2
    assert check_batches(val) == [0, 1, 2, 3] and val.filenames[0] == "000017.jpg"


def test_epoch_order_is_a_function_of_seed_and_epoch(root):
    assert np.array_equal(epoch_order(100, 5, 2), epoch_order(100, 5, 2))
    assert not np.array_equal(epoch_order(100, 5, 2), epoch_order(100, 5, 3))
    assert not np.array_equal(epoch_order(100, 5, 2), epoch_order(100, 6, 2))
    assert np.array_equal(epoch_order(7, 5, 2, shuffle=False), np.arange(7))

    def run(ld, epoch):
        out = []
        for x, _, _, rows in ld.epoch(epoch):
            out.append((rows.clone(), x.clone()))
        return out

    a, b = loader(root, "dali", seed=1), loader(root, "dali", seed=1, threads=2)
    for e in (0, 1):
        ra, rb = run(a, e), run(b, e)
        assert all(torch.equal(ia, ib) and torch.equal(xa, xb) for (ia, xa), (ib, xb) in zip(ra, rb))
    assert not torch.equal(torch.cat([i for i, _ in run(a, 0)]), torch.cat([i for i, _ in run(a, 1)]))
    other = loader(root, "dali", seed=2)
    assert not torch.equal(torch.cat([i for i, _ in run(a, 0)]), torch.cat([i for i, _ in run(other, 0)]))
    # iterating runs the current epoch and advances it; set_epoch resumes anywhere
    first = [b.rows for b in a]
    assert a.current_epoch == 1
    a.set_epoch(0)
    assert all(torch.equal(f, s) for f, s in zip(first, [b.rows for b in a]))


@pytest.mark.parametrize("n,shards,batch", [(16, 3, 2), (23, 4, 3), (16, 1, 5)])
def test_shards_are_disjoint_and_cover_the_split(n, shards, batch):
    for drop_last in (False, True):
        parts = [np.concatenate(shard_batches(n, batch, seed=9, epoch=1, shard_id=k, num_shards=shards,
                                              drop_last=drop_last) or [np.zeros(0, np.int64)])
                 for k in range(shards)]
        allrows = np.concatenate(parts)
        assert len(np.unique(allrows)) == len(allrows)  # disjoint
        if not drop_last:
            assert sorted(allrows.tolist()) == list(range(n))  # cover exactly once
        else:
            assert all(len(p) % batch == 0 for p in parts)
            assert len(allrows) >= n - shards * batch


def test_sharded_loaders_and_mask_identical_across_shards_backends_resumes(root, cache):
    full = draw_label_mask((16, len(ATTRS)), 0.5, seed=4)
    rows = []
    for k in range(3):
        for backend, source in (("hdf5", cache), ("dali", root)):
            ld = loader(source, backend, seed=4, shard_id=k, num_shards=3, missing_ratio=0.5, drop_last=False,
                        batch_size=2)
            ld.set_epoch(2)  # a resumed run starts mid-way
            mine = []
            for _, _, m, batch_rows in ld:
                assert torch.equal(m.dense(len(ATTRS)), full[batch_rows])
                mine += batch_rows.tolist()
            assert torch.equal(ld.label_mask.rows, torch.arange(16))
            assert torch.equal(ld.label_mask.dense(len(ATTRS)), full)
        rows.append(mine)
    assert sorted(sum(rows, [])) == list(range(16))


def test_dali_and_pil_give_the_same_pixels(tmp_path_factory):
    from dualvae.data.synth import write_synth_celeba

    synth = str(tmp_path_factory.mktemp("synth"))
    write_synth_celeba(synth, num=20, seed=1, workers=1)
    a = make_loader(synth, "train", batch_size=16, device="cpu", backend="dali", shuffle=False, threads=1)
    b = make_loader(synth, "train", batch_size=16, device="cpu", backend="pil", shuffle=False, threads=0)
    (xa, ya, _, _), (xb, yb, _, _) = next(iter(a)), next(iter(b))
    assert torch.equal(ya, yb)
    diff = ((xa - xb).abs() * 127.5).flatten(1).mean(1)  # in 0..255 units, per image
    assert diff.max() <= 2.0, diff
    assert ((xa - xb).abs() * 127.5).mean() > 0  # two decoders, not one path twice


def test_cache_round_trip(root, cache, tmp_path):
    info = read_cache_info(cache)
    assert info["attr_names"] == ATTRS and info["image_size"] == S and info["split_sizes"] == [16, 4, 4]
    assert info["skipped"] == [] and info["source"] == os.path.abspath(root)
    h = loader(cache, "hdf5", shuffle=False, batch_size=16)
    d = loader(root, "dali", shuffle=False, batch_size=16)
    (xh, yh, _, _), (xd, yd, _, _) = next(iter(h)), next(iter(d))
    assert torch.equal(yh, yd) and h.filenames == d.filenames
    assert (xh - xd).abs().max() <= 1 / 127.5 + 1e-6  # cache: DALI's uint8; loader: DALI's float
    # a second prepare of an unchanged root keeps the file
    before = os.stat(cache).st_mtime_ns
    assert prepare(str(root), cache, image_size=S, progress=False)["up_to_date"]
    assert os.stat(cache).st_mtime_ns == before
    with pytest.raises(ValueError, match="--image-size 16"):
        make_loader(cache, "train", image_size=16, batch_size=2, device="cpu", backend="hdf5")
    with pytest.raises(ValueError, match="dualvae prepare"):
        make_loader(str(root), "train", image_size=S, batch_size=2, device="cpu", backend="hdf5")


def test_stale_cache_is_refused(fresh_root, tmp_path):
    path = str(tmp_path / "c.h5")
    prepare(str(fresh_root), path, image_size=S, workers=1, progress=False)
    loader(path, "hdf5")  # fresh: fine
    img = fresh_root / "img_align_celeba" / "000003.jpg"
    Image.new("RGB", (178, 218), (1, 2, 3)).save(img)
    with pytest.raises(StaleCacheError, match=r"stale cache .*c\.h5.*dualvae prepare --celeba"):
        loader(path, "hdf5")
    prepare(str(fresh_root), path, image_size=S, workers=1, progress=False)
    loader(path, "hdf5")
    with open(fresh_root / "list_attr_celeba.txt", "a") as f:
        f.write("\n")
    with pytest.raises(StaleCacheError):
        loader(path, "hdf5")


def test_interrupted_prepare_leaves_nothing_behind(fresh_root, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    path = out / "c.h5"
    real = cache_mod.decode_paths

    def interrupted(decoder, batches):
        gen = real(decoder, batches)
        yield next(gen)
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "decode_paths", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(fresh_root), str(path), image_size=S, batch_size=4, progress=False)
    assert os.listdir(out) == []
    # over an existing cache: the old file stays, byte for byte
    monkeypatch.setattr(cache_mod, "decode_paths", real)
    prepare(str(fresh_root), str(path), image_size=S, batch_size=4, progress=False)
    old = path.read_bytes()
    Image.new("RGB", (178, 218)).save(fresh_root / "img_align_celeba" / "000001.jpg")  # make it stale
    monkeypatch.setattr(cache_mod, "decode_paths", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(str(fresh_root), str(path), image_size=S, batch_size=4, progress=False)
    assert os.listdir(out) == ["c.h5"] and path.read_bytes() == old


@pytest.mark.parametrize("damage", ["garbage", "truncated", "complete_markers"])
def test_corrupt_jpeg_error_names_file_and_skip_corrupt(fresh_root, tmp_path, damage):
    img = fresh_root / "img_align_celeba" / "000006.jpg"  # train row 5, marked? no; bits 101
    data = img.read_bytes()
    img.write_bytes({"garbage": b"not a jpeg at all",
                     "truncated": data[: len(data) // 2],
                     "complete_markers": b"\xff\xd8" + os.urandom(600) + b"\xff\xd9"}[damage])
    path = tmp_path / "c.h5"
    pil_workers = 1 if damage == "garbage" else 0  # worker processes once (their start costs seconds)
    for backend in ("dali", "pil"):
        with pytest.raises(CelebAFormatError, match=r"000006\.jpg"):
            list(loader(fresh_root, backend, batch_size=4, threads=pil_workers if backend == "pil" else 1))
    with pytest.raises(CelebAFormatError, match=r"cannot decode image .*000006\.jpg.*skip-corrupt"):
        prepare(str(fresh_root), str(path), image_size=S, batch_size=4, progress=False)
    assert not os.listdir(tmp_path) or os.listdir(tmp_path) == ["celeba"]

    r = prepare(str(fresh_root), str(path), image_size=S, batch_size=4, skip_corrupt=True, progress=False)
    assert r["images"] == N - 1 and [os.path.basename(p) for p in r["skipped"]] == ["000006.jpg"]
    assert [os.path.basename(p) for p in read_cache_info(str(path))["skipped"]] == ["000006.jpg"]
    h = loader(path, "hdf5", drop_last=False, missing_ratio=0.3, seed=1)
    assert h.num_images == 15 and "000006.jpg" not in h.filenames
    rows = check_batches(h)
    assert sorted(rows) == list(range(15))
    full = draw_label_mask((16, len(ATTRS)), 0.3, seed=1)  # over the source split: aligned, corrupt row included
    kept = [i for i in range(16) if i != 5]
    assert h.label_mask.rows.tolist() == kept and torch.equal(h.label_mask.dense(len(ATTRS)), full[kept])
    for x, _, m, _ in h.epoch(0):  # each batch's mask: rows = the images' positions in the source split
        assert torch.equal(m.dense(len(ATTRS)), full[[identify(im)[0] for im in x]])
    for backend in ("dali", "pil"):
        ld = loader(fresh_root, backend, batch_size=4, drop_last=False, skip_corrupt=True, shuffle=False,
                    threads=pil_workers if backend == "pil" else 1)
        rows = check_batches(ld)
        assert sorted(rows) == [i for i in range(16) if i != 5]
        assert [os.path.basename(p) for p in ld.skipped] == ["000006.jpg"]


def test_missing_image_and_list_mismatch_name_the_file(fresh_root):
    os.remove(fresh_root / "img_align_celeba" / "000004.jpg")
    for backend in ("dali", "pil"):
        with pytest.raises(ValueError, match=r"000004\.jpg is listed but not on disk"):
            loader(fresh_root, backend)
    with pytest.raises(ValueError, match=r"000004\.jpg is listed but not on disk"):
        prepare(str(fresh_root), str(fresh_root / "c.h5"), image_size=S, progress=False)
    assert not (fresh_root / "c.h5").exists()
    Image.new("RGB", (178, 218)).save(fresh_root / "img_align_celeba" / "000004.jpg")
    part = fresh_root / "list_eval_partition.txt"
    lines = part.read_text().splitlines()
    part.write_text("\n".join(lines[:9] + lines[10:]) + "\n")
    with pytest.raises(ValueError, match=r"000010\.jpg .*not in list_eval_partition\.txt"):
        loader(fresh_root, "dali")
    part.write_text("\n".join(lines + ["999999.jpg 0"]) + "\n")
    with pytest.raises(ValueError, match=r"999999\.jpg is in .*list_eval_partition\.txt but not in"):
        loader(fresh_root, "dali")


def test_missing_dali_names_package_and_fallback(root, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_dali(name, *a, **kw):
        if name.startswith("nvidia.dali"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_dali)
    with pytest.raises(MissingBackendError, match=r"nvidia-dali-cuda120.*--data-backend pil"):
        loader(root, "dali")
    from dualvae.cli import main

    assert main(["prepare", "--celeba", str(root), "--out", str(root / "x.h5"), "--image-size", "32"]) == 2
    assert not (root / "x.h5").exists()


def test_bad_arguments(root):
    with pytest.raises(ValueError, match="unknown data backend"):
        loader(root, "tfrecord")
    with pytest.raises(ValueError, match="shard_id"):
        loader(root, "dali", shard_id=2, num_shards=2)
    with pytest.raises(ValueError, match="batch_size"):
        loader(root, "dali", batch_size=0)
    with pytest.raises(ValueError, match="no CUDA"):
        if not torch.cuda.is_available():
            make_loader(str(root), "train", batch_size=2, device="cuda")
        else:
            raise ValueError("no CUDA (skipped: a GPU is present)")


def test_train_from_cache_and_pil_cli(root, cache, tmp_path, capsys):
    from dualvae.cli import main

    out = tmp_path / "c2.h5"
    assert main(["prepare", "--celeba", str(root), "--out", str(out), "--workers", "1"]) == 0  # 64 px, as train
    assert "wrote 24 images" in capsys.readouterr().out
    assert main(["prepare", "--celeba", str(root), "--out", str(out)]) == 0
    assert "up to date" in capsys.readouterr().out
    for backend, data in (("hdf5", out), ("pil", root)):
        run = tmp_path / backend
        assert main(["train", "--data", str(data), "--data-backend", backend, "--out", str(run), "--steps", "5",
                     "--batch-size", "4", "--latent-dim", "8", "--width", "8", "--missing-ratio", "0.5",
                     "--workers", "1", "--ckpt-every", "5"]) == 0, capsys.readouterr().err
        ckpt = torch.load(run / "model.pt", weights_only=True)
        assert torch.equal(stored_mask(ckpt["label_mask"], len(ATTRS)), draw_label_mask((16, len(ATTRS)), 0.5, 0))


def stored_mask(stored, n: int) -> torch.Tensor:
    """The (N, n) bool mask a checkpoint records: a dense tensor, or a HashedMask's (seed, missing_ratio, rows)."""
    if isinstance(stored, torch.Tensor):
        return stored.bool()
    return HashedMask(stored["seed"], stored["missing_ratio"], stored["rows"]).dense(n)


def test_two_kinds_of_corrupt_file_in_one_batch(fresh_root, tmp_path):
    """One file the byte check catches and one only DALI fails on, in the same batch: each skipped once."""
    images = fresh_root / "img_align_celeba"
    (images / "000002.jpg").write_bytes(b"garbage")
    (images / "000003.jpg").write_bytes(b"\xff\xd8" + os.urandom(600) + b"\xff\xd9")
    ld = loader(fresh_root, "dali", batch_size=4, drop_last=False, skip_corrupt=True, shuffle=False)
    assert sorted(check_batches(ld)) == [0] + list(range(3, 16))
    assert [os.path.basename(p) for p in ld.skipped] == ["000002.jpg", "000003.jpg"]
    r = prepare(str(fresh_root), str(tmp_path / "c.h5"), image_size=S, batch_size=4, skip_corrupt=True,
                progress=False)
    assert r["images"] == N - 2 and len(r["skipped"]) == 2


def _run_script(path, text: str):
    import subprocess
    import sys

    path.write_text(text)
    return subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_pil_loader_in_a_plain_script(root, tmp_path):
    """make_loader(backend="pil") with worker processes at a script's top level, no __main__ guard: no DALI
    has run, so the workers are forked and nothing re-imports the script."""
    r = _run_script(tmp_path / "plain.py", f"""
from dualvae.data import make_loader
ld = make_loader({str(root)!r}, "train", image_size={S}, batch_size=4, device="cpu", backend="pil", threads=2)
print("images", sum(len(b.images) for b in ld), "epoch 2", sum(len(b.images) for b in ld))
""")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "images 16 epoch 2 16" in r.stdout


def test_pil_workers_after_dali_in_an_unguarded_script_fail_naming_the_fix(root, tmp_path):
    """After a DALI decoder ran, workers start from a forkserver, which re-imports the script: an unguarded
    top level is refused before any worker starts, with the fixes named; under the guard it runs."""
    try:
        import nvidia.dali  # noqa: F401
        dali = f"""d = make_loader({str(root)!r}, "train", image_size={S}, batch_size=4, device="cpu", backend="dali",
                threads=1)
print("dali", sum(len(b.images) for b in d))"""
    except ImportError:  # what running a DALI decoder records
        dali = "import dualvae.data.dali as D; D._dali_ran = True"
    pil = (f"ld = make_loader({str(root)!r}, 'train', image_size={S}, batch_size=4, device='cpu', backend='pil', "
           f"threads=2)\nprint('images', sum(len(b.images) for b in ld))")
    r = _run_script(tmp_path / "unguarded.py", f"from dualvae.data import make_loader\n{dali}\n{pil}\n")
    assert r.returncode != 0
    assert "exited unexpectedly" not in r.stderr
    assert f"re-imports the main script {tmp_path / 'unguarded.py'}" in r.stderr, r.stderr[-3000:]
    for fix in ('`if __name__ == "__main__":`', "threads=0, --workers 0", "backend 'dali' or 'hdf5'"):
        assert fix in r.stderr
    body = "\n".join("    " + line for line in f"{dali}\n{pil}".splitlines())
    r = _run_script(tmp_path / "guarded.py", f"from dualvae.data import make_loader\n\nif __name__ == '__main__':\n"
                                             f"{body}\n")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "images 16" in r.stdout


def _hdf5_loader(images, device, **kw):
    """An Hdf5Loader over images in memory (what make_loader builds from a cache, without h5py or DALI)."""
    n = len(images)
    labels = (torch.arange(n)[:, None] >> torch.arange(5) & 1).float()
    split = batch_mod.LoadedSplit(None, labels, np.arange(n, dtype=np.int64), n, [f"b{i}" for i in range(5)],
                                  [f"{i + 1:06d}.jpg" for i in range(n)])
    kw = dict(dict(batch_size=4, shuffle=True, seed=0, shard_id=0, num_shards=1, missing_ratio=0.0,
                   drop_last=False, skip_corrupt=False), **kw)
    return cache_mod.Hdf5Loader(split, images, device=torch.device(device), **kw)


def test_hdf5_on_the_cpu_gathers_in_place(cache):
    """device="cpu": the split stays where it is read, batches are index gathers, no staging buffer."""
    ld = loader(cache, "hdf5", shuffle=True)
    check_batches(ld, list(range(16)))
    assert ld.resident.type == "cpu" and ld.staging == [] and not ld.images.is_pinned()
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8)
    ld = _hdf5_loader(images, "cpu")
    for x, _, _, rows in ld:
        assert torch.equal(x, images[rows].float().div(127.5).sub(1.0))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_hdf5_split_on_the_host_copies_cuda_batches_from_pinned_buffers(monkeypatch):
    """A split that does not fit in GPU memory stays on the host; CUDA batches are gathered into pinned staging
    buffers and copied asynchronously. The GPU is kept busy after every batch, so a buffer rewritten before its
    copy ran would show as wrong pixels."""
    images = torch.randint(0, 256, (37, 3, 64, 64), dtype=torch.uint8)
    want = [b.images for b in _hdf5_loader(images, "cpu", batch_size=8).epoch(0)]
    total = torch.cuda.mem_get_info()[1]
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (0, total))  # "does not fit"
    ld = _hdf5_loader(images, "cuda", batch_size=8)
    assert ld.resident.type == "cpu" and not ld.images.is_pinned()
    for _ in range(2):  # the second pass reuses the staging buffers
        got = []
        for x, y, m, _ in ld.epoch(0):
            assert x.device.type == "cuda" and y.device.type == "cuda"
            got.append(x)
            torch.cuda._sleep(20_000_000)  # the next copies queue behind this
        assert len(ld.staging) == 2 and all(b.is_pinned() for b in ld.staging)
        torch.cuda.synchronize()
        assert len(got) == len(want) == 5
        for a, b in zip(got, want):
            torch.testing.assert_close(a.cpu(), b, rtol=0, atol=1e-6)
    monkeypatch.undo()
    resident = _hdf5_loader(images, "cuda", batch_size=8)  # fits: on the GPU, no staging
    assert resident.resident.type == "cuda" and resident.staging == []
    for a, (b, _, _, _) in zip(want, resident.epoch(0)):
        torch.testing.assert_close(b.cpu(), a, rtol=0, atol=1e-6)
