"""Training with the in-kernel mask, and label parallelism (`dualvae train --label-parallel`, U's rows split over
2 gloo processes): as close to one process as data parallelism is, bit-identical twice, SIGKILL + --resume auto
equal to an uninterrupted run, DualVAE.load assembling the shards, the errors of missing or foreign shards and
of another number of processes, and --resume past a bad shard (every rank falls back, or every rank fails)."""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from dualvae import losses
from dualvae.checkpoint import label_shard_name, load_checkpoint
from dualvae.cli import main
from dualvae.data import draw_label_mask
from dualvae.kernels import HashedMask
from dualvae.model import DualVAE
from dualvae.training import TrainConfig, list_checkpoints, train
from dualvae.training.label_parallel import shard_range
from test_train_dist import TINY, TINY_ARGS, _free_port, _wait_for

STEPS = 8  # 5 steps an epoch (40 images, global batch 8): crosses an epoch boundary
RUN = dict(missing_ratio=0.3, ckpt_every=2, keep_ckpts=10)
RUN_ARGS = ["--missing-ratio", "0.3", "--ckpt-every", "2", "--keep-ckpts", "10", "--deterministic", *TINY_ARGS]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}  # every torchrun run: the same sums


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:
        pytest.skip(f"`dualvae prepare` decodes with DALI, which is not importable ({e})")
    base = tmp_path_factory.mktemp("labelpar")
    assert main(["synth", "--out", str(base / "data"), "--num", "80", "--seed", "3", "--workers", "1"]) == 0
    out = str(base / "d16.h5")
    assert main(["prepare", "--celeba", str(base / "data"), "--out", out, "--image-size", "16", "--workers",
                 "1"]) == 0
    return out


def _torchrun(cache, out, *extra, steps=STEPS, popen=False):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "dualvae", "train", "--data", cache, "--out", str(out),
           "--steps", str(steps), *RUN_ARGS, *extra]
    if popen:
        return subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(cache, tmp_path_factory):
    """One process (in this one, the label loss watched), data parallel and label parallel (2 processes each),
    on the same global batches: STEPS steps each."""
    base = tmp_path_factory.mktemp("runs")
    seen = []
    orig = losses.dual_head_terms

    def spy(z, U, y, mask, *args, **kw):
        seen.append(mask)
        return orig(z, U, y, mask, *args, **kw)

    losses.dual_head_terms = spy
    try:
        train(TrainConfig(data=cache, out=str(base / "one"), steps=STEPS, **RUN, **TINY))
    finally:
        losses.dual_head_terms = orig
    _torchrun(cache, base / "dp")
    _torchrun(cache, base / "lp", "--label-parallel")
    return {"base": base, "seen": seen}


def _descendants(pid: int) -> list[int]:
    """The processes below `pid` (torchrun starts its workers in sessions of their own: a signal to the
    launcher's process group does not reach them)."""
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parent.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _weights(path):
    return DualVAE.load(str(path)).state_dict()


def test_training_uses_the_hashed_mask_and_saves_its_definition(runs):
    """The label loss gets each batch's HashedMask (no dense mask), and the checkpoint's mask is the split's
    HashedMask: equal, densely, to draw_label_mask over the split."""
    seen = runs["seen"]
    assert len(seen) == STEPS and all(isinstance(m, HashedMask) for m in seen)
    assert all(m.missing_ratio == 0.3 and m.seed == 0 and len(m.rows) == 8 for m in seen)
    assert sorted(torch.cat([m.rows for m in seen[:5]]).tolist()) == list(range(40))  # one epoch: every image
    ck = load_checkpoint(str(runs["base"] / "one" / "model.pt"))
    saved = ck["label_mask"]
    assert saved["seed"] == 0 and saved["missing_ratio"] == 0.3 and torch.equal(saved["rows"], torch.arange(40))
    dense = HashedMask(**saved).dense(40)
    assert torch.equal(dense, HashedMask(0, 0.3, torch.arange(40)).dense(40))
    assert 0.6 < dense.float().mean() < 0.8
    assert torch.equal(dense, draw_label_mask((40, 40), 0.3, 0))  # the loaders' mask is the same hash


def test_label_parallel_is_as_close_to_one_process_as_data_parallel(runs, cache):
    """LP and DP each end a few Adam steps away from one process by rounding noise that Adam amplifies; LP's
    distance is of the size of DP's. The losses agree tightly."""
    base = runs["base"]
    one, dp = _weights(base / "one" / "model.pt"), _weights(base / "dp" / "model.pt")
    lp = _weights(base / "lp" / "model.pt")
    assert one.keys() == lp.keys() and lp["U"].shape == (40, 16)

    def dist(a, b):
        return {k: float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point()}

    d_dp, d_lp = dist(one, dp), dist(one, lp)
    assert max(d_lp.values()) <= max(4 * max(d_dp.values()), 1e-5), (d_lp, d_dp)
    assert d_lp["U"] <= max(4 * d_dp["U"], 1e-6), (d_lp["U"], d_dp["U"])
    assert max(d_lp.values()) > 0 or max(d_dp.values()) == 0  # a run that only copied the other would pass
    la = load_checkpoint(str(base / "one" / "model.pt"))["log"]
    lb = load_checkpoint(str(base / "lp" / "model.pt"))["log"]
    assert len(la) == len(lb) > 0
    for ra, rb in zip(la, lb):
        for key in ("recon", "kl", "label_bce", "label_acc"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (ra["step"], key)


def test_label_parallel_runs_are_bit_identical_and_load_as_one_model(runs, cache):
    base = runs["base"]
    again = _torchrun(cache, base / "lp3", "--label-parallel")
    ck = load_checkpoint(str(base / "lp" / "model.pt"))
    lpinfo = ck["label_parallel"]
    assert "U" not in ck["model"] and lpinfo["world_size"] == 2 and lpinfo["num_labels"] == 40
    assert [(s["lo"], s["hi"]) for s in lpinfo["shards"]] == [shard_range(40, 2, 0), shard_range(40, 2, 1)]
    for name in ("model.pt", os.path.join("ckpt", f"step-{STEPS:09d}.pt")):
        a, b = _weights(base / "lp" / name), _weights(again / name)
        for k in a:
            assert torch.equal(a[k], b[k]), (name, k)
    # DualVAE.load: one model whose U is the shards' rows, in order
    model = DualVAE.load(str(base / "lp" / "model.pt"))
    shards = [load_checkpoint(str(base / "lp" / "ckpt" / label_shard_name(f"step-{STEPS:09d}.pt", r, 2)),
                              kind="dualvae-label-shard") for r in range(2)]
    assert [s["U"].shape[0] for s in shards] == [20, 20] and shards[1]["step"] == STEPS
    assert torch.equal(model.U.detach(), torch.cat([s["U"] for s in shards])) and model.config.num_labels == 40
    assert model.attr_names == ck["attr_names"] and not model.training


def test_label_parallel_sigkill_then_resume_equals_uninterrupted(runs, cache, tmp_path):
    out = tmp_path / "run"
    proc = _torchrun(cache, out, "--label-parallel", steps=400, popen=True)
    try:
        _wait_for(lambda: any(int(p[-12:-3]) >= 4 for p in list_checkpoints(str(out / "ckpt"))), proc, timeout=120)
        workers = _descendants(proc.pid)
        assert len(workers) >= 2
        for pid in [proc.pid, *workers]:  # the whole job at once, as a node failure would
            os.kill(pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    t0 = time.time()
    while any(_alive(pid) for pid in workers):  # every rank is gone before the resume starts
        assert time.time() - t0 < 30, "the killed ranks are still running"
        time.sleep(0.05)
    # Resume from the newest checkpoint that is mid-epoch and before STEPS; newer ones (a slow poll) are removed.
    while True:
        newest = list_checkpoints(str(out / "ckpt"))[0]
        ck = load_checkpoint(newest)
        if 0 < ck["epoch_position"] < ck["steps_per_epoch"] and ck["step"] < STEPS:
            break
        os.remove(newest)
    _torchrun(cache, out, "--label-parallel", "--resume", "auto")
    assert "resumed from" in (out / "events.log").read_text()
    a, b = _weights(out / "model.pt"), _weights(runs["base"] / "lp" / "model.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_label_parallel_checkpoint_errors(runs, cache, tmp_path):
    """A missing or foreign shard file is named; resuming onto another number of processes, or without
    --label-parallel, is refused with what to do."""
    src = runs["base"] / "lp"
    run = tmp_path / "copy"
    shutil.copytree(src, run)
    main_file = run / "ckpt" / f"step-{STEPS:09d}.pt"
    shard1 = run / "ckpt" / label_shard_name(main_file.name, 1, 2)
    with pytest.raises(ValueError, match="the checkpoint was written by|on 2 processes"):
        train(TrainConfig(data=cache, out=str(run), steps=STEPS + 2, resume=str(main_file), label_parallel=True,
                          **RUN, **TINY))
    with pytest.raises(ValueError, match="resume it with --label-parallel"):
        train(TrainConfig(data=cache, out=str(run), steps=STEPS + 2, resume=str(main_file), **RUN, **TINY))
    older = run / "ckpt" / label_shard_name(f"step-{STEPS - 2:09d}.pt", 1, 2)
    shutil.copy(older, shard1)  # the shard of another step
    with pytest.raises(ValueError, match=re.escape(f"label shard {shard1} does not belong to checkpoint")):
        DualVAE.load(str(main_file))
    os.remove(shard1)
    missing = f"its label shard {shard1} (rank 1 of 2, U rows [20, 40)) is missing"
    with pytest.raises(ValueError, match=re.escape(missing)):
        DualVAE.load(str(run / "model.pt"))


def _as_two_ranks(fn, monkeypatch):
    """[fn(Dist(rank=r, world=2)) or the exception it raised, for r = 0, 1], run in two threads whose
    gather_objects and broadcast_object (those of training/state.py) meet at a barrier: a rank that leaves the
    other waiting fails the test (BrokenBarrierError) instead of hanging it."""
    import threading

    from dualvae.training import state
    from dualvae.training.distributed import Dist

    box, meet = [None, None], threading.Barrier(2, timeout=30)

    def gather(obj, d):
        box[d.rank] = obj
        meet.wait()
        out = list(box)
        meet.wait()
        return out

    monkeypatch.setattr(state, "gather_objects", gather)
    monkeypatch.setattr(state, "broadcast_object", lambda obj, d: gather(obj, d)[0])
    results = [None, None]

    def run(rank):
        try:
            results[rank] = fn(Dist(rank=rank, world=2))
        except Exception as exc:  # noqa: BLE001 - returned to the test, which checks it
            results[rank] = exc

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    return results


def test_label_parallel_resume_past_a_bad_shard(runs, cache, tmp_path, monkeypatch):
    """A truncated shard of the newest checkpoint, rank 1's: --resume PATH of it fails on both ranks (rank 0
    naming rank 1's file), none waiting for the other; --resume auto falls back, on both, to the previous
    complete checkpoint, and the run ends as the uninterrupted one. Shard files without their main file (a crash
    between the two) are removed at the next save."""
    from dualvae.training.state import find_resume

    run = tmp_path / "copy"
    shutil.copytree(runs["base"] / "lp", run)
    ckpt, newest, previous = run / "ckpt", f"step-{STEPS:09d}.pt", f"step-{STEPS - 2:09d}.pt"
    shard1 = ckpt / label_shard_name(newest, 1, 2)
    shard1.write_bytes(shard1.read_bytes()[: shard1.stat().st_size // 2])
    cfg = TrainConfig(data=cache, out=str(run), resume=str(ckpt / newest), label_parallel=True)
    said = []
    r0, r1 = _as_two_ranks(lambda d: find_resume(cfg, d, said.append), monkeypatch)
    assert isinstance(r1, ValueError) and str(r1).startswith(f"checkpoint {shard1} could not be read")
    assert isinstance(r0, ValueError) and str(r0).startswith(f"resume (rank 1): checkpoint {shard1} could not")
    cfg.resume = "auto"
    r0, r1 = _as_two_ranks(lambda d: find_resume(cfg, d, said.append), monkeypatch)
    assert r0[1] == r1[1] == str(ckpt / previous) and (r0[2]["rank"], r1[2]["rank"]) == (0, 1)
    assert r1[2]["step"] == STEPS - 2 and "falling back to the previous checkpoint" in said[-1]
    monkeypatch.undo()
    orphan = ckpt / label_shard_name(f"step-{STEPS - 1:09d}.pt", 0, 2)
    shutil.copy(ckpt / label_shard_name(newest, 0, 2), orphan)
    _torchrun(cache, run, "--label-parallel", "--resume", "auto")
    log = (run / "events.log").read_text()
    assert f"{shard1} could not be read" in log and "falling back to the previous checkpoint" in log
    assert f"resumed from {ckpt / previous}: step {STEPS - 2}" in log
    a, b = _weights(run / "model.pt"), _weights(runs["base"] / "lp" / "model.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not orphan.exists()


def test_rotation_removes_shards_without_their_main_file(tmp_path):
    from dualvae.checkpoint import rotate_checkpoints

    names = ["step-000000002.pt", "step-000000004.pt", "step-000000005.shard-1-of-2.pt"]
    names += [label_shard_name(f"step-00000000{s}.pt", r, 2) for s in (2, 4) for r in range(2)]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    rotate_checkpoints(str(tmp_path), keep=1)
    assert sorted(os.listdir(tmp_path)) == ["step-000000004.pt", "step-000000004.shard-0-of-2.pt",
                                            "step-000000004.shard-1-of-2.pt"]


@pytest.mark.parametrize("sparse", [False, True])
def test_the_shards_label_terms_sum_to_the_whole(sparse):
    """What each rank computes, its columns [lo, hi) of U, the labels and the mask on the whole batch, sums over
    the shards to the single-process loss, counts and dz, and its dU is the whole dU's rows."""
    from dualvae.kernels import SparseLabels

    torch.manual_seed(0)
    B, n, d = 6, 11, 4
    z0, U0 = torch.randn(B, d), torch.randn(n, d)
    y = (torch.rand(B, n) > 0.7).float()
    labels = SparseLabels.from_dense(y) if sparse else y
    mask = HashedMask(3, 0.4, torch.tensor([9, 2, 40, 7, 13, 0]))
    z, U = z0.clone().requires_grad_(), U0.clone().requires_grad_()
    whole = losses.dual_head_terms(z, U, labels, mask, "reference")
    whole[0].backward()
    parts, dz, dU = [], torch.zeros_like(z0), []
    for lo, hi in (shard_range(n, 3, r) for r in range(3)):
        zr, Ur = z0.clone().requires_grad_(), U0[lo:hi].clone().requires_grad_()
        part = losses.dual_head_terms(zr, Ur, losses.label_columns(labels, lo, hi), losses.mask_columns(mask, lo, hi),
                                      "reference")
        part[0].backward()
        parts.append(part)
        dz += zr.grad
        dU.append(Ur.grad)
    for k in range(3):
        torch.testing.assert_close(sum(p[k] for p in parts), whole[k])
    assert whole[2].item() == mask.dense(n).sum().item() < B * n
    torch.testing.assert_close(dz, z.grad)
    torch.testing.assert_close(torch.cat(dU), U.grad)
    assert [shard_range(n, 3, r) for r in range(3)] == [(0, 3), (3, 7), (7, 11)]
