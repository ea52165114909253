"""Training DualVAE (Algorithm 1): the config, the loop and the step, its checkpoints and its faults.

    config.py       TrainConfig (every setting, its default and its help), RESUME_FIELDS
    loop.py         train, train_step, make_optimizers: Algorithm 1
    state.py        what a checkpoint holds, resume, RNG states (files: dualvae/checkpoint.py, the one module
                    that reads and writes checkpoints, rotation and list_checkpoints included)
    faults.py       NaN/inf losses, SIGTERM, out of memory, and the errors they raise
    log.py          events.log, log.csv, loss.png
    distributed.py  torchrun data parallelism
    label_parallel.py  --label-parallel: U's rows split over the torchrun ranks, and their checkpoint shards
"""
from dualvae.training.config import RESUME_FIELDS, TrainConfig
from dualvae.training.faults import NonFiniteLossError, TrainingError, TrainingOOMError
from dualvae.training.loop import make_optimizers, train, train_step
from dualvae.checkpoint import CKPT_NAME, checkpoint_path, list_checkpoints

__all__ = ["TrainConfig", "RESUME_FIELDS", "train", "train_step", "make_optimizers", "list_checkpoints",
           "checkpoint_path", "CKPT_NAME", "TrainingError", "NonFiniteLossError", "TrainingOOMError"]
