"""Statistics of integer label maps: how generated maps compare with real ones, and how varied they are.

* :func:`class_histogram`: the fraction of pixels of each class over a set of maps.
* :func:`tv_distance`: the total variation distance ``0.5 * sum_k |p_k - q_k|`` between two class histograms
  (0: the same class frequencies; 1: no class in common).
* :func:`pairwise_disagreement`: the diversity of a set of maps, the fraction of pixels where two maps' labels
  differ, averaged over all pairs of distinct maps (0: every map is the same; it grows with the variety of the
  set, up to ``1 - sum_k p_k^2`` per pixel for maps drawn independently).
* :func:`label_stats`: all of them for a generated and a real set.
* :func:`read_label_pngs`: integer label maps from single-channel PNG files (what ``sbgan-fast sample`` writes
  as ``<name>_label.png``).

Label maps are integer (N, H, W) or (H, W) numpy arrays or torch tensors holding values in ``[0, K)``.
"""
from __future__ import annotations

import glob
import os
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch

__all__ = ["class_histogram", "tv_distance", "pairwise_disagreement", "label_stats", "read_label_pngs"]

LabelArray = Union[np.ndarray, torch.Tensor]


def _maps(labels: LabelArray, num_classes: int, where: str) -> np.ndarray:
    """int64 (N, H, W) numpy copy of ``labels``; every value checked to lie in [0, num_classes)."""
    if isinstance(labels, torch.Tensor):
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"{where}: label maps must be integer, got {labels.dtype}")
        labels = labels.detach().cpu().numpy()
    if not isinstance(labels, np.ndarray):
        raise TypeError(f"{where}: label maps must be a numpy array or torch tensor, got {type(labels).__name__}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"{where}: label maps must be integer, got {labels.dtype}")
    if labels.ndim == 2:
        labels = labels[None]
    if labels.ndim != 3:
        raise ValueError(f"{where}: label maps must be (N, H, W) or (H, W), got shape {labels.shape}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"{where}: num_classes must be a positive int, got {num_classes!r}")
    if labels.size == 0:
        raise ValueError(f"{where}: got no pixels (shape {labels.shape})")
    lab = labels.astype(np.int64, copy=False)
    bad = (lab < 0) | (lab >= num_classes)
    if bad.any():
        raise ValueError(f"{where}: label value {int(lab[bad].flat[0])} is outside [0, {num_classes})")
    return lab


def class_histogram(labels: LabelArray, num_classes: int) -> np.ndarray:
    """float64 (K,): the fraction of all pixels of ``labels`` (N, H, W) that hold each class (sums to 1)."""
    lab = _maps(labels, num_classes, "class_histogram")
    counts = np.bincount(lab.ravel(), minlength=int(num_classes)).astype(np.float64)
    return counts / counts.sum()


def tv_distance(p: Sequence[float], q: Sequence[float]) -> float:
    """Total variation distance ``0.5 * sum |p - q|`` of two class histograms (each non-negative, summing to 1
    up to 1e-6), in [0, 1]."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.ndim != 1 or p.shape != q.shape:
        raise ValueError(f"tv_distance: histograms must be 1-d of the same length, got shapes {p.shape} and {q.shape}")
    for name, h in (("p", p), ("q", q)):
        if not np.all(np.isfinite(h)) or (h < 0).any() or abs(h.sum() - 1.0) > 1e-6:
            raise ValueError(f"tv_distance: {name} is not a histogram (non-negative values summing to 1; "
                             f"sum {h.sum():.6g})")
    return float(0.5 * np.abs(p - q).sum())


def pairwise_disagreement(labels: LabelArray, num_classes: int) -> float:
    """Mean over all pairs ``i < j`` of the fraction of pixels where maps ``i`` and ``j`` of ``labels``
    (N >= 2, H, W) differ.

    Computed exactly from per-pixel class counts: with ``S[k, p]`` the number of maps holding class ``k`` at pixel
    ``p``, the pairs agreeing at ``p`` number ``sum_k S[k, p] (S[k, p] - 1) / 2``, so the mean over the
    ``N (N - 1) / 2`` pairs and ``P`` pixels needs no loop over pairs (O(N P + K P))."""
    lab = _maps(labels, num_classes, "pairwise_disagreement")
    n = lab.shape[0]
    if n < 2:
        raise ValueError(f"pairwise_disagreement: needs at least 2 label maps, got {n}")
    pixels = lab.shape[1] * lab.shape[2]
    flat = lab.reshape(n, pixels)
    counts = np.zeros((int(num_classes), pixels), dtype=np.int64)
    cols = np.arange(pixels)
    for row in flat:                       # one scatter per map: (K, P) counts without an (N, K, P) one-hot
        counts[row, cols] += 1
    agreeing = float((counts * (counts - 1)).sum()) / 2.0
    return 1.0 - agreeing / (pixels * n * (n - 1) / 2.0)


def label_stats(generated: LabelArray, real: LabelArray, num_classes: int) -> Dict[str, object]:
    """Class statistics of generated against real label maps.

    Returns ``class_tv`` (:func:`tv_distance` of the two class histograms), ``diversity`` (the
    :func:`pairwise_disagreement` of the generated maps), ``real_diversity`` (the same of the real maps, the
    figure to compare it with; None with fewer than 2 real maps), ``generated_hist`` and ``real_hist`` (lists of
    K fractions)."""
    g = class_histogram(generated, num_classes)
    r = class_histogram(real, num_classes)
    n_real = _maps(real, num_classes, "label_stats").shape[0]
    return {"class_tv": tv_distance(g, r), "diversity": pairwise_disagreement(generated, num_classes),
            "real_diversity": pairwise_disagreement(real, num_classes) if n_real >= 2 else None,
            "generated_hist": g.tolist(), "real_hist": r.tolist()}


def read_label_pngs(paths: Union[str, Sequence[str]], *, pattern: str = "*_label.png",
                    value_to_class: Optional[Dict[int, int]] = None) -> np.ndarray:
    """int64 (N, H, W) label maps from single-channel PNG files (mode L, I;16 or I: the values themselves, not
    colours), all of one size.

    Args:
        paths: a folder (its files matching ``pattern``, sorted by name) or a list of files.
        value_to_class: file values to replace (e.g. ``{255: K - 1}``, a dataset's don't-care value written by
            ``sample`` in place of its channel); other values are kept.

    Raises:
        FileNotFoundError naming the folder when no file matches; ValueError naming the file for a colour or
        palette image, or a size that differs from the first file's.
    """
    from PIL import Image
    if isinstance(paths, (str, os.PathLike)):
        folder = os.fspath(paths)
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"label maps: {folder} is not a folder")
        files: List[str] = sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))
        if not files:
            raise FileNotFoundError(f"label maps: no file matching {pattern!r} in {folder}")
    else:
        files = [os.fspath(p) for p in paths]
        if not files:
            raise FileNotFoundError("label maps: no files given")
    maps: List[np.ndarray] = []
    for f in files:
        with Image.open(f) as im:
            if im.mode not in ("L", "I;16", "I"):
                raise ValueError(f"{f}: a label map must be a single-channel PNG of label values (mode L, I;16 or "
                                 f"I), got mode {im.mode}")
            arr = np.asarray(im).astype(np.int64)
        if maps and arr.shape != maps[0].shape:
            raise ValueError(f"{f}: size {arr.shape[1]}x{arr.shape[0]} differs from {files[0]} "
                             f"({maps[0].shape[1]}x{maps[0].shape[0]})")
        if value_to_class:
            out = arr.copy()
            for v, c in value_to_class.items():
                out[arr == v] = c
            arr = out
        maps.append(arr)
    return np.stack(maps)
