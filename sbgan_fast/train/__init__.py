"""Training: typed config and presets, the three stages, losses, trainer and checkpoints."""
from ..config import ConfigError, TrainConfig, build_config, preset
from .trainer import Trainer, build_networks, train

__all__ = ["ConfigError", "TrainConfig", "Trainer", "build_config", "build_networks", "preset", "train"]
