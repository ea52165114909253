"""Out of memory in a training step: the run stops with the batch size in the message; the largest batch that
fits is probed only after the failed step's memory is released, and only in a single-process run (with
several, the probing rank would enter SyncBatchNorm collectives the others never join)."""
import re
import sys
import weakref

import pytest
import torch

import dualvae.training.faults as F
import dualvae.training.loop as T
from dualvae.cli import main
from dualvae.data import Batch
from dualvae.losses import LossFns
from dualvae.training import TrainConfig, TrainingOOMError, train
from dualvae.training.distributed import Dist

TINY = dict(image_size=16, width=8, latent_dim=16, batch_size=8, limit=16, progress=False, device="cpu",
            data_backend="pil", workers=0)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    path = tmp_path_factory.mktemp("oom") / "data"
    assert main(["synth", "--out", str(path), "--num", "100", "--seed", "3", "--workers", "1"]) == 0
    return str(path)


def test_probe_runs_after_the_failed_step_is_released(root, tmp_path, monkeypatch):
    held = []

    def failing_step(model, g, g_e, x, *args, **kw):
        activations = torch.empty(len(x), 1024)  # what the failed step's frames keep alive
        held.append(weakref.ref(activations))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    seen = {}

    def probe(model, fns, cfg, x, y, m, eps):
        seen.update(exc=sys.exc_info()[1], alive=held[0]() is not None, rows=len(x))
        return 3

    monkeypatch.setattr(T, "train_step", failing_step)
    monkeypatch.setattr(F, "probe_blocker", lambda d: None)  # as on a single CUDA device
    monkeypatch.setattr(F, "largest_fitting_batch", probe)
    with pytest.raises(TrainingOOMError, match=r"out of memory at batch size 8 per process .*1 process.*the "
                                               r"largest batch per process that fits .* is 3.*Tried to allocate"):
        train(TrainConfig(data=root, out=str(tmp_path), steps=2, **TINY))
    assert seen == {"exc": None, "alive": False, "rows": 8}  # outside the except, the activations gone


def test_no_probe_with_several_processes_and_why():
    cfg = TrainConfig(data="d", out="o", batch_size=8)

    def probe():
        raise AssertionError("probed with 2 processes")

    msg = F.oom_message(cfg, Dist(rank=1, world=2, device=torch.device("cuda", 0)), "OutOfMemoryError: x", probe)
    assert "out of memory at batch size 4 per process (global --batch-size 8, 2 process(es)" in msg
    assert "not measured with 2 processes" in msg and "SyncBatchNorm" in msg and "hang" in msg
    assert "not measured on this device (cpu)" in F.oom_message(cfg, Dist(), "e", probe)
    assert "is 5" in F.oom_message(cfg, Dist(device=torch.device("cuda", 0)), "e", lambda: 5)


def test_cpu_oom_names_the_batch_size(root, tmp_path, monkeypatch):
    def oom(self, x, eps):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 1 GB")

    monkeypatch.setattr(LossFns, "_vae", oom)
    with pytest.raises(TrainingOOMError, match=r"batch size 8 per process.*unknown \(not measured on this device "
                                               r"\(cpu\)\).*lower --batch-size.*can't allocate memory"):
        train(TrainConfig(data=root, out=str(tmp_path), steps=2, **TINY))


def test_oom_names_the_batch_size(root, tmp_path, monkeypatch):
    def oom(self, x, eps):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(LossFns, "_vae", oom)
    with pytest.raises(TrainingOOMError, match=r"out of memory at batch size 8 per process \(global --batch-size "
                                               r"8, 1 process.*the largest batch that fits is unknown"):
        train(TrainConfig(data=root, out=str(tmp_path), steps=2, **TINY))


class _Tiled:
    """A loader whose batches are another's, repeated k times: a batch far larger than the data set."""

    def __init__(self, inner, k: int):
        self.inner, self.k = inner, k

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def num_images(self) -> int:
        return self.inner.num_images * self.k

    def epoch(self, epoch, start=0, stop=None):
        for x, y, m, rows in self.inner.epoch(epoch):
            yield Batch(x.repeat(self.k, 1, 1, 1), y.repeat(self.k, 1), m.repeat(self.k, 1), rows.repeat(self.k))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_oom_with_a_huge_batch_reports_a_batch_that_fits(root, tmp_path, monkeypatch):
    """A real CUDA out-of-memory: a batch of 8192 images at 64x64 (tens of GiB of activations) with the
    allocator capped at 8 GiB, whatever the GPU; the probe then finds a smaller batch that runs."""
    make_loader = T.make_loader
    monkeypatch.setattr(T, "make_loader", lambda *a, **kw: _Tiled(make_loader(*a, **{**kw, "batch_size": 8}), 1024))
    torch.cuda.empty_cache()
    total = torch.cuda.mem_get_info()[1]
    torch.cuda.set_per_process_memory_fraction(min(1.0, 8 * 2**30 / total))
    try:
        with pytest.raises(TrainingOOMError) as e:
            train(TrainConfig(data=root, out=str(tmp_path), steps=2, image_size=64, width=64, latent_dim=32,
                              batch_size=8192, limit=64, progress=False, device="cuda", data_backend="pil",
                              workers=0))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    msg = str(e.value)
    assert "out of memory at batch size 8192 per process" in msg and "CUDA out of memory" in msg, msg
    found = re.search(r"the largest batch per process that fits \(forward \+ backward, halving\) is (\d+)", msg)
    assert found and 1 <= int(found.group(1)) < 8192, msg
