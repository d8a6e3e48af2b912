"""DALI loader (CPU-only pipelines): batch contract, parity with the torch loader, bad files, loader choice."""
import os

import pytest
import torch

from real_lookalike import make_ade20k, make_cityscapes
from sbgan_fast.data.dali import dali_status
from sbgan_fast.data.datasets import DataError
from sbgan_fast.data.loaders import build_loader, choose_loader
from sbgan_fast.data.layouts import ade20k, cityscapes

DALI_OK, DALI_WHY = dali_status()
needs_dali = pytest.mark.skipif(not DALI_OK, reason=f"DALI unavailable: {DALI_WHY}")

# resize tolerance (uint8 levels): DALI's antialiased linear resize vs Pillow's, plus JPEG decoder differences
MEAN_TOL, MAX_TOL = 2.0, 40


def _parity(ds, batches):
    from sbgan_fast.data.dali import DaliLoader
    torch_batches = list(build_loader(ds, batches, loader="torch", device="cpu"))
    dali_batches = list(DaliLoader(ds, batches))
    assert len(torch_batches) == len(dali_batches) == len(batches)
    for t, d, idx in zip(torch_batches, dali_batches, batches):
        assert d["image"].dtype == torch.uint8 and d["image"].shape == t["image"].shape
        assert d["label"].dtype == torch.int64 and torch.equal(d["label"], t["label"])   # label maps: exact
        assert d["index"].tolist() == t["index"].tolist()
        diff = (d["image"].int() - t["image"].int()).abs()
        assert diff.float().mean() <= MEAN_TOL and diff.max() <= MAX_TOL, (diff.float().mean(), diff.max())


@needs_dali
def test_dali_parity_cityscapes(tmp_path):
    ds = cityscapes(make_cityscapes(tmp_path, n=4, h=48, w=96), height=24, width=48)
    _parity(ds, [[0, 1], [3], [2, 0, 1]])          # growing batch: the pipeline is rebuilt


@needs_dali
def test_dali_parity_ade_crops(tmp_path):
    ds = ade20k(make_ade20k(tmp_path, sizes=((40, 60), (50, 30), (36, 36))), height=16, width=16, seed=4)
    _parity(ds, [[(0, 0), (1, 0), (2, 0)], [(0, 1), (1, 7)]])


@needs_dali
def test_dali_parity_real_samples(shared_fixtures):
    ds = ade20k(os.path.join(shared_fixtures, "ade20k_sceneparsing"), split="validation", height=64, width=64)
    _parity(ds, [[(0, 0), (1, 0)], [(2, 3)]])
    cs = cityscapes(os.path.join(shared_fixtures, "mmsegmentation", "pseudo_cityscapes_dataset"), split="val",
                    height=64, width=128)
    _parity(cs, [[0, 0]])


@needs_dali
def test_dali_bad_file_named_and_skipped(tmp_path):
    from sbgan_fast.data.dali import DaliLoader
    root = make_cityscapes(tmp_path, n=3, h=32, w=64)
    ds = cityscapes(root, height=16, width=32)
    data = open(ds.image_paths[1], "rb").read()
    with open(ds.image_paths[1], "wb") as f:
        f.write(data[:200])
    with pytest.raises(DataError) as e:
        list(DaliLoader(ds, [[0], [1, 2]]))
    assert e.value.path == ds.image_paths[1]
    ds.skip_bad_files = True
    out = list(DaliLoader(ds, [[0], [1, 2]]))
    assert out[1]["index"].tolist() == [2, 2] and out[1]["skipped"].tolist() == [1, 0]
    assert ds.image_paths[1] in ds.skipped


@needs_dali
def test_build_loader_dali_on_cpu(tmp_path):
    ds = cityscapes(make_cityscapes(tmp_path, n=2), height=16, width=32)
    out = list(build_loader(ds, [[0, 1]], loader="dali", device="cpu"))
    assert out[0]["image"].shape == (2, 3, 16, 32) and out[0]["skipped_files"] == 0


def test_choose_loader(tmp_path):
    ds = cityscapes(make_cityscapes(tmp_path, n=2), height=16, width=32)
    assert choose_loader("torch", ds, torch.device("cpu"), True) == "torch"
    assert choose_loader("auto", ds, torch.device("cpu"), True) == "torch"
    assert choose_loader("dali", ds, torch.device("cpu"), False) == "torch"     # label-only stage
    if DALI_OK:
        assert choose_loader("dali", ds, torch.device("cpu"), True) == "dali"
    else:
        with pytest.raises(RuntimeError, match="DALI"):
            choose_loader("dali", ds, torch.device("cpu"), True)
    from sbgan_fast.data.synthetic import SyntheticScenes
    with pytest.raises(ValueError, match="official-layout"):
        choose_loader("dali", SyntheticScenes(4, height=8, width=16), torch.device("cpu"), True)
