"""Evaluation helpers: sample grids."""
from .grids import make_grid_array, save_image, save_pairs_grid

__all__ = ["make_grid_array", "save_image", "save_pairs_grid"]
