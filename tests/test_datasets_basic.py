"""Paired/label folder datasets, the batch contract, palettes, colourised label maps and sample grids."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from sbgan_fast.data.datasets import (DataError, LabelFolderDataset, PairedFolderDataset, float_to_uint8,
                                      image_to_float, to_batch)
from sbgan_fast.data.palettes import (CITYSCAPES_LABELS, PALETTE_NAMES, colorize, fallback_palette,
                                      get_class_names, get_palette)
from sbgan_fast.data.synthetic import SyntheticScenes
from sbgan_fast.metrics.grids import make_grid_array, save_image, save_pairs_grid

K = 5


def _label_map(h, w, seed):
    """An asymmetric label map with values 0..K-1 (vertical bands with a seed-dependent offset)."""
    x = np.arange(w)[None, :] + np.arange(h)[:, None] // 3 + seed
    return ((x // 4) % K).astype(np.uint8)


def _write_pairs(root, n=4, h=24, w=40, image_ext=".png", encode=True):
    """n pairs under root/img and root/lab; the image's red channel encodes the label (label * 40)."""
    img_dir, lab_dir = root / "img", root / "lab"
    img_dir.mkdir(exist_ok=True)
    lab_dir.mkdir(exist_ok=True)
    for i in range(n):
        lab = _label_map(h, w, i)
        rgb = np.zeros((h, w, 3), np.uint8)
        rgb[..., 0] = lab * 40 if encode else 128
        rgb[..., 1] = np.arange(w)[None, :] * 5 % 256
        Image.fromarray(rgb).save(img_dir / f"s{i:02d}{image_ext}")
        Image.fromarray(lab, mode=None).save(lab_dir / f"s{i:02d}.png")
    return img_dir, lab_dir


# ---------------------------------------------------------------------------------------------------------------
# paired folders
# ---------------------------------------------------------------------------------------------------------------
def test_paired_basic_no_resize(tmp_path):
    img_dir, lab_dir = _write_pairs(tmp_path)
    ds = PairedFolderDataset(img_dir, lab_dir, K, height=None, width=None)
    assert len(ds) == 4
    item = ds[1]
    assert set(item) >= {"image", "label", "index"}
    assert item["image"].dtype == torch.uint8 and item["image"].shape == (3, 24, 40)
    assert item["label"].dtype == torch.int64 and item["label"].shape == (24, 40)
    assert item["path"].endswith("s01.png")
    np.testing.assert_array_equal(item["label"].numpy(), _label_map(24, 40, 1))
    assert torch.equal(item["image"][0], item["label"].to(torch.uint8) * 40)


def test_paired_resize_and_jpg(tmp_path):
    img_dir, lab_dir = _write_pairs(tmp_path, image_ext=".jpg")
    ds = PairedFolderDataset(img_dir, lab_dir, K, height=17, width=30)
    item = ds[2]
    assert item["image"].shape == (3, 17, 30) and item["label"].shape == (17, 30)
    # nearest for labels, with Pillow's rule
    lab = Image.fromarray(_label_map(24, 40, 2))
    np.testing.assert_array_equal(item["label"].numpy(), np.array(lab.resize((30, 17), Image.NEAREST)))
    with Image.open(img_dir / "s02.jpg") as im:
        expected = np.array(im.convert("RGB").resize((30, 17), Image.BICUBIC))
    np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), expected)


def test_paired_dontcare(tmp_path):
    img_dir, lab_dir = _write_pairs(tmp_path, n=1)
    lab = _label_map(24, 40, 0)
    lab[0, 0] = 255
    Image.fromarray(lab).save(lab_dir / "s00.png")
    with pytest.raises(DataError, match="255"):
        PairedFolderDataset(img_dir, lab_dir, K, height=None, width=None)[0]
    ds = PairedFolderDataset(img_dir, lab_dir, K, height=None, width=None, dontcare=255)
    assert int(ds[0]["label"][0, 0]) == 255


def test_error_empty_folders(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    with pytest.raises(DataError, match="no images") as e:
        PairedFolderDataset(tmp_path / "img", tmp_path / "lab", K, height=None, width=None)
    assert e.value.path == str(tmp_path / "img")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "img" / "a.png")
    with pytest.raises(DataError, match="no label maps"):
        PairedFolderDataset(tmp_path / "img", tmp_path / "lab", K, height=None, width=None)
    with pytest.raises(DataError, match="not a folder"):
        PairedFolderDataset(tmp_path / "nope", tmp_path / "lab", K, height=None, width=None)
    with pytest.raises(DataError, match="no label maps"):
        LabelFolderDataset(tmp_path / "lab", K, height=None, width=None)


def test_error_missing_pairs(tmp_path):
    img_dir, lab_dir = _write_pairs(tmp_path, n=3)
    os.remove(lab_dir / "s01.png")
    with pytest.raises(DataError, match="without a label map") as e:
        PairedFolderDataset(img_dir, lab_dir, K, height=None, width=None)
    assert "s01.png" in str(e.value) and e.value.path.endswith("s01.png")
    os.remove(img_dir / "s01.png")
    Image.fromarray(_label_map(24, 40, 0)).save(lab_dir / "extra.png")
    with pytest.raises(DataError, match="without an image") as e:
        PairedFolderDataset(img_dir, lab_dir, K, height=None, width=None)
    assert "extra.png" in str(e.value)


def test_error_duplicate_stems(tmp_path):
    img_dir, lab_dir = _write_pairs(tmp_path, n=2)
    Image.fromarray(np.zeros((24, 40, 3), np.uint8)).save(img_dir / "s00.jpg")
    with pytest.raises(DataError, match="share the name"):
        PairedFolderDataset(img_dir, lab_dir, K, height=None, width=None)


@pytest.mark.parametrize("kind", ["truncated", "garbage"])
def test_error_unreadable_image(tmp_path, kind):
    img_dir, lab_dir = _write_pairs(tmp_path, n=3, image_ext=".jpg")
    bad = img_dir / "s02.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"not an image at all")
    ds = PairedFolderDataset(img_dir, lab_dir, K, height=16, width=16)
    ds[0]  # the good ones load
    with pytest.raises(DataError, match="cannot read image file") as e:
        ds[2]
    assert str(bad) in str(e.value) and e.value.path == str(bad)
    with pytest.raises(DataError, match="1 bad pair") as e:
        ds.validate()
    assert str(bad) in str(e.value)


def test_error_truncated_label(tmp_path):
    img_dir, lab_dir = _write_pairs(tmp_path, n=2)
    bad = lab_dir / "s01.png"
    bad.write_bytes(bad.read_bytes()[:40])
    with pytest.raises(DataError, match="cannot read label file") as e:
        PairedFolderDataset(img_dir, lab_dir, K, height=None, width=None)[1]
    assert str(bad) in str(e.value)


def test_error_label_out_of_range(tmp_path):
    img_dir, lab_dir = _write_pairs(tmp_path, n=2)
    lab = _label_map(24, 40, 1)
    lab[3, 4] = 9
    Image.fromarray(lab).save(lab_dir / "s01.png")
    ds = PairedFolderDataset(img_dir, lab_dir, K, height=None, width=None)
    with pytest.raises(DataError, match=r"outside \[0, 5\): 9 \(1 pixels\)") as e:
        ds[1]
    assert str(lab_dir / "s01.png") in str(e.value)
    PairedFolderDataset(img_dir, lab_dir, 10, height=None, width=None)[1]  # fine with more classes


def test_error_size_mismatch(tmp_path):
    img_dir, lab_dir = _write_pairs(tmp_path, n=2)
    Image.fromarray(_label_map(20, 40, 0)).save(lab_dir / "s00.png")
    ds = PairedFolderDataset(img_dir, lab_dir, K, height=16, width=16)
    with pytest.raises(DataError, match=r"is 40x24 but its label map .* is 40x20") as e:
        ds[0]
    assert str(img_dir / "s00.png") in str(e.value) and str(lab_dir / "s00.png") in str(e.value)


def test_error_colour_label(tmp_path):
    img_dir, lab_dir = _write_pairs(tmp_path, n=1)
    Image.fromarray(np.zeros((24, 40, 3), np.uint8)).save(lab_dir / "s00.png")
    with pytest.raises(DataError, match="mode 'RGB'") as e:
        PairedFolderDataset(img_dir, lab_dir, K, height=None, width=None)[0]
    assert str(lab_dir / "s00.png") in str(e.value)


def test_palette_and_16bit_labels(tmp_path):
    img_dir, lab_dir = _write_pairs(tmp_path, n=2)
    lab = _label_map(24, 40, 0)
    p = Image.fromarray(lab, mode="L").convert("P")
    p.putpalette(get_palette("fallback", 256).flatten().tolist())
    p.save(lab_dir / "s00.png")
    Image.fromarray(_label_map(24, 40, 1).astype(np.uint16)).save(lab_dir / "s01.png")
    ds = PairedFolderDataset(img_dir, lab_dir, K, height=None, width=None)
    np.testing.assert_array_equal(ds[0]["label"].numpy(), lab)
    np.testing.assert_array_equal(ds[1]["label"].numpy(), _label_map(24, 40, 1))


def test_validate_passes_on_good_data(tmp_path):
    img_dir, lab_dir = _write_pairs(tmp_path, n=3)
    PairedFolderDataset(img_dir, lab_dir, K, height=8, width=8).validate()


def test_label_folder_dataset(tmp_path):
    _, lab_dir = _write_pairs(tmp_path, n=3)
    (lab_dir / "sub").mkdir()
    Image.fromarray(_label_map(24, 40, 7)).save(lab_dir / "sub" / "deep.png")
    ds = LabelFolderDataset(lab_dir, K, height=12, width=20)
    assert len(ds) == 4
    item = ds[0]
    assert set(item) == {"label", "path", "index"}
    assert item["label"].shape == (12, 20) and item["label"].dtype == torch.int64
    assert any(p.endswith(os.path.join("sub", "deep.png")) for p in ds.label_paths)
    batch = to_batch([ds[i] for i in range(4)], "cpu")
    assert batch["image"] is None and batch["label"].shape == (4, 12, 20)


def test_bad_constructor_arguments(tmp_path):
    img_dir, lab_dir = _write_pairs(tmp_path, n=1)
    with pytest.raises(ValueError, match="num_classes"):
        PairedFolderDataset(img_dir, lab_dir, 0, height=None, width=None)
    with pytest.raises(ValueError, match="height"):
        PairedFolderDataset(img_dir, lab_dir, K, height=-3, width=None)


# ---------------------------------------------------------------------------------------------------------------
# batch contract
# ---------------------------------------------------------------------------------------------------------------
def test_image_float_round_trip():
    u = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16).expand(2, 3, 16, 16)
    f = image_to_float(u)
    assert f.dtype == torch.float32 and float(f.min()) == -1.0 and float(f.max()) == 1.0
    assert torch.equal(float_to_uint8(f), u)
    x = torch.tensor([-3.0, -1.0, -0.999, 0.0, 0.999, 1.0, 2.0, float("nan")])
    assert float_to_uint8(x).tolist() == [0, 0, 0, 128, 255, 255, 255, 0]
    with pytest.raises(TypeError):
        image_to_float(f)
    with pytest.raises(TypeError):
        float_to_uint8(u)


def test_to_batch_contract():
    ds = SyntheticScenes(4, height=16, width=24)
    items = [ds[i] for i in range(4)]
    batch = to_batch(items, torch.device("cpu"))
    assert batch["image"].shape == (4, 3, 16, 24) and batch["image"].dtype == torch.float32
    assert torch.equal(float_to_uint8(batch["image"]), torch.stack([it["image"] for it in items]))
    assert batch["label"].dtype == torch.int64
    collated = torch.utils.data.default_collate(items)
    again = to_batch(collated, "cpu")
    assert torch.equal(again["image"], batch["image"]) and torch.equal(again["label"], batch["label"])
    with pytest.raises(ValueError, match="different label sizes"):
        to_batch([items[0], SyntheticScenes(1, height=16, width=16)[0]])
    with pytest.raises(ValueError, match="no items"):
        to_batch([])
    with pytest.raises(ValueError, match="some items have an 'image'"):
        to_batch([items[0], {"label": items[1]["label"]}])


# ---------------------------------------------------------------------------------------------------------------
# palettes and colorize
# ---------------------------------------------------------------------------------------------------------------
def test_palette_shapes_and_known_entries():
    sizes = {"synthetic": 11, "cityscapes35": 35, "cityscapes20": 20, "ade150": 151, "ade_indoor95": 95}
    assert set(sizes) == set(PALETTE_NAMES)
    for name, k in sizes.items():
        pal = get_palette(name)
        assert pal.shape == (k, 3) and pal.dtype == np.uint8, name
        assert len(get_class_names(name)) == k
    c35, c20, ade = get_palette("cityscapes35"), get_palette("cityscapes20"), get_palette("ade150")
    assert tuple(c35[7]) == (128, 64, 128) and tuple(c35[23]) == (70, 130, 180) and tuple(c35[26]) == (0, 0, 142)
    assert get_class_names("cityscapes35")[7] == "road"
    assert tuple(c20[0]) == (128, 64, 128) and tuple(c20[2]) == (70, 70, 70) and tuple(c20[10]) == (70, 130, 180)
    assert tuple(c20[19]) == (0, 0, 0) and get_class_names("cityscapes20")[13] == "car"
    assert tuple(ade[0]) == (0, 0, 0) and tuple(ade[1]) == (120, 120, 120) and tuple(ade[150]) == (92, 0, 255)
    assert get_class_names("ade150")[3] == "sky"
    # train ids of the table are exactly 0..18
    assert sorted(t for _, _, t, _ in CITYSCAPES_LABELS if 0 <= t < 255) == list(range(19))


def test_palettes_match_reference_files(shared_fixtures):
    sio = pytest.importorskip("scipy.io")
    ds_dir = os.path.join(shared_fixtures, "sbgan_lists", "SBGAN", "datasets")
    c150 = sio.loadmat(os.path.join(shared_fixtures, "ade20k_sceneparsing", "visualizationCode",
                                    "color150.mat"))["colors"]
    np.testing.assert_array_equal(get_palette("ade150")[1:], c150)
    indoor = sio.loadmat(os.path.join(ds_dir, "color_indoor.mat"))["colors"]
    np.testing.assert_array_equal(get_palette("ade_indoor95"), indoor)
    c35 = sio.loadmat(os.path.join(ds_dir, "cityscapes_color35.mat"))["colors"]
    np.testing.assert_array_equal(get_palette("cityscapes35"), c35)
    # the authors' 20-colour file departs from the official train-id colours at five indices (documented)
    c20 = sio.loadmat(os.path.join(ds_dir, "cityscapes_color20.mat"))["colors"].astype(np.uint8)
    differ = np.flatnonzero((get_palette("cityscapes20") != c20).any(1)).tolist()
    assert differ == [2, 3, 4, 8, 10]


def test_palette_resizing_and_fallback():
    np.testing.assert_array_equal(get_palette("cityscapes35", 20), get_palette("cityscapes35")[:20])
    big = get_palette("synthetic", 40)
    assert big.shape == (40, 3)
    np.testing.assert_array_equal(big[:11], get_palette("synthetic"))
    fb = fallback_palette(300)
    np.testing.assert_array_equal(fb, get_palette(None, 300))
    assert tuple(fb[0]) == (0, 0, 0)
    assert len({tuple(c) for c in fb.tolist()}) == 300
    with pytest.raises(ValueError, match="unknown palette name 'nope'"):
        get_palette("nope")
    with pytest.raises(ValueError, match="num_classes"):
        get_palette(None)
    with pytest.raises(ValueError, match="num_classes"):
        get_palette("ade150", 0)


def test_colorize_numpy_and_torch():
    pal = get_palette("cityscapes20")
    lab = np.array([[0, 1], [10, 19]], dtype=np.int64)
    out = colorize(lab, pal)
    assert out.shape == (3, 2, 2) and out.dtype == np.uint8
    assert tuple(out[:, 0, 0]) == (128, 64, 128) and tuple(out[:, 1, 0]) == (70, 130, 180)
    tout = colorize(torch.from_numpy(np.stack([lab, lab[::-1].copy()])), pal)
    assert isinstance(tout, torch.Tensor) and tout.shape == (2, 3, 2, 2) and tout.dtype == torch.uint8
    np.testing.assert_array_equal(tout[0].numpy(), out)
    with pytest.raises(ValueError, match="label value 20 is outside"):
        colorize(np.array([[0, 20]]), pal)
    with pytest.raises(ValueError, match="label value -1"):
        colorize(torch.tensor([[-1, 0]]), pal)
    dc = colorize(np.array([[255, 1]]), pal, dontcare=255, dontcare_color=(1, 2, 3))
    assert tuple(dc[:, 0, 0]) == (1, 2, 3) and tuple(dc[:, 0, 1]) == (244, 35, 232)
    with pytest.raises(TypeError, match="integer"):
        colorize(np.zeros((2, 2), np.float32), pal)


# ---------------------------------------------------------------------------------------------------------------
# grids
# ---------------------------------------------------------------------------------------------------------------
def test_save_pairs_grid(tmp_path):
    ds = SyntheticScenes(5, height=16, width=32, seed=1)
    items = [ds[i] for i in range(5)]
    labels = torch.stack([it["label"] for it in items])
    images = image_to_float(torch.stack([it["image"] for it in items]))
    path = tmp_path / "out" / "grid.png"
    # at the samples' own size, no legend (the enlarged file with its legend: tests/test_grids.py)
    assert save_pairs_grid(labels, images, ds.palette, path, ncol=2, min_tile_width=1, legend=False) == str(path)
    assert os.listdir(tmp_path / "out") == ["grid.png"]  # no temporary file left behind
    grid = np.array(Image.open(path))
    p = 2
    cell_w = 32 * 2 + p
    assert grid.shape == (3 * (16 + p) + p, 2 * (cell_w + p) + p, 3)
    np.testing.assert_array_equal(grid[p:p + 16, p:p + 32], colorize(labels[0].numpy(), ds.palette).transpose(1, 2, 0))
    np.testing.assert_array_equal(grid[p:p + 16, p + 32 + p:p + 64 + p], items[0]["image"].permute(1, 2, 0).numpy())
    second = p + cell_w + p
    np.testing.assert_array_equal(grid[p:p + 16, second + 34:second + 66], items[1]["image"].permute(1, 2, 0).numpy())
    # uint8 images give the same grid; the default ncol gives a roughly square picture
    np.testing.assert_array_equal(make_grid_array(labels, torch.stack([it["image"] for it in items]), ds.palette,
                                                  ncol=2), grid)
    square = make_grid_array(labels, images, ds.palette)
    assert 0.4 < square.shape[0] / square.shape[1] < 2.5


def test_grid_variants(tmp_path):
    labels = torch.randint(0, 11, (3, 8, 8))
    images = torch.rand(3, 3, 16, 16) * 2 - 1
    only_labels = make_grid_array(labels, None, get_palette("synthetic"), ncol=3, padding=1)
    assert only_labels.shape == (10, 28, 3) and only_labels.dtype == np.uint8
    only_images = make_grid_array(None, images, ncol=1, padding=0)
    assert only_images.shape == (48, 16, 3)
    mixed = make_grid_array(labels, images, get_palette("synthetic"), ncol=3, padding=0)
    assert mixed.shape == (16, 3 * 32, 3)  # labels upsampled (nearest) to the image size
    with pytest.raises(ValueError, match="palette"):
        make_grid_array(labels, images)
    with pytest.raises(ValueError, match="2 label maps but 3 images"):
        make_grid_array(labels[:2], images, get_palette("synthetic"))
    with pytest.raises(ValueError, match="outside"):
        make_grid_array(labels, images, get_palette("synthetic", 4))
    one = save_image(images[0], tmp_path / "one.png")
    assert np.array(Image.open(one)).shape == (16, 16, 3)
    np.testing.assert_array_equal(np.array(Image.open(one)), float_to_uint8(images[0]).permute(1, 2, 0).numpy())
    many = save_image(images, tmp_path / "many.png", ncol=3)
    assert np.array(Image.open(many)).shape == (20, 56, 3)
    hwc = save_image(only_labels, tmp_path / "hwc.png")
    np.testing.assert_array_equal(np.array(Image.open(hwc)), only_labels)
    with pytest.raises(ValueError, match=r"\.png, \.jpg"):
        save_image(images[0], tmp_path / "x.bmp")


# ---------------------------------------------------------------------------------------------------------------
# real sample files (skipped when ../shared/fixtures is absent)
# ---------------------------------------------------------------------------------------------------------------
def test_real_cityscapes_layout(shared_fixtures):
    root = os.path.join(shared_fixtures, "mmsegmentation", "pseudo_cityscapes_dataset")
    ds = PairedFolderDataset(os.path.join(root, "leftImg8bit", "val"), os.path.join(root, "gtFine", "val"), 35,
                             height=64, width=128, image_suffix="_leftImg8bit",
                             label_suffix="_gtFine_labelIds")
    assert len(ds) == 1 and ds.label_paths[0].endswith("_gtFine_labelIds.png")
    item = ds[0]
    assert item["image"].shape == (3, 64, 128) and item["label"].shape == (64, 128)
    road = item["label"] == 7
    assert float(road[-16:].float().mean()) > 0.3  # the bottom of a street scene is mostly road
    with pytest.raises(DataError, match="labelTrainIds.png has values outside"):
        PairedFolderDataset(os.path.join(root, "leftImg8bit", "val"), os.path.join(root, "gtFine", "val"), 19,
                            height=None, width=None, image_suffix="_leftImg8bit",
                            label_suffix="_gtFine_labelTrainIds")[0]
    train = PairedFolderDataset(os.path.join(root, "leftImg8bit", "val"), os.path.join(root, "gtFine", "val"), 19,
                                height=None, width=None, image_suffix="_leftImg8bit",
                                label_suffix="_gtFine_labelTrainIds", dontcare=255)
    grid = make_grid_array(train[0]["label"][None], train[0]["image"][None], get_palette("cityscapes20"),
                           dontcare=255)
    assert grid.dtype == np.uint8 and grid.ndim == 3


def test_real_ade_and_palette_pngs(shared_fixtures):
    root = os.path.join(shared_fixtures, "ade20k_sceneparsing", "ADEChallengeData2016")
    ds = PairedFolderDataset(os.path.join(root, "images", "validation"),
                             os.path.join(root, "annotations", "validation"), 151, height=32, width=32)
    ds.validate()
    assert len(ds) == 3 and ds[2]["image"].shape == (3, 32, 32)
    colorize(ds[0]["label"], get_palette("ade150"))
    with pytest.raises(DataError, match="ADE_val_00000001.png has values outside"):
        PairedFolderDataset(os.path.join(root, "images", "validation"),
                            os.path.join(root, "annotations", "validation"), 10, height=None, width=None)[0]
    pseudo = os.path.join(shared_fixtures, "mmsegmentation", "pseudo_dataset")
    ds = PairedFolderDataset(os.path.join(pseudo, "imgs"), os.path.join(pseudo, "gts"), 4, height=None,
                             width=None, image_suffix="_img", label_suffix="_gt")
    ds.validate()
    assert len(ds) == 5 and int(ds[0]["label"].max()) < 4
