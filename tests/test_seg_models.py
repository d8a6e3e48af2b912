"""Tests for the progressive label-map generator/discriminator and their layers (CPU, small widths)."""
import math

import pytest
import torch
import torch.nn.functional as F

from sbgan_fast.models.seg import SegDiscriminator, SegGenerator
from sbgan_fast.nn.equalized import EqualizedConv2d, EqualizedLinear
from sbgan_fast.nn.pixelnorm import PixelNorm, pixel_norm
from tolerances import EXACT, FP32_GRAD, tol

SQRT2 = math.sqrt(2.0)
# Full-width channels per height, as the paper's networks use them.
FULL_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64}


def _rand_params(model):
    """Non-trivial biases (they start at 0) so that every parameter affects the outputs."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
    return model


# ------------------------------------------------------------------------------------------------------------------
# layers


def test_equalized_conv_scale_and_state_dict():
    conv = EqualizedConv2d(6, 5, 3, stride=(1, 2), padding=1)
    assert set(conv.state_dict()) == {"weight", "bias"}
    assert torch.count_nonzero(conv.bias) == 0
    w = EqualizedConv2d(64, 64, 3).weight
    assert abs(w.std().item() - 1.0) < 0.05 and abs(w.mean().item()) < 0.05  # stored N(0, 1), unscaled
    assert conv.scale == pytest.approx(SQRT2 / math.sqrt(6 * 9))
    with torch.no_grad():
        conv.bias.normal_()
    x = torch.randn(2, 6, 4, 8)
    expect = F.conv2d(x, conv.weight * (SQRT2 / math.sqrt(54)), conv.bias, stride=(1, 2), padding=1)
    torch.testing.assert_close(conv(x), expect, rtol=0, atol=0)
    assert conv(x).shape == (2, 5, 4, 4)
    head = EqualizedConv2d(3, 7, 1, gain=1.0)
    assert head.scale == pytest.approx(1.0 / math.sqrt(3))
    assert "scale" not in dict(head.named_buffers()) and "scale" not in dict(head.named_parameters())


def test_equalized_linear_scale_and_state_dict():
    fc = EqualizedLinear(16, 3, gain=SQRT2 / 4)
    assert set(fc.state_dict()) == {"weight", "bias"}
    assert fc.scale == pytest.approx(SQRT2 / 4 / 4.0)
    with torch.no_grad():
        fc.bias.normal_()
    x = torch.randn(5, 16)
    torch.testing.assert_close(fc(x), F.linear(x, fc.weight * fc.scale, fc.bias), rtol=0, atol=0)
    no_bias = EqualizedLinear(4, 2, bias=False)
    assert set(no_bias.state_dict()) == {"weight"}


@pytest.mark.parametrize("bad", [dict(gain=0.0), dict(kernel_size=0), dict(stride=(1, 0)), dict(padding=-1),
                                 dict(in_channels=0)])
def test_equalized_conv_rejects_bad_arguments(bad):
    kwargs = dict(in_channels=3, out_channels=4, kernel_size=3)
    kwargs.update(bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        EqualizedConv2d(**kwargs)


def test_pixel_norm_modes():
    x = torch.randn(3, 8, 5, 6) * 3.0
    mean_sq = x.pow(2).mean(dim=1, keepdim=True)
    torch.testing.assert_close(PixelNorm("code")(x), x / (mean_sq + 1e-8), **EXACT)
    torch.testing.assert_close(PixelNorm()(x), x / (mean_sq + 1e-8), **EXACT)  # the authors' form by default
    std = PixelNorm("standard")(x)
    torch.testing.assert_close(std, x * torch.rsqrt(mean_sq + 1e-8), **EXACT)
    torch.testing.assert_close(std.pow(2).mean(dim=1), torch.ones(3, 5, 6), **tol(torch.float32))
    # The code form is not scale invariant: mean square m -> 1/m.
    code = PixelNorm("code")(x)
    torch.testing.assert_close(code.pow(2).mean(dim=1, keepdim=True), 1.0 / mean_sq, **FP32_GRAD)
    z = torch.randn(4, 16)
    torch.testing.assert_close(pixel_norm(z, "standard").pow(2).mean(1), torch.ones(4), **tol(torch.float32))
    half = PixelNorm("standard")(x.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), std, **tol(torch.bfloat16))
    assert PixelNorm("code")(x.contiguous(memory_format=torch.channels_last)).shape == x.shape
    with pytest.raises(ValueError, match="mode"):
        PixelNorm("sqrt")


# ------------------------------------------------------------------------------------------------------------------
# shapes and parameter counts


@pytest.mark.slow
@pytest.mark.parametrize("ar", [1, 2])
def test_shapes_every_resolution(ar):
    k = 5
    G = SegGenerator(k, max_dim=64, aspect_ratio=ar, z_dim=32, width_mult=1 / 32)
    D = SegDiscriminator(k, max_dim=64, aspect_ratio=float(ar), width_mult=1 / 32)
    assert G.resolutions == D.resolutions == [4, 8, 16, 32, 64]
    assert G.channels == [16, 16, 16, 16, 8]
    z = torch.randn(3, 32)
    for res in G.resolutions:
        p = G(z, res=res)
        assert p.shape == (3, k, res, res * ar)
        torch.testing.assert_close(p.sum(dim=1), torch.ones(3, res, res * ar), **tol(torch.float32))
        assert (p >= 0).all()
        score = D(p)
        assert score.shape == (3,) and torch.isfinite(score).all()
        if res > 4:
            pf = G(z, res=res, alpha=0.3)
            assert pf.shape == p.shape
            torch.testing.assert_close(pf.sum(dim=1), torch.ones(3, res, res * ar), **tol(torch.float32))
            assert D(p, alpha=0.3).shape == (3,)
    assert G(z).shape == (3, k, 64, 64 * ar)  # res defaults to max_dim


def test_param_counts_full_width():
    G = SegGenerator(35, max_dim=256, aspect_ratio=2)
    D = SegDiscriminator(35, max_dim=256, aspect_ratio=2)
    n_g = sum(p.numel() for p in G.parameters())
    n_d = sum(p.numel() for p in D.parameters())
    # The authors' networks: 27.33 M and 23.13 M parameters for 35 classes at 256 x 512.
    assert n_g == 27_334_581
    assert n_d == 23_127_617
    assert [G.channels[j] for j in range(7)] == [FULL_CHANNELS[r] for r in G.resolutions]
    # equalized scales are run-time constants, not checkpoint entries
    assert all(k.endswith((".weight", ".bias")) for k in list(G.state_dict()) + list(D.state_dict()))
    assert not list(G.buffers()) and not list(D.buffers())
    # aspect ratio 1 (ADE-Indoor, 95 classes): only the first linear layer changes size in G, nothing in D
    G1 = SegGenerator(35, max_dim=256, aspect_ratio=1)
    D1 = SegDiscriminator(35, max_dim=256, aspect_ratio=1)
    assert n_g - sum(p.numel() for p in G1.parameters()) == (512 + 1) * 512 * 16
    assert sum(p.numel() for p in D1.parameters()) == n_d


def test_argument_errors():
    G = SegGenerator(4, max_dim=16, z_dim=8, width_mult=1 / 64)
    D = SegDiscriminator(4, max_dim=16, aspect_ratio=2, width_mult=1 / 64)
    with pytest.raises(ValueError, match="z must have shape"):
        G(torch.randn(2, 9))
    with pytest.raises(ValueError, match="res must be one of"):
        G(torch.randn(2, 8), res=12)
    with pytest.raises(ValueError, match="alpha"):
        G(torch.randn(2, 8), res=4, alpha=0.5)
    with pytest.raises(ValueError, match="alpha"):
        G(torch.randn(2, 8), res=8, alpha=1.5)
    with pytest.raises(ValueError, match="width"):
        D(torch.randn(2, 4, 8, 8))
    with pytest.raises(ValueError, match="height must be one of"):
        D(torch.randn(2, 4, 32, 64))
    with pytest.raises(ValueError, match=r"\(N, 4"):
        D(torch.randn(2, 3, 8, 16))
    with pytest.raises(ValueError, match="max_dim"):
        SegGenerator(4, max_dim=48)
    with pytest.raises(ValueError, match="aspect_ratio"):
        SegDiscriminator(4, aspect_ratio=1.5)
    with pytest.raises(ValueError, match="pixel_norm"):
        SegGenerator(4, pixel_norm="sqrt")


def test_alpha_one_skips_previous_head():
    G = SegGenerator(3, max_dim=16, z_dim=8, width_mult=1 / 64)
    D = SegDiscriminator(3, max_dim=16, width_mult=1 / 64)
    calls = []
    G.to_mask[1].register_forward_hook(lambda *a: calls.append("G"))
    D.from_mask[1].register_forward_hook(lambda *a: calls.append("D"))
    D(G(torch.randn(2, 8), res=16))
    assert calls == []
    D(G(torch.randn(2, 8), res=16, alpha=0.5), alpha=0.5)
    assert calls == ["G", "D"]


# ------------------------------------------------------------------------------------------------------------------
# reference checkpoints


def _ref_eq(w, gain=SQRT2):
    return w * (gain / math.sqrt(w[0].numel()))


def _ref_pn(x):
    return x / (x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


def _ref_generator_features(sd, z, n_run, ar):
    """Features after reference blocks 0..n_run-1, computed directly from the reference-layout tensors."""
    lrelu = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
    x = F.linear(_ref_pn(z), _ref_eq(sd["blocks.0.fc1.weight"], SQRT2 / 4), sd["blocks.0.fc1.bias"])
    x = _ref_pn(lrelu(x.view(z.shape[0], -1, 4, 4 * ar)))
    x = _ref_pn(lrelu(F.conv2d(x, _ref_eq(sd["blocks.0.conv2.weight"]), sd["blocks.0.conv2.bias"], padding=1)))
    for i in range(1, n_run):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        for name in ("conv1", "conv2"):
            w, b = sd[f"blocks.{i}.{name}.weight"], sd[f"blocks.{i}.{name}.bias"]
            x = _ref_pn(lrelu(F.conv2d(x, _ref_eq(w), b, padding=1)))
    return x


def _ref_mask(sd, i, x):
    return F.conv2d(x, _ref_eq(sd[f"blocks.{i}.to_mask.weight"], 1.0), sd[f"blocks.{i}.to_mask.bias"]).softmax(1)


def _ref_generator(sd, z, res, ar, alpha=1.0):
    i = int(math.log2(res)) - 2
    if alpha == 1.0:
        return _ref_mask(sd, i, _ref_generator_features(sd, z, i + 1, ar))
    prev = _ref_generator_features(sd, z, i, ar)
    coarse = _ref_mask(sd, i - 1, F.interpolate(prev, scale_factor=2, mode="nearest"))
    fine = _ref_mask(sd, i, _ref_generator_features(sd, z, i + 1, ar))
    return (1 - alpha) * coarse + alpha * fine


def _ref_discriminator(sd, x, n, ar, alpha=1.0):
    """Reference critic: blocks numbered from the highest resolution (0) down to the 4x4 block (n-1)."""
    lrelu = lambda t: F.leaky_relu(t, 0.2)  # noqa: E731
    k = n - 1 - (int(math.log2(x.shape[2])) - 2)

    def head(i, t):
        return lrelu(F.conv2d(t, _ref_eq(sd[f"blocks.{i}.from_mask.weight"], 1.0), sd[f"blocks.{i}.from_mask.bias"]))

    def block(i, h):
        final = i == n - 1
        h = lrelu(F.conv2d(h, _ref_eq(sd[f"blocks.{i}.conv1.weight"]), sd[f"blocks.{i}.conv1.bias"],
                           stride=(1, ar) if final else 1, padding=1))
        h = lrelu(F.conv2d(h, _ref_eq(sd[f"blocks.{i}.conv2.weight"]), sd[f"blocks.{i}.conv2.bias"],
                           padding=0 if final else 1))
        if final:
            return F.linear(h.flatten(1), _ref_eq(sd[f"blocks.{i}.fc3.weight"]), sd[f"blocks.{i}.fc3.bias"])
        return F.avg_pool2d(h, 2)

    h = head(k, x)
    if alpha < 1.0:
        h = (1 - alpha) * head(k + 1, F.avg_pool2d(x, 2)) + alpha * block(k, h)
        k += 1
    for i in range(k, n):
        h = block(i, h)
    return h[:, 0]


def _handmade_reference_state_dicts(k, ar, chans, z_dim):
    """Random tensors under the authors' key names and shapes; chans = channels per resolution, 4 first."""
    n = len(chans)
    g = {"blocks.0.fc1.weight": torch.randn(chans[0] * 16 * ar, z_dim),
         "blocks.0.fc1.bias": torch.randn(chans[0] * 16 * ar) * 0.3}
    for i in range(n):
        c = chans[i]
        if i > 0:
            g[f"blocks.{i}.conv1.weight"] = torch.randn(c, chans[i - 1], 3, 3)
            g[f"blocks.{i}.conv1.bias"] = torch.randn(c) * 0.3
        g[f"blocks.{i}.conv2.weight"] = torch.randn(c, c, 3, 3)
        g[f"blocks.{i}.conv2.bias"] = torch.randn(c) * 0.3
        g[f"blocks.{i}.to_mask.weight"] = torch.randn(k, c, 1, 1)
        g[f"blocks.{i}.to_mask.bias"] = torch.randn(k) * 0.3
    d = {}
    for i in range(n):
        j = n - 1 - i  # resolution index of reference block i
        c = chans[j]
        c_out = chans[j - 1] if j > 0 else chans[0]
        d[f"blocks.{i}.from_mask.weight"] = torch.randn(c, k, 1, 1)
        d[f"blocks.{i}.from_mask.bias"] = torch.randn(c) * 0.3
        d[f"blocks.{i}.conv1.weight"] = torch.randn(c, c, 3, 3)
        d[f"blocks.{i}.conv1.bias"] = torch.randn(c) * 0.3
        d[f"blocks.{i}.conv2.weight"] = torch.randn(c_out, c, 4 if j == 0 else 3, 4 if j == 0 else 3)
        d[f"blocks.{i}.conv2.bias"] = torch.randn(c_out) * 0.3
    d[f"blocks.{n - 1}.fc3.weight"] = torch.randn(1, chans[0])
    d[f"blocks.{n - 1}.fc3.bias"] = torch.randn(1)
    return g, d


@pytest.mark.slow
@pytest.mark.parametrize("ar", [1, 2])
def test_handmade_reference_layout_loads_and_matches(ar):
    k, z_dim, max_dim = 6, 24, 64
    chans = [FULL_CHANNELS[r] // 32 for r in (4, 8, 16, 32, 64)]
    g_sd, d_sd = _handmade_reference_state_dicts(k, ar, chans, z_dim)
    # a whole checkpoint as the authors save it, networks wrapped in DataParallel
    ckpt = {"iter": 10, "phase": "stabilize", "dim": max_dim,
            "G_state_dict": {"module." + key: v for key, v in g_sd.items()}, "D_state_dict": d_sd}
    G = SegGenerator.from_reference_state_dict(ckpt, num_classes=k, max_dim=max_dim, aspect_ratio=ar)
    D = SegDiscriminator.from_reference_state_dict(ckpt, num_classes=k, max_dim=max_dim, aspect_ratio=ar)
    assert G.z_dim == z_dim and G.channels == chans and D.channels == chans
    z = torch.randn(3, z_dim)
    with torch.no_grad():
        for res in G.resolutions:
            p = G(z, res=res)
            torch.testing.assert_close(p, _ref_generator(g_sd, z, res, ar), **tol(torch.float32))
            torch.testing.assert_close(D(p), _ref_discriminator(d_sd, p, len(chans), ar), **tol(torch.float32))
            if res > 4:
                pf = G(z, res=res, alpha=0.25)
                torch.testing.assert_close(pf, _ref_generator(g_sd, z, res, ar, 0.25), **tol(torch.float32))
                torch.testing.assert_close(D(pf, alpha=0.25), _ref_discriminator(d_sd, pf, len(chans), ar, 0.25),
                                           **tol(torch.float32))
    # writing back gives the same keys and tensors
    assert list(G.to_reference_state_dict()) == list(g_sd)
    assert set(D.to_reference_state_dict()) == set(d_sd)
    for key, v in D.to_reference_state_dict().items():
        assert torch.equal(v, d_sd[key])


@pytest.mark.parametrize("ar", [1, 2])
def test_reference_round_trip_exact(ar):
    G = _rand_params(SegGenerator(7, max_dim=32, aspect_ratio=ar, width_mult=1 / 16))
    D = _rand_params(SegDiscriminator(7, max_dim=32, aspect_ratio=ar, width_mult=1 / 16))
    G2 = SegGenerator.from_reference_state_dict(G.to_reference_state_dict(), num_classes=7, max_dim=32,
                                                aspect_ratio=ar)
    D2 = SegDiscriminator.from_reference_state_dict(D.to_reference_state_dict(), num_classes=7, max_dim=32,
                                                    aspect_ratio=ar)
    z = torch.randn(2, 512)
    with torch.no_grad():
        for res in G.resolutions:
            p = G(z, res=res)
            assert torch.equal(G2(z, res=res), p)
            assert torch.equal(D2(p), D(p))
    # the reference keys carry no scale entries and the weights stay unscaled
    ref = G.to_reference_state_dict()
    assert torch.equal(ref["blocks.0.fc1.weight"], G.blocks[0].fc.weight.detach())


def test_reference_loading_errors():
    G = SegGenerator(5, max_dim=16, width_mult=1 / 32)
    sd = G.to_reference_state_dict()
    with pytest.raises(ValueError, match="to_mask.weight"):
        SegGenerator.from_reference_state_dict(sd, num_classes=6, max_dim=16)
    with pytest.raises(ValueError, match="max_dim"):
        SegGenerator.from_reference_state_dict(sd, num_classes=5, max_dim=32)
    with pytest.raises(ValueError, match="aspect_ratio"):
        SegGenerator.from_reference_state_dict(sd, num_classes=5, max_dim=16, aspect_ratio=3)
    bad = dict(sd)
    bad["blocks.1.extra.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match="unexpected keys"):
        SegGenerator.from_reference_state_dict(bad, num_classes=5, max_dim=16)
    rgb = {k.replace("to_mask", "to_rgb"): v for k, v in sd.items()}
    with pytest.raises(ValueError, match="RGB"):
        SegGenerator.from_reference_state_dict(rgb, num_classes=5, max_dim=16)
    D = SegDiscriminator(5, max_dim=16, width_mult=1 / 32)
    dsd = D.to_reference_state_dict()
    del dsd["blocks.2.fc3.bias"]
    with pytest.raises(ValueError, match="missing keys"):
        SegDiscriminator.from_reference_state_dict(dsd, num_classes=5, max_dim=16)


# ------------------------------------------------------------------------------------------------------------------
# gradients


@pytest.mark.slow
def test_wgan_gp_double_backward():
    k, ar = 4, 2
    G = SegGenerator(k, max_dim=16, aspect_ratio=ar, z_dim=16, width_mult=1 / 32)
    D = _rand_params(SegDiscriminator(k, max_dim=16, aspect_ratio=ar, width_mult=1 / 32))
    real = F.one_hot(torch.randint(0, k, (3, 16, 32)), k).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        fake = G(torch.randn(3, 16), res=16)
    eps = torch.rand(3, 1, 1, 1)
    mixed = (eps * real + (1 - eps) * fake).requires_grad_(True)
    (grad,) = torch.autograd.grad(D(mixed).sum(), mixed, create_graph=True)
    gp = ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()
    loss = D(fake).mean() - D(real).mean() + 10 * gp
    loss.backward()
    for name, p in D.named_parameters():
        if name.startswith(("from_mask.0.", "from_mask.1.")):  # input heads of the lower resolutions: unused
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            # (a bias can get an exactly zero gradient: mean D(fake) - mean D(real) cancels where LReLU is linear)
            assert name.endswith("bias") or p.grad.abs().sum() > 0, name
    # the penalty alone reaches the weights through the second-order graph
    D.zero_grad()
    (grad,) = torch.autograd.grad(D(mixed).sum(), mixed, create_graph=True)
    ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean().backward()
    assert D.blocks[0].fc.weight.grad.abs().sum() > 0
    assert D.from_mask[2].weight.grad.abs().sum() > 0


@pytest.mark.slow
def test_gradcheck_tiny_networks_float64():
    D = _rand_params(SegDiscriminator(2, max_dim=8, aspect_ratio=2, width_mult=1 / 128)).double()
    x = torch.rand(1, 2, 8, 16, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: D(t), (x,))
    assert torch.autograd.gradcheck(lambda t: D(t, alpha=0.4), (x,), fast_mode=True)
    # second order (the gradient penalty's graph), on a smaller input: the numerical part is quadratic in its size
    D1 = _rand_params(SegDiscriminator(2, max_dim=8, aspect_ratio=1, width_mult=1 / 128)).double()
    assert torch.autograd.gradgradcheck(lambda t: D1(t), (x[:1, :, :, :8].detach().requires_grad_(True),))
    G = _rand_params(SegGenerator(3, max_dim=8, z_dim=6, width_mult=1 / 128)).double()
    z = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: G(t, res=8), (z,))


def test_channels_last_and_autocast():
    G = SegGenerator(5, max_dim=16, aspect_ratio=2, z_dim=16, width_mult=1 / 32)
    D = _rand_params(SegDiscriminator(5, max_dim=16, aspect_ratio=2, width_mult=1 / 32))
    p = G(torch.randn(2, 16), res=16).detach()
    out = D(p)
    torch.testing.assert_close(D(p.contiguous(memory_format=torch.channels_last)), out, **tol(torch.float32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pb = G(torch.randn(2, 16), res=8)
        sb = D(pb)
    assert pb.shape == (2, 5, 8, 16) and torch.isfinite(sb).all()
