"""Official-layout datasets (Cityscapes, ADE20K, ADE-Indoor), crops, label-only loading, cache, loaders, bad data."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from real_lookalike import make_ade20k, make_ade_indoor, make_cityscapes
from sbgan_fast.data.cache import ResidentLoader, build_cache
from sbgan_fast.data.datasets import DataError
from sbgan_fast.data.layouts import ade20k, ade_indoor, cityscapes, read_split_list
from sbgan_fast.data.loaders import EpochTaggedBatches, build_loader
from sbgan_fast.data.real import crop_offset
from sbgan_fast.data.values import CITYSCAPES_IDS_LUT, read_class_map


def _raw(path):
    return np.array(Image.open(path))


def _nearest(arr, h, w):
    return np.array(Image.fromarray(arr).resize((w, h), Image.NEAREST))


# ------------------------------------------------------------------------------------------------ Cityscapes
def test_cityscapes_label_ids_and_train_ids(tmp_path):
    root = make_cityscapes(tmp_path / "cs", n=4, h=32, w=64)
    ds = cityscapes(root, split="train", label_kind="labelIds", height=16, width=32)
    assert len(ds) == 4 and ds.num_classes == 35 and ds.dontcare is None
    it = ds[1]
    assert it["image"].dtype == torch.uint8 and it["image"].shape == (3, 16, 32)
    assert it["label"].dtype == torch.int64 and it["label"].shape == (16, 32)
    raw = _raw(ds.label_paths[1])
    expect = _nearest(CITYSCAPES_IDS_LUT[raw].astype(np.uint8), 16, 32)
    assert np.array_equal(it["label"].numpy(), expect)
    assert (raw == 255).any() and it["label"].max() <= 34 and (it["label"] == 34).any()
    # image: bilinear resize of the file, no flip (the trainer flips)
    img = np.asarray(Image.open(ds.image_paths[1]).convert("RGB").resize((32, 16), Image.BILINEAR))
    assert np.array_equal(it["image"].permute(1, 2, 0).numpy(), img)

    tr = cityscapes(root, split="train", label_kind="labelTrainIds", height=None, width=None)
    assert tr.num_classes == 20 and tr.dontcare == 255
    vals = set(torch.cat([tr[i]["label"].flatten() for i in range(len(tr))]).unique().tolist())
    assert vals <= {0, 1, 13, 255} and 255 in vals


def test_cityscapes_extra_images_with_list(tmp_path):
    root = make_cityscapes(tmp_path / "cs", n=2)
    extra_img, extra_lab = tmp_path / "extra_img" / "erlangen", tmp_path / "extra_lab" / "erlangen"
    extra_img.mkdir(parents=True)
    extra_lab.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((32, 64, 3), 40 * i, np.uint8)).save(extra_img / f"erlangen_{i:06d}_000000_leftImg8bit.png")
        Image.fromarray(np.full((32, 64), i, np.uint8), mode="L").save(
            extra_lab / f"erlangen_{i:06d}_000000_gtFine_labelTrainIds.png")
    lst = tmp_path / "extra.txt"
    lst.write_text("erlangen/erlangen_000000_000000_leftImg8bit.png\nerlangen/erlangen_000002_000000_leftImg8bit.png 1\n")
    ds = cityscapes(root, label_kind="labelTrainIds", height=16, width=32, extra_image_dir=str(tmp_path / "extra_img"),
                    extra_label_dir=str(tmp_path / "extra_lab"), extra_list=str(lst))
    assert len(ds) == 4
    assert ds[3]["label"].unique().tolist() == [2]
    with pytest.raises(ValueError, match="extra_label_dir"):
        cityscapes(root, label_kind="labelTrainIds", height=16, width=32, extra_list=str(lst))
    lst.write_text("erlangen/erlangen_000009_000000_leftImg8bit.png\n")
    with pytest.raises(DataError, match="erlangen_000009"):
        cityscapes(root, label_kind="labelTrainIds", height=16, width=32, extra_image_dir=str(tmp_path / "extra_img"),
                   extra_label_dir=str(tmp_path / "extra_lab"), extra_list=str(lst))


# ------------------------------------------------------------------------------------------------ ADE
def test_ade20k_long_edge_crop_deterministic(tmp_path):
    root = make_ade20k(tmp_path, sizes=((40, 60), (50, 30), (36, 36)))
    ds = ade20k(root, split="train", height=16, width=16, seed=3)
    assert ds.num_classes == 151 and ds.wants_epoch
    for i, (h, w) in enumerate(((40, 60), (50, 30), (36, 36))):
        t, l, ch, cw = ds.crop_window(i, 5, h, w)
        s = min(h, w)
        assert (ch, cw) == (s, s)
        off = crop_offset(3, i, 5, max(h, w) - s)
        assert (t, l) == ((off, 0) if h > w else (0, off)) and 0 <= off < max(1, max(h, w) - s)
        it = ds[(i, 5)]
        raw = _raw(ds.label_paths[i])
        assert np.array_equal(it["label"].numpy(), _nearest(raw[t:t + ch, l:l + cw], 16, 16))
        img = Image.open(ds.image_paths[i]).convert("RGB").crop((l, t, l + cw, t + ch)).resize((16, 16), Image.BILINEAR)
        assert np.array_equal(it["image"].permute(1, 2, 0).numpy(), np.asarray(img))
        assert torch.equal(ds[(i, 5)]["label"], it["label"])        # same (seed, index, epoch): same crop
    offs = {ds.crop_window(0, e, 40, 60)[1] for e in range(12)}
    assert len(offs) > 3                                           # epochs crop differently
    ds.set_epoch(5)
    assert torch.equal(ds[0]["label"], ds[(0, 5)]["label"])


def test_label_view_never_opens_images(tmp_path):
    root = make_ade20k(tmp_path)
    ds = ade20k(root, height=8, width=8)
    want = [ds[(i, 0)]["label"] for i in range(len(ds))]
    for p in ds.image_paths:
        with open(p, "wb") as f:
            f.write(b"not an image")
    lv = ds.label_view()
    for i in range(len(ds)):
        it = lv[(i, 0)]
        assert "image" not in it and torch.equal(it["label"], want[i])
    with pytest.raises(DataError, match="cannot read image file"):
        ds[0]


def test_ade_indoor_archive_lists_and_mapping(tmp_path):
    arch = make_ade_indoor(tmp_path / "arch", n=3)
    ds = ade_indoor(arch, height=8, width=8)
    assert len(ds) == 3 and ds.num_classes == 95
    assert set(torch.cat([ds[(i, 0)]["label"].flatten() for i in range(3)]).tolist()) <= {0, 3, 40, 94}
    lists = tmp_path / "lists"
    lists.mkdir()
    for kind, ext in (("im", "jpg"), ("lbl", "png")):
        (lists / f"ade_indoor_{kind}_info_train.txt").write_text(
            f"datasets/ADE15c_indoor_{kind}/kitchen/ADE_train_00000002.{ext} 4\n"
            f"datasets/ADE15c_indoor_{kind}/bathroom/ADE_train_00000001.{ext} 0\n")
    assert read_split_list(str(lists / "ade_indoor_im_info_train.txt"))[0] == ("kitchen", "ADE_train_00000002")
    sub = ade_indoor(arch, height=8, width=8, list_dir=str(lists))
    assert len(sub) == 2 and all("ADE_train_0000000" in p for p in sub.label_paths)

    # ADE20K challenge layout + a class-mapping file
    chal = make_ade20k(tmp_path / "chal", sizes=((20, 30), (30, 20)))
    for kind, ext in (("im", "jpg"), ("lbl", "png")):
        (lists / f"ade_indoor_{kind}_info_train.txt").write_text(
            f"datasets/ADE15c_indoor_{kind}/kitchen/ADE_train_00000002.{ext} 4\n")
    mp = tmp_path / "map.txt"
    mp.write_text("# ade150 -> indoor\n1 7\n5 9\n17 11\n150 94\n")
    table = read_class_map(str(mp))
    assert table[1] == 7 and table[150] == 94 and table[2] == 0
    m = ade_indoor(str(chal), height=None, width=None, crop="none", list_dir=str(lists), class_map=str(mp))
    assert len(m) == 1
    raw = _raw(m.label_paths[0])
    assert np.array_equal(m[0]["label"].numpy(), table[raw])
    with pytest.raises(DataError, match="class-mapping file"):
        ade_indoor(str(chal), height=8, width=8, list_dir=str(lists))
    (tmp_path / "badmap.txt").write_text("1 95\n")
    with pytest.raises(DataError, match="badmap.txt line 1"):
        read_class_map(str(tmp_path / "badmap.txt"))


# ------------------------------------------------------------------------------------------------ real samples
def test_shared_fixture_samples(shared_fixtures):
    cs = cityscapes(os.path.join(shared_fixtures, "mmsegmentation", "pseudo_cityscapes_dataset"), split="val",
                    label_kind="labelIds", height=64, width=128)
    it = cs[0]
    assert it["image"].shape == (3, 64, 128) and int(it["label"].max()) <= 34
    assert cs.scan(decode=True) == []
    tr = cityscapes(os.path.join(shared_fixtures, "mmsegmentation", "pseudo_cityscapes_dataset"), split="val",
                    label_kind="labelTrainIds", height=64, width=128)
    assert set(tr[0]["label"].unique().tolist()) <= set(range(19)) | {255}
    ade = ade20k(os.path.join(shared_fixtures, "ade20k_sceneparsing"), split="validation", height=32, width=32)
    assert len(ade) == 3 and ade.scan(decode=True) == []
    for i in range(3):
        assert ade[(i, 0)]["image"].shape == (3, 32, 32) and int(ade[(i, 0)]["label"].max()) <= 150


# ------------------------------------------------------------------------------------------------ cache
def test_cache_exact_without_crop_and_resident_loader(tmp_path):
    root = make_cityscapes(tmp_path / "cs", n=3, h=32, w=64)
    ds = cityscapes(root, height=16, width=32)
    cached = build_cache(ds, str(tmp_path / "cache"), log=lambda m: None)
    assert len(cached) == 3 and cached.nbytes == 3 * (16 * 32 * 3 + 16 * 32)
    for i in range(3):
        a, b = ds[i], cached[i]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])
    again = build_cache(ds, str(tmp_path / "cache"), log=lambda m: pytest.fail("rebuilt a valid cache"))
    assert again.folder == cached.folder
    cached.to_device("cpu")
    batches = [[2, 0], [1]]
    out = list(ResidentLoader(cached, batches))
    assert out[0]["image"].shape == (2, 3, 16, 32) and torch.equal(out[0]["label"][0], ds[2]["label"])
    assert "image" not in cached.label_view()[0]


def test_cache_with_crop(tmp_path):
    root = make_ade20k(tmp_path, sizes=((40, 60), (50, 30)))
    ds = ade20k(root, height=20, width=20, seed=1)
    cached = build_cache(ds, str(tmp_path / "c"), log=lambda m: None)
    h, w = int(cached.index[0, 2]), int(cached.index[0, 3])
    assert (h, w) == (20, 30)                      # short side at the output size
    a, b = cached[(0, 2)], cached[(0, 2)]
    assert a["image"].shape == (3, 20, 20) and torch.equal(a["label"], b["label"])
    ref = ds[(0, 2)]["image"].float()
    assert (a["image"].float() - ref).abs().mean() < 12   # resize-then-crop vs crop-then-resize, same region


# ------------------------------------------------------------------------------------------------ loaders
class _Stream:
    def __init__(self, n):
        self.n = n

    def indices(self, offset, count):
        return [(offset + k) % self.n for k in range(count)]


def test_torch_loader_contract_and_epoch_tags(tmp_path):
    root = make_ade20k(tmp_path)
    ds = ade20k(root, height=8, width=8)
    batches = EpochTaggedBatches(_Stream(3), lambda s: (2 * s, 2), 0, 3)
    assert list(batches)[1] == [(2, 0), (0, 1)]
    loader = build_loader(ds, batches, loader="auto", device="cpu")
    out = list(loader)
    assert len(out) == 3
    b = out[1]
    assert b["image"].dtype == torch.uint8 and b["image"].shape == (2, 3, 8, 8)
    assert b["label"].dtype == torch.int64 and b["index"].tolist() == [2, 0] and b["skipped_files"] == 0
    assert torch.equal(b["label"][1], ds[(0, 1)]["label"])
    lab_only = list(build_loader(ds, batches, loader="torch", device="cpu", need_image=False))
    assert "image" not in lab_only[1] and torch.equal(lab_only[1]["label"], b["label"])
    with pytest.raises(ValueError, match="data.loader"):
        build_loader(ds, batches, loader="fast")


def test_factory_and_train_loader(tmp_path):
    from sbgan_fast.data.factory import build_dataset
    from sbgan_fast.config import build_config
    from sbgan_fast.train.data_order import SampleStream, make_loader
    root = make_cityscapes(tmp_path / "cs", n=4, h=32, w=64)
    cfg = build_config("demo", None, ["data.dataset=cityscapes", f"data.root={root}", "data.num_classes=35",
                                      f"data.cache={tmp_path / 'cache'}", "data.loader=torch"])
    ds, info = build_dataset(cfg)
    assert info == {"num_classes": 35} and len(ds) == 4
    loader = make_loader(ds, SampleStream(4, 0), lambda s: (s * 2, 2), 0, 2, 0, 0, need_image=True)
    b = next(iter(loader))
    assert b["image"].shape == (2, 3, 32, 64) and b["label"].shape == (2, 32, 64)
    cfg.data.num_classes = 20
    cfg.data.cache = None
    with pytest.raises(ValueError, match="dontcare"):   # labelTrainIds with 20 channels needs dontcare=255
        build_dataset(cfg)
    cfg.data.dontcare = 255
    ds20, info = build_dataset(cfg)
    assert info == {"num_classes": 20}


# ------------------------------------------------------------------------------------------------ bad data
def _corrupt(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 3])


def test_bad_data_errors_name_the_file(tmp_path):
    root = make_cityscapes(tmp_path / "cs", n=4, h=32, w=64)
    ds = cityscapes(root, height=16, width=32)
    # truncated image
    _corrupt(ds.image_paths[0])
    with pytest.raises(DataError) as e:
        ds[0]
    assert e.value.path == ds.image_paths[0] and "truncated" in str(e.value)
    # label value out of range
    Image.fromarray(np.full((32, 64), 40, np.uint8), mode="L").save(ds.label_paths[1])
    with pytest.raises(DataError, match="values outside") as e:
        ds[1]
    assert e.value.path == ds.label_paths[1]
    # size mismatch
    Image.fromarray(np.zeros((30, 64), np.uint8), mode="L").save(ds.label_paths[2])
    with pytest.raises(DataError, match="30") as e:
        ds[2]
    assert e.value.path == ds.image_paths[2]
    problems = ds.scan(decode=True)
    assert sorted(p.index for p in problems) == [0, 1, 2]
    assert sorted(p.index for p in ds.scan(decode=False)) == [2]      # headers: only the size mismatch
    # missing pair
    os.remove(ds.label_paths[3])
    with pytest.raises(DataError, match="without a label map") as e:
        cityscapes(root, height=16, width=32)
    assert "aachen" in e.value.path or "bochum" in e.value.path
    # empty folder and wrong layout
    (tmp_path / "empty" / "leftImg8bit" / "train").mkdir(parents=True)
    (tmp_path / "empty" / "gtFine" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="no images"):
        cityscapes(str(tmp_path / "empty"), height=16, width=32)
    with pytest.raises(DataError, match="wrong dataset layout"):
        cityscapes(str(tmp_path), height=16, width=32)
    with pytest.raises(DataError, match="wrong dataset layout"):
        ade20k(str(tmp_path), height=16, width=16)


def test_skip_bad_files_counts(tmp_path):
    from sbgan_fast.data.factory import build_dataset
    from sbgan_fast.config import build_config
    root = make_cityscapes(tmp_path / "cs", n=5, h=32, w=64)
    base = cityscapes(root, height=16, width=32)
    _corrupt(base.image_paths[1])                                                  # found while loading
    Image.fromarray(np.zeros((30, 64), np.uint8), mode="L").save(base.label_paths[3])  # found up front
    os.remove(base.image_paths[4])                                                # missing pair
    over = ["data.dataset=cityscapes", f"data.root={root}", "data.num_classes=35"]
    cfg = build_config("demo", None, over)
    with pytest.raises(DataError, match="missing pairs"):
        build_dataset(cfg)
    cfg.data.skip_bad_files = True
    ds, _ = build_dataset(cfg)
    assert len(ds) == 3 and len(ds.skipped) == 2
    batches = [[0, 1, 2], [1]]
    out = list(build_loader(ds, batches, loader="torch", device="cpu"))
    assert out[0]["skipped"].tolist() == [0, 1, 0] and out[0]["index"].tolist() == [0, 2, 2]
    assert out[-1]["skipped_files"] == 3


@pytest.mark.slow
def test_training_counts_skipped_files_in_stats(tmp_path):
    import json

    from sbgan_fast.config import build_config
    from sbgan_fast.train.trainer import train
    root = make_cityscapes(tmp_path / "cs", n=5, h=32, w=64)
    _corrupt(cityscapes(root, height=32, width=64).image_paths[2])
    over = ["data.dataset=cityscapes", f"data.root={root}", "data.num_classes=35", "data.skip_bad_files=true",
            "data.height=32", "data.width=64", "spade.crop_size=64", "spade.aspect_ratio=2", "seg.max_dim=16",
            "seg.aspect_ratio=2", "e2e.seg_half_res=true", "spade.batch_size=5", "stages=spade", "log_every=1",
            "sample_every=0", "progress=false", "tensorboard=false"]
    train(build_config("demo", None, over, out=str(tmp_path / "run"), max_steps=2))
    recs = [json.loads(line) for line in open(tmp_path / "run" / "stats.jsonl")]
    assert recs and all(r.get("skipped_files") == 1 for r in recs), [r.get("skipped_files") for r in recs]
