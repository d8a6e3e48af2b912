"""Datasets (built-in synthetic scenes, folders), the batch contract, label palettes."""
from .datasets import LabelFolderDataset, PairedFolderDataset, float_to_uint8, image_to_float, to_batch
from .files import DataError
from .palettes import colorize, get_class_names, get_palette
from .synthetic import SyntheticScenes

__all__ = ["DataError", "LabelFolderDataset", "PairedFolderDataset", "SyntheticScenes", "colorize",
           "float_to_uint8", "get_class_names", "get_palette", "image_to_float", "to_batch"]
