"""Frechet Inception Distance with the standard (pytorch-fid) definition.

Definition (``variant="pytorch-fid"``, the default):

1. images as uint8 RGB (generated float images in [-1, 1] are rounded: ``round((x + 1) * 127.5)``, clamped);
2. ``x / 255`` in float32, bilinear resize to 299 x 299 (``align_corners=False``, no antialiasing), ``2x - 1``;
3. pool3 features (2048-d) of the FID-Inception network (:mod:`.inception`);
4. float64 mean and covariance (``ddof=1``) of each set's features, accumulated batch by batch
   (:class:`FeatureStats`; equal to ``numpy.mean`` / ``numpy.cov`` of all features at once);
5. ``FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2))``. The trace of the matrix square root is
   computed in float64 from symmetric eigendecompositions: ``tr sqrt(S1 S2) = sum sqrt(eig(R S2 R))`` with
   ``R = S1^(1/2)`` (S1 S2 is similar to the positive semi-definite R S2 R, so this is exact also for the
   singular covariances of sets smaller than 2048 images; eigenvalues under the numerical-rank tolerance
   count as 0). Should the decomposition fail or give non-finite
   values, ``1e-6 I`` is added to both covariances and it is repeated (pytorch-fid's fallback).

``variant="sbgan-code"`` reproduces the FID of the authors' SB-GAN code for comparison only: the classic
PyTorch Inception graph with torchvision's ImageNet weights (a user file), fed the generated float images in
[-1, 1] without rounding, resized to 299 and mapped again by ``2x - 1`` (so the network sees [-3, 1]). Its
numbers are not comparable with the standard FID.

Public entry points: :func:`frechet_distance`, :func:`fid_from_features`, :class:`FeatureStats`,
:class:`FIDExtractor` (images -> features / statistics), :func:`real_statistics` (cached statistics of a
dataset), :func:`preprocess_pytorch_fid`, :func:`preprocess_sbgan_code`.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "VARIANTS", "frechet_distance", "fid_from_features", "FeatureStats", "FIDExtractor", "real_statistics",
    "preprocess_pytorch_fid", "preprocess_sbgan_code", "images_to_uint8", "default_cache_dir",
    "stats_cache_key",
]

VARIANTS = ("pytorch-fid", "sbgan-code")
INPUT_SIZE = 299
_STATS_FORMAT = 2          # 2: the feature vectors are stored beside mu and sigma (format 1 files still load)

ArrayLike = Union[np.ndarray, torch.Tensor]


# ---------------------------------------------------------------------------------------------------------
# Frechet distance
# ---------------------------------------------------------------------------------------------------------
def _as_f64(x: Any, name: str, ndim: int) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    a = np.asarray(x, dtype=np.float64)
    if ndim == 1:
        a = np.atleast_1d(a)
    else:
        a = np.atleast_2d(a)
    if a.ndim != ndim:
        raise ValueError(f"frechet_distance: {name} must have {ndim} dimension(s), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"frechet_distance: {name} holds non-finite values (NaN or inf)")
    return a


def _zero_below_rank_tol(w: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric PSD matrix with those under the numerical-rank tolerance
    ``max|w| * D * eps`` (numpy.linalg.matrix_rank's) set to 0: they are rounding noise, and their square
    roots would add ~sqrt(noise) per null direction to the trace."""
    tol = (np.abs(w).max() if w.size else 0.0) * w.shape[0] * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0)


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray,
                        eig1: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> float:
    """tr(sqrt(s1 @ s2)) for symmetric PSD s1, s2 (float64).

    With ``s1 = V W V^T``: ``s1 s2`` is similar to ``R s2 R`` (``R = V W^1/2 V^T``), whose eigenvalues are
    those of ``B^T s2 B`` with ``B = V_+ W_+^1/2`` restricted to the r nonzero eigenvalues of s1 (the others
    add zeros). So the trace is ``sum(sqrt(eigvalsh(B^T s2 B)))``: one D x D and one r x r symmetric
    eigendecomposition (r <= n - 1 for a covariance of n feature vectors). ``eig1``: ``numpy.linalg.eigh(s1)``
    when already known (the D x D decomposition is then skipped)."""
    w, v = np.linalg.eigh(s1) if eig1 is None else eig1
    w = _zero_below_rank_tol(w)
    keep = w > 0
    if not keep.any():
        return 0.0
    b = v[:, keep] * np.sqrt(w[keep])
    m = b.T @ s2 @ b
    m = 0.5 * (m + m.T)
    ev = np.linalg.eigvalsh(m)
    return float(np.sqrt(_zero_below_rank_tol(ev)).sum())


def _check_cov(s: np.ndarray, name: str) -> np.ndarray:
    if s.shape[0] != s.shape[1]:
        raise ValueError(f"frechet_distance: {name} must be square, got shape {s.shape}")
    scale = float(np.abs(s).max()) if s.size else 0.0
    if scale > 0 and float(np.abs(s - s.T).max()) > 1e-6 * scale:
        raise ValueError(f"frechet_distance: {name} is not symmetric (max |S - S^T| = "
                         f"{float(np.abs(s - s.T).max()):.3g}); pass a covariance matrix")
    return 0.5 * (s + s.T)


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike, *,
                     eps: float = 1e-6, eig1: Optional[Tuple[np.ndarray, np.ndarray]] = None) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

    Args:
        mu1, mu2: means, shape (D,), numpy arrays or torch tensors (any float dtype; computed in float64).
        sigma1, sigma2: covariances, shape (D, D), symmetric positive semi-definite (singular is fine).
        eps: diagonal offset of the fallback used when the eigendecomposition fails or is non-finite.
        eig1: ``numpy.linalg.eigh`` of the symmetrized sigma1 when already known (e.g. cached for a reference
            set, :meth:`FeatureStats.cov_eigh`): the D x D decomposition is then skipped.

    Returns ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr(sqrt(sigma1 sigma2))`` as a Python float."""
    m1, m2 = _as_f64(mu1, "mu1", 1), _as_f64(mu2, "mu2", 1)
    s1, s2 = _as_f64(sigma1, "sigma1", 2), _as_f64(sigma2, "sigma2", 2)
    if m1.shape != m2.shape:
        raise ValueError(f"frechet_distance: mu1 and mu2 have different shapes {m1.shape} and {m2.shape}")
    if s1.shape != s2.shape or s1.shape != (m1.shape[0], m1.shape[0]):
        raise ValueError(f"frechet_distance: covariances {s1.shape}, {s2.shape} do not fit means of length "
                         f"{m1.shape[0]}")
    s1, s2 = _check_cov(s1, "sigma1"), _check_cov(s2, "sigma2")
    diff = m1 - m2
    try:
        tr_covmean = _trace_sqrt_product(s1, s2, eig1)
        ok = np.isfinite(tr_covmean)
    except np.linalg.LinAlgError:
        ok = False
    if not ok:
        warnings.warn(f"FID: the square root of the covariance product failed; adding {eps} to the diagonal of "
                      "both covariances", RuntimeWarning, stacklevel=2)
        offset = np.eye(s1.shape[0]) * eps
        tr_covmean = _trace_sqrt_product(s1 + offset, s2 + offset)
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


# ---------------------------------------------------------------------------------------------------------
# statistics
# ---------------------------------------------------------------------------------------------------------
class FeatureStats:
    """Streaming float64 mean and covariance (``ddof=1``) of feature vectors.

    Batches are merged with the pairwise (Chan et al.) update of the mean and the centred scatter matrix,
    so the result equals ``numpy.mean(F, 0)`` and ``numpy.cov(F, rowvar=False)`` of all rows at once, up to
    float64 rounding, whatever the batch sizes.

    ``update(feats)``: feats (B, D) numpy array or torch tensor, any float dtype.
    ``keep_features=True`` also keeps the vectors themselves (:attr:`features`, for KID, precision/recall and
    density/coverage; float32 input stays float32)."""

    def __init__(self, dim: Optional[int] = None, *, keep_features: bool = False):
        self.dim = dim
        self.n = 0
        self._mean: Optional[np.ndarray] = None
        self._m2: Optional[np.ndarray] = None
        self.keep_features = keep_features
        self._kept: list = []
        self._eigh: Optional[Tuple[int, Tuple[np.ndarray, np.ndarray]]] = None

    def update(self, feats: ArrayLike) -> "FeatureStats":
        if isinstance(feats, torch.Tensor):
            feats = feats.detach().cpu().numpy()
        raw = np.asarray(feats)
        x = raw.astype(np.float64)
        if x.ndim != 2:
            raise ValueError(f"FeatureStats.update: expected features of shape (B, D), got {x.shape}")
        if self.dim is None:
            self.dim = x.shape[1]
        if x.shape[1] != self.dim:
            raise ValueError(f"FeatureStats.update: expected {self.dim} features per row, got {x.shape[1]}")
        if not np.isfinite(x).all():
            raise ValueError("FeatureStats.update: features hold non-finite values")
        b = x.shape[0]
        if b == 0:
            return self
        if self.keep_features:
            self._kept.append(raw.astype(np.float32 if raw.dtype == np.float32 else np.float64, copy=True))
        mb = x.mean(axis=0)
        xc = x - mb
        m2b = xc.T @ xc
        if self.n == 0:
            self._mean, self._m2, self.n = mb, m2b, b
            return self
        n = self.n + b
        delta = mb - self._mean
        self._m2 = self._m2 + m2b + np.outer(delta, delta) * (self.n * b / n)
        self._mean = self._mean + delta * (b / n)
        self.n = n
        return self

    @property
    def mean(self) -> np.ndarray:
        """float64 (D,)."""
        if self.n == 0:
            raise ValueError("FeatureStats: no features added")
        return self._mean.copy()

    def cov_eigh(self) -> Tuple[np.ndarray, np.ndarray]:
        """``numpy.linalg.eigh`` of the (symmetrized) covariance, cached until the next :meth:`update`."""
        if self._eigh is None or self._eigh[0] != self.n:
            c = self.cov
            self._eigh = (self.n, np.linalg.eigh(0.5 * (c + c.T)))
        return self._eigh[1]

    @property
    def features(self) -> Optional[np.ndarray]:
        """The vectors added, (n, D) (float32 when added as float32), or None unless ``keep_features``."""
        if not self.keep_features:
            return None
        if len(self._kept) != 1:
            d = self.dim or 0
            self._kept = [np.concatenate(self._kept) if self._kept else np.zeros((0, d), np.float32)]
        return self._kept[0]

    @property
    def cov(self) -> np.ndarray:
        """float64 (D, D), normalized by n - 1."""
        if self.n < 2:
            raise ValueError(f"FeatureStats: a covariance needs at least 2 feature vectors, got {self.n}")
        return self._m2 / (self.n - 1)

    def save(self, path: str, meta: Optional[Dict[str, Any]] = None) -> str:
        """Write mu, sigma, n, the kept features (if any) and a JSON ``meta`` to an .npz file atomically."""
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        tmp = f"{path}.tmp{os.getpid()}.npz"
        extra = {"feats": self.features} if self.keep_features else {}
        np.savez(tmp, mu=self.mean, sigma=self.cov, n=np.int64(self.n), format=np.int64(_STATS_FORMAT),
                 meta=np.array(json.dumps(meta or {}, sort_keys=True)), **extra)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str) -> Tuple["FeatureStats", Dict[str, Any]]:
        """Read an .npz written by :meth:`save`; returns (stats, meta). The stats keep features when the file
        holds them (format 2)."""
        with np.load(path, allow_pickle=False) as z:
            fmt = int(z["format"])
            if fmt not in (1, _STATS_FORMAT):
                raise ValueError(f"{path}: statistics format {fmt}, expected {_STATS_FORMAT}")
            mu, sigma, n = z["mu"], z["sigma"], int(z["n"])
            meta = json.loads(str(z["meta"]))
            feats = z["feats"] if "feats" in z.files else None
        if feats is not None and (feats.ndim != 2 or feats.shape != (n, mu.shape[0])):
            raise ValueError(f"{path}: stored features of shape {feats.shape} do not match n={n}, "
                             f"D={mu.shape[0]}")
        s = cls(mu.shape[0], keep_features=feats is not None)
        s.n, s._mean, s._m2 = n, mu.astype(np.float64), sigma.astype(np.float64) * (n - 1)
        if feats is not None:
            s._kept = [feats]
        return s, meta


def fid_from_features(feats1: ArrayLike, feats2: ArrayLike) -> float:
    """FID between two feature sets (N1, D) and (N2, D) (numpy or torch; statistics in float64)."""
    s1, s2 = FeatureStats().update(feats1), FeatureStats().update(feats2)
    return frechet_distance(s1.mean, s1.cov, s2.mean, s2.cov)


def fid_from_stats(a: FeatureStats, b: FeatureStats) -> float:
    """FID between two :class:`FeatureStats`. The eigendecomposition of ``b``'s covariance is cached on ``b``,
    so comparing many sets with one reference ``b`` (the real set) decomposes its D x D covariance once."""
    return frechet_distance(b.mean, b.cov, a.mean, a.cov, eig1=b.cov_eigh())


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
            (:func:`.inception.fuse_batch_norms_`, in place). None (default): on for the CPU, where it is
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
            from .inception import fuse_batch_norms_
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
            return torch.empty(0, 2048)
        return torch.cat(out)

    def update(self, stats: FeatureStats, images: ArrayLike) -> FeatureStats:
        """Add the features of ``images`` to ``stats``."""
        return stats.update(self.features(images))


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
    meta = dict(describe, fid_variant=extractor.variant, weights=extractor.weights_id, format=_STATS_FORMAT)
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
    stats = FeatureStats(keep_features=True)
    for batch in images:
        extractor.update(stats, batch)
        if on_batch is not None:
            on_batch(int(batch.shape[0]))
    meta = dict(meta, key=key)
    if path:
        stats.save(path, meta)
        log(f"[fid] real statistics of {stats.n} images written to {path}")
    return stats, dict(meta, path=path, cached=False)
