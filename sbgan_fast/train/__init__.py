"""Training: the three stages, losses, the trainer (loop, checkpoints, previews), mixed precision, noise and the
distributed helpers. (The config is :mod:`sbgan_fast.config`, the networks :mod:`sbgan_fast.models`.)"""
from ..config import ConfigError, TrainConfig, build_config, preset
from ..models import build_networks
from .trainer import Trainer, train

__all__ = ["ConfigError", "TrainConfig", "Trainer", "build_config", "build_networks", "preset", "train"]
