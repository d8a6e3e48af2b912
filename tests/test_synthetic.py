"""The built-in synthetic street scenes: determinism, scene structure, image/label alignment, sizes."""
import hashlib

import numpy as np
import pytest
import torch

from sbgan_fast.data.datasets import to_batch
from sbgan_fast.data.synthetic import SyntheticScenes

NAMES = SyntheticScenes.CLASS_NAMES
SKY, ROAD = NAMES.index("sky"), NAMES.index("road")


@pytest.fixture(scope="module")
def batch():
    """24 samples at 64x128: labels (24, 64, 128) int64, images (24, 3, 64, 128) uint8."""
    ds = SyntheticScenes(24, height=64, width=128, seed=3)
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([it["label"] for it in items]), torch.stack([it["image"] for it in items])


def test_class_table():
    assert len(NAMES) == SyntheticScenes.PALETTE.shape[0] >= 8
    assert SyntheticScenes.PALETTE.dtype == np.uint8 and SyntheticScenes.PALETTE.shape[1] == 3
    assert len({tuple(c) for c in SyntheticScenes.PALETTE.tolist()}) == len(NAMES)  # distinct colours
    ds = SyntheticScenes(4)
    assert ds.num_classes == len(NAMES)
    np.testing.assert_array_equal(ds.palette, SyntheticScenes.PALETTE)


def test_item_contract():
    ds = SyntheticScenes(5, height=48, width=80, seed=1)
    item = ds[2]
    assert set(item) == {"image", "label", "index"}
    assert item["index"] == 2
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 48, 80)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (48, 80)
    assert len(ds) == 5
    with pytest.raises(IndexError, match="out of range"):
        ds[5]
    with pytest.raises(IndexError):
        ds[-1]


def test_deterministic_per_seed_and_index():
    a = SyntheticScenes(10, seed=5)
    b = SyntheticScenes(10, seed=5)
    for i in (0, 7):
        ia, ib = a[i], b[i]
        assert torch.equal(ia["image"], ib["image"]) and torch.equal(ia["label"], ib["label"])
    # generation order does not matter
    assert torch.equal(a[3]["image"], SyntheticScenes(10, seed=5)[3]["image"])
    assert not torch.equal(a[0]["label"], a[1]["label"])
    assert not torch.equal(a[0]["image"], a[1]["image"])
    other = SyntheticScenes(10, seed=6)
    assert not torch.equal(a[0]["label"], other[0]["label"])


def test_structure(batch):
    labels, _ = batch
    k = len(NAMES)
    assert int(labels.min()) >= 0 and int(labels.max()) < k
    h = labels.shape[1]
    top, bottom = labels[:, : h // 8], labels[:, -h // 8:]
    assert (top == SKY).float().mean() > 0.2
    assert (bottom == SKY).float().mean() == 0.0  # the horizon is always above the bottom eighth
    assert (bottom == ROAD).float().mean() > 0.3
    assert (top == ROAD).float().mean() == 0.0
    # every sample has road at the bottom centre region and sky somewhere at the top
    assert bool(((labels[:, -4:] == ROAD).flatten(1).any(1)).all())
    assert bool(((labels[:, :8] == SKY).flatten(1).any(1)).all())
    classes_per_sample = [len(torch.unique(lab)) for lab in labels]
    assert np.mean(classes_per_sample) > 6
    # every class occurs somewhere in the batch
    assert set(torch.unique(labels).tolist()) == set(range(k))


def test_image_follows_labels(batch):
    labels, images = batch
    img = images.permute(0, 2, 3, 1).reshape(-1, 3).float()
    lab = labels.reshape(-1)
    means, stds = {}, {}
    for name in ("sky", "road", "building", "vegetation", "sidewalk", "terrain"):
        sel = lab == NAMES.index(name)
        assert int(sel.sum()) > 500, name
        means[name] = img[sel].mean(0)
        stds[name] = img[sel].std(0).mean()
    names = list(means)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert float((means[a] - means[b]).abs().sum()) > 15, (a, b)
        assert float(stds[a]) > 2  # textured, not flat colour
    assert float(means["sky"][2]) > float(means["sky"][0])  # sky is bluish on average
    assert float(means["vegetation"][1]) > float(means["vegetation"][2])  # leaves are green


def test_image_edges_align_with_label_edges(batch):
    labels, images = batch
    lab_edge = (labels[:, :, 1:] != labels[:, :, :-1])
    diff = (images[:, :, :, 1:].float() - images[:, :, :, :-1].float()).abs().sum(1)
    assert float(diff[lab_edge].mean()) > 2 * float(diff[~lab_edge].mean())


@pytest.mark.parametrize("size", [(32, 32), (48, 96), (8, 8), (40, 200)])
def test_any_size(size):
    ds = SyntheticScenes(3, height=size[0], width=size[1], seed=2)
    item = ds[1]
    assert item["image"].shape == (3,) + size and item["label"].shape == size
    assert int(item["label"].max()) < ds.num_classes


def test_large_sample_and_proportional_layout():
    big = SyntheticScenes(2, height=256, width=512, seed=4)[1]["label"]
    small = SyntheticScenes(2, height=64, width=128, seed=4)[1]["label"]
    assert big.shape == (256, 512)
    # the same scene at two resolutions: pixel centres of the small map sit between big pixels 1,2 (mod 4)
    agree = (big[1::4, 1::4] == small).float().mean()
    assert float(agree) > 0.9


def test_num_classes_coarse_and_padded():
    fine = SyntheticScenes(4, height=32, width=64, seed=1)
    coarse = SyntheticScenes(4, height=32, width=64, seed=1, num_classes=4)
    padded = SyntheticScenes(4, height=32, width=64, seed=1, num_classes=35)
    for i in range(4):
        f, c, p = fine[i], coarse[i], padded[i]
        assert torch.equal(f["image"], c["image"])  # the image does not change
        assert int(c["label"].max()) < 4
        keep = f["label"] < 4
        assert torch.equal(c["label"][keep], f["label"][keep])  # the first classes are kept as they are
        assert torch.equal(p["label"], f["label"])
    assert coarse.palette.shape == (4, 3) and padded.palette.shape == (35, 3)
    # car -> road, cloud -> sky
    lut = coarse._lut
    assert lut[NAMES.index("car")] == ROAD and lut[NAMES.index("cloud")] == SKY


@pytest.mark.parametrize("kwargs", [dict(size=0), dict(height=4), dict(width=2.5), dict(seed=-1),
                                    dict(num_classes=1), dict(num_classes=True), dict(detail=1.5),
                                    dict(detail=-0.1), dict(detail=float("nan")), dict(detail="low")])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="SyntheticScenes"):
        SyntheticScenes(**kwargs)


def test_labels_only_and_dataloader():
    ds = SyntheticScenes(6, height=32, width=64, with_images=False)
    assert set(ds[0]) == {"label", "index"}
    loader = torch.utils.data.DataLoader(SyntheticScenes(6, height=32, width=64), batch_size=3, num_workers=0)
    batch = to_batch(next(iter(loader)), "cpu")
    assert batch["image"].shape == (3, 3, 32, 64) and batch["image"].dtype == torch.float32
    assert -1.0 <= float(batch["image"].min()) and float(batch["image"].max()) <= 1.0
    assert batch["label"].shape == (3, 32, 64) and batch["label"].dtype == torch.int64


def test_full_detail_scenes_are_unchanged():
    """detail=1 (the default) draws the scenes bit for bit as they were before the option existed."""
    ds = SyntheticScenes(4, height=32, width=64, seed=3)
    assert SyntheticScenes(4, height=32, width=64, seed=3, detail=1.0).detail == ds.detail == 1.0
    h = hashlib.sha256()
    for i in range(4):
        img, lab = ds.generate(i)
        h.update(img.tobytes())
        h.update(lab.tobytes())
    assert h.hexdigest() == "a7de65c1d2b4a3190ab9e9c25b63709142aa21eb9ad35611962944cb196e2259"


def _roughness(img: np.ndarray) -> float:
    """Mean absolute horizontal + vertical pixel difference of an (H, W, 3) uint8 image."""
    f = img.astype(np.float64)
    return float(np.abs(np.diff(f, axis=0)).mean() + np.abs(np.diff(f, axis=1)).mean())


def test_detail_changes_the_images_only():
    """Lower detail: the same layout and label maps, smoother images (texture, windows and seams fade out), and
    the image stays the same scene (mean colour close to the full scene's)."""
    full = SyntheticScenes(12, height=64, width=128, seed=2)
    half = SyntheticScenes(12, height=64, width=128, seed=2, detail=0.5)
    flat = SyntheticScenes(12, height=64, width=128, seed=2, detail=0.0)
    rough = {0: [], 1: [], 2: []}
    for i in range(12):
        (a, la), (b, lb), (c, lc) = full.generate(i), half.generate(i), flat.generate(i)
        np.testing.assert_array_equal(la, lb)
        np.testing.assert_array_equal(la, lc)
        assert not np.array_equal(a, c)
        assert np.abs(a.astype(np.float64).mean((0, 1)) - c.astype(np.float64).mean((0, 1))).max() < 20
        for k, im in enumerate((a, b, c)):
            rough[k].append(_roughness(im))
    r_full, r_half, r_flat = (float(np.mean(v)) for v in rough.values())
    assert r_flat < r_half < r_full
    assert r_flat < 0.8 * r_full
    # within one class region the flat image varies less than the full one (no texture noise)
    img_full, lab = full.generate(0)
    img_flat, _ = flat.generate(0)
    road = lab == ROAD
    assert img_flat[road].astype(np.float64).std(0).mean() < img_full[road].astype(np.float64).std(0).mean()
    assert "detail=0.0" in repr(flat) and "detail" not in repr(full)
