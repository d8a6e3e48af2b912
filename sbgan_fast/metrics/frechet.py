"""Frechet distance and streaming feature statistics: the numbers of the FID, whatever the features.

``FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr(sqrt(S1 S2))`` (:func:`frechet_distance`), in float64. The trace of
the matrix square root comes from symmetric eigendecompositions: ``tr sqrt(S1 S2) = sum sqrt(eig(R S2 R))`` with
``R = S1^(1/2)`` (S1 S2 is similar to the positive semi-definite R S2 R, so this is exact also for the singular
covariances of sets smaller than the feature dimension; eigenvalues under the numerical-rank tolerance count as
0). Should the decomposition fail or give non-finite values, ``1e-6 I`` is added to both covariances and it is
repeated (pytorch-fid's fallback).

:class:`FeatureStats` accumulates the float64 mean and covariance (``ddof=1``) of feature vectors batch by batch
(equal to ``numpy.mean`` / ``numpy.cov`` of all features at once) and stores them (with the vectors, optionally)
in an .npz file. Features come from :class:`.fid.FIDExtractor`.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

__all__ = ["STATS_FORMAT", "FeatureStats", "fid_from_features", "fid_from_stats", "frechet_distance"]

STATS_FORMAT = 2          # 2: the feature vectors are stored beside mu and sigma (format 1 files still load)

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
        np.savez(tmp, mu=self.mean, sigma=self.cov, n=np.int64(self.n), format=np.int64(STATS_FORMAT),
                 meta=np.array(json.dumps(meta or {}, sort_keys=True)), **extra)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: str) -> Tuple["FeatureStats", Dict[str, Any]]:
        """Read an .npz written by :meth:`save`; returns (stats, meta). The stats keep features when the file
        holds them (format 2)."""
        with np.load(path, allow_pickle=False) as z:
            fmt = int(z["format"])
            if fmt not in (1, STATS_FORMAT):
                raise ValueError(f"{path}: statistics format {fmt}, expected {STATS_FORMAT}")
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
