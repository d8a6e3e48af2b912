"""The run configuration's former import path, kept for scripts written against it: everything here is
:mod:`sbgan_fast.config` (its home since the configuration became the bottom layer every other layer imports)."""
from ..config import (DATASETS, IMPLS, PRESETS, STAGES, ConfigError, DataConfig, E2EConfig, SegConfig,  # noqa: F401
                      SpadeConfig, TrainConfig, build_config, from_dict, load_file, preset, resolve_device, set_key,
                      validate)

__all__ = ["DATASETS", "IMPLS", "PRESETS", "STAGES", "ConfigError", "DataConfig", "E2EConfig", "SegConfig",
           "SpadeConfig", "TrainConfig", "build_config", "from_dict", "load_file", "preset", "resolve_device",
           "set_key", "validate"]
