"""`sample --labels`: label files read as training reads the run's dataset (its file pattern, value table, crop
and resize), other and bad files skipped and reported; label files written in the dataset's values."""
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from real_lookalike import make_ade20k, make_ade_indoor, make_cityscapes
from sbgan_fast.cli import main as cli_main
from sbgan_fast.data.datasets import DataError
from sbgan_fast.data.factory import build_dataset, build_label_dataset
from sbgan_fast.data.palettes import get_palette
from sbgan_fast.models import load_generators
from tiny import tiny_cfg

CS = ["data.dataset=cityscapes", "data.height=32", "data.width=64", "spade.crop_size=64", "spade.aspect_ratio=2",
      "seg.max_dim=16", "seg.aspect_ratio=2", "e2e.seg_half_res=true", "stages=spade"]
FRANKFURT = ("mmsegmentation", "pseudo_cityscapes_dataset", "gtFine", "val", "frankfurt")
STEM = "frankfurt_000000_000294_gtFine"


def _run(cfg):
    """A run folder with a spade checkpoint of the config's (untrained) G_spd."""
    from sbgan_fast.train.trainer import Trainer
    t = Trainer(cfg)
    try:
        t.trained.update(("G_spd", "D_spd"))
        t.save("spade", 1, done=True, which="final")
    finally:
        t.close()
    return cfg.out


def _nearest(arr, h, w):
    return np.asarray(Image.fromarray(arr).resize((w, h), Image.NEAREST))


def _image_of(run, ids):
    """uint8 (H, W, 3) of G_spd on channel indices (H, W), as `sample` writes it."""
    _, _, nets = load_generators(run, torch.device("cpu"), need_seg=False)
    with torch.no_grad():
        img = nets["G_spd"](torch.as_tensor(ids, dtype=torch.int64)[None])[0]
    return ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()


@pytest.fixture(scope="module")
def ids_run(module_tmp):
    """A run on Cityscapes label ids (35 channels) with its dataset root: (run folder, root)."""
    tmp = module_tmp
    root = make_cityscapes(tmp / "cs", n=3)
    return _run(tiny_cfg(tmp / "run", *CS, f"data.root={root}", "data.num_classes=35")), root


@pytest.fixture
def frankfurt(shared_fixtures, tmp_path):
    """A copy of the real gtFine/val/frankfurt folder (labelIds, labelTrainIds and 16-bit instanceIds PNGs), with
    a license-plate patch (label id 255) added to the labelIds map."""
    d = tmp_path / "frankfurt"
    shutil.copytree(os.path.join(shared_fixtures, *FRANKFURT), d)
    ids = np.array(Image.open(d / f"{STEM}_labelIds.png"))
    ids[100:112, 60:80] = 255
    Image.fromarray(ids, mode="L").save(d / f"{STEM}_labelIds.png")
    return d


@pytest.mark.slow
def test_cityscapes_label_ids_folder(tmp_path, frankfurt, ids_run, capsys):
    run = ids_run[0]
    out = tmp_path / "s"
    assert cli_main(["sample", "--checkpoint", run, "--labels", str(frankfurt), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "2 file(s)" in err and "*_labelIds.png" in err and "instanceIds" in err
    assert sorted(os.listdir(out)) == sorted(["grid.png"] + [f"{STEM}_labelIds_{x}.png"
                                                               for x in ("label", "label_color", "image")])
    raw = _nearest(np.array(Image.open(frankfurt / f"{STEM}_labelIds.png")), 32, 64)
    assert (raw == 255).any()
    written = np.asarray(Image.open(out / f"{STEM}_labelIds_label.png"))
    assert np.array_equal(written, raw)                    # the dataset's own values: 255 stays 255
    ids = np.where(raw == 255, 34, raw)                    # ... and is channel 34 for the networks
    col = np.asarray(Image.open(out / f"{STEM}_labelIds_label_color.png"))
    assert np.array_equal(col, get_palette("cityscapes35")[ids])
    assert np.array_equal(np.asarray(Image.open(out / f"{STEM}_labelIds_image.png")), _image_of(run, ids))


@pytest.mark.slow
def test_cityscapes_train_ids_folder(tmp_path, frankfurt):
    run = _run(tiny_cfg(tmp_path / "run", *CS, f"data.root={make_cityscapes(tmp_path / 'cs', n=2)}",
                        "data.num_classes=20", "data.dontcare=255"))
    out = tmp_path / "s"
    assert cli_main(["sample", "--checkpoint", run, "--labels", str(frankfurt), "--out", str(out)]) == 0
    assert len(os.listdir(out)) == 4
    raw = _nearest(np.array(Image.open(frankfurt / f"{STEM}_labelTrainIds.png")), 32, 64)
    assert (raw == 255).any()
    assert np.array_equal(np.asarray(Image.open(out / f"{STEM}_labelTrainIds_label.png")), raw)
    col = np.asarray(Image.open(out / f"{STEM}_labelTrainIds_label_color.png"))
    assert np.array_equal(col, get_palette("cityscapes20")[np.where(raw == 255, 19, raw)])


def _indoor_from_challenge(tmp_path):
    """ADE-Indoor from the ADE20K challenge layout (val split) with a class-mapping file and split lists."""
    root = make_ade20k(tmp_path / "ade", split="validation", sizes=((40, 60), (50, 30), (36, 36)))
    lists = tmp_path / "lists"
    lists.mkdir()
    for kind, ext in (("im", "jpg"), ("lbl", "png")):
        (lists / f"ade_indoor_{kind}_info_val.txt").write_text("".join(
            f"datasets/x/kitchen/ADE_val_{i:08d}.{ext} 4\n" for i in (1, 2, 3)))
    (tmp_path / "map.txt").write_text("1 7\n5 9\n17 11\n150 94\n")
    return ["data.dataset=ade_indoor", f"data.root={root}", "data.num_classes=95", "data.split=val",
            f"data.list_dir={lists}", f"data.class_map={tmp_path / 'map.txt'}", "stages=spade"]


@pytest.mark.slow
def test_ade_indoor_class_map(tmp_path):
    over = _indoor_from_challenge(tmp_path)
    cfg = tiny_cfg(tmp_path / "run", *over)
    run = _run(cfg)
    ann = tmp_path / "ade" / "ADEChallengeData2016" / "annotations" / "validation"
    out = tmp_path / "s"
    assert cli_main(["sample", "--checkpoint", run, "--labels", str(ann), "--out", str(out)]) == 0
    train_ds, _ = build_dataset(cfg)
    for i in range(3):
        want = train_ds.label_view()[(i, 0)]["label"].numpy()     # what training reads at epoch 0
        got = np.asarray(Image.open(out / f"ADE_val_{i + 1:08d}_label.png"))
        assert np.array_equal(got, want)                          # indoor channels (the table is many-to-one)
        assert set(np.unique(got)) <= {0, 7, 9, 11, 94}
    raw = np.concatenate([np.array(Image.open(p)).ravel() for p in sorted(ann.iterdir())])
    assert raw.max() > 94                                         # ADE20K-150 values, not indoor ones


@pytest.mark.slow
def test_bad_and_missing_files_reported(tmp_path, ids_run, capsys):
    run, cs = ids_run
    lab = tmp_path / "maps"
    shutil.copytree(os.path.join(cs, "gtFine", "train"), lab)
    bad = lab / "aachen" / "aachen_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.full((32, 64), 40, np.uint8), mode="L").save(bad)     # 40: not a Cityscapes label id
    out = tmp_path / "s"
    assert cli_main(["sample", "--checkpoint", run, "--labels", str(lab), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert str(bad) in err and "40" in err and "skipped 1 label file" in err
    names = sorted(f for f in os.listdir(out) if f.endswith("_image.png"))
    assert names == ["aachen_aachen_000002_000019_gtFine_labelIds_image.png",
                     "bochum_bochum_000001_000019_gtFine_labelIds_image.png"]
    # nothing matches: the pattern is named; --label-pattern reads other files
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.fromarray(np.full((32, 64), 7, np.uint8), mode="L").save(flat / "mine.png")
    cfg = tiny_cfg(tmp_path, *CS, f"data.root={cs}", "data.num_classes=35")
    with pytest.raises(DataError, match=r"\*_labelIds\.png.*--label-pattern") as e:
        build_label_dataset(cfg, 35, str(flat))
    assert e.value.path == str(flat)
    assert cli_main(["sample", "--checkpoint", run, "--labels", str(flat), "--label-pattern", "*.png",
                     "--out", str(tmp_path / "s2")]) == 0
    assert (tmp_path / "s2" / "mine_image.png").is_file()


def test_label_decoding_matches_training(tmp_path):
    """build_label_dataset on a dataset's own label folder reads what training reads (every dataset kind)."""
    cases = []
    cs = make_cityscapes(tmp_path / "cs", n=2)
    for k, extra in ((35, []), (20, ["data.dontcare=255"])):
        cases.append((tiny_cfg(tmp_path, *CS, f"data.root={cs}", f"data.num_classes={k}", *extra),
                      os.path.join(cs, "gtFine", "train")))
    ade = make_ade20k(tmp_path / "ade")
    sq = ["data.height=32", "data.width=32"]
    cases.append((tiny_cfg(tmp_path, "data.dataset=ade20k", f"data.root={ade}", *sq),
                  os.path.join(ade, "ADEChallengeData2016", "annotations", "training")))
    arch = make_ade_indoor(tmp_path / "arch")
    cases.append((tiny_cfg(tmp_path, "data.dataset=ade_indoor", f"data.root={arch}", *sq), arch))
    cases.append((tiny_cfg(tmp_path, *_indoor_from_challenge(tmp_path / "ind")),
                  os.path.join(tmp_path, "ind", "ade", "ADEChallengeData2016", "annotations", "validation")))
    fold = tmp_path / "fold"
    (fold / "img").mkdir(parents=True)
    (fold / "lab").mkdir()
    for i in range(2):
        Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(fold / "img" / f"{i}.png")
        Image.fromarray(np.array([[0, 1, 255]] * 10 * 20, np.uint8).reshape(20, 30), mode="L").save(
            fold / "lab" / f"{i}_gt.png")
    cases.append((tiny_cfg(tmp_path, "data.dataset=folder", f"data.image_dir={fold / 'img'}",
                           f"data.label_dir={fold / 'lab'}", "data.label_suffix=_gt", "data.num_classes=3",
                           "data.dontcare=255", "data.crop=long_edge"), str(fold / "lab")))
    for cfg, folder in cases:
        train_ds, info = build_dataset(cfg)
        labels, _ = build_label_dataset(cfg, info["num_classes"], folder)
        assert len(labels) == len(train_ds), cfg.data.dataset
        for i in range(len(labels)):
            assert torch.equal(labels[(i, 0)]["label"], train_ds.label_view()[(i, 0)]["label"]), cfg.data.dataset
