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
"""
from __future__ import annotations

import csv
import io
import os
import time
from dataclasses import asdict, dataclass

import torch
from tqdm import tqdm

from dualvae import kernels
from dualvae.checkpoint import save_atomic, write_json_atomic, write_text_atomic
from dualvae.data import draw_label_mask, make_loader
from dualvae.model import DualVAE


@dataclass
class TrainConfig:
    data: str
    out: str
    steps: int = 3000
    batch_size: int = 64
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
    log_every: int = 25
    workers: int | None = None  # DALI threads / DataLoader workers
    data_backend: str | None = None  # dualvae.data.make_loader backend: dali | pil | hdf5 (None: dali, hdf5 for a cache)
    skip_corrupt: bool = False
    progress: bool = True


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


def train_step(model: DualVAE, g, g_e, x, y, mask, eps, cfg: TrainConfig) -> dict:
    """One iteration of Algorithm 1 on a batch: the VAE step with g, then the label step with g_e."""
    # VAE step: maximize the ELBO (Eq. 1) over encoder + decoder.
    z, kl, _, _ = model.sample_latent(x, eps)
    recon = gaussian_recon_nll(model.decode(z), x, cfg.recon_sigma)
    vae_loss = (recon + kl).mean()
    g.zero_grad(set_to_none=True)
    vae_loss.backward()
    g.step()

    # Label step: maximize alpha * sum_ij I_ij log p(y_ij | z_j, u_i) over encoder + U, same eps.
    z, _, _, _ = model.sample_latent(x, eps)
    nll = kernels.dual_bce(z, model.U, y, mask, reduction="sum", backend=model.kernel_backend)
    g_e.zero_grad(set_to_none=True)
    (cfg.alpha * nll).backward()
    g_e.step()

    with torch.no_grad():
        observed = mask.sum().clamp_min(1)
        correct = ((model.label_logits(z) > 0).to(y.dtype) == y).to(mask.dtype).mul(mask).sum()
    return {"recon": recon.mean().item(), "kl": kl.mean().item(), "neg_elbo": vae_loss.item(),
            "label_bce": nll.item() / observed.item(), "label_acc": (correct / observed).item()}


def train(cfg: TrainConfig) -> str:
    """Train DualVAE on the training split of a CelebA-format root or a cache written by `dualvae prepare`;
    returns the path of out/model.pt."""
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.out, exist_ok=True)
    # Batches come from make_loader: epoch e visits the split in an order that is a pure function of (seed, e);
    # the missing-label mask I is a pure function of (seed, missing_ratio) over the whole split.
    loader = make_loader(cfg.data, "train", image_size=cfg.image_size, batch_size=cfg.batch_size, device="cpu",
                         backend=cfg.data_backend, shuffle=True, seed=cfg.seed, missing_ratio=cfg.missing_ratio,
                         drop_last=True, skip_corrupt=cfg.skip_corrupt, threads=cfg.workers, limit=cfg.limit)
    n_train, n_labels = loader.num_images, len(loader.attr_names)
    if len(loader) == 0:
        raise ValueError(f"train: {n_train} training images in {cfg.data}, fewer than batch size {cfg.batch_size}")
    mask = loader.label_mask

    model = DualVAE(cfg.image_size, 3, cfg.latent_dim, n_labels, cfg.width, kernel_backend=cfg.kernel_backend)
    model.attr_names = list(loader.attr_names)
    g, g_e = make_optimizers(model, cfg)
    model.train()

    gen = torch.Generator().manual_seed(cfg.seed)  # eps
    log_path = os.path.join(cfg.out, "log.csv")
    ckpt_path = os.path.join(cfg.out, "model.pt")
    rows, t0 = [], time.time()
    epoch, batches = 0, iter(loader.epoch(0))
    bar = tqdm(range(cfg.steps), desc="train DualVAE", disable=not cfg.progress, dynamic_ncols=True)
    for step in bar:
        batch = next(batches, None)
        while batch is None or len(batch[0]) == 0:  # end of an epoch (or a batch of corrupt files skipped)
            if batch is None:
                epoch += 1
                batches = iter(loader.epoch(epoch))
            batch = next(batches, None)
        x, y, m = batch
        eps = torch.randn(len(x), cfg.latent_dim, generator=gen)
        stats = train_step(model, g, g_e, x, y, m, eps, cfg)
        if step % cfg.log_every == 0 or step == cfg.steps - 1:
            rows.append({"step": step, "time_s": round(time.time() - t0, 2), **stats})
            bar.set_postfix(recon=f"{stats['recon']:.0f}", kl=f"{stats['kl']:.0f}", acc=f"{stats['label_acc']:.3f}")
        if (step + 1) % cfg.ckpt_every == 0 or step == cfg.steps - 1:
            state = model.checkpoint_state()
            state.update(g=g.state_dict(), g_e=g_e.state_dict(), step=step + 1, label_mask=mask,
                         train_config=asdict(cfg))
            save_atomic(state, ckpt_path)
            _write_log(log_path, rows)
    loader.close()
    _plot_log(rows, os.path.join(cfg.out, "loss.png"))
    write_json_atomic(os.path.join(cfg.out, "train_config.json"), asdict(cfg))
    return ckpt_path


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
