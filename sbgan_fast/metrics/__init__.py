"""sbgan_fast.metrics: FID (standard pytorch-fid definition, plus the authors' variant) and sample grids.

``frechet_distance(mu1, sigma1, mu2, sigma2) -> float`` and ``fid_from_features(feats1, feats2) -> float``
need only numpy; the Inception network (``inception.py``) and checkpoint evaluation (``evaluate.py``) load
their weights and data lazily."""
from .fid import FeatureStats, FIDExtractor, fid_from_features, fid_from_stats, frechet_distance
from .grids import make_grid_array, save_image, save_pairs_grid

__all__ = ["FeatureStats", "FIDExtractor", "fid_from_features", "fid_from_stats", "frechet_distance",
           "make_grid_array", "save_image", "save_pairs_grid"]
