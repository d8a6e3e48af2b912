"""The run configuration (the bottom layer: data, models, metrics and train all import it): typed training
configuration, presets, config files and command-line overrides.

A run is described by one :class:`TrainConfig`. It is built from a preset, then a YAML/JSON file,
then ``KEY=VALUE`` overrides (dotted keys such as ``spade.ngf=32``), and saved as JSON in the run
folder. Defaults of the ``cityscapes``, ``cityscapes25k`` and ``ade_indoor`` presets are the
authors' values (REFERENCE.md); ``demo`` is a small configuration that trains all three stages on the
built-in synthetic scenes on a laptop CPU.
"""
from .device import resolve_device
from .loading import build_config, from_dict, load_file, set_key, validate
from .presets import PRESETS, preset
from .schema import (ALL_STAGES, DATASETS, IMPLS, STAGES, ConfigError, DataConfig, E2EConfig, ProGANConfig,
                     SegConfig, SpadeConfig, TrainConfig)

__all__ = ["ALL_STAGES", "DATASETS", "IMPLS", "PRESETS", "STAGES", "ConfigError", "DataConfig", "E2EConfig",
           "ProGANConfig", "SegConfig",
           "SpadeConfig", "TrainConfig", "build_config", "from_dict", "load_file", "preset", "resolve_device",
           "set_key", "validate"]
