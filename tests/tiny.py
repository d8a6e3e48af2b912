"""The tiny training configuration shared by the end-to-end tests: 32x32 images, G_seg at 16x16
upsampled x2 (e2e.seg_half_res), a 32-scene synthetic dataset, schedules of a few steps, and the authors' recipe
(PixelNorm, fade-in, rates, no moving averages) where the demo preset departs from it."""

TINY = [
    "data.height=32", "data.width=32", "data.synthetic_size=32", "seg.max_dim=16", "seg.aspect_ratio=1",
    "spade.crop_size=32", "spade.aspect_ratio=1", "e2e.seg_half_res=true",
    "seg.epochs_per_phase=0.25", "seg.batch_size=4", "seg.batch_size_high=4",
    "spade.epochs=0.25", "spade.epochs_decay=0.25", "spade.batch_size=4",
    "e2e.epochs=0.25", "e2e.epochs_decay=0.25", "e2e.d2_pretrain_epochs=0.25", "e2e.batch_size=4",
    "log_every=2", "sample_every=4", "ckpt_every=3", "n_sample_grid=4", "progress=false", "tensorboard=false",
    # the authors' recipe where the demo preset departs from it for what it shows (tests exercise the defaults)
    "seg.pixel_norm=code", "seg.fade_in=false", "spade.lr_G=1e-4", "spade.lr_D=4e-4", "e2e.lr_G=1e-4",
    "e2e.lr_D=4e-4", "e2e.lr_seg=1e-4", "ema.enabled=false", "progan.schedule=code",
]


def tiny_cfg(out, *extra, **direct):
    """The demo preset with the TINY overrides, then ``extra`` KEY=VALUE overrides and ``direct`` keys."""
    from sbgan_fast.config import build_config
    return build_config("demo", None, TINY + list(extra), out=str(out), **direct)


def folder_dataset(root, *, classes=5, high=None, n=4, size=32):
    """``n`` random (image, label map) pairs of ``size`` x ``size`` in ``root/img`` and ``root/lab`` (seeded: the
    same files every call) and the overrides that train on them as a folder dataset of ``classes`` classes.
    ``high``: {index: bound} draws that file's labels from [0, bound) instead (a bad file)."""
    import numpy as np
    from PIL import Image
    (root / "img").mkdir()
    (root / "lab").mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
        bound = (high or {}).get(i, classes)
        Image.fromarray(rng.integers(0, bound, (size, size), dtype=np.uint8)).save(root / "lab" / f"{i}.png")
    return ["data.dataset=folder", f"data.image_dir={root / 'img'}", f"data.label_dir={root / 'lab'}",
            f"data.num_classes={classes}"]
