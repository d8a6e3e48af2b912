"""Every preset's networks at reduced width and resolution (same classes, aspect ratio and
upsampling mode), and the package importing with only torch, numpy and pillow."""
import os
import subprocess
import sys

import pytest
import torch

from sbgan_fast import ops
from sbgan_fast.data.synthetic import SyntheticScenes
from sbgan_fast.config import PRESETS, build_config
from sbgan_fast.models import build_networks


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_networks_shapes(name):
    cfg = build_config(name, **({} if name == "demo" else {"data.root": "/data"}))
    k = cfg.data.num_classes or len(SyntheticScenes.CLASS_NAMES)
    ar = cfg.spade.aspect_ratio
    n_up = {"normal": 5, "more": 6, "most": 7}[cfg.spade.num_upsampling_layers]
    w = 2 ** n_up * int(ar)              # the smallest crop this architecture allows
    h = int(w / ar)
    cfg.spade.crop_size, cfg.data.height, cfg.data.width = w, h, w
    cfg.seg.max_dim = 8
    cfg.seg.width_mult, cfg.spade.ngf, cfg.spade.ndf = 1 / 64, 4, 4
    nets = build_networks(cfg, k)
    n = 2
    with ops.use_impl(None, "ref"):
        z = torch.randn(n, cfg.seg.z_dim)
        for res in (4, 8):
            p = nets["G_seg"](z, res=res)
            assert p.shape == (n, k, res, int(res * cfg.seg.aspect_ratio))
            torch.testing.assert_close(p.sum(1), torch.ones(n, res, int(res * cfg.seg.aspect_ratio)))
            assert nets["D_seg"](p).shape == (n,)
        labels = torch.randint(0, k, (n, h, w))
        img = nets["G_spd"](labels)
        assert img.shape == (n, 3, h, w) and img.abs().max() <= 1
        seg = ops.one_hot(labels, k)
        feats = nets["D_spd"](torch.cat([seg, img], 1))
        assert len(feats) == cfg.spade.num_D
        assert all(len(f) == cfg.spade.n_layers_D + 1 for f in feats)
        assert feats[0][-1].shape[:2] == (n, 1)
        assert len(nets["D2"](img)) == cfg.spade.num_D


@pytest.mark.slow
def test_imports_with_only_torch_numpy_pillow():
    """Block every optional dependency and import every module of the package."""
    code = r"""
import importlib, pkgutil, sys
BLOCKED = ("triton", "yaml", "tqdm", "tensorboard", "pynvml", "nvidia", "scipy", "pytest", "sbgan_fast._C")
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED or name in BLOCKED:
            raise ImportError("blocked for the test: " + name)
sys.meta_path.insert(0, Block())
import sbgan_fast
names = [m.name for m in pkgutil.walk_packages(sbgan_fast.__path__, "sbgan_fast.")
         if m.name != "sbgan_fast.__main__" and not m.name.startswith("sbgan_fast._C")]
for name in names:
    importlib.import_module(name)
import torch
from sbgan_fast import ops
x = torch.randn(1, 5, 2, 2)
assert ops.gumbel_softmax_st(x).sum() == 4
assert "kernels" not in sys.modules
print("imported", len(names))
"""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "imported" in out.stdout
