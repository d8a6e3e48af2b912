"""Moving averages of the generators (``ema`` settings): the update rule and its ramp-up, off by default, checkpoint
round trip and exact resume, batch-norm recalibration, and sample/eval and the sample grids choosing the averages."""
import os

import pytest
import torch

from sbgan_fast.models.ema import ema_beta, recalibrate_batchnorm
from sbgan_fast.train.stages import STAGE_CLASSES
from sbgan_fast.train.trainer import Trainer, train
from tiny import tiny_cfg

EMA = ["ema.enabled=true", "ema.kimg=0.01", "ema.rampup=0.5", "ema.bn_maps=8"]


def _state(net):
    return {k: v.detach().clone() for k, v in net.state_dict().items()}


def test_beta_and_rampup_by_hand():
    assert ema_beta(4, 0, 10.0, 0.05) == 0.0                     # first update with ramp-up: a copy
    assert ema_beta(4, 100, 10.0, 0.05) == 0.5 ** (4 / 5.0)      # ramped: min(10000, 100 * 0.05) = 5 images
    assert ema_beta(4, 10 ** 6, 10.0, 0.05) == 0.5 ** (4 / 10000.0)
    assert ema_beta(4, 0, 10.0, 0.0) == 0.5 ** (4 / 10000.0)     # no ramp-up


@pytest.mark.slow   # trains a tiny run
def test_update_against_hand_computation(tmp_path):
    tr = Trainer(tiny_cfg(tmp_path / "r", "stages=seg", *EMA, max_steps=3))
    try:
        stage, start = tr.open_stage("seg")
        G, avg = tr.nets["G_seg"], tr.ema.nets["G_seg"]
        expect = _state(avg)
        for step in range(3):
            before_nimg = tr.ema.nimg["G_seg"]
            batch = {"label": torch.randint(0, tr.num_classes, (4, 32, 32)), "image": None}
            stage.step(step, batch)
            beta = 0.5 ** (4 / max(min(10.0, before_nimg * 0.5), 1e-8))
            live = dict(G.named_parameters())
            for k in expect:
                if k in live:
                    expect[k] = live[k].detach() + beta * (expect[k] - live[k].detach())
                else:
                    expect[k] = G.state_dict()[k].clone()
            got = avg.state_dict()
            for k in expect:
                torch.testing.assert_close(got[k], expect[k], rtol=0, atol=1e-7)
            assert tr.ema.nimg["G_seg"] == before_nimg + 4
        assert any(not torch.equal(avg.state_dict()[k], G.state_dict()[k]) for k in expect)   # it averages
        assert tr.ema.nimg["G_spd"] == 0   # not trained by seg
    finally:
        tr.close()


@pytest.mark.slow   # trains a tiny run
def test_off_by_default_changes_nothing(tmp_path):
    cfg = tiny_cfg(tmp_path / "a", "stages=seg", max_steps=2)
    assert cfg.ema.enabled is False
    runs = []
    for name, extra in (("a", []), ("b", EMA)):
        tr = train(tiny_cfg(tmp_path / name, "stages=seg", *extra, max_steps=2))
        runs.append(_state(tr.nets["G_seg"]))
        tr.close()
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k   # the average never feeds back into training
    from sbgan_fast.train import checkpoint as ckpt_io
    assert "ema" not in ckpt_io.load_checkpoint(ckpt_io.find_checkpoint(str(tmp_path / "a"), "seg"))


@pytest.mark.slow   # trains a tiny run
def test_checkpoint_round_trip_and_exact_resume(tmp_path):
    from sbgan_fast.train import checkpoint as ckpt_io
    full = train(tiny_cfg(tmp_path / "full", "stages=spade", *EMA, max_steps=4, ckpt_every=2))
    want = _state(full.ema.nets["G_spd"])
    full.close()
    part = train(tiny_cfg(tmp_path / "part", "stages=spade", *EMA, max_steps=2, ckpt_every=2))
    part.close()
    ck = ckpt_io.load_checkpoint(ckpt_io.find_checkpoint(str(tmp_path / "part"), "spade"))
    assert set(ck["ema"]["nets"]) == {"G_spd"} and ck["ema"]["nimg"]["G_spd"] == 8
    res = train(tiny_cfg(tmp_path / "part", "stages=spade", *EMA, max_steps=4, ckpt_every=2), resume=True)
    got = _state(res.ema.nets["G_spd"])
    res.close()
    for k in want:
        assert torch.equal(want[k], got[k]), k


def test_old_checkpoint_restarts_average_with_warning(tmp_path, capsys):
    train(tiny_cfg(tmp_path / "r", "stages=seg", max_steps=2)).close()
    tr = Trainer(tiny_cfg(tmp_path / "r", "stages=seg", *EMA, max_steps=4), resume=True)
    try:
        tr.open_stage("seg")
        assert "holds no moving average of G_seg" in capsys.readouterr().err
        for k, v in tr.nets["G_seg"].state_dict().items():
            assert torch.equal(tr.ema.nets["G_seg"].state_dict()[k], v)
        assert tr.ema.nimg["G_seg"] == 0
    finally:
        tr.close()


def test_bn_recalibration_sets_statistics_of_the_maps(tmp_path):
    from sbgan_fast.models import build_networks
    cfg = tiny_cfg(tmp_path / "r")
    torch.manual_seed(0)
    G = build_networks(cfg, 6, names=("G_spd",))["G_spd"].eval()
    maps = [torch.randint(0, 6, (3, 32, 32)) for _ in range(3)]
    other = {k: v.clone() for k, v in G.state_dict().items() if "running" not in k}
    # expected: each SPADE norm's input over all maps in one batch (equal batches: the cumulative average of the
    # per-batch means is the mean; of the unbiased variances, their average)
    from sbgan_fast.nn.spade import SPADE
    seen = {}
    hooks = [m.register_forward_pre_hook(lambda mod, a, name=name: seen.setdefault(name, []).append(a[0].detach()))
             for name, m in G.named_modules() if isinstance(m, SPADE)]
    rng = torch.get_rng_state()
    assert recalibrate_batchnorm(G, maps) == 3
    assert torch.equal(rng, torch.get_rng_state()) and not G.training
    for h in hooks:
        h.remove()
    for name, m in G.named_modules():
        if isinstance(m, SPADE):
            xs = seen[name]
            mean = torch.stack([x.mean((0, 2, 3)) for x in xs]).mean(0)
            var = torch.stack([x.var((0, 2, 3), unbiased=True) for x in xs]).mean(0)
            torch.testing.assert_close(m.param_free_norm.running_mean, mean, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(m.param_free_norm.running_var, var, rtol=1e-4, atol=1e-5)
    for k, v in G.state_dict().items():
        if k in other:
            assert torch.equal(v, other[k]), k   # spectral-norm vectors and weights untouched
    assert seen


@pytest.mark.slow   # trains a tiny run
def test_sample_and_eval_choose_the_average(tmp_path, monkeypatch):
    from sbgan_fast.models import build
    from sbgan_fast.train import checkpoint as ckpt_io
    out = tmp_path / "r"
    train(tiny_cfg(out, "stages=spade", *EMA, max_steps=2)).close()
    path = ckpt_io.find_checkpoint(str(out), "spade")
    ck = ckpt_io.load_checkpoint(path)
    avg, raw = ck["ema"]["nets"]["G_spd"], ck["nets"]["G_spd"]
    key = next(k for k in raw if k.endswith("weight_orig") or k.endswith("weight"))
    assert not torch.equal(avg[key], raw[key])
    for weights, want in ((None, avg), ("ema", avg), ("raw", raw)):
        _, _, nets = build.load_generators(path, torch.device("cpu"), need_seg=False, weights=weights)
        for k, v in nets["G_spd"].state_dict().items():
            assert torch.equal(v, want[k]), (weights, k)
    train(tiny_cfg(tmp_path / "plain", "stages=spade", max_steps=1)).close()
    plain = ckpt_io.find_checkpoint(str(tmp_path / "plain"), "spade")
    with pytest.raises(FileNotFoundError, match="no moving average of G_spd"):
        build.load_generators(plain, torch.device("cpu"), need_seg=False, weights="ema")
    # sample and eval pass their choice through to load_generators
    import sbgan_fast.metrics.evaluate as ev
    import sbgan_fast.sample as sm
    calls = []

    def spy(*a, **kw):
        calls.append(kw.get("weights"))
        raise FileNotFoundError("stop")
    monkeypatch.setattr(sm, "load_generators", spy)
    monkeypatch.setattr(ev, "load_generators", spy)
    for fn, kw in ((sm.sample_main, dict(n=1, out=str(tmp_path / "s"))), (ev.evaluate_checkpoint, {})):
        with pytest.raises(FileNotFoundError):
            fn(checkpoint=path, weights="raw", **kw, **({"extractor": object()} if fn is ev.evaluate_checkpoint
                                                        else {}))
    assert calls == ["raw", "raw"]


def test_settings_are_validated(tmp_path):
    from sbgan_fast.config import ConfigError
    for bad, key in (("ema.kimg=0", "ema.kimg"), ("ema.rampup=-1", "ema.rampup"), ("ema.bn_maps=-2", "ema.bn_maps")):
        with pytest.raises(ConfigError, match=key):
            tiny_cfg(tmp_path / "r", bad)


@pytest.mark.slow   # trains a tiny run
def test_previews_draw_with_the_averages(tmp_path, monkeypatch):
    """With ema.enabled the sample grids show the moving averages (as sample/eval do): each stage's grid equals
    the grid its checkpoint's averaged generators draw (G_spd with the statistics the checkpoint holds), differs
    from the trained generators' grid, and drawing it changes neither the training nor the averages a checkpoint
    holds."""
    import sbgan_fast.metrics.grids as grids
    from sbgan_fast.train import checkpoint as ckpt_io
    drawn = {}

    def capture(labels, images, palette, path, **kw):
        drawn[os.path.basename(path)] = (labels.clone(), None if images is None else images.clone())
    monkeypatch.setattr(grids, "save_pairs_grid", capture)
    over = ["stages=seg,spade,e2e", *EMA, "sample_every=2", "ckpt_every=2"]
    train(tiny_cfg(tmp_path / "r", *over, max_steps=2)).close()
    assert sorted(drawn) == ["e2e-0000002.png", "seg-0000002.png", "spade-0000002.png"]
    for stage_name in ("seg", "spade", "e2e"):
        path = ckpt_io.stage_checkpoint_path(str(tmp_path / "r"), stage_name, "latest")
        ck = ckpt_io.load_checkpoint(path)
        tr = Trainer(tiny_cfg(tmp_path / f"fresh_{stage_name}", *over, max_steps=2))
        try:
            stage = STAGE_CLASSES[stage_name](tr.ctx)
            outs = {}
            for weights in ("ema", "raw"):
                for name, sd in (ck["ema"]["nets"] if weights == "ema" else ck["nets"]).items():
                    if name in ("G_seg", "G_spd"):
                        tr.nets[name].load_state_dict(sd)
                outs[weights] = stage.preview(2)
        finally:
            tr.close()
        labels, images = drawn[f"{stage_name}-0000002.png"]
        ema_labels, ema_images = (None if t is None else t.cpu() for t in outs["ema"])
        raw_images = None if outs["raw"][1] is None else outs["raw"][1].cpu()
        assert torch.equal(labels, ema_labels), stage_name
        if stage_name == "seg":
            assert images is None
        else:
            assert torch.equal(images, ema_images), stage_name
            assert not torch.equal(images, raw_images), stage_name
    # drawing previews moves no training state: the same run without grids ends with the same weights and averages
    monkeypatch.undo()
    train(tiny_cfg(tmp_path / "quiet", *over[:-2], "sample_every=0", "ckpt_every=2", max_steps=2)).close()
    for stage_name in ("seg", "spade", "e2e"):
        a = ckpt_io.load_checkpoint(ckpt_io.stage_checkpoint_path(str(tmp_path / "r"), stage_name, "latest"))
        b = ckpt_io.load_checkpoint(ckpt_io.stage_checkpoint_path(str(tmp_path / "quiet"), stage_name, "latest"))
        for part, nets_a, nets_b in (("nets", a["nets"], b["nets"]), ("ema", a["ema"]["nets"], b["ema"]["nets"])):
            for name in nets_a:
                for k, v in nets_a[name].items():
                    assert torch.equal(v, nets_b[name][k]), (stage_name, part, name, k)
