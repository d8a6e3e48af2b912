"""The seg stage's real label maps at every progressive resolution equal PIL's NEAREST resize of the label file
(the centre of each source block), as the authors' progressive trainer resizes them; the e2e stage's low-resolution
real maps for D_seg keep the `[::s, ::s]` subsampling (torch's 'nearest')."""
import numpy as np
import pytest
import torch
from PIL import Image

from sbgan_fast.train.trainer import train

from tiny import tiny_cfg

H, W, K = 64, 128, 7


def _folder(tmp_path, n=4):
    rng = np.random.default_rng(3)
    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    labels = []
    for i in range(n):
        # blocks of random classes with random (odd) sizes: the corner and the centre rule disagree everywhere
        lab = rng.integers(0, K, (H, W), dtype=np.uint8)
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
        Image.fromarray(lab).save(tmp_path / "lab" / f"{i}.png")
        labels.append(lab)
    return labels


@pytest.mark.slow
def test_seg_real_maps_are_pil_nearest_of_the_label_file(tmp_path):
    files = _folder(tmp_path)
    cfg = tiny_cfg(tmp_path / "run", "data.dataset=folder", f"data.image_dir={tmp_path / 'img'}",
                   f"data.label_dir={tmp_path / 'lab'}", f"data.num_classes={K}", f"data.height={H}",
                   f"data.width={W}", f"seg.max_dim={H}", "seg.aspect_ratio=2", f"spade.crop_size={W}",
                   "spade.aspect_ratio=2", "e2e.seg_half_res=false", "data.hflip=false", "stages=seg",
                   "seg.width_mult=0.03125")
    from sbgan_fast.train import trainer as trainer_mod
    seen = []
    orig = trainer_mod.Trainer.open_stage

    def open_stage(self, name):
        stage, start = orig(self, name)
        calls = []

        def hook(mod, args):
            calls.append(args[0].detach().clone())
            if len(calls) % 4 == 2:      # per step: G update (fake), D update (real, fake, interpolates)
                seen.append(calls[-1])
        self.D_seg.register_forward_pre_hook(hook)
        return stage, start

    trainer_mod.Trainer.open_stage = open_stage
    try:
        train(cfg)
    finally:
        trainer_mod.Trainer.open_stage = orig
    by_res = {}
    for real in seen:
        by_res.setdefault(real.shape[-2], real)
    assert sorted(by_res) == [4, 8, 16, 32, 64]
    for h, real in by_res.items():
        w = 2 * h
        want = [np.array(Image.fromarray(f).resize((w, h), Image.NEAREST)) for f in files]
        got = real.argmax(1).numpy()
        assert real.sum(1).eq(1).all()
        for m in got:
            assert any(np.array_equal(m, x) for x in want), f"{h}x{w}: a real map is no PIL NEAREST resize of a file"
        if h < H:    # the corner rule gives other maps
            corner = [f[::H // h, ::W // w] for f in files]
            assert not any(np.array_equal(m, x) for m in got for x in corner)


def test_e2e_low_resolution_real_maps_subsample_at_the_corner():
    from sbgan_fast import ops
    labels = torch.randint(0, K, (2, 32, 64))
    low = ops.one_hot(labels, K, size=(16, 32)).argmax(1)
    assert torch.equal(low, labels[:, ::2, ::2])
