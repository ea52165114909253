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

The missing-label indicator I (1 = observed) is a pure function of (seed, missing_ratio, image, label): the
loader gives each batch's as a kernels.HashedMask over the batch's global image indices, which the dual-head
kernel evaluates in place (no (B, n) mask is formed), and the checkpoint stores its definition.

Beside this file (docs/training.md tells users): the settings (config.py), the losses (dualvae/losses.py),
torchrun data parallelism (distributed.py: every process runs `train` on its shard of the global batch,
gradients and metrics summed before each of the two steps), label parallelism (label_parallel.py: U's rows split
over the processes), checkpoints, resume and RNG states (state.py),
NaN/inf losses, SIGTERM and out of memory (faults.py), events, log.csv and loss.png (log.py).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict

import torch
from tqdm import tqdm

from dualvae.checkpoint import write_step_checkpoint
from dualvae.data import make_loader
from dualvae.data.atomic import write_json_atomic
from dualvae.losses import LossFns
from dualvae.model import DualVAE
from dualvae.options import check_counts
from dualvae.precision import autocast, check_precision
from dualvae.training.config import TrainConfig
from dualvae.training.distributed import (Dist, barrier, convert_batchnorm, gather_objects, init_from_env,
                                          reduce_grads_and_stats, shutdown)
from dualvae.training.faults import (NonFiniteLossError, SigtermFlag, is_oom, nonfinite_stop, oom_error,
                                     oom_summary, step_is_finite)
from dualvae.training.label_parallel import LabelParallel, shard_model
from dualvae.training.log import Say, plot_log, write_log
from dualvae.training.state import Progress, checkpoint_state, resume, rng_state, write_parallel_checkpoint


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


def train_step(model: DualVAE, g, g_e, x, y, mask, eps, cfg: TrainConfig, *, dist: Dist | None = None,
               fns: LossFns | None = None, scaler=None, stop: bool = False,
               label_parallel: LabelParallel | None = None, rows: torch.Tensor | None = None,
               metrics: bool = True) -> dict | None:
    """One iteration of Algorithm 1 on a batch: the VAE step with g, then the label step with g_e.

    Under several processes x, y, mask, eps are this rank's rows of the global batch; gradients and metrics are
    summed over ranks before each step, so the update is the single-process update on the global batch. Returns
    the metrics (over the global batch), "skipped" (steps left out for a non-finite loss with skip_nonfinite) and
    "stop" (some rank asked to stop: SIGTERM); None when the global batch is empty (all its files skipped).
    `fns`: the losses (default: LossFns on cfg's recon_sigma and kernel_backend). y: a (B, n) tensor or
    SparseLabels; mask: a HashedMask (the loaders'), a (B, n) tensor or None.
    `label_parallel`: this rank's shard of U (label_parallel.py); the label step then takes the global batch's
    labels and mask by its `rows` (this rank's split rows; y and mask are unused) and U's gradient is
    not summed over the ranks. metrics=False: the label step's bce and accuracy are not computed (NaN; the
    loss is), for steps that log nothing (see losses.dual_head_terms).
    """
    d = dist or Dist(device=x.device)
    fns = fns or LossFns(model, cfg.recon_sigma, backend=cfg.kernel_backend)
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
        if step_is_finite(value, what, cfg.skip_nonfinite):
            scaler.step(opt) if scaler is not None else opt.step()
        else:
            skipped += 1
            opt.zero_grad(set_to_none=True)

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
        if label_parallel is None:
            nll, correct, observed = fns.label(x, y, mask, eps, metrics=metrics)
        else:
            nll, correct, observed = label_parallel.label(x, eps, rows, metrics)
    g_e.zero_grad(set_to_none=True)
    backward(cfg.alpha * nll)
    label_params = [p for grp in g_e.param_groups for p in grp["params"]
                    if label_parallel is None or p is not model.U]  # a U shard's gradient is its own
    s2 = reduce_grads_and_stats(label_params, torch.stack([nll.detach(), correct, observed]), d).tolist()
    step(g_e, "label (dual BCE)", s2[0])
    if scaler is not None:
        scaler.update()
    obs = max(s2[2], 1.0) if metrics else float("nan")
    return {"recon": recon, "kl": kl, "neg_elbo": recon + kl, "label_bce": s2[0] / obs, "label_acc": s2[1] / obs,
            "skipped": skipped, "stop": s[2] > 0}


def train(cfg: TrainConfig) -> str:
    """Train DualVAE on the training split of a CelebA-format root or a cache written by `dualvae prepare`;
    returns the path of out/model.pt. Under torchrun, every process runs this with the same cfg (see
    dualvae.training.distributed); only rank 0 writes files."""
    check_counts(cfg, "train")
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
    if cfg.label_parallel and cfg.precision == "fp16":
        raise ValueError("train: --label-parallel does not run with --precision fp16 (the GradScaler's inf check "
                         "would differ between U's shards and the ranks would skip different steps); use bf16")
    if cfg.label_parallel and cfg.compile:
        raise ValueError("train: --label-parallel does not run with --compile (the label step's collectives "
                         "break the graph); leave --compile off")
    torch.manual_seed(cfg.seed)
    ckpt_dir = os.path.join(cfg.out, "ckpt")
    log_path, model_path = os.path.join(cfg.out, "log.csv"), os.path.join(cfg.out, "model.pt")
    if d.is_main:
        os.makedirs(ckpt_dir, exist_ok=True)
    # Batches come from make_loader: epoch e visits the split in an order that is a pure function of (seed, e);
    # rank r of K takes every K-th image of it, so the K ranks' i-th batches are together the single-process
    # i-th batch of the global batch size. The missing-label mask I is a pure function of (seed, missing_ratio).
    loader = make_loader(cfg.data, "train", labels=cfg.labels, image_size=cfg.image_size,
                         batch_size=cfg.batch_size // d.world, device=d.device, backend=cfg.data_backend,
                         shuffle=True, seed=cfg.seed, shard_id=d.rank, num_shards=d.world,
                         missing_ratio=cfg.missing_ratio, drop_last=True, skip_corrupt=cfg.skip_corrupt,
                         threads=cfg.workers, limit=cfg.limit)
    n_train, label_mask = loader.num_images, loader.label_mask
    steps_per_epoch = n_train // cfg.batch_size  # the same on every rank (shards may hold one batch more)
    if steps_per_epoch == 0:
        raise ValueError(f"train: {n_train} training images in {cfg.data}, fewer than batch size {cfg.batch_size}")

    model = DualVAE(cfg.image_size, 3, cfg.latent_dim, len(loader.attr_names), cfg.width)
    model.attr_names = list(loader.attr_names)
    if cfg.label_parallel:
        shard_model(model, d)  # before the optimizers: g_e holds (and steps) this rank's rows of U only
    model = convert_batchnorm(model, d).to(d.device)
    g, g_e = make_optimizers(model, cfg)
    scaler = torch.amp.GradScaler(d.device.type) if cfg.precision == "fp16" else None
    gen = torch.Generator().manual_seed(cfg.seed)  # eps of the global batch, the same stream on every rank
    say = Say(cfg.out, d)
    progress = (resume(cfg, d, model, g, g_e, scaler, gen, say, steps_per_epoch, label_mask) if cfg.resume
                else Progress())
    model.train()
    # The collectives of BatchNorm over several processes break graphs: one graph per loss with one process only.
    fns = LossFns(model, cfg.recon_sigma, backend=cfg.kernel_backend, compile=cfg.compile,
                  fullgraph=not d.enabled)
    lp = (LabelParallel(model, loader.label_source, d, cfg.batch_size // d.world, fns.backend)
          if cfg.label_parallel else None)

    def save():
        rng = gather_objects(rng_state(gen, d), d)  # every rank's RNG states, to rank 0
        ck = None
        if d.is_main:
            ck = checkpoint_state(model, g, g_e, scaler, progress, cfg, steps_per_epoch=steps_per_epoch, rng=rng,
                                  world_size=d.world, label_mask=label_mask)
        if lp is not None:
            path = write_parallel_checkpoint(ck, model, g_e, d, ckpt_dir, progress.step, model_path, cfg.keep_ckpts)
        elif d.is_main:
            path = write_step_checkpoint(ck, ckpt_dir, progress.step, model_path, cfg.keep_ckpts)
        if d.is_main:
            progress.last_ckpt = path
            write_log(log_path, progress.log)

    sigterm = SigtermFlag()
    t0 = time.time()
    say(f"started: steps {progress.step} -> {cfg.steps}, global batch {cfg.batch_size} over {d.world} "
        f"process(es) on {d.device}, {cfg.precision}{', compiled' if cfg.compile else ''}")
    batches = iter(loader.epoch(progress.epoch, start=progress.position, stop=steps_per_epoch))
    bar = tqdm(total=cfg.steps, initial=progress.step, desc="train DualVAE",
               disable=not (cfg.progress and d.is_main), dynamic_ncols=True)
    stopped = False
    try:
        while progress.step < cfg.steps:
            # Pick a batch: this rank's rows (x_j, y_j, I_j) of the global batch, and its rows of eps.
            batch = next(batches, None)
            if batch is None:  # end of an epoch
                progress.epoch, progress.position = progress.epoch + 1, 0
                batches = iter(loader.epoch(progress.epoch, stop=steps_per_epoch))
                continue
            progress.position += 1
            x, y, m, rows = batch
            eps = torch.randn(cfg.batch_size, cfg.latent_dim, generator=gen)[d.rank::d.world][:len(x)]
            if len(x) == 0 and not d.enabled:  # a batch of corrupt files skipped
                continue
            # Sample z_j, the VAE step with g, the label step with g_e.
            logs = progress.step % cfg.log_every == 0 or progress.step + 1 == cfg.steps
            oom = None
            try:
                stats = train_step(model, g, g_e, x, y, m, eps.to(d.device), cfg, dist=d, fns=fns, scaler=scaler,
                                   stop=sigterm.raised, label_parallel=lp, rows=rows, metrics=logs)
            except NonFiniteLossError as exc:
                raise nonfinite_stop(exc, progress.step + 1, progress.last_ckpt) from None
            except RuntimeError as exc:
                if not is_oom(exc):
                    raise
                # Only the text leaves the except: the exception's traceback holds the failed step's frames and
                # with them its activations, which the probe in oom_error must not find still allocated.
                oom = oom_summary(exc)
            if oom is not None:
                raise oom_error(cfg, d, oom, model, fns, x, y, m, eps)
            if stats is None:
                continue
            progress.skipped_nonfinite += stats["skipped"]
            progress.step += 1
            bar.update(1)
            if logs:
                row = {k: v for k, v in stats.items() if k not in ("skipped", "stop")}
                progress.log.append({"step": progress.step - 1, "time_s": round(time.time() - t0, 2), **row})
                bar.set_postfix(recon=f"{stats['recon']:.0f}", kl=f"{stats['kl']:.0f}",
                                acc=f"{stats['label_acc']:.3f}")
            if progress.step % cfg.ckpt_every == 0 or progress.step == cfg.steps or stats["stop"]:
                save()
            if stats["stop"]:
                say(f"SIGTERM: wrote checkpoint {progress.last_ckpt or '(rank 0)'} at step {progress.step}; "
                    f"resume with --resume auto")
                stopped = True
                break
    finally:
        bar.close()
        sigterm.restore()
        loader.close()
    if progress.skipped_nonfinite:
        say(f"skipped {progress.skipped_nonfinite} optimizer step(s) with a non-finite loss (--skip-nonfinite)")
    if d.is_main and not stopped:
        plot_log(progress.log, os.path.join(cfg.out, "loss.png"))
        write_json_atomic(os.path.join(cfg.out, "train_config.json"), asdict(cfg))
    barrier(d)
    return model_path
