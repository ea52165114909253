"""What a training run is given: TrainConfig, one field per setting, each with its default and its help text.

The command line (`dualvae train`) builds its options and its --help from these fields: the "help" of a field's
metadata is its user-facing line, "choices" (where present) the values it takes, and the field's default the
option's default, stated here only.
"""
from __future__ import annotations

from dataclasses import dataclass

from dualvae.data import LABEL_SETS  # the label sets make_loader reads: the values of TrainConfig.labels
from dualvae.kernels import BACKENDS
from dualvae.options import option
from dualvae.precision import PRECISIONS

# Fields a resumed run must share with the checkpoint it resumes (the data stream and the model depend on them).
RESUME_FIELDS = ("image_size", "latent_dim", "width", "batch_size", "seed", "missing_ratio", "limit", "labels")


@dataclass
class TrainConfig:
    data: str = option(help="CelebA-format root folder, or a cache file written by `dualvae prepare`")
    out: str = option(help="run folder: model.pt, ckpt/step-N.pt, log.csv, loss.png, events.log, train_config.json")
    steps: int = option(3000, "iterations of Algorithm 1 (each a VAE step and a label step)")
    batch_size: int = option(64, "images per iteration: the global batch, split over the processes of a torchrun "
                             "run (a multiple of their number)")
    lr: float = option(1e-3, "learning rate of g, the Adam optimizer of the VAE step (encoder + decoder)")
    label_lr: float = option(1e-3, "learning rate of g_e, the optimizer of the label step (encoder + U); with Adam "
                             "it alone sets the label step's strength")
    label_optimizer: str = option("adam", "g_e, the optimizer of the label step", choices=("adam", "sgd"))
    kernel_backend: str = option("auto", "dualvae.kernels backend of the losses (reparameterization + KL, dual-head "
                                 "BCE); auto: Triton on CUDA, the compiled C++ kernels on CPU (the "
                                 "pure-PyTorch reference where they are not built)",
                                 choices=BACKENDS)
    alpha: float = option(1.0, "weight alpha of the label step's loss; acts with the sgd label optimizer only "
                          "(Adam's update does not depend on the loss's scale)")
    missing_ratio: float = option(0.0, "share s of the training labels hidden from the label step (the mask I), in "
                                  "[0, 1)")
    labels: str = option("attributes", "the labels of the dual head: CelebA's 40 attributes, or the attributes "
                         "and one label per identity (sparse positives)", choices=LABEL_SETS,
                         metavar="attributes|attributes,identity")
    label_parallel: bool = option(False, "under torchrun, split the rows of U (and their gradient and optimizer "
                                  "state) over the processes; the encoder stays data parallel (docs/training.md)")
    recon_sigma: float = option(0.2, "sigma of the Gaussian decoder p(x|z), in [-1, 1] pixel units")
    latent_dim: int = option(128, "size of the latent z (and of each dual vector u_i)")
    width: int = option(32, "channels of the first conv of the encoder (doubled at every stride-2 stage)")
    image_size: int = option(64, "side of the square images the model sees, in pixels (a power of two >= 8)")
    limit: int | None = option(None, "train on the first N training images only", none="all of them")
    seed: int = option(0, "seed of the initial weights, the epoch order, eps and the missing-label mask", min=0)
    ckpt_every: int = option(1000, "write out/ckpt/step-N.pt (and make model.pt a copy of it) every N steps, and "
                             "at the end")
    keep_ckpts: int = option(3, "step checkpoints kept in out/ckpt (the newest K; older ones are removed)")
    log_every: int = option(25, "add a row of losses to log.csv every N steps (and at the last step)")
    workers: int | None = option(None, "JPEG decoding threads (dali) or DataLoader worker processes (pil, 0: "
                                 "decode in this process)", none="all cores", min=0)
    data_backend: str | None = option(None, "where batches come from: DALI decoding the JPEGs, the PIL DataLoader, "
                                      "or the HDF5 cache", none="dali for a root folder, hdf5 for a cache file",
                                      choices=("dali", "pil", "hdf5"))
    skip_corrupt: bool = option(False, "leave corrupt JPEGs out (logged and counted) instead of stopping")
    progress: bool = option(True, "show a progress bar on stderr")
    device: str = option("auto", "where to train; auto: the GPU of this process (LOCAL_RANK under torchrun) when "
                         "there is one, else the CPU", choices=("auto", "cpu", "cuda"))
    precision: str = option("fp32", "autocast dtype of the forward passes (parameters and optimizer state stay "
                            "fp32; fp16 adds a GradScaler)", choices=tuple(PRECISIONS))
    compile: bool = option(False, "torch.compile the two losses (model + loss, one graph each)")
    deterministic: bool = option(False, "deterministic algorithms only: repeatable runs, and resumed runs equal "
                                 "to uninterrupted ones")
    resume: str | None = option(None, "continue a run: auto takes the newest valid checkpoint in out/ckpt "
                                "(falling back past corrupt ones; starting fresh if there is none), or give a "
                                "checkpoint path", none="a fresh run", metavar="auto|PATH")
    skip_nonfinite: bool = option(False, "skip (and count) an optimizer step whose loss is NaN or inf instead of "
                                  "stopping the run")
