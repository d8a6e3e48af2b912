"""KID, improved precision/recall and density/coverage of generated images, from the Inception features of FID.

All take the same 2048-d pool3 features as FID (:class:`.fid.FIDExtractor`), so one feature pass gives every
number. Features are (N, D) numpy arrays or torch tensors; every computation runs in float64 (on ``device``).

**KID** (Binkowski et al. 2018, "Demystifying MMD GANs"; the definition of torch-fidelity, clean-fid and
StyleGAN2-ADA): the squared MMD with the polynomial kernel ``k(x, y) = (x.y / D + 1)^3``, unbiased estimator

    ``MMD^2 = sum_{i != j} [k(x_i, x_j) + k(y_i, y_j)] / (m (m-1)) - 2 sum_{i,j} k(x_i, y_j) / m^2``

averaged over ``subsets`` (100) random subsets of ``m = min(subset_size, N_fake, N_real)`` (subset size 1000)
vectors of each set, drawn without replacement (``numpy.random.RandomState(seed)``: for each subset first the
generated, then the real indices, as torch-fidelity does). Reported: the mean and the standard deviation
(``ddof=0``, torch-fidelity's) over the subsets. KID can be slightly negative when the sets are alike.

**Improved precision and recall** (Kynkaanniemi et al. 2019), neighbourhood ``k = 3``: the radius of a vector
is the Euclidean distance to its k-th nearest neighbour in its own set (itself excluded). Precision: the fraction
of generated vectors within (``<=``) the radius of at least one real vector; recall: the fraction of real vectors
within the radius of at least one generated vector.

**Density and coverage** (Naeem et al. 2020), ``k = 5`` (radii of the real vectors only, strict ``<`` as in
their code): density ``= sum_j #{i : |f_j - r_i| < rad_i} / (k N_fake)``; coverage: the fraction of real vectors
whose nearest generated vector lies within its radius.

Pairwise distances ``sqrt(max(|a|^2 + |b|^2 - 2 a.b, 0))`` are computed in row chunks of at most
``chunk_bytes`` (64 MiB), so N x N matrices are never held for large sets. Entry points: :func:`kid`,
:func:`precision_recall`, :func:`density_coverage`, :func:`quality_metrics` (all of them plus FID).
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Tuple, Union

import numpy as np
import torch

__all__ = ["kid", "precision_recall", "density_coverage", "quality_metrics", "KID_SUBSETS", "KID_SUBSET_SIZE",
           "PR_K", "DC_K", "METRIC_KEYS"]

KID_SUBSETS = 100
KID_SUBSET_SIZE = 1000
PR_K = 3
DC_K = 5
# the keys of quality_metrics, in report order
METRIC_KEYS = ("fid", "kid", "kid_std", "precision", "recall", "density", "coverage")
_CHUNK_BYTES = 64 << 20
_GRAM_ENTRIES = 1 << 25     # precompute KID's kernel matrices below this many entries (256 MiB of float64)

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_f64(x: Any, name: str, device: Optional[Union[str, torch.device]]) -> torch.Tensor:
    """(N, D) float64 tensor on ``device`` (default: the tensor's, or the CPU); finite values only."""
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or torch tensor of shape (N, D), got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape (N, D), got {tuple(x.shape)}")
    if not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.uint8)):
        raise TypeError(f"{name} must hold real numbers, got {x.dtype}")
    x = x.detach().to(device if device is not None else x.device, torch.float64)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds non-finite values (NaN or inf)")
    return x


def _pair(real: ArrayLike, fake: ArrayLike, device) -> Tuple[torch.Tensor, torch.Tensor]:
    r, f = _as_f64(real, "real features", device), _as_f64(fake, "fake features", device)
    if r.device != f.device:
        f = f.to(r.device)
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"real and fake features differ in dimension: {r.shape[1]} and {f.shape[1]}")
    return r, f


def _distance_chunks(a: torch.Tensor, b: torch.Tensor, *, same: bool = False,
                     chunk_bytes: int = _CHUNK_BYTES) -> Iterator[Tuple[int, torch.Tensor]]:
    """Yield (row offset, Euclidean distances float64 (c, Nb)) of row chunks of a against all of b.
    ``same``: a is b, and each vector's distance to itself is set to +inf (excluded from neighbours)."""
    rows = max(1, chunk_bytes // (8 * max(1, b.shape[0])))
    bb = (b * b).sum(1)
    for i in range(0, a.shape[0], rows):
        x = a[i:i + rows]
        d2 = (x * x).sum(1, keepdim=True) + bb[None, :] - 2.0 * (x @ b.T)
        d = d2.clamp_min_(0.0).sqrt_()
        if same:
            j = torch.arange(x.shape[0], device=a.device)
            d[j, i + j] = float("inf")
        yield i, d


def _kth_neighbour_radii(x: torch.Tensor, ks, chunk_bytes: int = _CHUNK_BYTES) -> Dict[int, torch.Tensor]:
    """{k: float64 (N,) distance of each row of x to its k-th nearest other row of x} for each k in ks."""
    kmax = max(ks)
    out = {k: torch.empty(x.shape[0], dtype=torch.float64, device=x.device) for k in ks}
    for i, d in _distance_chunks(x, x, same=True, chunk_bytes=chunk_bytes):
        nearest = torch.topk(d, kmax, dim=1, largest=False, sorted=True).values
        for k in ks:
            out[k][i:i + d.shape[0]] = nearest[:, k - 1]
    return out


def _need_neighbours(n: int, k: int, what: str, metric: str) -> None:
    if k < 1:
        raise ValueError(f"{metric}: the neighbourhood size k must be >= 1, got {k}")
    if n <= k:
        raise ValueError(f"{metric} with k={k} needs more than {k} {what} feature vectors, got {n}")


def _neighbourhood(r: torch.Tensor, f: torch.Tensor, pr_k: Optional[int], dc_k: Optional[int],
                   chunk_bytes: int) -> Dict[str, float]:
    """Precision/recall (k = pr_k) and density/coverage (k = dc_k) from one pass over the real-fake distances
    (either pair skipped when its k is None)."""
    if pr_k is not None:
        _need_neighbours(r.shape[0], pr_k, "real", "precision/recall")
        _need_neighbours(f.shape[0], pr_k, "fake", "precision/recall")
    if dc_k is not None:
        _need_neighbours(r.shape[0], dc_k, "real", "density/coverage")
        if f.shape[0] < 1:
            raise ValueError("density/coverage needs at least 1 fake feature vector")
    ks = tuple(k for k in {pr_k, dc_k} if k is not None)
    rad_r = _kth_neighbour_radii(r, ks, chunk_bytes)
    rad_f = _kth_neighbour_radii(f, (pr_k,), chunk_bytes)[pr_k] if pr_k is not None else None
    in_real = torch.zeros(f.shape[0], dtype=torch.bool, device=r.device)
    recalled = count = covered = 0
    for i, d in _distance_chunks(r, f, chunk_bytes=chunk_bytes):   # d[i, j] = |r_i - f_j|
        rows = slice(i, i + d.shape[0])
        if pr_k is not None:
            in_real |= (d <= rad_r[pr_k][rows, None]).any(0)
            recalled += int((d <= rad_f[None, :]).any(1).sum())
        if dc_k is not None:
            rr = rad_r[dc_k][rows]
            count += int((d < rr[:, None]).sum())
            covered += int((d.min(1).values < rr).sum())
    out: Dict[str, float] = {}
    if pr_k is not None:
        out.update(precision=float(in_real.double().mean()), recall=recalled / r.shape[0])
    if dc_k is not None:
        out.update(density=count / (dc_k * f.shape[0]), coverage=covered / r.shape[0])
    return out


def precision_recall(real: ArrayLike, fake: ArrayLike, *, k: int = PR_K, device=None,
                     chunk_bytes: int = _CHUNK_BYTES) -> Dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of fake (Nf, D) against real (Nr, D).

    Returns ``{"precision": p, "recall": r}`` (fractions in [0, 1])."""
    r, f = _pair(real, fake, device)
    return _neighbourhood(r, f, k, None, chunk_bytes)


def density_coverage(real: ArrayLike, fake: ArrayLike, *, k: int = DC_K, device=None,
                     chunk_bytes: int = _CHUNK_BYTES) -> Dict[str, float]:
    """Density and coverage (Naeem et al. 2020) of fake (Nf, D) against real (Nr, D).

    Returns ``{"density": d, "coverage": c}`` (density >= 0, about 1 for matching sets; coverage in [0, 1])."""
    r, f = _pair(real, fake, device)
    return _neighbourhood(r, f, None, k, chunk_bytes)


def _poly_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a @ b.T / a.shape[1] + 1.0) ** 3


def kid(real: ArrayLike, fake: ArrayLike, *, subsets: int = KID_SUBSETS, subset_size: int = KID_SUBSET_SIZE,
        seed: int = 0, device=None, max_gram_entries: int = _GRAM_ENTRIES) -> Dict[str, float]:
    """Kernel Inception Distance of fake (Nf, D) against real (Nr, D): unbiased MMD^2 with the cubic polynomial
    kernel, over ``subsets`` random subsets of ``m = min(subset_size, Nf, Nr)`` vectors (see the module doc).

    When the three kernel matrices of the whole sets hold at most ``max_gram_entries`` entries they are
    computed once and every subset's sums come from them (one matrix product for all subsets); otherwise each
    subset computes its own kernel matrices (same values, float64 rounding aside).

    Returns ``{"kid": mean, "kid_std": std over subsets (ddof 0), "kid_subsets": subsets,
    "kid_subset_size": m}``."""
    r, f = _pair(real, fake, device)
    if subsets < 1:
        raise ValueError(f"KID: subsets must be >= 1, got {subsets}")
    if subset_size < 2:
        raise ValueError(f"KID: subset_size must be >= 2, got {subset_size}")
    nr, nf = r.shape[0], f.shape[0]
    m = min(subset_size, nr, nf)
    if m < 2:
        raise ValueError(f"KID needs at least 2 real and 2 fake feature vectors, got {nr} and {nf}")
    rng = np.random.RandomState(seed)
    draws = [(rng.choice(nf, m, replace=False), rng.choice(nr, m, replace=False)) for _ in range(subsets)]
    if nr * nr + nf * nf + nr * nf <= max_gram_entries:
        # the subsets' kernel sums from the whole-set kernel matrices: with the 0/1 membership matrices
        # W (N, subsets), sum_{i,j in S} K_ij = (W^T K W)_SS, computed for all subsets in one product
        w_f = torch.zeros(nf, subsets, dtype=torch.float64, device=r.device)
        w_r = torch.zeros(nr, subsets, dtype=torch.float64, device=r.device)
        for s, (i_f, i_r) in enumerate(draws):
            w_f[torch.from_numpy(i_f).to(r.device), s] = 1.0
            w_r[torch.from_numpy(i_r).to(r.device), s] = 1.0
        k_ff, k_rr, k_fr = _poly_kernel(f, f), _poly_kernel(r, r), _poly_kernel(f, r)
        s_ff = ((k_ff @ w_f) * w_f).sum(0) - k_ff.diagonal() @ w_f
        s_rr = ((k_rr @ w_r) * w_r).sum(0) - k_rr.diagonal() @ w_r
        s_fr = ((k_fr @ w_r) * w_f).sum(0)
        values = ((s_ff + s_rr) / (m * (m - 1)) - 2.0 * s_fr / (m * m)).cpu().numpy()
    else:
        values = np.empty(subsets, dtype=np.float64)
        for s, (i_f, i_r) in enumerate(draws):
            x, y = f[torch.from_numpy(i_f).to(r.device)], r[torch.from_numpy(i_r).to(r.device)]
            kxx, kyy, kxy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
            off = (kxx.sum() - kxx.diagonal().sum() + kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
            values[s] = float(off - 2.0 * kxy.sum() / (m * m))
    return {"kid": float(values.mean()), "kid_std": float(values.std()), "kid_subsets": subsets,
            "kid_subset_size": m}


def quality_metrics(real: ArrayLike, fake: ArrayLike, *, kid_subsets: int = KID_SUBSETS,
                    kid_subset_size: int = KID_SUBSET_SIZE, pr_k: Optional[int] = PR_K,
                    dc_k: Optional[int] = DC_K, seed: int = 0, device=None, fid: bool = True) -> Dict[str, float]:
    """Every quality number of fake (Nf, D) against real (Nr, D) Inception features, from one feature pass.

    Returns floats keyed ``fid`` (with ``fid=True``; :func:`.fid.fid_from_features`), ``kid``, ``kid_std``,
    ``precision``, ``recall`` (k = ``pr_k``; left out when None), ``density``, ``coverage`` (k = ``dc_k``; left
    out when None), plus ``kid_subset_size`` (the m used). Precision/recall need more than pr_k vectors in each
    set, density/coverage more than dc_k real vectors; KID at least 2 in each."""
    r, f = _pair(real, fake, device)
    out: Dict[str, float] = {}
    if fid:
        from .fid import fid_from_features
        out["fid"] = fid_from_features(r, f)
    k = kid(r, f, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed)
    out.update(kid=k["kid"], kid_std=k["kid_std"])
    if pr_k is not None or dc_k is not None:
        out.update(_neighbourhood(r, f, pr_k, dc_k, _CHUNK_BYTES))
    out["kid_subset_size"] = float(k["kid_subset_size"])
    return out
