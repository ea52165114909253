"""Algorithm 1 of the paper, as one loop.

    repeat
        pick a batch (x_j), j in B, of size M
        sample z_j ~ q_phi(z_j | x_j)
        phi, theta <- g  (grad_{phi,theta} sum_j [log p_theta(x_j | z_j) - KL(q_phi(z_j | x_j) || p(z))])
        phi, U     <- g_e(grad_{phi,U} sum_i sum_j alpha I_ij log p(y_ij | z_j, u_i))

g updates encoder + decoder, g_e updates encoder + U; each owns its own optimizer state. z_j is sampled once
per iteration: the label step reuses the same eps, so z_j = mu_phi(x_j) + sigma_phi(x_j) eps_j is evaluated at
the encoder g has just updated (the algorithm's order), with the gradient flowing into phi.

Which knob weighs the label step: with Adam as g_e (the default) alpha does nothing, since Adam's update is
invariant to the scale of the loss (alpha = 1 and alpha = 100 give identical runs); its strength is g_e's
learning rate, `label_lr`. With SGD as g_e (`label_optimizer="sgd"`) the step is label_lr * alpha * grad, so
alpha and label_lr act together.

The missing-label indicator I (1 = observed) is drawn once per run from `missing_ratio` and `seed`, over the
whole training label matrix, and saved in the checkpoint.

At scale and under faults (README, "Training at scale"): under torchrun every process runs `train` on its shard
of the global batch, gradients and metrics summed before each of the two steps (dualvae.training.distributed); autocast
(`precision`), torch.compile of the two losses (`compile`); rotating checkpoints in out/ckpt with everything a
resume needs (optimizers, scaler, epoch position, RNG states), `resume="auto"` past corrupt files; a NaN/inf
loss stops (or is skipped), SIGTERM checkpoints and returns, out-of-memory names the batch size.
"""
from __future__ import annotations

import csv
import gc
import glob
import io
import os
import random
import re
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from dualvae import kernels
from dualvae.atomic import copy_atomic, write_json_atomic, write_text_atomic
from dualvae.checkpoint import UnsafeCheckpointError, load_checkpoint, save_atomic
from dualvae.data import draw_label_mask, make_loader  # noqa: F401  (draw_label_mask: re-exported for callers)
from dualvae.training.distributed import (Dist, barrier, broadcast_object, convert_batchnorm, gather_objects, init_from_env,
                                 reduce_grads_and_stats, shutdown)
from dualvae.model import DualVAE
from dualvae.precision import autocast, check_precision

# Fields a resumed run must share with the checkpoint it resumes (the data stream and the model depend on them).
RESUME_FIELDS = ("image_size", "latent_dim", "width", "batch_size", "seed", "missing_ratio", "limit")


@dataclass
class TrainConfig:
    data: str
    out: str
    steps: int = 3000
    batch_size: int = 64  # the global batch: split over the processes of a torchrun run
    lr: float = 1e-3  # g: Adam over encoder + decoder
    label_lr: float = 1e-3  # g_e over encoder + U
    label_optimizer: str = "adam"  # "adam" | "sgd"
    kernel_backend: str = "auto"  # dualvae.kernels backend of the losses: auto | triton | reference | cpu
    alpha: float = 1.0
    missing_ratio: float = 0.0
    recon_sigma: float = 0.2  # sigma of the Gaussian decoder p(x|z), in [-1, 1] pixel units
    latent_dim: int = 128
    width: int = 32
    image_size: int = 64
    limit: int | None = None  # use the first `limit` training images
    seed: int = 0
    ckpt_every: int = 1000
    keep_ckpts: int = 3  # rotating step checkpoints kept in out/ckpt/
    log_every: int = 25
    workers: int | None = None  # DALI threads / DataLoader workers
    data_backend: str | None = None  # dualvae.data.make_loader backend: dali | pil | hdf5 (None: dali, hdf5 for a cache)
    skip_corrupt: bool = False
    progress: bool = True
    device: str = "auto"  # auto (cuda:LOCAL_RANK when there is a GPU) | cpu | cuda
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 with a GradScaler)
    compile: bool = False  # torch.compile the two loss functions (model + loss)
    deterministic: bool = False  # torch.use_deterministic_algorithms; bitwise-repeatable runs and resumes
    resume: str | None = None  # "auto" (newest valid checkpoint in out/ckpt, if any) or a checkpoint path
    skip_nonfinite: bool = False  # skip an optimizer step whose loss is NaN/inf (counted) instead of stopping


class TrainingError(RuntimeError):
    """A run stopped by a fault (non-finite loss, out of memory); the message says what to do."""


class NonFiniteLossError(TrainingError):
    pass


class TrainingOOMError(TrainingError):
    pass


def gaussian_recon_nll(x_hat: torch.Tensor, x: torch.Tensor, sigma: float) -> torch.Tensor:
    """-log p(x | z) per image for N(x; x_hat, sigma^2 I), without the constant D log(sigma sqrt(2 pi))."""
    return ((x - x_hat) ** 2).flatten(1).sum(1) / (2.0 * sigma * sigma)


def make_optimizers(model: DualVAE, cfg: TrainConfig):
    """g over (phi, theta) = encoder + decoder; g_e over (phi, U) = encoder + U."""
    g = torch.optim.Adam([*model.encoder.parameters(), *model.decoder.parameters()], lr=cfg.lr)
    label_params = [*model.encoder.parameters(), model.U]
    if cfg.label_optimizer == "adam":
        g_e = torch.optim.Adam(label_params, lr=cfg.label_lr)
    elif cfg.label_optimizer == "sgd":
        g_e = torch.optim.SGD(label_params, lr=cfg.label_lr)
    else:
        raise ValueError(f"label_optimizer must be 'adam' or 'sgd', got {cfg.label_optimizer!r}")
    return g, g_e


class LossFns:
    """The two losses of Algorithm 1 as sums over the batch's rows (a rank's share of the global loss), eager or
    through torch.compile (the dualvae:: custom ops have fake implementations: one graph each)."""

    def __init__(self, model: DualVAE, cfg: TrainConfig, compile: bool = False, fullgraph: bool = True):
        self.model, self.cfg = model, cfg
        self.vae = torch.compile(self._vae, fullgraph=fullgraph) if compile else self._vae
        self.label = torch.compile(self._label, fullgraph=fullgraph) if compile else self._label

    def _vae(self, x, eps):
        """(sum_j -log p(x_j | z_j), sum_j KL_j): the negative ELBO (Eq. 1) summed over the rows."""
        z, kl, _, _ = self.model.sample_latent(x, eps)
        recon = gaussian_recon_nll(self.model.decode(z).float(), x, self.cfg.recon_sigma)
        return recon.sum(), kl.float().sum()

    def _label(self, x, y, mask, eps):
        """(sum_ij I_ij BCE(sigma(z_j u_i), y_ij), correct observed predictions, observed count), same eps."""
        m = self.model
        z, _, _, _ = m.sample_latent(x, eps)
        nll = kernels.dual_bce(z, m.U, y, mask, reduction="sum", backend=m.kernel_backend).float()
        with torch.no_grad():
            pred = (z.detach().float() @ m.U.detach().t() > 0).to(y.dtype)
            correct = ((pred == y).to(mask.dtype) * mask).sum()
        return nll, correct.float(), mask.sum().float()


def fused_losses(kernel_backend: str, device: torch.device) -> bool:
    """Whether the losses run as dualvae:: custom ops (one node each under torch.compile, fake implementations):
    Triton on CUDA (or under TRITON_INTERPRET), the compiled C++ kernels on CPU. The pure-PyTorch reference (CPU
    without the built library) checks its labels with a data-dependent branch: one graph break."""
    # the ops' own choice of backend (fp32 stands for every float dtype they fuse)
    return kernels.ops._resolve_backend("train", kernel_backend, device, torch.float32) != "reference"


def train_step(model: DualVAE, g, g_e, x, y, mask, eps, cfg: TrainConfig, *, dist: Dist | None = None,
               fns: LossFns | None = None, scaler=None, stop: bool = False) -> dict | None:
    """One iteration of Algorithm 1 on a batch: the VAE step with g, then the label step with g_e.

    Under several processes x, y, mask, eps are this rank's rows of the global batch; gradients and metrics are
    summed over ranks before each step, so the update is the single-process update on the global batch. Returns
    the metrics (over the global batch), "skipped" (steps left out for a non-finite loss with skip_nonfinite) and
    "stop" (some rank asked to stop: SIGTERM); None when the global batch is empty (all its files skipped).
    """
    d = dist or Dist(device=x.device)
    fns = fns or LossFns(model, cfg)
    amp = autocast(x.device, cfg.precision)
    n = torch.tensor([float(len(x))], device=x.device)
    if d.enabled:  # the global row count divides the mean loss of every rank
        n = reduce_grads_and_stats([], n, d)
    n_rows = n.item()
    if n_rows == 0:
        return None
    skipped = 0

    def backward(loss):
        (scaler.scale(loss) if scaler is not None else loss).backward()

    def step(opt, what, value):
        nonlocal skipped
        if not np.isfinite(value):
            if not cfg.skip_nonfinite:
                raise NonFiniteLossError(f"non-finite {what} loss ({value}) over the global batch")
            skipped += 1
            opt.zero_grad(set_to_none=True)
            return
        scaler.step(opt) if scaler is not None else opt.step()

    # VAE step: maximize the ELBO (Eq. 1) over encoder + decoder.
    with amp:
        recon_sum, kl_sum = fns.vae(x, eps)
    g.zero_grad(set_to_none=True)
    backward((recon_sum + kl_sum) / n_rows)
    vae_params = [p for grp in g.param_groups for p in grp["params"]]
    s = reduce_grads_and_stats(vae_params, torch.stack([recon_sum.detach(), kl_sum.detach(),
                                                        torch.tensor(float(stop), device=x.device)]), d).tolist()
    recon, kl = s[0] / n_rows, s[1] / n_rows
    step(g, "VAE (negative ELBO)", recon + kl)

    # Label step: maximize alpha * sum_ij I_ij log p(y_ij | z_j, u_i) over encoder + U, same eps.
    with amp:
        nll, correct, observed = fns.label(x, y, mask, eps)
    g_e.zero_grad(set_to_none=True)
    backward(cfg.alpha * nll)
    label_params = [p for grp in g_e.param_groups for p in grp["params"]]
    s2 = reduce_grads_and_stats(label_params, torch.stack([nll.detach(), correct, observed]), d).tolist()
    step(g_e, "label (dual BCE)", s2[0])
    if scaler is not None:
        scaler.update()
    obs = max(s2[2], 1.0)
    return {"recon": recon, "kl": kl, "neg_elbo": recon + kl, "label_bce": s2[0] / obs, "label_acc": s2[1] / obs,
            "skipped": skipped, "stop": s[2] > 0}


def train(cfg: TrainConfig) -> str:
    """Train DualVAE on the training split of a CelebA-format root or a cache written by `dualvae prepare`;
    returns the path of out/model.pt. Under torchrun, every process runs this with the same cfg (see
    dualvae.training.distributed); only rank 0 writes files."""
    check_precision(cfg.precision, "train")
    if cfg.ckpt_every < 1 or cfg.keep_ckpts < 1:
        raise ValueError(f"ckpt_every and keep_ckpts must be >= 1, got {cfg.ckpt_every} and {cfg.keep_ckpts}")
    d = init_from_env(cfg.device)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        if cfg.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        return _train(cfg, d)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
        shutdown(d)


def _train(cfg: TrainConfig, d: Dist) -> str:
    if cfg.batch_size % d.world:
        raise ValueError(f"train: batch size {cfg.batch_size} (the global batch) is not a multiple of the "
                         f"{d.world} processes")
    torch.manual_seed(cfg.seed)
    if d.is_main:
        os.makedirs(os.path.join(cfg.out, "ckpt"), exist_ok=True)
    # Batches come from make_loader: epoch e visits the split in an order that is a pure function of (seed, e);
    # rank r of K takes every K-th image of it, so the K ranks' i-th batches are together the single-process
    # i-th batch of the global batch size. The missing-label mask I is a pure function of (seed, missing_ratio).
    per_rank = cfg.batch_size // d.world
    loader = make_loader(cfg.data, "train", image_size=cfg.image_size, batch_size=per_rank, device=d.device,
                         backend=cfg.data_backend, shuffle=True, seed=cfg.seed, shard_id=d.rank,
                         num_shards=d.world, missing_ratio=cfg.missing_ratio, drop_last=True,
                         skip_corrupt=cfg.skip_corrupt, threads=cfg.workers, limit=cfg.limit)
    n_train, n_labels = loader.num_images, len(loader.attr_names)
    steps_per_epoch = n_train // cfg.batch_size  # the same on every rank (shards may hold one batch more)
    if steps_per_epoch == 0:
        raise ValueError(f"train: {n_train} training images in {cfg.data}, fewer than batch size {cfg.batch_size}")
    mask = loader.label_mask

    model = DualVAE(cfg.image_size, 3, cfg.latent_dim, n_labels, cfg.width, kernel_backend=cfg.kernel_backend)
    model.attr_names = list(loader.attr_names)
    model = convert_batchnorm(model, d).to(d.device)
    g, g_e = make_optimizers(model, cfg)
    scaler = torch.amp.GradScaler(d.device.type) if cfg.precision == "fp16" else None
    gen = torch.Generator().manual_seed(cfg.seed)  # eps of the global batch, the same stream on every rank

    ckpt_dir = os.path.join(cfg.out, "ckpt")
    log_path, model_path = os.path.join(cfg.out, "log.csv"), os.path.join(cfg.out, "model.pt")
    say = _Say(cfg.out, d)
    state = {"step": 0, "epoch": 0, "position": 0, "skipped_nonfinite": 0, "rows": [], "last_ckpt": None}
    if cfg.resume:
        ckpt, path = _find_resume(cfg, d, say)
        if ckpt is not None:
            _restore(ckpt, cfg, d, model, g, g_e, scaler, gen, state, say)
            state["last_ckpt"] = path
            say(f"resumed from {path}: step {state['step']}, epoch {state['epoch']}, batch {state['position']} "
                f"of {steps_per_epoch}")
    model.train()
    # The collectives of BatchNorm over several processes break graphs: one graph per loss with one process only.
    fullgraph = not d.enabled and fused_losses(cfg.kernel_backend, d.device)
    fns = LossFns(model, cfg, compile=cfg.compile, fullgraph=fullgraph)

    def save(step: int):
        rng = gather_objects(_rng_state(gen, d), d)
        if d.is_main:
            ck = model.checkpoint_state()
            ck.update(g=g.state_dict(), g_e=g_e.state_dict(), scaler=scaler.state_dict() if scaler else None,
                      step=step, epoch=state["epoch"], epoch_position=state["position"],
                      steps_per_epoch=steps_per_epoch, rng=rng, world_size=d.world, label_mask=mask,
                      skipped_nonfinite=state["skipped_nonfinite"], log=state["rows"], train_config=asdict(cfg))
            state["last_ckpt"] = _write_checkpoint(ck, ckpt_dir, step, model_path, cfg.keep_ckpts)
            _write_log(log_path, state["rows"])

    sigterm = _SigtermFlag()
    t0 = time.time()
    step = state["step"]
    say(f"started: steps {step} -> {cfg.steps}, global batch {cfg.batch_size} over {d.world} process(es) on "
        f"{d.device}, {cfg.precision}{', compiled' if cfg.compile else ''}")
    epoch, batches = state["epoch"], iter(loader.epoch(state["epoch"], start=state["position"], stop=steps_per_epoch))
    bar = tqdm(total=cfg.steps, initial=step, desc="train DualVAE", disable=not (cfg.progress and d.is_main),
               dynamic_ncols=True)
    stopped = False
    try:
        while step < cfg.steps:
            batch = next(batches, None)
            if batch is None:  # end of an epoch
                epoch += 1
                state.update(epoch=epoch, position=0)
                batches = iter(loader.epoch(epoch, stop=steps_per_epoch))
                continue
            state["position"] += 1
            x, y, m = batch
            eps = torch.randn(cfg.batch_size, cfg.latent_dim, generator=gen)[d.rank::d.world][:len(x)]
            if len(x) == 0 and not d.enabled:  # a batch of corrupt files skipped
                continue
            oom = None
            try:
                stats = train_step(model, g, g_e, x, y, m, eps.to(d.device), cfg, dist=d, fns=fns, scaler=scaler,
                                   stop=sigterm.raised)
            except NonFiniteLossError as exc:
                last = state["last_ckpt"]
                kept = (f"the last good checkpoint, {last}, is untouched: resume from it with --resume auto "
                        f"(e.g. with a lower --lr)") if last else "no checkpoint had been written yet"
                raise NonFiniteLossError(f"train: {exc} at step {step + 1}; stopped. {kept}; or pass "
                                         f"--skip-nonfinite to skip such steps") from None
            except RuntimeError as exc:
                if not _is_oom(exc):
                    raise
                # Only the text leaves the except: the exception's traceback holds the failed step's frames and
                # with them its activations, which the probe below must not find still allocated.
                oom = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if oom is not None:
                raise TrainingOOMError(_oom_message(cfg, d, oom, lambda: _largest_fitting_batch(
                    model, fns, cfg, x, y, m, eps)))
            if stats is None:
                continue
            state["skipped_nonfinite"] += stats["skipped"]
            step += 1
            bar.update(1)
            if (step - 1) % cfg.log_every == 0 or step == cfg.steps:
                row = {k: v for k, v in stats.items() if k not in ("skipped", "stop")}
                state["rows"].append({"step": step - 1, "time_s": round(time.time() - t0, 2), **row})
                bar.set_postfix(recon=f"{stats['recon']:.0f}", kl=f"{stats['kl']:.0f}",
                                acc=f"{stats['label_acc']:.3f}")
            if step % cfg.ckpt_every == 0 or step == cfg.steps or stats["stop"]:
                state["step"] = step
                save(step)
            if stats["stop"]:
                say(f"SIGTERM: wrote checkpoint {state['last_ckpt'] or '(rank 0)'} at step {step}; "
                    f"resume with --resume auto")
                stopped = True
                break
    finally:
        bar.close()
        sigterm.restore()
        loader.close()
    if state["skipped_nonfinite"]:
        say(f"skipped {state['skipped_nonfinite']} optimizer step(s) with a non-finite loss (--skip-nonfinite)")
    if d.is_main and not stopped:
        _plot_log(state["rows"], os.path.join(cfg.out, "loss.png"))
        write_json_atomic(os.path.join(cfg.out, "train_config.json"), asdict(cfg))
    barrier(d)
    return model_path


# -- checkpoints ------------------------------------------------------------------------------------------------
CKPT_NAME = re.compile(r"step-(\d+)\.pt$")


def list_checkpoints(ckpt_dir: str) -> list[str]:
    """Step checkpoints in `ckpt_dir`, newest (highest step) first."""
    found = [(int(m.group(1)), p) for p in glob.glob(os.path.join(ckpt_dir, "step-*.pt"))
             if (m := CKPT_NAME.search(os.path.basename(p)))]
    return [p for _, p in sorted(found, reverse=True)]


def _write_checkpoint(ck: dict, ckpt_dir: str, step: int, model_path: str, keep: int) -> str:
    """out/ckpt/step-N.pt (atomic), then out/model.pt as a copy of it (atomic), then the oldest beyond `keep`
    removed: a crash at any point leaves every file complete."""
    path = save_atomic(ck, os.path.join(ckpt_dir, f"step-{step:09d}.pt"))
    copy_atomic(path, model_path)
    for old in list_checkpoints(ckpt_dir)[keep:]:
        os.remove(old)
    return path


RESUME_KEYS = ("model", "g", "g_e", "step", "epoch", "epoch_position", "rng", "train_config")


def _find_resume(cfg: TrainConfig, d: Dist, say) -> tuple[dict | None, str | None]:
    """The checkpoint to resume: cfg.resume's path, or ("auto") the newest valid one in out/ckpt, falling back
    to older ones past a corrupt file. Rank 0 chooses; every rank loads the chosen file."""
    chosen = None
    if d.is_main:
        if cfg.resume != "auto":
            chosen = cfg.resume
        else:
            candidates = list_checkpoints(os.path.join(cfg.out, "ckpt"))
            for i, path in enumerate(candidates):
                try:
                    _load_resumable(path)
                    chosen = path
                    break
                except UnsafeCheckpointError:
                    raise  # not a damaged file to skip: falling back past it could restart the run at step 0
                except ValueError as exc:
                    nxt = candidates[i + 1] if i + 1 < len(candidates) else None
                    say(f"resume: {exc}; " + (f"falling back to the previous checkpoint {nxt}" if nxt else
                                              "no older checkpoint to fall back to"))
            if chosen is None:
                say(f"resume auto: no valid checkpoint in {os.path.join(cfg.out, 'ckpt')}; starting at step 0")
    chosen = broadcast_object(chosen, d)
    if chosen is None:
        return None, None
    return _load_resumable(chosen), chosen


def _load_resumable(path: str) -> dict:
    ck = load_checkpoint(path, kind="dualvae")  # ValueError for unreadable/truncated files
    missing = [k for k in RESUME_KEYS if k not in ck]
    if missing:
        raise ValueError(f"checkpoint {path} cannot be resumed: it lacks {', '.join(missing)}")
    return ck


def _restore(ck: dict, cfg: TrainConfig, d: Dist, model, g, g_e, scaler, gen, state: dict, say) -> None:
    saved = ck["train_config"]
    diff = [f"{k} {saved.get(k)!r} (checkpoint) vs {getattr(cfg, k)!r}" for k in RESUME_FIELDS
            if saved.get(k) != getattr(cfg, k)]
    if diff:
        raise ValueError(f"resume: this run's settings differ from the checkpoint's: {'; '.join(diff)}")
    model.load_state_dict(ck["model"])
    g.load_state_dict(ck["g"])
    g_e.load_state_dict(ck["g_e"])
    if scaler is not None and ck.get("scaler"):
        scaler.load_state_dict(ck["scaler"])
    rngs = ck["rng"]
    if len(rngs) != d.world:
        say(f"resume: the checkpoint was written by {len(rngs)} process(es), this run has {d.world}; the data "
            f"stream (order, eps) does not depend on it, each process takes rank 0's global RNG states")
    _set_rng_state(rngs[d.rank] if len(rngs) == d.world else rngs[0], gen, d)
    state.update(step=ck["step"], epoch=ck["epoch"], position=ck["epoch_position"],
                 skipped_nonfinite=ck.get("skipped_nonfinite", 0), rows=list(ck.get("log") or []))


def _rng_state(gen: torch.Generator, d: Dist) -> dict:
    """Every RNG a step draws from, as tensors and plain values (checkpoints load with weights_only=True)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {"eps": gen.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state(d.device) if d.device.type == "cuda" else None,
            "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                      "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
            "python": {"version": py_version, "state": torch.tensor(py_state, dtype=torch.int64),
                       "gauss_next": py_gauss}}


def _set_rng_state(s: dict, gen: torch.Generator, d: Dist) -> None:
    gen.set_state(s["eps"])
    torch.set_rng_state(s["torch"])
    if s.get("cuda") is not None and d.device.type == "cuda":
        torch.cuda.set_rng_state(s["cuda"], d.device)
    n = s["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["state"].tolist()), p["gauss_next"]))


# -- faults -----------------------------------------------------------------------------------------------------
class _SigtermFlag:
    """SIGTERM sets a flag; the loop finishes its step, all ranks agree (the flag rides on the step's
    all-reduce), a checkpoint is written and the run returns."""

    def __init__(self):
        self.raised = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        self.raised = True

    def restore(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


def _probe_blocker(d: Dist) -> str | None:
    """Why the largest fitting batch cannot be measured here (None: it can)."""
    if d.enabled:
        return (f"not measured with {d.world} processes: one rank probing alone would enter SyncBatchNorm "
                f"collectives the others never join, and the run would hang")
    if d.device.type != "cuda":
        return f"not measured on this device ({d.device.type})"
    return None


def _oom_message(cfg: TrainConfig, d: Dist, error: str, probe) -> str:
    """The message of a TrainingOOMError; `probe()` (the largest batch that fits, or None) runs only where it
    can neither deadlock nor measure another device than the one that ran out."""
    per_rank = cfg.batch_size // d.world
    blocker = _probe_blocker(d)
    fits = probe() if blocker is None else None
    fit_text = (f"the largest batch per process that fits (forward + backward, halving) is {fits}" if fits else
                f"the largest batch that fits is unknown ({blocker or 'halving down to 1 found none that runs'})")
    return (f"train: out of memory at batch size {per_rank} per process (global --batch-size {cfg.batch_size}, "
            f"{d.world} process(es), {cfg.image_size}x{cfg.image_size}, {cfg.precision}); {fit_text}; lower "
            f"--batch-size, use more processes, or --precision bf16 ({error})")


def _fits(model, fns, cfg, x, y, m, eps) -> None:
    """A forward + backward of both losses on this batch (no optimizer step); raises when it does not fit."""
    with autocast(x.device, cfg.precision):
        r, k = fns.vae(x, eps)
        nll, _, _ = fns.label(x, y, m, eps)
    (r + k + nll).backward()


def _release(model, device: torch.device) -> None:
    """Free what a failed step left: gradients, graphs held in reference cycles, the allocator's cached blocks."""
    model.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _largest_fitting_batch(model, fns, cfg, x, y, m, eps) -> int | None:
    """Halve the batch until `_fits`. Each attempt runs in a frame of its own and is caught here, so its tensors
    are gone (frame and traceback released) before the next one starts."""
    eps = eps.to(x.device)
    b = len(x) // 2
    while b >= 1:
        _release(model, x.device)
        try:
            _fits(model, fns, cfg, x[:b], y[:b], m[:b], eps[:b])
            return b
        except RuntimeError as exc:
            if not _is_oom(exc):
                return None
        b //= 2
    return None


class _Say:
    """Events of the run (resume, fallbacks, SIGTERM, skipped steps): stderr and out/events.log, rank 0."""

    def __init__(self, out: str, d: Dist):
        self.path, self.main = os.path.join(out, "events.log"), d.is_main

    def __call__(self, msg: str) -> None:
        if not self.main:
            return
        tqdm.write(f"train: {msg}", file=sys.stderr)
        with open(self.path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}\n")


def _write_log(path: str, rows: list[dict]) -> None:
    if not rows:
        return
    text = io.StringIO(newline="")
    w = csv.DictWriter(text, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path, text.getvalue())


def _plot_log(rows: list[dict], path: str) -> None:
    if not rows:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].plot(steps, [r["recon"] for r in rows]); axes[0].set_title("recon NLL / image")
    axes[1].plot(steps, [r["kl"] for r in rows]); axes[1].set_title("KL / image")
    axes[2].plot(steps, [r["label_acc"] for r in rows]); axes[2].set_title("label accuracy (observed)")
    for ax in axes:
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
