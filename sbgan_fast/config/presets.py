"""The presets: the authors' settings for Cityscapes (5K and 25K) and ADE-Indoor (REFERENCE.md), and ``demo``, a
small configuration that trains all three stages on the built-in synthetic scenes on a laptop CPU."""
from __future__ import annotations

from .schema import (ConfigError, DataConfig, E2EConfig, EMAConfig, ProGANConfig, SegConfig, SpadeConfig,
                     TrainConfig)


def _preset_cityscapes() -> TrainConfig:
    c = TrainConfig(preset="cityscapes", out="runs/cityscapes")
    c.data = DataConfig(dataset="cityscapes", num_classes=35, height=256, width=512)
    c.seg = SegConfig(max_dim=256, aspect_ratio=2.0, epochs_per_phase=150.0, batch_size=16, batch_size_high=4)
    c.spade = SpadeConfig(num_upsampling_layers="more", crop_size=512, aspect_ratio=2.0, epochs=100.0,
                          epochs_decay=100.0, batch_size=16)
    c.e2e = E2EConfig(lr_seg=1e-5, epochs=50.0, epochs_decay=50.0, batch_size=8)
    return c


def _preset_cityscapes25k() -> TrainConfig:
    c = _preset_cityscapes()
    c.preset, c.out = "cityscapes25k", "runs/cityscapes25k"
    c.data.num_classes = 20          # 19 train ids + don't-care
    c.data.dontcare = 255
    c.seg.epochs_per_phase = 20.0
    c.spade.epochs, c.spade.epochs_decay = 30.0, 30.0
    c.e2e.epochs, c.e2e.epochs_decay, c.e2e.batch_size = 30.0, 30.0, 8
    return c


def _preset_ade_indoor() -> TrainConfig:
    c = TrainConfig(preset="ade_indoor", out="runs/ade_indoor")
    c.data = DataConfig(dataset="ade_indoor", num_classes=95, height=256, width=256)
    c.seg = SegConfig(max_dim=256, aspect_ratio=1.0, epochs_per_phase=100.0, batch_size=36, batch_size_high=12)
    c.spade = SpadeConfig(num_upsampling_layers="normal", crop_size=256, aspect_ratio=1.0, epochs=150.0,
                          epochs_decay=150.0, batch_size=16)
    c.e2e = E2EConfig(lr_seg=1e-4, epochs=50.0, epochs_decay=50.0, batch_size=16)
    return c


def _preset_demo() -> TrainConfig:
    """A few minutes on a 2-core CPU, tuned for what it shows (bench/bench_quality.py measured each change; README,
    "The demo"): four times the seg epochs of a phase, standard PixelNorm (x / sqrt(mean x^2)) and the ProGAN
    fade-in instead of the authors' two quirks, twice the SPADE learning rates (TTUR ratio kept) over four times the
    spade epochs, the authors' Cityscapes e2e rate for G_seg, and moving averages of the generators."""
    c = TrainConfig(preset="demo", out="runs/demo", log_every=10, sample_every=100, ckpt_every=100)
    c.data = DataConfig(dataset="synthetic", num_classes=0, height=32, width=64, synthetic_size=512)
    c.seg = SegConfig(max_dim=32, aspect_ratio=2.0, z_dim=64, width_mult=0.0625, epochs_per_phase=4.0,
                      batch_size=16, batch_size_high=16, pixel_norm="standard", fade_in=True)
    c.spade = SpadeConfig(ngf=8, ndf=8, num_upsampling_layers="normal", crop_size=64, aspect_ratio=2.0,
                          norm_G="spectralspadebatch3x3", vgg_loss=False, lr_G=2e-4, lr_D=8e-4, epochs=4.0,
                          epochs_decay=4.0, batch_size=8)
    c.e2e = E2EConfig(lr_seg=1e-5, lr_G=2e-4, lr_D=8e-4, d2_pretrain_epochs=0.25, epochs=0.5, epochs_decay=0.5,
                      batch_size=8)
    c.ema = EMAConfig(enabled=True)
    c.progan = ProGANConfig(schedule="seg")
    return c


PRESETS = {
    "cityscapes": _preset_cityscapes,
    "cityscapes25k": _preset_cityscapes25k,
    "ade_indoor": _preset_ade_indoor,
    "demo": _preset_demo,
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
