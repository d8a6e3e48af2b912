"""The e2e stage step for step as the authors' end-to-end trainer: the discriminator update sees fakes made
by the *updated* generators from a *second* noise draw, D2's Adam is created afresh after its pre-training,
G_spd renders the real maps during that pre-training, the learning-rate decay starts one epoch later than
the spade stage's and D2 follows D_spd's rate once it does; steps driven with given noise."""
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from sbgan_fast import ops
from sbgan_fast.train.amp import GivenNoise
from sbgan_fast.models import build_networks
from sbgan_fast.train.trainer import Trainer, train

from tiny import tiny_cfg
from tolerances import FP32_SHORT_CHAIN

NETS = ("G_seg", "D_seg", "G_spd", "D_spd", "D2")


@pytest.fixture(scope="module")
def base(module_tmp):
    out = module_tmp / "base"
    train(tiny_cfg(out, "stages=seg,spade", max_steps=2))
    return out


def _open(base, tmp_path, *extra, name="run"):
    out = tmp_path / name
    shutil.copytree(base, out)
    t = Trainer(tiny_cfg(out, "stages=e2e", "data.hflip=false", *extra), resume=True)
    stage, start = t.open_stage("e2e")
    assert start == 0
    return t, stage


def _batch(t, n=4):
    items = [t.dataset[i] for i in range(n)]
    return {"label": torch.stack([it["label"] for it in items]).long(),
            "image": torch.stack([it["image"] for it in items])}


def _noise(t, n=4, seed=7):
    g = torch.Generator().manual_seed(seed)
    cs = t.cfg.seg
    h, w = cs.max_dim, int(cs.max_dim * cs.aspect_ratio)
    gumbel = lambda: -torch.log(torch.empty(n, t.num_classes, h, w).exponential_(generator=g) + 1e-10)  # noqa: E731
    return {"z_G": torch.randn(n, cs.z_dim, generator=g), "gumbel_G": gumbel(),
            "z_D": torch.randn(n, cs.z_dim, generator=g), "gumbel_D": gumbel(),
            "eps_D": torch.rand(n, 1, 1, 1, generator=g), "z_D2": torch.randn(n, cs.z_dim, generator=g)}


def _copy(t, name):
    """A new network ``name`` holding a copy of the trainer's one's parameters and buffers."""
    net = build_networks(t.cfg, t.num_classes, names=(name,))[name]
    net.load_state_dict({k: v.detach().clone() for k, v in t.nets[name].state_dict().items()})
    return net.train()


def _record(t, name, calls, *, snapshot=False):
    """Forward pre-hook: the inputs of every call (and a copy of the network as it is at that call)."""
    def hook(mod, args, kwargs):
        calls.append((tuple(a.detach().clone() if torch.is_tensor(a) else a for a in args),
                      dict(kwargs), _copy(t, name) if snapshot else None))
    return t.nets[name].register_forward_pre_hook(hook, with_kwargs=True)


def _st(t, z, gumbel):
    """The semantic bottleneck written out: G_seg -> log(p + 1e-5) -> Gumbel straight-through."""
    p = t.G_seg(z)
    return ops.gumbel_softmax_st(torch.log(p.float() + 1e-5), t.cfg.seg.tau, noise=gumbel, impl="ref")


@pytest.mark.slow
@pytest.mark.parametrize("reuse", [False, True])
def test_discriminators_see_fakes_of_the_updated_generators(base, tmp_path, reuse):
    t, stage = _open(base, tmp_path, "e2e.d2_pretrain_epochs=0", f"e2e.reuse_fakes={str(reuse).lower()}")
    before = {k: _copy(t, k) for k in ("G_seg", "G_spd")}
    d2_calls, dseg_calls, gspd_calls = [], [], []
    hooks = [_record(t, "D2", d2_calls), _record(t, "D_seg", dseg_calls), _record(t, "G_spd", gspd_calls, snapshot=True)]
    given = _noise(t)
    noise = GivenNoise({k: v for k, v in given.items() if k != "z_D2"})
    stats = stage.step(0, _batch(t), noise=noise)
    for h in hooks:
        h.remove()
    assert noise.used == (["z_G", "gumbel_G", "eps_D"] if reuse else ["z_G", "gumbel_G", "z_D", "gumbel_D", "eps_D"])
    # every loss term on its own, D2's real and fake terms included
    for key in ("loss_G", "seg_G", "D2_G", "G_gan", "G_feat", "loss_D", "seg_D", "wdist", "gp", "score_real",
                "score_fake", "D_real", "D_fake", "D2_D", "D2_real", "D2_fake"):
        assert key in stats and math.isfinite(float(stats[key])), key
    # the generators moved in the G update
    for name in ("G_seg", "G_spd"):
        assert any(not torch.equal(a, b) for a, b in zip(before[name].parameters(), t.nets[name].parameters()))
    n = 4
    with torch.no_grad():
        fake_g = _st(t, given["z_G"], given["gumbel_G"]) if reuse else None   # (G_seg has not moved since)
        fake_d = _st(t, given["z_D"], given["gumbel_D"])
    # G_spd calls: G step (ST sample for D2, real maps), D step (real maps for D_spd, then the ST sample for D2)
    calls_per_step = 3 if reuse else 4
    assert len(gspd_calls) == calls_per_step
    # D_seg calls: G step (fake), D step (real, fake, interpolates)
    seen_by_dseg = dseg_calls[2][0][0]
    seen_by_d2 = d2_calls[1][0][0][:n]
    if reuse:
        assert torch.equal(seen_by_d2, d2_calls[0][0][0])          # the G step's image
        assert not torch.equal(seen_by_dseg, fake_d)
        return
    assert torch.equal(seen_by_dseg, fake_d)                       # updated G_seg, second draw
    args, kwargs, g_spd_then = gspd_calls[3]
    for p_then, p_now in zip(g_spd_then.parameters(), t.G_spd.parameters()):
        assert torch.equal(p_then, p_now)                          # updated G_spd (D step changes no parameter)
    up = F.interpolate(fake_d, scale_factor=2, mode="nearest")   # tiny: G_seg at half the image size
    with torch.no_grad():
        expected = g_spd_then(up, labels=up.argmax(1))
    torch.testing.assert_close(seen_by_d2, expected, **FP32_SHORT_CHAIN)
    with torch.no_grad():
        fake_old = before["G_spd"](up, labels=up.argmax(1))
    assert not torch.allclose(seen_by_d2, fake_old, atol=1e-4)      # not the pre-update G_spd's image (one Adam step away: >> 1e-4)
    t.close()


@pytest.mark.slow
def test_d2_pretraining_renders_real_maps_and_ends_with_a_fresh_adam(base, tmp_path):
    t, stage = _open(base, tmp_path)
    assert stage.pretrain_steps() == 2
    g_spd = _copy(t, "G_spd")
    batch, given = _batch(t), _noise(t)
    noise = GivenNoise({"z_D2": given["z_D2"]})
    stats = stage.step(0, batch, noise=noise)
    assert set(stats) >= {"loss_D2", "D2_real", "D2_fake"} and noise.used == ["z_D2"]
    # G_spd's buffers moved as the authors' step moves them: G_spd(fake map), then G_spd(real map)
    with torch.no_grad():
        labels = t.G_seg(given["z_D2"]).argmax(1)
        g_spd(labels.repeat_interleave(2, -2).repeat_interleave(2, -1))
        g_spd(t.label_ids(batch["label"]))
    for (k, a), b in zip(t.G_spd.named_buffers(), g_spd.buffers()):
        assert torch.equal(a, b), k
    t.close()
    # the first joint step starts from a fresh Adam for D2 (its step count restarts)
    out = tmp_path / "adam"
    shutil.copytree(base, out)
    done = train(tiny_cfg(out, "stages=e2e", max_steps=3), resume=True)
    steps = {float(s["step"]) for s in done.optims["D2"].state.values()}
    assert steps == {1.0}


def _authors_rates(epochs, niter, niter_decay, lr=2e-4):
    """The authors' e2e loop: epochs from 0, update_learning_rate(epoch) after each; TTUR G lr/2, D and D2 2 lr
    once the rate first changes (D2 starts at lr)."""
    old_lr, rates = lr, []
    g, d, d2 = lr / 2, lr * 2, lr
    for epoch in range(epochs):
        rates.append((g, d, d2))
        new_lr = old_lr - lr / niter_decay if epoch > niter else old_lr
        if new_lr != old_lr:
            g, d, d2 = new_lr / 2, new_lr * 2, new_lr * 2
            old_lr = new_lr
    return rates


@pytest.mark.slow
@pytest.mark.parametrize("d2_lr", ["ttur", "constant"])
def test_learning_rates_follow_the_authors_e2e_loop(base, tmp_path, d2_lr):
    niter, niter_decay = 2, 4
    t, stage = _open(base, tmp_path, "e2e.d2_pretrain_epochs=1", f"e2e.epochs={niter}",
                     f"e2e.epochs_decay={niter_decay}", f"e2e.d2_lr={d2_lr}")
    per_epoch = t.dataset_size // t.cfg.e2e.batch_size
    p = stage.pretrain_steps()
    assert p == per_epoch
    for epoch, (g, d, d2) in enumerate(_authors_rates(niter + niter_decay, niter, niter_decay)):
        for step in (p + epoch * per_epoch, p + (epoch + 1) * per_epoch - 1):
            lrs = stage.set_lr(step)
            assert lrs["lr_G_spd"] == pytest.approx(g, rel=1e-9), (epoch, step)
            assert lrs["lr_D_spd"] == pytest.approx(d, rel=1e-9), (epoch, step)
            assert lrs["lr_D2"] == pytest.approx(d2 if d2_lr == "ttur" else 2e-4, rel=1e-9), (epoch, step)
            assert t.optims["D2"].param_groups[0]["lr"] == lrs["lr_D2"]
    assert stage.set_lr(0)["lr_D2"] == 2e-4     # pre-training
    t.close()


@pytest.mark.slow
def test_per_step_decay_falls_to_zero_within_a_short_stage(base, tmp_path):
    """lr_decay=step: a joint phase shorter than an epoch still decays, linearly per step, to 0 at its end (the
    authors' per-epoch rule keeps it at the full rate); D2 follows D_spd's rate once the decay has begun."""
    t, stage = _open(base, tmp_path, "lr_decay=step", "e2e.d2_pretrain_epochs=0", "e2e.epochs=0.5",
                     "e2e.epochs_decay=0.5", "e2e.lr_G=1e-4", "e2e.lr_D=4e-4")
    n = t.dataset_size / t.cfg.e2e.batch_size          # steps per epoch
    total = stage.total_steps()
    assert total == math.ceil(n)
    for step in range(total):
        f = min(1.0, max(0.0, 1.0 - (step / n - 0.5) / 0.5))
        lrs = stage.set_lr(step)
        assert lrs["lr_G_spd"] == pytest.approx(1e-4 * f, rel=1e-9, abs=1e-15), step
        assert lrs["lr_D_spd"] == pytest.approx(4e-4 * f, rel=1e-9, abs=1e-15), step
        assert lrs["lr_D2"] == pytest.approx(4e-4 * f if step / n >= 0.5 else 2e-4, rel=1e-9, abs=1e-15), step
    assert stage.set_lr(total - 1)["lr_G_spd"] == pytest.approx(1e-4 * 2 / n)   # the line meets 0 one step later
    t.close()


@pytest.mark.slow
def test_resume_across_the_pretraining_boundary_and_the_first_decay(base, tmp_path):
    extra = ("stages=e2e", "data.synthetic_size=16", "e2e.batch_size=8", "e2e.epochs=0", "e2e.epochs_decay=3")
    # 1 pre-training step, 2 joint steps per epoch, the first decayed epoch (2) starts at step 5
    shutil.copytree(base, tmp_path / "a")
    shutil.copytree(base, tmp_path / "b")
    full = train(tiny_cfg(tmp_path / "a", *extra, max_steps=6), resume=True)
    for stop in (1, 5, 6):
        resumed = train(tiny_cfg(tmp_path / "b", *extra, max_steps=stop), resume=True)
    for name in NETS:
        for (k, a), b in zip(full.nets[name].state_dict().items(), resumed.nets[name].state_dict().values()):
            assert torch.equal(a, b), f"{name}.{k}"
    for name, opt in full.optims.items():
        a, b = opt.state_dict()["state"], resumed.optims[name].state_dict()["state"]
        for i in a:
            for k in a[i]:
                assert torch.equal(a[i][k], b[i][k]), f"{name} optimizer state {i}.{k} differs"
        assert opt.param_groups[0]["lr"] == resumed.optims[name].param_groups[0]["lr"]
    assert full.optims["D2"].param_groups[0]["lr"] == pytest.approx(4e-4 * 2 / 3)


@pytest.mark.slow
def test_given_noise_names_what_is_missing(base, tmp_path):
    t, stage = _open(base, tmp_path, "e2e.d2_pretrain_epochs=0")
    with pytest.raises(KeyError, match="z_D"):
        stage.step(0, _batch(t), noise=GivenNoise({k: v for k, v in _noise(t).items() if k != "z_D"}))
    given = _noise(t)
    given["eps_D"] = given["eps_D"][:2]
    t2, stage2 = _open(base, tmp_path, "e2e.d2_pretrain_epochs=0", name="run2")
    with pytest.raises(ValueError, match="eps_D"):
        stage2.step(0, _batch(t2), noise=GivenNoise(given))
    t.close()
    t2.close()
