"""Frechet Inception Distance with the standard (pytorch-fid) definition.

Definition (``variant="pytorch-fid"``, the default):

1. images as uint8 RGB (generated float images in [-1, 1] are rounded: ``round((x + 1) * 127.5)``, clamped);
2. ``x / 255`` in float32, bilinear resize to 299 x 299 (``align_corners=False``, no antialiasing), ``2x - 1``;
3. pool3 features (2048-d) of the FID-Inception network (:mod:`.inception_net`, weights from
   :mod:`.inception`);
4. float64 mean and covariance (``ddof=1``) of each set's features, accumulated batch by batch
   (:class:`~.frechet.FeatureStats`; equal to ``numpy.mean`` / ``numpy.cov`` of all features at once);
5. ``FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2))`` in float64 (:func:`~.frechet.frechet_distance`,
   exact also for the singular covariances of sets smaller than 2048 images).

``variant="sbgan-code"`` reproduces the FID of the authors' SB-GAN code for comparison only: the classic
PyTorch Inception graph with torchvision's ImageNet weights (a user file), fed the generated float images in
[-1, 1] without rounding, resized to 299 and mapped again by ``2x - 1`` (so the network sees [-3, 1]). Its
numbers are not comparable with the standard FID.

Public entry points: :class:`FIDExtractor` (images -> features / statistics), :func:`real_statistics` (cached
statistics of a dataset), :func:`preprocess_pytorch_fid`, :func:`preprocess_sbgan_code`; and, from
:mod:`.frechet` (the numbers, whatever the features), :func:`frechet_distance`, :func:`fid_from_features`,
:func:`fid_from_stats` and :class:`FeatureStats`, which this module names too.
"""
from __future__ import annotations
from __future__ import annotations

import hashlib
import json
import os
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from .frechet import STATS_FORMAT, ArrayLike, FeatureStats, fid_from_features, fid_from_stats, frechet_distance
from .inception_net import FEATURE_DIM, INPUT_SIZE

__all__ = [
    "VARIANTS", "frechet_distance", "fid_from_features", "fid_from_stats", "FeatureStats", "FIDExtractor",
    "real_statistics", "preprocess_pytorch_fid", "preprocess_sbgan_code", "images_to_uint8", "default_cache_dir",
    "stats_cache_key",
]

VARIANTS = ("pytorch-fid", "sbgan-code")


# ---------------------------------------------------------------------------------------------------------
# preprocessing
# ---------------------------------------------------------------------------------------------------------
def images_to_uint8(images: ArrayLike) -> torch.Tensor:
    """Images -> uint8 (N, 3, H, W).

    uint8 input (tensor or array, (N, 3, H, W)) passes through; floating input is read as [-1, 1]
    (generator output) and rounded: ``round((x + 1) * 127.5)`` clamped to [0, 255] (NaN -> 0)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch tensor or numpy array, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images
    if not images.dtype.is_floating_point:
        raise TypeError(f"images must be uint8 or floating point in [-1, 1], got {images.dtype}")
    from ..data.datasets import float_to_uint8
    return float_to_uint8(images)


def preprocess_pytorch_fid(images_uint8: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float32 (N, 3, size, size) in [-1, 1]: ``x / 255``, bilinear resize
    (``align_corners=False``, no antialiasing), ``2x - 1`` (the steps of the standard FID)."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"preprocess_pytorch_fid: expected uint8 images, got {images_uint8.dtype}")
    x = images_uint8.float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=False)
    return 2.0 * x - 1.0


def preprocess_sbgan_code(images: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """The authors' FID input: float (N, 3, H, W) in [-1, 1] (uint8 is first mapped by ``x / 127.5 - 1``),
    bilinear resize (``align_corners=False``), then ``2x - 1`` again (the network sees [-3, 1])."""
    if images.dtype == torch.uint8:
        from ..data.datasets import image_to_float
        images = image_to_float(images)
    x = images.float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return 2.0 * x - 1.0


@contextmanager
def _exact_fp32(device: torch.device) -> Iterator[None]:
    """Full fp32 while features are computed: autocast off (a caller's AMP region does not reach the
    Inception network) and no TF32 convolutions or matmuls on a GPU."""
    old = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.autocast(device_type=device.type, enabled=False):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


class FIDExtractor:
    """Images -> 2048-d Inception features for one FID variant.

    Args:
        variant: 'pytorch-fid' (standard FID) or 'sbgan-code' (the authors' definition; needs ``weights``).
        weights: Inception weights file (see :func:`.inception.load_inception`); None = the packaged file.
        device: device of the network.
        batch_size: images per Inception forward.
        model: an already built feature network (float (N,3,299,299) -> (N,2048)); replaces the weights
            lookup (``info`` then names it). Used by tests with a small stand-in.
        channels_last: run the network on channels-last (NHWC) tensors. None (default): on for the CPU, where
            it is faster (``bench/bench_inception.py``), off elsewhere.
        fuse_bn: fold the Inception network's batch norms into its convolutions
            (:func:`.inception_net.fuse_batch_norms_`, in place). None (default): on for the CPU, where it is
            faster, off elsewhere. With either option the features agree with the plain network to float32
            rounding (tested).

    ``info`` is a dict naming the variant, the weights' source and sha256."""

    def __init__(self, variant: str = "pytorch-fid", weights: Optional[str] = None, *,
                 device: Union[str, torch.device] = "cpu", batch_size: int = 50,
                 model: Optional[torch.nn.Module] = None, info: Optional[Dict[str, str]] = None,
                 channels_last: Optional[bool] = None, fuse_bn: Optional[bool] = None):
        if variant not in VARIANTS:
            raise ValueError(f"FID variant must be one of {VARIANTS}, got {variant!r}")
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.variant = variant
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        if model is None:
            from .inception import load_inception
            model, info = load_inception(weights, variant="fid" if variant == "pytorch-fid" else "torchvision",
                                         device=self.device)
        else:
            model = model.to(self.device).eval()
            info = dict(info or {"source": f"module:{type(model).__name__}", "sha256": "", "variant": variant})
        on_cpu = self.device.type == "cpu"
        self.channels_last = on_cpu if channels_last is None else bool(channels_last)
        self.fuse_bn = on_cpu if fuse_bn is None else bool(fuse_bn)
        if self.fuse_bn:
            from .inception_net import fuse_batch_norms_
            model = fuse_batch_norms_(model)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.info = dict(info, fid_variant=variant)

    @property
    def weights_id(self) -> str:
        """A string that identifies the feature network (its sha256, or the source for stand-ins)."""
        return self.info.get("sha256") or self.info.get("source", "?")

    @torch.no_grad()
    def features(self, images: ArrayLike) -> torch.Tensor:
        """images (N, 3, H, W): uint8, or float in [-1, 1] -> float32 features (N, 2048) on the CPU.

        pytorch-fid: float images are rounded to uint8 first. sbgan-code: float images go in as they are."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"FIDExtractor.features: images must have shape (N, 3, H, W), got "
                             f"{tuple(images.shape)}")
        if self.variant == "pytorch-fid":
            images = images_to_uint8(images)
        out = []
        with _exact_fp32(self.device):
            for i in range(0, images.shape[0], self.batch_size):
                b = images[i:i + self.batch_size].to(self.device)
                x = preprocess_pytorch_fid(b) if self.variant == "pytorch-fid" else preprocess_sbgan_code(b)
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                out.append(self.model(x).float().cpu())
        if not out:
            return torch.empty(0, FEATURE_DIM)
        return torch.cat(out)

    def update(self, stats: FeatureStats, images: ArrayLike) -> FeatureStats:
        """Add the features of ``images`` to ``stats``."""
        return stats.update(self.features(images))

    def statistics(self, batches: Iterable[ArrayLike],
                   on_batch: Optional[Callable[[int], None]] = None) -> FeatureStats:
        """Statistics and feature vectors (``keep_features``) of image batches; ``on_batch(count)`` after each
        batch's features (progress display)."""
        stats = FeatureStats(keep_features=True)
        for batch in batches:
            self.update(stats, batch)
            if on_batch is not None:
                on_batch(int(batch.shape[0]))
        return stats


# ---------------------------------------------------------------------------------------------------------
# cached real-set statistics
# ---------------------------------------------------------------------------------------------------------
def default_cache_dir() -> str:
    """``$SBGAN_FAST_CACHE/fid`` or ``~/.cache/sbgan_fast/fid``."""
    root = os.environ.get("SBGAN_FAST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sbgan_fast")
    return os.path.join(root, "fid")


def stats_cache_key(fields: Dict[str, Any]) -> str:
    """Stable 16-hex-digit key of a JSON-serialisable description."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:16]


def real_statistics(images: Iterable[torch.Tensor], extractor: FIDExtractor, *, describe: Dict[str, Any],
                    cache_dir: Optional[str] = None, log=print,
                    on_batch: Optional[Callable[[int], None]] = None) -> Tuple[FeatureStats, Dict[str, Any]]:
    """Statistics and feature vectors (``stats.features``) of a real image set, cached as an .npz.

    Args:
        images: an iterable of uint8 (B, 3, H, W) batches (only read on a cache miss).
        extractor: the feature network; its variant and weights hash are part of the cache key.
        describe: what identifies the set (dataset, root, split, height, width, count, ...).
        cache_dir: folder of the cache files (default :func:`default_cache_dir`); '' disables caching.
        on_batch: called with each batch's image count after its features (progress display).

    Returns (stats, meta) with meta = describe + variant, weights, key, path, cached (bool)."""
    meta = dict(describe, fid_variant=extractor.variant, weights=extractor.weights_id, format=STATS_FORMAT)
    key = stats_cache_key(meta)
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    name = "-".join(str(describe.get(k, "x")) for k in ("dataset", "split")) + \
        f"-{describe.get('height', 'x')}x{describe.get('width', 'x')}-n{describe.get('count', 'x')}-{key}.npz"
    path = os.path.join(cache_dir, name) if cache_dir else ""
    if path and os.path.isfile(path):
        try:
            stats, saved = FeatureStats.load(path)
            if saved.get("key") == key and stats.features is not None:
                log(f"[fid] real statistics from cache {path}")
                return stats, dict(saved, path=path, cached=True)
        except (OSError, ValueError, KeyError) as e:
            log(f"[fid] ignoring unreadable cache file {path} ({type(e).__name__}: {e})")
    stats = extractor.statistics(images, on_batch)
    meta = dict(meta, key=key)
    if path:
        stats.save(path, meta)
        log(f"[fid] real statistics of {stats.n} images written to {path}")
    return stats, dict(meta, path=path, cached=False)
