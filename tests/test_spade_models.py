"""Image-stage networks: spectral norm, SPADE layer/block, SPADEGenerator, MultiscaleDiscriminator.

The reference key layouts and the reference forward passes below are written independently of the package
(from the architecture description), so a wrong module name, shape, op order or stride fails here.
"""
import copy
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from sbgan_fast import ops
from sbgan_fast.models.discriminator import MultiscaleDiscriminator, NLayerDiscriminator
from sbgan_fast.models.spade_gen import SPADEGenerator
from sbgan_fast.nn.spade import SPADE, SPADEResnetBlock, parse_norm_G
from sbgan_fast.nn.spectral import remove_spectral_norm, spectral_norm
from tolerances import FP32_GRAD, tol



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from a second thread, and on a loaded machine OpenMP's spinning makes
    two threads 10x slower: run this module single-threaded, restoring the setting afterwards."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True)
def _reference_ops():
    """These tests check the networks, not the kernels (their parity tests live with the ops): run the
    ops' reference paths, which are fast on CPU, unless a test selects an impl itself."""
    with ops.use_impl(None, "ref"):
        yield


# ---------------------------------------------------------------------------------------- reference layouts


def _conv(shapes, name, cout, cin, k, *, bias=True, sn=False):
    if sn:
        shapes[f"{name}.weight_orig"] = ("param", (cout, cin, k, k))
        shapes[f"{name}.weight_u"] = ("u", (cout,))
        shapes[f"{name}.weight_v"] = ("v", (cin * k * k,))
    else:
        shapes[f"{name}.weight"] = ("param", (cout, cin, k, k))
    if bias:
        shapes[f"{name}.bias"] = ("param", (cout,))


def _spade(shapes, name, c, label_c, batch_norm=True):
    if batch_norm:
        shapes[f"{name}.param_free_norm.running_mean"] = ("mean", (c,))
        shapes[f"{name}.param_free_norm.running_var"] = ("var", (c,))
        shapes[f"{name}.param_free_norm.num_batches_tracked"] = ("count", ())
    _conv(shapes, f"{name}.mlp_shared.0", 128, label_c, 3)
    _conv(shapes, f"{name}.mlp_gamma", c, 128, 3)
    _conv(shapes, f"{name}.mlp_beta", c, 128, 3)


def _g_blocks(nf, mode):
    b = [("head_0", 16 * nf, 16 * nf), ("G_middle_0", 16 * nf, 16 * nf), ("G_middle_1", 16 * nf, 16 * nf),
         ("up_0", 16 * nf, 8 * nf), ("up_1", 8 * nf, 4 * nf), ("up_2", 4 * nf, 2 * nf), ("up_3", 2 * nf, nf)]
    if mode == "most":
        b.append(("up_4", nf, nf // 2))
    return b


def reference_G_layout(label_c, nf, mode, *, spectral=True, batch_norm=True):
    """key -> (kind, shape) of the reference SPADE generator's state dict."""
    s = {}
    _conv(s, "fc", 16 * nf, label_c, 3)
    for name, fin, fout in _g_blocks(nf, mode):
        fm = min(fin, fout)
        _conv(s, f"{name}.conv_0", fm, fin, 3, sn=spectral)
        _conv(s, f"{name}.conv_1", fout, fm, 3, sn=spectral)
        if fin != fout:
            _conv(s, f"{name}.conv_s", fout, fin, 1, bias=False, sn=spectral)
        _spade(s, f"{name}.norm_0", fin, label_c, batch_norm)
        _spade(s, f"{name}.norm_1", fm, label_c, batch_norm)
        if fin != fout:
            _spade(s, f"{name}.norm_s", fin, label_c, batch_norm)
    _conv(s, "conv_img", 3, nf // 2 if mode == "most" else nf, 3)
    return s


def reference_D_layout(input_c, ndf, n_layers, num_D):
    """Reference 'spectralinstance' multiscale D: SN convs wrapped as Sequential(conv, InstanceNorm)."""
    s = {}
    for i in range(num_D):
        p = f"discriminator_{i}"
        _conv(s, f"{p}.model0.0", ndf, input_c, 4)
        nf = ndf
        for k in range(1, n_layers):
            nf_prev, nf = nf, min(nf * 2, 512)
            _conv(s, f"{p}.model{k}.0.0", nf, nf_prev, 4, bias=False, sn=True)
        _conv(s, f"{p}.model{n_layers}.0", 1, nf, 4)
    return s


def random_state(layout, gen):
    sd = {}
    for k, (kind, shape) in layout.items():
        if kind == "param":
            sd[k] = torch.randn(shape, generator=gen) * 0.05
        elif kind in ("u", "v"):
            sd[k] = F.normalize(torch.randn(shape, generator=gen), dim=0)
        elif kind == "mean":
            sd[k] = torch.randn(shape, generator=gen) * 0.1
        elif kind == "var":
            sd[k] = torch.rand(shape, generator=gen) + 0.5
        else:
            sd[k] = torch.tensor(7, dtype=torch.long)
    return sd


def n_params(layout):
    return sum(math.prod(shape) for kind, shape in layout.values() if kind == "param")


# --------------------------------------------------------------------------- reference forward (eval mode)

def _sn_eval(sd, p):
    w = sd[p + ".weight_orig"]
    sigma = torch.dot(sd[p + ".weight_u"], w.reshape(w.shape[0], -1) @ sd[p + ".weight_v"])
    return w / sigma


def _ref_spade(sd, p, x, seg):
    rm, rv = sd[p + ".param_free_norm.running_mean"], sd[p + ".param_free_norm.running_var"]
    xn = (x - rm.view(1, -1, 1, 1)) / torch.sqrt(rv.view(1, -1, 1, 1) + 1e-5)
    seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
    a = F.relu(F.conv2d(seg, sd[p + ".mlp_shared.0.weight"], sd[p + ".mlp_shared.0.bias"], padding=1))
    gamma = F.conv2d(a, sd[p + ".mlp_gamma.weight"], sd[p + ".mlp_gamma.bias"], padding=1)
    beta = F.conv2d(a, sd[p + ".mlp_beta.weight"], sd[p + ".mlp_beta.bias"], padding=1)
    return xn * (1 + gamma) + beta


def _ref_block(sd, p, x, seg, learned):
    if learned:
        xs = F.conv2d(_ref_spade(sd, p + ".norm_s", x, seg), _sn_eval(sd, p + ".conv_s"))
    else:
        xs = x
    dx = F.conv2d(F.leaky_relu(_ref_spade(sd, p + ".norm_0", x, seg), 0.2), _sn_eval(sd, p + ".conv_0"),
                  sd[p + ".conv_0.bias"], padding=1)
    dx = F.conv2d(F.leaky_relu(_ref_spade(sd, p + ".norm_1", dx, seg), 0.2), _sn_eval(sd, p + ".conv_1"),
                  sd[p + ".conv_1.bias"], padding=1)
    return xs + dx


def reference_G_forward(sd, seg, nf, mode, sh, sw):
    up = lambda t: F.interpolate(t, scale_factor=2, mode="nearest")  # noqa: E731
    x = F.conv2d(F.interpolate(seg, size=(sh, sw)), sd["fc.weight"], sd["fc.bias"], padding=1)
    for name, fin, fout in _g_blocks(nf, mode):
        if name.startswith("up_") or name == "G_middle_0" or (name == "G_middle_1" and mode != "normal"):
            x = up(x)
        x = _ref_block(sd, name, x, seg, fin != fout)
    return torch.tanh(F.conv2d(F.leaky_relu(x, 0.2), sd["conv_img.weight"], sd["conv_img.bias"], padding=1))


def reference_D_forward(sd, x, n_layers, num_D, strides):
    result = []
    for i in range(num_D):
        p = f"discriminator_{i}"
        h = F.leaky_relu(F.conv2d(x, sd[p + ".model0.0.weight"], sd[p + ".model0.0.bias"], stride=2, padding=2), 0.2)
        feats = [h]
        for k in range(1, n_layers):
            h = F.conv2d(h, _sn_eval(sd, f"{p}.model{k}.0.0"), None, stride=strides[k - 1], padding=2)
            h = F.leaky_relu(F.instance_norm(h, eps=1e-5), 0.2)
            feats.append(h)
        feats.append(F.conv2d(h, sd[f"{p}.model{n_layers}.0.weight"], sd[f"{p}.model{n_layers}.0.bias"], padding=2))
        result.append(feats)
        x = F.avg_pool2d(x, 3, 2, 1, count_include_pad=False)
    return result


def random_onehot(n, k, h, w):
    return F.one_hot(torch.randint(0, k, (n, h, w)), k).permute(0, 3, 1, 2).float()


# ------------------------------------------------------------------------------------------- spectral norm

def test_spectral_norm_matches_torch_and_keeps_legacy_keys():
    ours = spectral_norm(nn.Conv2d(6, 5, 3, padding=1))
    theirs = torch.nn.utils.spectral_norm(nn.Conv2d(6, 5, 3, padding=1))
    sd = ours.state_dict()
    assert set(sd) == {"weight_orig", "weight_u", "weight_v", "bias"}
    assert set(theirs.state_dict()) == set(sd)
    theirs.load_state_dict(sd)
    x = torch.randn(2, 6, 7, 7)
    for _ in range(3):  # training forwards: one power iteration each, same u/v trajectory
        torch.testing.assert_close(ours(x), theirs(x), **tol(torch.float32))
    torch.testing.assert_close(ours.weight_u, theirs.weight_u, **tol(torch.float32))
    ours.eval(), theirs.eval()
    u_before = ours.weight_u.clone()
    torch.testing.assert_close(ours(x), theirs(x), **tol(torch.float32))
    assert torch.equal(ours.weight_u, u_before), "eval forward must not iterate"
    # and back: torch's state dict loads into ours
    fresh = spectral_norm(nn.Conv2d(6, 5, 3, padding=1)).eval()
    fresh.load_state_dict(theirs.state_dict())
    torch.testing.assert_close(fresh(x), theirs(x), **tol(torch.float32))


def test_spectral_norm_normalizes_and_iterates_in_fp32_under_autocast():
    conv = spectral_norm(nn.Conv2d(4, 8, 3))
    ref = copy.deepcopy(conv)
    x = torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        for _ in range(300):
            ref(x)
    s = torch.linalg.matrix_norm(ref.weight.detach().reshape(8, -1), ord=2)
    assert abs(float(s) - 1.0) < 1e-4  # converged power iteration: spectral norm 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    ref2 = copy.deepcopy(ref)
    assert y.dtype == torch.bfloat16 and conv.weight_u.dtype == torch.float32
    # one fp32 iteration from the same start gives the same u as without autocast
    start = spectral_norm(nn.Conv2d(4, 8, 3))
    a, b = copy.deepcopy(start), copy.deepcopy(start)
    a(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b(x)
    torch.testing.assert_close(a.weight_u, b.weight_u, **tol(torch.float32))
    torch.testing.assert_close(a.weight, b.weight, **tol(torch.float32))
    # remove_spectral_norm bakes the eval weight
    baked = remove_spectral_norm(copy.deepcopy(ref2).eval())
    assert "weight" in dict(baked.named_parameters()) and not hasattr(baked, "weight_u")
    torch.testing.assert_close(baked(x), ref2.eval()(x), **tol(torch.float32))


# --------------------------------------------------------------------------------------- SPADE layer/block

@pytest.mark.parametrize("norm", ["batch", "sync_batch", "instance"])
def test_spade_layer_matches_definition(norm):
    layer = SPADE(6, 4, param_free_norm=norm, nhidden=16)
    x = torch.randn(3, 6, 8, 10)
    seg = random_onehot(3, 4, 16, 20)
    out = layer(x, seg)
    segr = F.interpolate(seg, size=(8, 10), mode="nearest")
    a = F.relu(layer.mlp_shared[0](segr))
    gamma, beta = layer.mlp_gamma(a), layer.mlp_beta(a)
    if norm == "instance":
        xn = F.instance_norm(x, eps=1e-5)
    else:
        xn = F.batch_norm(x, None, None, training=True, eps=1e-5)
    torch.testing.assert_close(out, xn * (1 + gamma) + beta, **tol(torch.float32))
    if norm != "instance":
        rm = layer.param_free_norm.running_mean
        torch.testing.assert_close(rm, 0.1 * x.mean(dim=(0, 2, 3)), **tol(torch.float32))
        assert int(layer.param_free_norm.num_batches_tracked) == 1
        assert set(layer.state_dict()) >= {"param_free_norm.running_mean", "param_free_norm.running_var"}
    else:
        assert not any(k.startswith("param_free_norm") for k in layer.state_dict())


def test_spade_embed_hook_and_int_labels():
    layer = SPADE(4, 6, param_free_norm="batch", nhidden=8, dontcare=255).eval()
    labels = torch.randint(0, 5, (2, 12, 12))
    labels[:, :3] = 255
    onehot = F.one_hot(torch.where(labels == 255, 5, labels), 6).permute(0, 3, 1, 2).float()
    x = torch.randn(2, 4, 6, 6)
    torch.testing.assert_close(layer(x, labels), layer(x, onehot), **tol(torch.float32))
    calls = []
    orig = layer._embed

    def spy(seg):
        calls.append(tuple(seg.shape))
        return orig(seg)

    layer._embed = spy
    layer(x, onehot)
    assert calls == [(2, 6, 6, 6)], "the first SPADE conv must go through _embed on the resized map"


def test_parse_norm_G():
    assert parse_norm_G("spectralspadesyncbatch3x3") == (True, "sync_batch", 3)
    assert parse_norm_G("spadeinstance5x5") == (False, "instance", 5)
    with pytest.raises(ValueError, match="norm_G"):
        parse_norm_G("spectralspadegroup3x3")
    with pytest.raises(ValueError, match="norm_G"):
        SPADEResnetBlock(4, 4, 3, norm_G="spectralinstance")


# ------------------------------------------------------------------------------------------------ generator

@pytest.mark.parametrize("mode,crop,ar,expect", [
    ("normal", 64, 1.0, (64, 64)), ("normal", 64, 2.0, (32, 64)),
    ("more", 128, 2.0, (64, 128)), ("more", 128, 1.0, (128, 128)),
    ("most", 256, 2.0, (128, 256)),
])
def test_generator_output_shapes(mode, crop, ar, expect):
    g = SPADEGenerator(4, ngf=4, num_upsampling_layers=mode, crop_size=crop, aspect_ratio=ar)
    n = 2 ** {"normal": 5, "more": 6, "most": 7}[mode]
    assert (g.sh * n, g.sw * n) == expect and g.output_size == expect
    y = g(random_onehot(1, 4, *expect))
    assert y.shape == (1, 3) + expect
    assert float(y.detach().abs().max()) <= 1.0
    assert hasattr(g, "up_4") == (mode == "most")


def test_generator_nhidden_sets_every_spade_embedding_width():
    g = SPADEGenerator(5, ngf=4, crop_size=64, aspect_ratio=2.0, nhidden=24)
    norms = [m for m in g.modules() if isinstance(m, SPADE)]
    assert len(norms) == 18  # 7 blocks x 2 + 4 learned shortcuts
    for m in norms:
        assert m.mlp_shared[0].out_channels == 24
        assert m.mlp_gamma.in_channels == m.mlp_beta.in_channels == 24
    assert g(random_onehot(2, 5, 32, 64)).shape == (2, 3, 32, 64)
    default = SPADEGenerator(5, ngf=4, crop_size=64, aspect_ratio=2.0)
    assert {m.mlp_shared[0].out_channels for m in default.modules() if isinstance(m, SPADE)} == {128}


@pytest.mark.parametrize("dataset,label_nc,mode,crop,ar,printed", [
    ("cityscapes", 35, "more", 512, 2.0, 93.0),
    ("ade_indoor", 95, "normal", 256, 1.0, 94.8),
])
def test_generator_parameter_count_full_width(dataset, label_nc, mode, crop, ar, printed):
    with torch.device("meta"):
        g = SPADEGenerator(label_nc, num_upsampling_layers=mode, crop_size=crop, aspect_ratio=ar)
    n = sum(p.numel() for p in g.parameters())
    assert n == n_params(reference_G_layout(label_nc, 64, mode))
    assert round(n / 1e6, 1) == printed  # what the authors' code prints ("%.1f million")
    layout = reference_G_layout(label_nc, 64, mode)
    assert {k: tuple(v.shape) for k, v in g.state_dict().items()} == {k: s for k, (_, s) in layout.items()}


def test_discriminator_parameter_counts_full_width():
    with torch.device("meta"):
        d = MultiscaleDiscriminator(35)
        d2 = MultiscaleDiscriminator(35, conditional=False)
    nd, nd2 = (sum(p.numel() for p in m.parameters()) for m in (d, d2))
    assert nd == n_params(reference_D_layout(38, 64, 3, 2))
    assert nd2 == n_params(reference_D_layout(3, 64, 3, 2))
    assert (round(nd / 1e6, 2), round(nd2 / 1e6, 2)) == (1.40, 1.33)


@pytest.mark.parametrize("mode,ar", [("normal", 1.0), ("more", 2.0), ("most", 1.0)])
def test_generator_loads_reference_layout_and_reproduces_it(mode, ar):
    label_c, nf, crop = 5, 4, 128
    layout = reference_G_layout(label_c, nf, mode)
    sd = random_state(layout, torch.Generator().manual_seed(1))
    g = SPADEGenerator.from_reference_state_dict(sd, label_nc=label_c, ngf=nf, num_upsampling_layers=mode,
                                                 crop_size=crop, aspect_ratio=ar).eval()
    out_sd = g.to_reference_state_dict()
    assert set(out_sd) == set(layout)
    for k in sd:
        assert torch.equal(out_sd[k], sd[k]), k
    seg = random_onehot(2, label_c, *g.output_size)
    sw = crop // 2 ** {"normal": 5, "more": 6, "most": 7}[mode]
    expected = reference_G_forward(sd, seg, nf, mode, round(sw / ar), sw)
    torch.testing.assert_close(g(seg), expected, **tol(torch.float32))
    # a DataParallel-style prefix is accepted; a wrong label count is a clear error
    g2 = SPADEGenerator.from_reference_state_dict({"module." + k: v for k, v in sd.items()}, label_nc=label_c,
                                                  ngf=nf, num_upsampling_layers=mode, crop_size=crop,
                                                  aspect_ratio=ar).eval()
    torch.testing.assert_close(g2(seg), expected, **tol(torch.float32))
    with pytest.raises(ValueError, match="label_nc=6"):
        SPADEGenerator.from_reference_state_dict(sd, label_nc=6, ngf=nf, num_upsampling_layers=mode,
                                                 crop_size=crop, aspect_ratio=ar)
    bad = dict(sd)
    bad.pop("head_0.conv_0.weight_v")
    bad["head_0.extra"] = torch.zeros(1)
    with pytest.raises(KeyError, match="head_0.conv_0.weight_v.*head_0.extra"):
        SPADEGenerator.from_reference_state_dict(bad, label_nc=label_c, ngf=nf, num_upsampling_layers=mode,
                                                 crop_size=crop, aspect_ratio=ar)


def test_generator_state_dict_round_trip_train_mode():
    g = SPADEGenerator(3, ngf=4, crop_size=64)
    seg = random_onehot(2, 3, 64, 64)
    g(seg)  # one training forward: u/v and running stats move
    g2 = SPADEGenerator.from_reference_state_dict(g.to_reference_state_dict(), label_nc=3, ngf=4, crop_size=64)
    torch.testing.assert_close(g2(seg), g(seg), **tol(torch.float32))
    g.eval(), g2.eval()
    torch.testing.assert_close(g2(seg), g(seg), **tol(torch.float32))


def test_generator_int_labels_equal_onehot():
    g = SPADEGenerator(5, contain_dontcare_label=True, ngf=4, num_upsampling_layers="normal", crop_size=64,
                       aspect_ratio=2.0).eval()
    labels = torch.randint(0, 5, (2, 32, 64))
    labels[:, :4, :9] = 255
    onehot = F.one_hot(torch.where(labels == 255, 5, labels), 6).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(g(labels), g(onehot), **tol(torch.float32))
    torch.testing.assert_close(g(labels.unsqueeze(1).to(torch.int32)), g(onehot), **tol(torch.float32))
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match="label value 7"):
        g(labels)
    with pytest.raises(ValueError, match=r"\(N, 6"):
        g(onehot[:, :5])


def _seg_grad(g, seg, detach_fc_input):
    g = copy.deepcopy(g)
    if detach_fc_input:
        g.fc.register_forward_pre_hook(lambda m, inp: (inp[0].detach(),))
    s = seg.clone().requires_grad_(True)
    out = g(s)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    return out.detach(), (s.grad if s.grad is not None else torch.zeros_like(s))


def test_generator_detach_seg_gradient_paths():
    seg = torch.softmax(torch.randn(2, 4, 32, 32) * 3, dim=1)
    g_det = SPADEGenerator(4, ngf=4, crop_size=32, detach_seg=True)
    g_flow = copy.deepcopy(g_det)
    g_flow.detach_seg = False
    out_a, grad_det = _seg_grad(g_det, seg, detach_fc_input=False)
    out_b, grad_flow = _seg_grad(g_flow, seg, detach_fc_input=False)
    torch.testing.assert_close(out_a, out_b, **tol(torch.float32))  # same forward either way
    assert grad_det.abs().sum() > 0
    # with detach_seg=True the only path is fc: cutting fc's input leaves no gradient at all
    _, grad_det_nofc = _seg_grad(g_det, seg, detach_fc_input=True)
    assert torch.count_nonzero(grad_det_nofc) == 0
    # with detach_seg=False the SPADE blocks carry gradient too
    _, grad_flow_nofc = _seg_grad(g_flow, seg, detach_fc_input=True)
    assert grad_flow_nofc.abs().sum() > 0
    torch.testing.assert_close(grad_det + grad_flow_nofc, grad_flow, **tol(torch.float32))


@pytest.mark.parametrize("norm_G", ["spectralspadeinstance3x3", "spectralspadebatch3x3", "spadesyncbatch3x3",
                                    "spectralspadesyncbatch5x5"])
def test_generator_norm_options(norm_G):
    g = SPADEGenerator(3, ngf=4, crop_size=64, norm_G=norm_G)  # 2x2 start: instance norm needs > 1 pixel
    spectral, pf, ks = parse_norm_G(norm_G)
    keys = set(g.state_dict())
    assert ("head_0.conv_0.weight_orig" in keys) == spectral
    assert ("head_0.norm_0.param_free_norm.running_mean" in keys) == (pf != "instance")
    assert g.head_0.norm_0.mlp_gamma.weight.shape[-1] == ks
    y = g(random_onehot(2, 3, 64, 64))
    y.mean().backward()
    assert y.shape == (2, 3, 64, 64) and torch.isfinite(y).all()
    assert g.fc.weight.grad is not None


def test_generator_init_is_xavier_002():
    g = SPADEGenerator(8, ngf=8, crop_size=32)
    w = g.head_0.norm_0.mlp_gamma.weight  # (128 -> 128) 3x3: xavier std = 0.02 * sqrt(2 / (fan_in + fan_out))
    fan = w.shape[1] * 9 + w.shape[0] * 9
    assert abs(float(w.detach().std()) / (0.02 * math.sqrt(2.0 / fan)) - 1) < 0.05
    assert float(g.head_0.conv_0.bias.detach().abs().max()) == 0.0
    w = g.head_0.conv_0.weight_orig.detach()
    assert abs(float(w.std()) / (0.02 * math.sqrt(2.0 / (w.shape[1] * 9 + w.shape[0] * 9))) - 1) < 0.05


# -------------------------------------------------------------------------------------------- discriminator

@pytest.mark.parametrize("n_layers,last_stride,strides", [(3, None, (2, 2)), (4, None, (2, 2, 1)),
                                                          (4, 2, (2, 2, 2)), (3, 1, (2, 1))])
def test_discriminator_features_and_strides(n_layers, last_stride, strides):
    d = MultiscaleDiscriminator(5, ndf=8, n_layers_D=n_layers, num_D=2, last_stride=last_stride)
    x = torch.randn(2, 8, 64, 96)
    out = d(x)
    assert len(out) == 2 and all(len(o) == n_layers + 1 for o in out)
    for scale, feats in enumerate(out):
        h, w = 64 // 2 ** scale, 96 // 2 ** scale
        chans = [min(8 * 2 ** k, 512) for k in range(n_layers)] + [1]
        for k, f in enumerate(feats):
            s = 2 if k == 0 else (strides[k - 1] if k < n_layers else 1)
            h, w = h // s + 1, w // s + 1  # conv 4x4, pad 2
            assert f.shape == (2, chans[k], h, w), (scale, k, f.shape)
    # the conv strides as built
    d0 = d.discriminator_0
    assert [d0.get_submodule(f"model{k}.0.0").stride[0] for k in range(1, n_layers)] == list(strides)


@pytest.mark.parametrize("n_layers,strides", [(3, (2, 2)), (4, (2, 2, 1))])
def test_discriminator_loads_reference_layout_and_reproduces_it(n_layers, strides):
    label_c, ndf = 4, 8
    layout = reference_D_layout(label_c + 3, ndf, n_layers, 2)
    sd = random_state(layout, torch.Generator().manual_seed(2))
    d = MultiscaleDiscriminator.from_reference_state_dict(sd, label_nc=label_c, ndf=ndf, n_layers_D=n_layers).eval()
    assert set(d.to_reference_state_dict()) == set(layout)
    x = torch.cat([random_onehot(2, label_c, 48, 64), torch.rand(2, 3, 48, 64) * 2 - 1], dim=1)
    expected = reference_D_forward(sd, x, n_layers, 2, strides)
    got = d(x)
    for ge, ee in zip(got, expected):
        for a, b in zip(ge, ee):
            torch.testing.assert_close(a, b, **tol(torch.float32))


def test_unconditional_discriminator_takes_images_only():
    d2 = MultiscaleDiscriminator(35, conditional=False, ndf=8)
    assert d2.discriminator_0.model0[0].in_channels == 3
    assert len(d2(torch.randn(2, 3, 32, 32))) == 2
    with pytest.raises(ValueError, match="3 image channels"):
        d2(torch.randn(2, 38, 32, 32))
    sd = random_state(reference_D_layout(3, 8, 3, 2), torch.Generator().manual_seed(3))
    MultiscaleDiscriminator.from_reference_state_dict(sd, label_nc=35, ndf=8, conditional=False)


@pytest.mark.parametrize("norm_D,keys", [
    ("spectralinstance", {"model1.0.0.weight_orig"}),
    ("spectralbatch", {"model1.0.0.weight_orig", "model1.0.1.weight", "model1.0.1.running_mean"}),
    ("spectralsync_batch", {"model1.0.0.weight_orig", "model1.0.1.weight", "model1.0.1.running_var"}),
    ("spectral", {"model1.0.weight_orig", "model1.0.bias"}),
    ("instance", {"model1.0.0.weight"}),
])
def test_discriminator_norm_options(norm_D, keys):
    d = NLayerDiscriminator(6, ndf=8, n_layers_D=3, norm_D=norm_D)
    assert keys <= set(d.state_dict())
    if norm_D != "spectral":  # a conv followed by a norm has no bias
        assert not any(k.startswith("model1.0.0.bias") for k in d.state_dict())
    feats = d(torch.randn(2, 6, 32, 32))
    feats[-1].mean().backward()
    assert len(feats) == 4 and all(torch.isfinite(f).all() for f in feats)


def test_sync_batch_norm_equals_batch_norm_single_process():
    a = NLayerDiscriminator(6, ndf=8, norm_D="spectralsync_batch")
    b = NLayerDiscriminator(6, ndf=8, norm_D="spectralbatch")
    b.load_state_dict(a.state_dict())
    x = torch.randn(3, 6, 32, 32)
    for fa, fb in zip(a(x), b(x)):
        torch.testing.assert_close(fa, fb, **tol(torch.float32))
    torch.testing.assert_close(a.model1[0][1].running_var, b.model1[0][1].running_var, **tol(torch.float32))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="num_upsampling_layers"):
        SPADEGenerator(3, num_upsampling_layers="many")
    with pytest.raises(ValueError, match="crop_size"):
        SPADEGenerator(3, crop_size=16, num_upsampling_layers="normal")
    with pytest.raises(ValueError, match="norm_D"):
        MultiscaleDiscriminator(3, norm_D="spectralgroup")
    with pytest.raises(ValueError, match="last_stride"):
        MultiscaleDiscriminator(3, last_stride=3)


def test_generator_auto_dispatch_matches_reference_with_int_labels():
    """The default impls (Triton SPADE norm in the interpreter, the compiled label embedding when built)
    against the plain-PyTorch path fed the equivalent one-hot map: outputs and every parameter gradient."""
    g_ref = SPADEGenerator(4, ngf=4, crop_size=64, contain_dontcare_label=True)
    g_auto = copy.deepcopy(g_ref)
    labels = torch.randint(0, 4, (2, 64, 64))
    labels[:, -5:] = 255
    onehot = F.one_hot(torch.where(labels == 255, 4, labels), 5).permute(0, 3, 1, 2).float()
    y_ref = g_ref(onehot)
    y_ref.square().mean().backward()
    with ops.use_impl(None, "auto"):
        y_auto = g_auto(labels)
        y_auto.square().mean().backward()
    torch.testing.assert_close(y_auto, y_ref, **tol(torch.float32))
    for (name, pa), (_, pr) in zip(g_auto.named_parameters(), g_ref.named_parameters()):
        torch.testing.assert_close(pa.grad, pr.grad, **FP32_GRAD, msg=name)


def test_networks_run_under_bf16_autocast():
    g = SPADEGenerator(3, ngf=4, crop_size=64)
    d = MultiscaleDiscriminator(3, ndf=8)
    seg = random_onehot(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = g(seg)
        out = d(torch.cat([seg, y], dim=1))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
    assert g.head_0.conv_0.weight_u.dtype == torch.float32
    loss = sum(o[-1].float().mean() for o in out)
    loss.backward()
    assert torch.isfinite(g.fc.weight.grad).all()
