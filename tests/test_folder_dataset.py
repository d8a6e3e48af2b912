"""Folder datasets (data.dataset=folder) as the trainer, check-data and eval read them: bad files skipped and
counted, a header scan before training, every missing pair reported, the long-edge crop, cache and DALI."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from real_lookalike import label_blocks, smooth_image
from sbgan_fast.cli import main as cli_main
from sbgan_fast.data.datasets import DataError
from sbgan_fast.data.factory import build_dataset
from sbgan_fast.data.loaders import EpochTaggedBatches, build_loader
from sbgan_fast.data.real import crop_offset
from sbgan_fast.config import build_config
from test_dali import DALI_OK, DALI_WHY, _parity


def make_folder(root, n=5, h=32, w=32, k=5, ext=".jpg", sizes=None):
    """root/img/NNN<ext> + root/lab/NNN.png (mode L, values 0..k-1); returns (image paths, label paths)."""
    os.makedirs(os.path.join(root, "img"), exist_ok=True)
    os.makedirs(os.path.join(root, "lab"), exist_ok=True)
    imgs, labs = [], []
    for i in range(n):
        hh, ww = sizes[i] if sizes else (h, w)
        ip, lp = os.path.join(root, "img", f"{i:03d}{ext}"), os.path.join(root, "lab", f"{i:03d}.png")
        Image.fromarray(smooth_image(hh, ww, i)).save(ip, **({"quality": 95} if ext == ".jpg" else {}))
        Image.fromarray(label_blocks(hh, ww, list(range(k)), i), mode="L").save(lp)
        imgs.append(ip)
        labs.append(lp)
    return imgs, labs


def size_keys(h, w):
    """Config keys of an h x w run (h a power of two, w a multiple of h and of 32)."""
    return [f"data.height={h}", f"data.width={w}", f"spade.crop_size={w}", f"spade.aspect_ratio={w // h}",
            f"seg.max_dim={h}", f"seg.aspect_ratio={w // h}", "e2e.seg_half_res=false"]


def folder_cfg(root, *extra, k=5, h=32, w=32):
    return build_config("demo", None, ["data.dataset=folder", f"data.image_dir={root}/img",
                                       f"data.label_dir={root}/lab", f"data.num_classes={k}", "data.loader=torch",
                                       *size_keys(h, w), *extra])


def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) * 3 // 4])


def test_folder_skip_bad_files_skips_and_counts(tmp_path):
    imgs, _ = make_folder(tmp_path)
    _truncate(imgs[1])                               # a truncated JPEG: its header reads, its data does not
    cfg = folder_cfg(tmp_path)
    ds, _ = build_dataset(cfg)                       # the header scan passes
    with pytest.raises(DataError, match="(?i)truncated") as e:
        ds[1]
    assert e.value.path == imgs[1]
    cfg.data.skip_bad_files = True
    ds, _ = build_dataset(cfg)
    out = list(build_loader(ds, [[0, 1, 2], [1]], loader="torch", device="cpu"))
    assert out[0]["index"].tolist() == [0, 2, 2] and out[0]["skipped"].tolist() == [0, 1, 0]
    assert out[-1]["skipped_files"] == 1 and ds.skipped == [imgs[1]]


def test_folder_header_scan_before_training(tmp_path):
    imgs, labs = make_folder(tmp_path)
    with open(imgs[0], "wb") as f:                   # unreadable header
        f.write(b"not a picture")
    Image.fromarray(np.zeros((16, 32), np.uint8), mode="L").save(labs[3])     # size mismatch
    cfg = folder_cfg(tmp_path)
    with pytest.raises(DataError, match="2 bad file") as e:
        build_dataset(cfg)
    assert imgs[0] in str(e.value) and imgs[3] in str(e.value) and e.value.path == imgs[0]
    cfg.data.skip_bad_files = True
    ds, _ = build_dataset(cfg)
    assert len(ds) == 3 and sorted(ds.skipped) == sorted([labs[0], labs[3]])


def test_check_data_folder_lists_every_missing_pair(tmp_path, capsys):
    imgs, labs = make_folder(tmp_path, n=6)
    os.remove(labs[1])
    os.remove(labs[4])
    os.remove(imgs[5])
    Image.fromarray(np.full((32, 32), 9, np.uint8), mode="L").save(labs[2])   # and a bad value
    args = ["check-data", "--preset", "demo", "data.dataset=folder", f"data.image_dir={tmp_path}/img",
            f"data.label_dir={tmp_path}/lab", "data.num_classes=5", *size_keys(32, 32)]
    assert cli_main(args) == 1
    out = capsys.readouterr().out
    bad = [line for line in out.splitlines() if line.startswith("BAD ")]
    assert len(bad) == 4, out
    for path, what in ((imgs[1], "no label map"), (imgs[4], "no label map"), (labs[5], "no image"),
                       (labs[2], "9")):
        assert any(path in b and what in b for b in bad), (path, what, out)
    assert "6 pair(s) checked, 4 problem(s)" in out


def test_folder_long_edge_crop(tmp_path, capsys):
    sizes = [(40, 60), (50, 30), (36, 36)]
    imgs, labs = make_folder(tmp_path, n=3, sizes=sizes)
    cfg = folder_cfg(tmp_path, "data.crop=long_edge", h=32, w=32)
    ds, _ = build_dataset(cfg)
    assert ds.wants_epoch
    seen = set()
    for epoch in (0, 1, 2):
        for i, (h, w) in enumerate(sizes):
            it = ds[(i, epoch)]
            s = min(h, w)
            off = crop_offset(cfg.seed, i, epoch, max(h, w) - s)
            box = (0, off, s, off + s) if h > w else (off, 0, off + s, s)
            img = Image.open(imgs[i]).convert("RGB").crop(box).resize((32, 32), Image.BILINEAR)
            lab = Image.open(labs[i]).crop(box).resize((32, 32), Image.NEAREST)
            assert torch.equal(it["image"], torch.from_numpy(np.asarray(img).transpose(2, 0, 1).copy()))
            assert torch.equal(it["label"], torch.from_numpy(np.asarray(lab).astype(np.int64)))
            if i == 0:
                seen.add(off)
    assert len(seen) > 1                              # the crop moves with the epoch
    # the trainer's loader passes (index, epoch): same items
    class Stream:
        n = 3

        def indices(self, offset, bs):
            return [(offset + j) % 3 for j in range(bs)]
    b = list(build_loader(ds, EpochTaggedBatches(Stream(), lambda s: (3 * s, 3), 0, 2), loader="torch"))
    assert torch.equal(b[1]["label"][0], ds[(0, 1)]["label"])
    # default: no crop (resized whatever the aspect, as before, and said); a crop mode that does not exist is named
    ds0, _ = build_dataset(folder_cfg(tmp_path, h=32, w=32))
    assert "2 of 3 pair(s) are not of the output aspect 32x32" in capsys.readouterr().err
    assert not ds0.wants_epoch
    lab = Image.open(labs[0]).resize((32, 32), Image.NEAREST)
    assert torch.equal(ds0[0]["label"], torch.from_numpy(np.asarray(lab).astype(np.int64)))
    with pytest.raises(ValueError, match="crop"):
        build_dataset(folder_cfg(tmp_path, "data.crop=centre"))


def test_folder_cache_and_label_view(tmp_path):
    make_folder(tmp_path, n=3, h=20, w=40)
    cfg = folder_cfg(tmp_path, f"data.cache={tmp_path / 'cache'}", h=32, w=64)
    cached, _ = build_dataset(cfg)
    cfg.data.cache = None
    plain, _ = build_dataset(cfg)
    for i in range(3):
        a, b = cached[i], plain[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    assert "image" not in plain.label_view()[0]


def test_folder_real_samples_and_dali(shared_fixtures):
    """The real mmsegmentation sample dataset (JPEG images, palette-mode PNG labels, stems `_img` / `_gt`):
    the torch and DALI (CPU pipeline) loaders agree with independent decodes."""
    root = os.path.join(shared_fixtures, "mmsegmentation", "pseudo_dataset")
    cfg = build_config("demo", None, ["data.dataset=folder", f"data.image_dir={root}/imgs",
                                      f"data.label_dir={root}/gts", "data.image_suffix=_img",
                                      "data.label_suffix=_gt", "data.num_classes=4", *size_keys(64, 128)])
    ds, _ = build_dataset(cfg)
    assert len(ds) == 5
    for i in range(5):
        lab = Image.open(os.path.join(root, "gts", f"{i:05d}_gt.png"))
        assert lab.mode == "P"
        want = np.asarray(lab.resize((128, 64), Image.NEAREST)).astype(np.int64)
        assert torch.equal(ds[i]["label"], torch.from_numpy(want))
        img = Image.open(os.path.join(root, "imgs", f"{i:05d}_img.jpg")).convert("RGB")
        img = np.asarray(img.resize((128, 64), Image.BILINEAR)).transpose(2, 0, 1)
        assert torch.equal(ds[i]["image"], torch.from_numpy(img.copy()))
    if not DALI_OK:
        pytest.skip(f"DALI unavailable: {DALI_WHY}")
    _parity(ds, [[0, 1, 2], [3, 4]])


def test_folder_eval_set_has_the_training_preprocessing(tmp_path):
    from sbgan_fast.metrics.evaluate import build_eval_dataset
    make_folder(tmp_path, n=2, sizes=[(40, 60), (50, 30)])
    cfg = folder_cfg(tmp_path, "data.crop=long_edge")
    train_ds, _ = build_dataset(cfg)
    val, desc = build_eval_dataset(cfg, 5, image_dir=f"{tmp_path}/img", label_dir=f"{tmp_path}/lab")
    for i in range(2):
        assert torch.equal(val[i]["image"], train_ds[(i, 0)]["image"])
        assert torch.equal(val[i]["label"], train_ds[(i, 0)]["label"])
    assert desc["crop"] == "long_edge" and desc["image_interp"] == "bilinear"


def test_folder_image_modes_dali_parity(tmp_path):
    """Folder images come in every mode (COCO has grayscale JPEGs): both loaders give the same RGB pictures."""
    if not DALI_OK:
        pytest.skip(f"DALI unavailable: {DALI_WHY}")
    os.makedirs(tmp_path / "img")
    os.makedirs(tmp_path / "lab")
    rgb = smooth_image(40, 60, 1)
    Image.fromarray(rgb).convert("L").save(tmp_path / "img" / "0.jpg", quality=95)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "img" / "1.jpg", quality=95)
    Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE).save(tmp_path / "img" / "2.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 60), 128, np.uint8)])).save(tmp_path / "img" / "3.png")
    Image.fromarray(rgb).convert("L").save(tmp_path / "img" / "4.png")
    for i in range(5):
        Image.fromarray(label_blocks(40, 60, [0, 1, 2], i), mode="L").save(tmp_path / "lab" / f"{i}.png")
    ds, _ = build_dataset(folder_cfg(tmp_path, k=3))
    _parity(ds, [[0, 1, 2, 3, 4]])
