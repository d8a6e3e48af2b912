"""sbgan_fast.metrics: FID (standard pytorch-fid definition, plus the authors' variant), KID, improved
precision/recall, density/coverage and sample grids.

``frechet_distance(mu1, sigma1, mu2, sigma2) -> float``, ``fid_from_features(feats1, feats2) -> float`` and
``quality_metrics(real_feats, fake_feats) -> dict`` (FID, KID, precision, recall, density, coverage) need only
numpy/torch; the Inception network (``inception.py``) and checkpoint evaluation (``evaluate.py``) load their
weights and data lazily."""
from .fid import FeatureStats, FIDExtractor, fid_from_features, fid_from_stats, frechet_distance
from .grids import make_grid_array, save_image, save_pairs_grid
from .quality import density_coverage, kid, precision_recall, quality_metrics

__all__ = ["FeatureStats", "FIDExtractor", "fid_from_features", "fid_from_stats", "frechet_distance",
           "kid", "precision_recall", "density_coverage", "quality_metrics",
           "make_grid_array", "save_image", "save_pairs_grid"]
