"""The label-map (seg) stage never decodes photos: a bad photo cannot stop it. Empty folders name the file
pattern that was searched."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from real_lookalike import make_ade20k, make_ade_indoor, make_cityscapes
from sbgan_fast.data.datasets import DataError
from sbgan_fast.data.layouts import ade20k, ade_indoor, cityscapes
from sbgan_fast.train.trainer import Trainer, train
from tiny import tiny_cfg

CS = ["data.dataset=cityscapes", "data.num_classes=35", "data.height=32", "data.width=64", "spade.crop_size=64",
      "spade.aspect_ratio=2", "seg.max_dim=16", "seg.aspect_ratio=2", "e2e.seg_half_res=true"]


def _truncate(path):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


@pytest.mark.slow
def test_bad_photo_does_not_stop_the_seg_stage(tmp_path):
    root = make_cityscapes(tmp_path / "cs", n=4)
    ds = cityscapes(root, height=32, width=64)
    _truncate(ds.image_paths[0])                       # read by the sample-grid preview: a truncated photo
    cfg = tiny_cfg(tmp_path / "run1", *CS, f"data.root={root}", "stages=seg", "n_sample_grid=2")
    t = Trainer(cfg)
    t.close()
    assert torch.equal(t.preview_labels[0].cpu(), ds.label_view()[0]["label"])
    with open(ds.image_paths[2], "wb") as f:           # a photo whose header does not read
        f.write(b"not a picture")
    train(tiny_cfg(tmp_path / "run2", *CS, f"data.root={root}", "stages=seg", "n_sample_grid=2", max_steps=1))
    assert os.path.isfile(tmp_path / "run2" / "checkpoints" / "seg-latest.pt")
    # a stage that reads photos still finds the bad header before it starts
    with pytest.raises(DataError) as e:
        Trainer(tiny_cfg(tmp_path / "run3", *CS, f"data.root={root}", "stages=seg,spade"))
    assert e.value.path == ds.image_paths[2]


def test_empty_folders_name_the_pattern(tmp_path):
    for sub in ("leftImg8bit/train/aachen", "gtFine/train/aachen"):
        os.makedirs(tmp_path / "cs" / sub)
    with pytest.raises(DataError, match=r"no images \(\*_leftImg8bit\.png\) found"):
        cityscapes(str(tmp_path / "cs"), height=8, width=16)
    Image.fromarray(np.zeros((8, 16, 3), np.uint8)).save(
        tmp_path / "cs" / "leftImg8bit" / "train" / "aachen" / "aachen_000000_000019_leftImg8bit.png")
    Image.fromarray(np.zeros((8, 16), np.uint8), mode="L").save(     # the other label kind only
        tmp_path / "cs" / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_labelTrainIds.png")
    with pytest.raises(DataError, match=r"no label maps \(\*_gtFine_labelIds\.png\) found"):
        cityscapes(str(tmp_path / "cs"), height=8, width=16)
    base = tmp_path / "ade" / "ADEChallengeData2016"
    os.makedirs(base / "images" / "training")
    os.makedirs(base / "annotations" / "training")
    with pytest.raises(DataError, match=r"no images \(\*\{\.jpg,\.jpeg,\.png\}\) found"):
        ade20k(str(tmp_path / "ade"), height=8, width=8)
    root = make_ade20k(tmp_path / "ade2")
    for f in os.listdir(os.path.join(root, "ADEChallengeData2016", "annotations", "training")):
        os.remove(os.path.join(root, "ADEChallengeData2016", "annotations", "training", f))
    with pytest.raises(DataError, match=r"no label maps \(\*\.png\) found"):
        ade20k(root, height=8, width=8)
    arch = make_ade_indoor(tmp_path / "arch")
    for d, _, fs in os.walk(arch):
        for f in fs:
            if f.endswith(".png"):
                os.remove(os.path.join(d, f))
    with pytest.raises(DataError, match=r"no label maps \(\*\.png\) found"):
        ade_indoor(arch, height=8, width=8)
