"""Training runs: configuration, the training loop, checkpoints and run directories."""

from dualprop.training.config import TrainConfig, load_config, save_config
from dualprop.training.trainer import Observers, TrainingObserver, resume_run, start_run, train

__all__ = [
    "Observers",
    "TrainConfig",
    "TrainingObserver",
    "load_config",
    "resume_run",
    "save_config",
    "start_run",
    "train",
]
