"""KID, improved precision/recall and density/coverage against independent brute-force computations."""
import itertools

import numpy as np
import pytest
import scipy.spatial.distance
import torch

from sbgan_fast.metrics import fid_from_features
from sbgan_fast.metrics.fid import FeatureStats
from sbgan_fast.metrics.quality import (density_coverage, kid, precision_recall, quality_metrics)


# ------------------------------------------------------------------------------------------ independent oracles
def bf_mmd2(x, y):
    """Unbiased MMD^2 (Binkowski et al. 2018) with k(a, b) = (a.b / d + 1)^3, by explicit loops."""
    m, d = x.shape
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3   # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def bf_kid(real, fake, subsets, subset_size, seed):
    """Mean and std (ddof 0) over subsets drawn as torch-fidelity does: RandomState(seed), per subset first
    the generated then the real indices, without replacement."""
    rng = np.random.RandomState(seed)
    m = min(subset_size, len(real), len(fake))
    vals = []
    for _ in range(subsets):
        fi = rng.choice(len(fake), m, replace=False)
        ri = rng.choice(len(real), m, replace=False)
        vals.append(bf_mmd2(fake[fi].astype(np.float64), real[ri].astype(np.float64)))
    return float(np.mean(vals)), float(np.std(vals))


def bf_radii(x, k):
    """Distance of each row to its k-th nearest other row (scipy's cdist, self excluded by index)."""
    d = scipy.spatial.distance.cdist(x, x)
    return np.array([sorted(d[i, j] for j in range(len(x)) if j != i)[k - 1] for i in range(len(x))])


def bf_prdc(real, fake, k_pr=3, k_dc=5):
    real, fake = real.astype(np.float64), fake.astype(np.float64)
    d = scipy.spatial.distance.cdist(real, fake)           # d[i, j] = |r_i - f_j|
    rr3, ff3, rr5 = bf_radii(real, k_pr), bf_radii(fake, k_pr), bf_radii(real, k_dc)
    nr, nf = len(real), len(fake)
    precision = np.mean([any(d[i, j] <= rr3[i] for i in range(nr)) for j in range(nf)])
    recall = np.mean([any(d[i, j] <= ff3[j] for j in range(nf)) for i in range(nr)])
    density = sum(d[i, j] < rr5[i] for i in range(nr) for j in range(nf)) / (k_dc * nf)
    coverage = np.mean([min(d[i, j] for j in range(nf)) < rr5[i] for i in range(nr)])
    return dict(precision=precision, recall=recall, density=density, coverage=coverage)


def feats(n, d, seed, shift=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, d)) * scale + shift).astype(np.float32)


# ------------------------------------------------------------------------------------------ KID
@pytest.mark.parametrize("nr,nf,subset_size", [(50, 50, 1000), (50, 40, 30), (30, 45, 20)])
def test_kid_matches_brute_force(nr, nf, subset_size):
    real, fake = feats(nr, 8, 1), feats(nf, 8, 2, shift=0.3, scale=1.2)
    mean, std = bf_kid(real, fake, 4, subset_size, seed=7)
    out = kid(real, fake, subsets=4, subset_size=subset_size, seed=7)
    assert out["kid_subset_size"] == min(subset_size, nr, nf) and out["kid_subsets"] == 4
    assert out["kid"] == pytest.approx(mean, rel=1e-10, abs=1e-12)
    assert out["kid_std"] == pytest.approx(std, rel=1e-8, abs=1e-12)
    if subset_size < min(nr, nf):
        assert out["kid_std"] > 0   # different subsets
    # kernels per subset instead of gathered from the whole-set kernel matrices: the same numbers
    per = kid(real, fake, subsets=4, subset_size=subset_size, seed=7, max_gram_entries=0)
    assert per["kid"] == pytest.approx(out["kid"], rel=1e-12, abs=1e-14)
    assert per["kid_std"] == pytest.approx(out["kid_std"], rel=1e-9, abs=1e-14)


def test_kid_defaults_and_inputs():
    real, fake = feats(50, 8, 3), feats(50, 8, 4, shift=1.0)
    out = kid(real, fake)
    assert out["kid_subsets"] == 100 and out["kid_subset_size"] == 50
    # m = n: every subset is the whole set, so the subsets agree up to summation order
    assert out["kid"] == pytest.approx(bf_mmd2(fake.astype(np.float64), real.astype(np.float64)), rel=1e-10)
    assert out["kid_std"] < 1e-12
    # numpy or torch, float32 or float64: the same float64 computation
    same = kid(torch.from_numpy(real), torch.from_numpy(fake).double(), device="cpu")
    assert same["kid"] == pytest.approx(out["kid"], rel=1e-12)
    # alike sets give about 0, far sets a large value
    assert abs(kid(real, feats(50, 8, 5))["kid"]) < 0.1 < kid(real, real + 5)["kid"]
    with pytest.raises(ValueError, match="dimension"):
        kid(real, fake[:, :4])
    with pytest.raises(ValueError, match="at least 2"):
        kid(real, fake[:1])
    with pytest.raises(ValueError, match="non-finite"):
        kid(real, np.full((3, 8), np.nan))
    with pytest.raises(ValueError, match="shape"):
        kid(real, fake[0])
    with pytest.raises(ValueError, match="subsets"):
        kid(real, fake, subsets=0)


# ------------------------------------------------------------------------------ precision/recall, density/coverage
@pytest.mark.slow
@pytest.mark.parametrize("nr,nf,shift", [(50, 50, 0.0), (50, 37, 0.5), (23, 60, 0.8)])
def test_prdc_match_brute_force(nr, nf, shift):
    real, fake = feats(nr, 8, 10), feats(nf, 8, 11, shift=shift, scale=0.9)
    ref = bf_prdc(real, fake)
    pr, dc = precision_recall(real, fake), density_coverage(real, fake)
    for name in ("precision", "recall"):
        assert pr[name] == pytest.approx(ref[name], abs=1e-12), name
    for name in ("density", "coverage"):
        assert dc[name] == pytest.approx(ref[name], abs=1e-12), name
    assert 0 < pr["precision"] < 1 and 0 < pr["recall"] < 1 and dc["density"] > 0   # not all or nothing
    # other neighbourhood sizes
    ref2 = bf_prdc(real, fake, k_pr=5, k_dc=2)
    assert precision_recall(real, fake, k=5)["recall"] == pytest.approx(ref2["recall"], abs=1e-12)
    assert density_coverage(real, fake, k=2)["density"] == pytest.approx(ref2["density"], abs=1e-12)
    # distances in row chunks of 3 rows: the same counts
    tiny = 8 * max(nr, nf) * 3
    assert precision_recall(real, fake, chunk_bytes=tiny) == pr
    assert density_coverage(real, fake, chunk_bytes=tiny) == dc


def test_identical_and_disjoint_sets():
    real = feats(50, 8, 20)
    same = quality_metrics(real, real.copy())
    assert same["precision"] == 1 and same["recall"] == 1 and same["coverage"] == 1
    assert same["fid"] == pytest.approx(0, abs=1e-8)
    assert same["density"] == pytest.approx(bf_prdc(real, real)["density"], abs=1e-12)
    far = quality_metrics(real, real + 1000.0)
    assert far["precision"] == 0 and far["recall"] == 0 and far["density"] == 0 and far["coverage"] == 0
    assert far["kid"] > 1e3


def test_neighbourhood_ties_follow_the_published_comparisons():
    """Precision/recall count a point on a radius (<=, Kynkaanniemi et al.); density/coverage do not (<, the
    prdc code). Integer 1-d points: every distance is exact."""
    real = np.array([[0.0], [1.0], [2.0], [3.0]])          # k = 3 radii: 3, 2, 2, 3
    fake = np.array([[6.0], [20.0], [40.0], [60.0]])       # 6 lies on the radius of 3
    assert precision_recall(real, fake)["precision"] == 0.25
    assert precision_recall(real, fake + 0.5)["precision"] == 0
    real6 = np.arange(6.0)[:, None]                         # k = 5 radii: 5, 4, 3, 3, 4, 5
    assert density_coverage(real6, np.array([[10.0]])) == {"density": 0.0, "coverage": 0.0}
    assert density_coverage(real6, np.array([[9.5]])) == {"density": 0.2, "coverage": 1 / 6}
    # duplicated real vectors: a radius of 0 covers nothing under <, and its own copy under <=
    dup = np.array([[0.0]] * 6 + [[50.0]])                # radius 0 for the zeros, 50 for the last
    assert density_coverage(dup, np.array([[0.0]]))["coverage"] == 0
    assert precision_recall(dup[:4], np.zeros((4, 1)))["precision"] == 1


def test_too_few_vectors_are_named():
    real, fake = feats(5, 8, 1), feats(3, 8, 2)
    with pytest.raises(ValueError, match="k=3 needs more than 3 fake"):
        precision_recall(real, fake)
    with pytest.raises(ValueError, match="k=5 needs more than 5 real"):
        density_coverage(real, feats(9, 8, 2))
    with pytest.raises(ValueError, match="k must be >= 1"):
        precision_recall(real, feats(9, 8, 2), k=0)


def test_quality_metrics_is_one_call_for_all():
    real, fake = feats(40, 8, 30), feats(35, 8, 31, shift=0.4)
    out = quality_metrics(real, fake, kid_subsets=3, kid_subset_size=20, seed=5)
    assert set(out) == {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage", "kid_subset_size"}
    assert out["fid"] == pytest.approx(fid_from_features(real, fake), rel=1e-12)
    mean, std = bf_kid(real, fake, 3, 20, seed=5)
    assert out["kid"] == pytest.approx(mean, rel=1e-10) and out["kid_std"] == pytest.approx(std, rel=1e-8)
    ref = bf_prdc(real, fake)
    assert all(out[k] == pytest.approx(v, abs=1e-12) for k, v in ref.items())
    part = quality_metrics(real, fake, pr_k=None, dc_k=None, fid=False, kid_subsets=2)
    assert set(part) == {"kid", "kid_std", "kid_subset_size"}


# ------------------------------------------------------------------------------------------ kept features
def test_feature_stats_keep_features_and_cache_them(tmp_path):
    x = feats(30, 8, 40)
    st, plain = FeatureStats(keep_features=True), FeatureStats()
    for a, b in itertools.pairwise([0, 7, 7, 20, 30]):
        st.update(torch.from_numpy(x[a:b]))
        plain.update(x[a:b])
    assert st.features.dtype == np.float32 and np.array_equal(st.features, x)
    assert plain.features is None   # keeping the vectors changes nothing else
    np.testing.assert_array_equal(st.cov, plain.cov)
    np.testing.assert_array_equal(st.mean, plain.mean)
    path = str(tmp_path / "s.npz")
    st.save(path, {"a": 1})
    back, meta = FeatureStats.load(path)
    assert meta == {"a": 1} and np.array_equal(back.features, x) and back.n == 30
    np.testing.assert_array_equal(back.cov, st.cov)
    plain.save(path)
    assert FeatureStats.load(path)[0].features is None


def test_real_statistics_recomputes_a_cache_without_features(tmp_path):
    from sbgan_fast.metrics.fid import FIDExtractor, real_statistics

    class Mean(torch.nn.Module):
        def forward(self, x):
            return x.mean((2, 3)).repeat(1, 4)   # (N, 12)

    ex = FIDExtractor(model=Mean(), batch_size=4)
    imgs = [torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8) for _ in range(2)]
    seen = []
    st, meta = real_statistics(iter(imgs), ex, describe={"dataset": "t"}, cache_dir=str(tmp_path), log=seen.append,
                               on_batch=seen.append)
    assert not meta["cached"] and st.features.shape == (8, 12) and seen[:2] == [4, 4]
    again, meta2 = real_statistics(iter([]), ex, describe={"dataset": "t"}, cache_dir=str(tmp_path), log=seen.append)
    assert meta2["cached"] and np.array_equal(again.features, st.features)
    # a cache file without the feature vectors (older format) is recomputed
    FeatureStats().update(st.features).save(meta["path"], {k: v for k, v in meta.items()
                                                           if k not in ("path", "cached")})
    third, meta3 = real_statistics(iter(imgs), ex, describe={"dataset": "t"}, cache_dir=str(tmp_path),
                                   log=seen.append)
    assert not meta3["cached"] and np.array_equal(third.features, st.features)
