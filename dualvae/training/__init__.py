"""Training DualVAE (Algorithm 1): the config, the loop and the step, its checkpoints and its faults."""
from dualvae.training.loop import (NonFiniteLossError, TrainConfig, TrainingError, TrainingOOMError, list_checkpoints,
                                   make_optimizers, train, train_step)

__all__ = ["TrainConfig", "train", "train_step", "make_optimizers", "list_checkpoints", "TrainingError",
           "NonFiniteLossError", "TrainingOOMError"]
