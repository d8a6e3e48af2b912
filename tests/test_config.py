import json

import pytest

from sbgan_fast.config import PRESETS, ConfigError, build_config, from_dict, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_validate(name):
    cfg = build_config(name, **({} if name == "demo" else {"data.root": "/data"}))
    assert cfg.preset == name
    assert from_dict(json.loads(cfg.to_json())).to_dict() == cfg.to_dict()


def test_authors_values():
    c = preset("cityscapes")
    assert (c.seg.lr, c.seg.betas, c.seg.lambda_gp) == (1e-3, (0.0, 0.99), 10.0)
    assert (c.seg.batch_size, c.seg.batch_size_high, c.seg.aspect_ratio) == (16, 4, 2.0)
    assert (c.spade.lr_G, c.spade.lr_D, c.spade.betas) == (1e-4, 4e-4, (0.0, 0.9))
    assert (c.spade.lambda_feat, c.spade.lambda_vgg, c.spade.num_upsampling_layers) == (10.0, 10.0, "more")
    assert (c.e2e.lr_seg, c.e2e.lr_D2, c.e2e.d2_betas, c.e2e.lambda_seg, c.e2e.lambda_d2) == (
        1e-5, 2e-4, (0.0, 0.99), 10.0, 0.1)
    assert c.e2e.detach_seg and not c.seg.fade_in and c.seg.pixel_norm == "code"
    assert c.spade.nhidden == 128 and c.lr_decay == "epoch"
    a = preset("ade_indoor")
    assert (a.data.num_classes, a.e2e.lr_seg, a.seg.batch_size, a.seg.batch_size_high) == (95, 1e-4, 36, 12)


def test_overrides_and_types(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("spade:\n  ngf: 16\nseg.lr: 0.002\n")
    cfg = build_config("demo", str(f), ["seg.betas=0.5,0.9", "data.hflip=false", "stages=seg,spade"])
    assert cfg.spade.ngf == 16 and cfg.seg.lr == 0.002 and cfg.seg.betas == (0.5, 0.9)
    assert cfg.data.hflip is False and cfg.stages == ["seg", "spade"]


def test_synthetic_detail_reaches_the_training_and_evaluation_scenes():
    from sbgan_fast.data.factory import build_dataset
    from sbgan_fast.metrics.eval_sets import build_eval_dataset
    assert build_config("demo", None, []).data.synthetic_detail == 1.0
    cfg = build_config("demo", None, ["data.synthetic_detail=0.25"])
    ds, _ = build_dataset(cfg, images=True)
    assert ds.detail == 0.25
    ev, desc = build_eval_dataset(cfg, 11, size=4)
    assert ev.detail == 0.25 and desc["detail"] == 0.25
    _, desc_full = build_eval_dataset(build_config("demo", None, []), 11, size=4)
    assert "detail" not in desc_full   # the full scenes keep their statistics-cache key


@pytest.mark.parametrize("kwargs, overrides, match", [
    ({"preset_name": "nope"}, [], "unknown preset 'nope'"),
    ({}, ["spade.nfg=3"], "unknown config key 'spade.nfg'"),
    ({}, ["spade.ngf=abc"], "spade.ngf: expected an integer"),
    ({}, ["seg.max_dim=48"], "seg.max_dim must be a power of two"),
    ({}, ["stages=seg,foo"], "stages"),
    ({}, ["data.dataset=imagenet"], "data.dataset"),
    ({}, ["spade.crop_size=128"], "must equal the SPADE generator's output"),
    ({}, ["noequals"], "KEY=VALUE"),
    ({}, ["spade.nhidden=0"], "spade.nhidden must be >= 1, got 0"),
    ({}, ["lr_decay=linear"], "lr_decay must be epoch|step, got 'linear'"),
    ({}, ["spade.ngf=0"], "spade.ngf must be >= 1, got 0"),
    ({}, ["data.synthetic_detail=1.5"], r"data.synthetic_detail must be in \[0, 1\] \(1: the full scenes\), got 1.5"),
    ({}, ["data.synthetic_detail=nan"], "data.synthetic_detail must be in"),
    ({"preset_name": "cityscapes"}, [], "data.root"),
])
def test_bad_config_values(kwargs, overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_config(kwargs.get("preset_name", "demo"), None, overrides)


def test_bad_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        build_config("demo", str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="bad.json: not valid JSON"):
        build_config("demo", str(bad))


def test_learning_rate_decay_follows_spade_epochs():
    from sbgan_fast.train.stages import decay_factor
    # constant for `epochs`, then lr0 * (1 - k / epochs_decay) in the k-th epoch after them (0-based)
    assert decay_factor(0.0, 100, 100) == 1.0 and decay_factor(99.9, 100, 100) == 1.0
    assert decay_factor(100.5, 100, 100) == 1.0
    assert decay_factor(101.0, 100, 100) == pytest.approx(0.99)
    assert decay_factor(199.9, 100, 100) == pytest.approx(0.01)
    assert decay_factor(250.0, 100, 100) == 0.0
    assert decay_factor(5.0, 1, 0) == 1.0


def test_per_step_learning_rate_decay():
    from sbgan_fast.train.stages import decay_factor, e2e_decay
    # lr_decay=step: the same line at the fractional epoch, 1 at `epochs`, 0 at `epochs + epochs_decay`
    assert decay_factor(3.999, 4, 4, per_step=True) == 1.0
    assert decay_factor(4.0, 4, 4, per_step=True) == 1.0
    assert decay_factor(5.0, 4, 4, per_step=True) == pytest.approx(0.75)
    assert decay_factor(6.5, 4, 4, per_step=True) == pytest.approx(0.375)
    assert decay_factor(8.0, 4, 4, per_step=True) == 0.0 and decay_factor(9.0, 4, 4, per_step=True) == 0.0
    assert decay_factor(0.75, 0.5, 0.5, per_step=True) == pytest.approx(0.5)
    assert decay_factor(0.75, 0.5, 0.5) == 1.0            # the authors' rule: no decay inside the first epoch
    assert decay_factor(7.0, 1, 0, per_step=True) == 1.0
    assert e2e_decay(0.25, 0.5, 0.5, per_step=True) == (1.0, False)
    f, decaying = e2e_decay(0.75, 0.5, 0.5, per_step=True)
    assert f == pytest.approx(0.5) and decaying
    assert e2e_decay(0.75, 0.5, 0.5) == (1.0, False)       # (code) the first lowered e2e epoch is epochs + 2
    assert e2e_decay(3.0, 3, 0, per_step=True) == (1.0, False)


def test_config_names_the_same_impls_as_the_ops():
    from sbgan_fast import ops
    from sbgan_fast.config import IMPLS
    assert IMPLS == ops.IMPLS
