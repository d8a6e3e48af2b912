"""The SB-GAN composition and the integer-label (gather) routes the trainer uses."""
import pytest
import torch

from sbgan_fast import ops
from sbgan_fast.models import SBGAN, SegGenerator, SPADEGenerator
from tolerances import FP32_GRAD, FP32_REORDERED


def small_generators(k=7):
    # instance norm in eval mode: deterministic, and the outputs do not saturate at init
    g_seg = SegGenerator(k, max_dim=16, aspect_ratio=2.0, z_dim=16, width_mult=1 / 32)
    g_spd = SPADEGenerator(k, ngf=4, crop_size=64, aspect_ratio=2.0, norm_G="spectralspadeinstance3x3")  # eval: no running stats, no power step
    return g_seg, g_spd


@pytest.mark.slow
def test_spade_generator_labels_route_matches_float_route():
    _, g = small_generators()
    g.eval()
    p = torch.randn(2, 7, 16, 32).softmax(1)
    seg = ops.gumbel_softmax_st(torch.log(p + 1e-5).requires_grad_(), noise=torch.zeros_like(p))
    seg_a = seg.detach().requires_grad_()
    seg_b = seg.detach().requires_grad_()
    seg_a_up = torch.nn.functional.interpolate(seg_a, scale_factor=2, mode="nearest")
    seg_b_up = torch.nn.functional.interpolate(seg_b, scale_factor=2, mode="nearest")
    out_a = g(seg_a_up)
    out_b = g(seg_b_up, labels=seg_b_up.argmax(1))
    torch.testing.assert_close(out_b, out_a, **FP32_REORDERED)
    w = torch.randn_like(out_a)
    (out_a * w).sum().backward()
    (out_b * w).sum().backward()
    # detach_seg: the map's gradient comes through fc only, identical on both routes
    torch.testing.assert_close(seg_b.grad, seg_a.grad, **FP32_GRAD)
    assert seg_a.grad.abs().sum() > 0


@pytest.mark.slow
def test_int_labels_equal_one_hot_input():
    _, g = small_generators()
    g.eval()
    labels = torch.randint(0, 7, (2, 32, 64))
    torch.testing.assert_close(g(labels), g(ops.one_hot(labels, 7)), **FP32_REORDERED)


@pytest.mark.slow
def test_sbgan_forward_hard_and_soft():
    g_seg, g_spd = small_generators()
    model = SBGAN(g_seg, g_spd, seg_upsample=2).eval()
    z = torch.randn(3, 16)
    labels, img = model(z)
    assert labels.dtype == torch.int64 and labels.shape == (3, 32, 64)
    assert img.shape == (3, 3, 32, 64) and img.abs().max() <= 1
    assert torch.equal(labels, model.upsample(model.sample_labels(z)))
    model.train()
    seg, img = model(z, hard=False)
    assert seg.shape == (3, 7, 32, 64) and torch.equal(seg.sum(1), torch.ones(3, 32, 64))
    img.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in g_seg.parameters())
