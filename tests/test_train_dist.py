"""Training at scale and under faults: torchrun (gloo, 2 processes) == one process on the same global batch,
SIGKILL + --resume auto == an uninterrupted run, fallback past a corrupt checkpoint, NaN stop/skip, SIGTERM,
mixed precision, torch.compile (out of memory: test_train_oom.py).

These run on the CPU (device "cpu": "auto" would pick a GPU where there is one, and two gloo ranks would become
two NCCL ranks on one GPU). The `gpu`-marked ones at the end run what makes sense on one GPU: training, resume,
the NaN stop and autocast on CUDA, reading the JPEGs with the PIL loader (a bare GPU host has no DALI to
write the cache with)."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from dualvae.checkpoint import load_checkpoint
from dualvae.cli import main
from dualvae.model import DualVAE
from dualvae.training import NonFiniteLossError, TrainConfig, list_checkpoints, train

# 40 training images, global batch 8: 5 steps an epoch; tiny nets, so that the runs are quick.
TINY = dict(image_size=16, width=8, latent_dim=16, batch_size=8, limit=40, progress=False, deterministic=True,
            device="cpu")
TINY_ARGS = ["--image-size", "16", "--width", "8", "--latent-dim", "16", "--batch-size", "8", "--limit", "40",
             "--device", "cpu"]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """A generated CelebA-format root of 80 images."""
    path = tmp_path_factory.mktemp("trainscale") / "data"
    assert main(["synth", "--out", str(path), "--num", "80", "--seed", "3", "--workers", "1"]) == 0
    return str(path)


@pytest.fixture(scope="module")
def cache(root):
    try:
        import nvidia.dali  # noqa: F401
    except ImportError as e:
        pytest.skip(f"`dualvae prepare` decodes with DALI, which is not importable ({e})")
    out = os.path.join(os.path.dirname(root), "d16.h5")
    assert main(["prepare", "--celeba", root, "--out", out, "--image-size", "16", "--workers", "1"]) == 0
    return out


@pytest.fixture(scope="module")
def reference_run(cache, tmp_path_factory):
    """An uninterrupted deterministic run of 12 steps with a checkpoint every 2 steps, all kept."""
    out = str(tmp_path_factory.mktemp("ref") / "run")
    train(TrainConfig(data=cache, out=out, steps=12, ckpt_every=2, keep_ckpts=10, **TINY))
    return out


def _params(path):
    return load_checkpoint(path, kind="dualvae")["model"]


def _assert_same_params(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def _env():
    # The child computes with as many threads as this process, so that its floating-point sums match bit for bit.
    return {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads()), "PYTHONUNBUFFERED": "1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, proc, timeout=60.0):
    t0 = time.time()
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"training exited early ({proc.returncode}): {proc.stderr.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("timed out waiting for the training process")
        time.sleep(0.05)


def test_torchrun_two_processes_equal_one_process(cache, tmp_path):
    """torchrun --nproc-per-node 2 (gloo, each rank 4 of the global 8 rows, BatchNorm over the global batch)
    gives the single-process run on the same global batch: the same losses and parameters up to rounding."""
    steps = 7  # crosses an epoch boundary (5 steps an epoch) with 2 shards
    one, two = tmp_path / "one", tmp_path / "two"
    train(TrainConfig(data=cache, out=str(one), steps=steps, ckpt_every=3, **TINY))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(_free_port()), "-m", "dualvae", "train", "--data", cache, "--out", str(two),
           "--steps", str(steps), "--ckpt-every", "3", "--deterministic", *TINY_ARGS]
    r = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("model:") == 1  # rank 0 reports (and writes) alone
    a, b = load_checkpoint(str(one / "model.pt")), load_checkpoint(str(two / "model.pt"))
    assert a["step"] == b["step"] == steps and b["world_size"] == 2 and len(b["rng"]) == 2
    ma, mb = a["label_mask"], b["label_mask"]
    assert (ma["seed"], ma["missing_ratio"]) == (mb["seed"], mb["missing_ratio"]) and torch.equal(ma["rows"], mb["rows"])
    for ra, rb in zip(a["log"], b["log"]):
        for key in ("recon", "kl", "label_bce", "label_acc"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (ra["step"], key)
    # A conv bias feeding BatchNorm has a zero gradient up to rounding, which Adam scales to lr-sized steps
    # (see test_model_train): those biases, and the running means they shift, are compared loosely.
    noise = {"encoder.conv.0.bias", "encoder.conv.3.bias", "decoder.deconv.0.bias"}
    for k, va in a["model"].items():
        vb = b["model"][k]
        if not va.dtype.is_floating_point:
            assert torch.equal(va, vb), k
        elif k in noise or k.endswith("running_mean"):
            torch.testing.assert_close(vb, va, rtol=0, atol=0.05, msg=k)
        else:
            torch.testing.assert_close(vb, va, rtol=1e-3, atol=2e-5, msg=k)
    assert sorted(os.listdir(two / "ckpt")) == ["step-000000003.pt", "step-000000006.pt", "step-000000007.pt"]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(cache, reference_run, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dualvae", "train", "--data", cache, "--out", str(out), "--steps", "400",
           "--ckpt-every", "2", "--keep-ckpts", "1000", "--deterministic", *TINY_ARGS]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: any(int(p[-12:-3]) >= 4 for p in list_checkpoints(str(out / "ckpt"))), proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # Resume from the newest checkpoint that is mid-epoch and before step 12 (5 steps an epoch, one every 2 steps:
    # steps 2, 4, 6, 8 are at batches 2, 4, 1, 3 of their epoch); newer ones (a slow poll) are removed.
    while True:
        newest = list_checkpoints(str(out / "ckpt"))[0]
        ck = load_checkpoint(newest)
        if 0 < ck["epoch_position"] < ck["steps_per_epoch"] and ck["step"] < 12:
            break
        os.remove(newest)
    train(TrainConfig(data=cache, out=str(out), steps=12, ckpt_every=2, resume="auto", **TINY))
    assert f"resumed from {os.path.join(str(out), 'ckpt')}" in (out / "events.log").read_text()
    _assert_same_params(_params(str(out / "model.pt")), _params(os.path.join(reference_run, "model.pt")))
    assert len(list_checkpoints(str(out / "ckpt"))) == 3  # the newest --keep-ckpts (3) kept


def test_corrupt_newest_checkpoint_falls_back_to_previous(cache, reference_run, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "ckpt").mkdir(parents=True)
    for step in (2, 4):
        name = f"step-{step:09d}.pt"
        with open(os.path.join(reference_run, "ckpt", name), "rb") as f:
            (out / "ckpt" / name).write_bytes(f.read())
    newest = out / "ckpt" / "step-000000004.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated mid-write
    train(TrainConfig(data=cache, out=str(out), steps=6, ckpt_every=2, resume="auto", **TINY))
    log = (out / "events.log").read_text()
    assert "step-000000004.pt could not be read" in log and "falling back to the previous checkpoint" in log
    assert "resumed from" in log and "step-000000002.pt: step 2" in log
    assert "falling back" in capsys.readouterr().err
    _assert_same_params(_params(str(out / "model.pt")),
                        _params(os.path.join(reference_run, "ckpt", "step-000000006.pt")))


def test_resume_refuses_other_settings(cache, reference_run, tmp_path):
    with pytest.raises(ValueError, match="batch_size 8 .checkpoint. vs 16"):
        train(TrainConfig(data=cache, out=str(tmp_path), steps=14, resume=os.path.join(reference_run, "model.pt"),
                          **{**TINY, "batch_size": 16}))


def test_resume_refuses_another_missing_label_mask(cache, reference_run, tmp_path):
    """The checkpoint's mask must be the loader's: one stored as a tensor (written before the mask was a hash),
    or over other rows, is refused, naming the checkpoint and what differs."""
    from dualvae.checkpoint import save_atomic
    from dualvae.kernels import HashedMask
    from dualvae.training.state import check_label_mask, mask_from_state

    ck = load_checkpoint(os.path.join(reference_run, "ckpt", "step-000000002.pt"))
    mask = ck["label_mask"]
    rows = mask["rows"]
    assert torch.equal(rows, torch.arange(40))
    cases = [(torch.ones(40, 40, dtype=torch.bool),
              r"stores its missing-label mask as a \(40, 40\) tensor.*definition changed.*restart the run"),
             ({**mask, "rows": rows.flip(0)}, r"was trained with another missing-label mask than this run's: "
                                              r"rows: image 0 at split position 39 \(checkpoint\) vs 0;"),
             ({**mask, "rows": rows[:30]}, r"was trained with .*: rows: 30 images \(checkpoint\) vs 40;")]
    for i, (saved, message) in enumerate(cases):
        path = save_atomic({**ck, "label_mask": saved}, str(tmp_path / f"step-{i}.pt"))
        with pytest.raises(ValueError, match=f"resume: checkpoint {re.escape(path)} " + message):
            train(TrainConfig(data=cache, out=str(tmp_path / f"run{i}"), steps=4, resume=path, **TINY))
    with pytest.raises(ValueError, match=r"seed 0 \(checkpoint\) vs 1; missing_ratio 0.0 \(checkpoint\) vs 0.5"):
        check_label_mask(mask, HashedMask(1, 0.5, rows), "x.pt")
    check_label_mask(mask, mask_from_state(mask), "x.pt")  # the same mask passes


def _inject_nan(monkeypatch, at_calls):
    import dualvae.losses as L

    orig, calls = L.gaussian_recon_nll, [0]

    def recon(x_hat, x, sigma):
        calls[0] += 1
        out = orig(x_hat, x, sigma)
        return out * float("nan") if calls[0] in at_calls else out

    monkeypatch.setattr(L, "gaussian_recon_nll", recon)


def test_nan_loss_stops_with_message_and_keeps_last_checkpoint(cache, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    _inject_nan(monkeypatch, {5})  # the VAE loss of step 5
    args = ["train", "--data", cache, "--out", str(out), "--steps", "8", "--ckpt-every", "2", *TINY_ARGS]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 1
    err = capsys.readouterr().err
    last = os.path.join(str(out), "ckpt", "step-000000004.pt")
    assert "non-finite VAE (negative ELBO) loss (nan)" in err and "at step 5; stopped" in err
    assert f"the last good checkpoint, {last}, is untouched" in err and "--skip-nonfinite" in err
    assert list_checkpoints(str(out / "ckpt"))[0] == last
    ck = load_checkpoint(str(out / "model.pt"))
    assert ck["step"] == 4 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    DualVAE.load(last)
    _inject_nan(monkeypatch, {1})
    with pytest.raises(NonFiniteLossError, match="no checkpoint had been written yet"):  # the library's error
        train(TrainConfig(data=cache, out=str(tmp_path / "again"), steps=8, **TINY))


def test_skip_nonfinite_skips_and_counts(cache, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _inject_nan(monkeypatch, {3, 4})
    train(TrainConfig(data=cache, out=str(out), steps=6, skip_nonfinite=True, **TINY))
    ck = load_checkpoint(str(out / "model.pt"))
    assert ck["step"] == 6 and ck["skipped_nonfinite"] == 2
    assert all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())
    assert "skipped 2 optimizer step(s) with a non-finite loss" in (out / "events.log").read_text()


def test_sigterm_writes_a_loadable_checkpoint_and_exits_cleanly(cache, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "dualvae", "train", "--data", cache, "--out", str(out), "--steps", "100000",
           "--ckpt-every", "100000", *TINY_ARGS]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        events = out / "events.log"
        _wait_for(lambda: events.exists() and "started" in events.read_text(), proc)
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-2000:]
    (ckpt,) = list_checkpoints(str(out / "ckpt"))
    assert "SIGTERM: wrote checkpoint" in err and ckpt in err
    model = DualVAE.load(str(out / "model.pt"))
    ck = load_checkpoint(ckpt)
    assert 0 < ck["step"] < 100000 and model.config.image_size == 16
    for k, v in model.state_dict().items():
        assert torch.equal(v, ck["model"][k])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs(cache, tmp_path, precision):
    out = tmp_path / precision
    train(TrainConfig(data=cache, out=str(out), steps=3, precision=precision, **TINY))
    ck = load_checkpoint(str(out / "model.pt"))
    assert all(torch.isfinite(torch.tensor([r["recon"], r["kl"], r["label_bce"]])).all() for r in ck["log"])
    assert (ck["scaler"] is not None) == (precision == "fp16")
    assert ck["model"]["U"].dtype == torch.float32  # autocast: parameters stay fp32


@pytest.mark.slow  # inductor compiles both losses for each backend: slow on a CPU
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_compile_matches_eager(cache, tmp_path, backend):
    """--compile: both losses, with the dualvae:: ops (the C++ CPU kernels; Triton through its interpreter),
    through torch.compile(fullgraph=True), where a graph break would raise: the same losses as eager."""
    from dualvae import kernels

    if backend == "cpu" and not kernels.has_compiled_ops():
        pytest.skip("the C++ CPU kernels are not built")
    assert kernels.resolve_backend(backend, device=torch.device("cpu")) != "reference"  # fused: one graph per loss
    logs = {}
    for compiled in (False, True):
        out = tmp_path / str(compiled)
        train(TrainConfig(data=cache, out=str(out), steps=2, log_every=1, compile=compiled, kernel_backend=backend,
                          **{**TINY, "deterministic": False}))
        logs[compiled] = load_checkpoint(str(out / "model.pt"))["log"]
    for a, b in zip(logs[False], logs[True]):
        for key in ("recon", "kl", "label_bce"):
            assert b[key] == pytest.approx(a[key], rel=1e-4), key


# -- on one GPU ------------------------------------------------------------------------------------------
# The JPEG root through the PIL loader in this process (no workers: 40 tiny images).
GPU = {**TINY, "device": "cuda", "data_backend": "pil", "workers": 0}
GPU_ARGS = [*TINY_ARGS[:-2], "--device", "cuda", "--data-backend", "pil", "--workers", "0"]


@pytest.mark.gpu
@needs_cuda
def test_cuda_single_process_training_matches_the_cpu_at_the_first_step(root, tmp_path):
    """A run on CUDA (the fused losses on the Triton kernels) trains, and its first step, from the same
    initial parameters, data and eps, gives the CPU run's losses up to TF32 rounding of the convolutions."""
    logs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        train(TrainConfig(data=root, out=str(out), steps=6, log_every=1,
                          **{**GPU, "device": device, "deterministic": False}))
        ck = load_checkpoint(str(out / "model.pt"))
        assert ck["step"] == 6 and all(torch.isfinite(v).all() for v in ck["model"].values()
                                       if v.is_floating_point())
        logs[device] = ck["log"]
    assert "on cuda:" in (tmp_path / "cuda" / "events.log").read_text()
    from dualvae import kernels
    assert kernels.resolve_backend("auto", device=torch.device("cuda")) == "triton"
    for key in ("recon", "kl", "label_bce"):
        assert logs["cuda"][0][key] == pytest.approx(logs["cpu"][0][key], rel=1e-2), key
    assert len(logs["cuda"]) == 6


@pytest.mark.gpu
@needs_cuda
def test_cuda_resume_equals_uninterrupted(root, tmp_path):
    """--deterministic on CUDA: resuming from a mid-epoch checkpoint gives the uninterrupted run's parameters.
    Each run is a fresh process, so that CUBLAS_WORKSPACE_CONFIG takes effect before cuBLAS starts."""
    def run(out, *extra):
        cmd = [sys.executable, "-m", "dualvae", "train", "--data", root, "--out", str(out), "--steps", "8",
               "--ckpt-every", "2", "--keep-ckpts", "10", "--deterministic", *GPU_ARGS, *extra]
        r = subprocess.run(cmd, env={**_env(), "CUBLAS_WORKSPACE_CONFIG": ":4096:8"}, capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]

    ref, resumed = tmp_path / "ref", tmp_path / "resumed"
    run(ref)
    (resumed / "ckpt").mkdir(parents=True)
    name = "step-000000004.pt"  # batch 4 of the 5 an epoch
    (resumed / "ckpt" / name).write_bytes((ref / "ckpt" / name).read_bytes())
    run(resumed, "--resume", "auto")
    assert "resumed from" in (resumed / "events.log").read_text()
    a, b = _params(str(ref / "model.pt")), _params(str(resumed / "model.pt"))
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k}: max difference {float((a[k].double() - b[k].double()).abs().max()):.3g}"


@pytest.mark.gpu
@needs_cuda
def test_cuda_nan_loss_stops_and_keeps_last_checkpoint(root, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _inject_nan(monkeypatch, {5})
    with pytest.raises(NonFiniteLossError, match=r"non-finite VAE .* at step 5; stopped"):
        train(TrainConfig(data=root, out=str(out), steps=8, ckpt_every=2, **{**GPU, "deterministic": False}))
    last = os.path.join(str(out), "ckpt", "step-000000004.pt")
    assert list_checkpoints(str(out / "ckpt"))[0] == last
    ck = load_checkpoint(last)
    assert ck["step"] == 4 and all(torch.isfinite(v).all() for v in ck["model"].values() if v.is_floating_point())


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_cuda_mixed_precision_runs(root, tmp_path, precision):
    """Autocast on CUDA: the fused losses get half-precision z (the compiled Triton kernels' bf16/fp16 path)."""
    out = tmp_path / precision
    train(TrainConfig(data=root, out=str(out), steps=4, log_every=1, precision=precision,
                      **{**GPU, "deterministic": False}))
    ck = load_checkpoint(str(out / "model.pt"))
    assert len(ck["log"]) == 4
    assert all(torch.isfinite(torch.tensor([r["recon"], r["kl"], r["label_bce"]])).all() for r in ck["log"])
    assert (ck["scaler"] is not None) == (precision == "fp16")
    assert ck["model"]["U"].dtype == torch.float32
    assert f"on cuda:0, {precision}" in (out / "events.log").read_text()
