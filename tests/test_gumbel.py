"""Parity of the Triton straight-through Gumbel-softmax and argmax one-hot with the reference.

By default the Triton kernels run on CPU tensors in Triton's interpreter (``TRITON_INTERPRET=1`` from
conftest.py), where each launched program costs ~30 ms: tensors are small and the kernels use one
large block. On a CUDA machine, ``TRITON_INTERPRET=0 pytest tests/test_gumbel.py`` runs the same
tests on the GPU with the compiled kernels (tensors are then created on the GPU).
Exactness: the hard sample is bitwise the reference's given the same noise; gradients follow the
tolerance table.
"""
import math
import warnings

import pytest
import torch

from sbgan_fast import ops
from sbgan_fast.ops import _dispatch
from sbgan_fast.ops.gumbel import draw_seed, gumbel_noise
from tolerances import tol

pytest.importorskip("triton")

from triton_common import DEVICE, DTYPES, _default_device, needs_interpreter  # noqa: E402,F401


def _logits(shape, dtype, layout="nchw"):
    """Logits as the authors' model makes them, log(p + 1e-5) of a softmax, in the given layout:
    'nchw', 'channels_last', or 'sliced' (a view strided in the class, H and W dims; W with a step
    so that H and W do not collapse into one index)."""
    n, k, h, w = shape
    values = torch.log((torch.randn(shape) * 2).softmax(dim=1) + 1e-5).to(dtype)
    if layout == "nchw":
        return values
    if layout == "channels_last":
        return values.contiguous(memory_format=torch.channels_last)
    if layout == "sliced":
        holder = torch.full((n, k + 3, h + 2, 2 * w + 1), float("nan"), dtype=dtype)
        view = holder[:, 1:k + 1, 1:h + 1, 1::2]
        view.copy_(values)
        return view
    raise ValueError(layout)


def _run(fn, logits, grad):
    """(output, gradient w.r.t. logits) of fn on the logits tensor itself (strides kept)."""
    x = logits.detach().requires_grad_()
    y = fn(x)
    (gx,) = torch.autograd.grad(y, x, grad)
    return y, gx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced"])
def test_explicit_noise_parity(dtype, layout):
    shape = (2, 35, 7, 9)  # Cityscapes class count, odd H and W
    logits = _logits(shape, dtype, layout)
    noise = ops.sample_gumbel(shape)
    grad = torch.randn(shape).to(dtype)
    y, gx = _run(lambda x: ops.gumbel_softmax_st(x, 1.0, noise=noise, impl="triton"), logits, grad)
    y_ref, gx_ref = _run(lambda x: ops.gumbel_softmax_st(x, 1.0, noise=noise, impl="ref"), logits, grad)
    assert y.dtype == dtype and y.shape == shape
    assert torch.equal(y, y_ref), "hard sample differs from the reference"
    assert ((y == 0) | (y == 1)).all() and torch.equal(y.float().sum(1), torch.ones(2, 7, 9))
    assert y.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")
    assert gx.dtype == dtype
    torch.testing.assert_close(gx, gx_ref, **tol(dtype))
    assert gx.float().abs().max() > 0


@pytest.mark.parametrize("k", [20, 95, 151, 184])
@pytest.mark.parametrize("tau", [1.0, 0.3, 2.0])
def test_class_counts_and_temperatures(k, tau):
    shape = (1, k, 5, 3)
    logits = _logits(shape, torch.float32)
    noise = ops.sample_gumbel(shape)
    grad = torch.randn(shape)
    y, gx = _run(lambda x: ops.gumbel_softmax_st(x, tau, noise=noise, impl="triton"), logits, grad)
    y_ref, gx_ref = _run(lambda x: ops.gumbel_softmax_st(x, tau, noise=noise, impl="ref"), logits, grad)
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(gx, gx_ref, **tol(torch.float32))


def test_noise_layouts_and_dtypes_and_noise_gradient():
    """Noise in another layout and dtype than the logits; a noise that requires grad gets the same
    gradient as the logits (d scores / d noise = d scores / d logits), cast to its dtype."""
    shape = (2, 20, 6, 5)
    logits = _logits(shape, torch.float16)
    noise = ops.sample_gumbel(shape).to(torch.float64).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape).half()
    outs = []
    for impl in ("triton", "ref"):
        x = logits.clone().requires_grad_()
        g = noise.clone().requires_grad_()
        y = ops.gumbel_softmax_st(x, 0.5, noise=g, impl=impl)
        gx, gg = torch.autograd.grad(y, (x, g), grad)
        outs.append((y, gx, gg))
    (y, gx, gg), (y_ref, gx_ref, gg_ref) = outs
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(gx, gx_ref, **tol(torch.float16))
    assert gg.dtype == torch.float64
    torch.testing.assert_close(gg, gg_ref, **tol(torch.float32))  # fp32 math inside both


def test_ties_and_nan_follow_torch_argmax():
    shape = (1, 6, 2, 4)
    x = torch.zeros(shape)
    x[0, 2:5, 0, 0] = 1.0  # tie between classes 2, 3, 4 -> 2
    x[0, :, 0, 1] = float("-inf")  # all -inf -> 0
    x[0, 3, 0, 2] = float("nan")
    x[0, 1, 0, 2] = float("inf")  # NaN beats +inf -> 3
    x[0, 5, 0, 3] = float("inf")
    x[0, 0, 0, 3] = float("inf")  # tie of +inf -> 0
    zero = torch.zeros(shape)
    for fn in (lambda t: ops.argmax_one_hot(t, impl="triton"),
               lambda t: ops.gumbel_softmax_st(t, 1.0, noise=zero, impl="triton")):
        y = fn(x)
        torch.testing.assert_close(y.argmax(dim=1), x.argmax(dim=1), rtol=0, atol=0)
        assert torch.equal(y, ops.argmax_one_hot(x, impl="ref"))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "sliced"])
def test_argmax_one_hot_parity(dtype, layout):
    p = _logits((2, 35, 5, 7), dtype, layout).float().exp().to(dtype)
    p[:, 3] = p[:, 4]  # force exact ties somewhere
    y = ops.argmax_one_hot(p, impl="triton")
    y_ref = ops.argmax_one_hot(p, impl="ref")
    assert torch.equal(y, y_ref) and y.dtype == dtype
    assert y.stride() == y_ref.stride()
    assert not y.requires_grad


# ---------------------------------------------------------------- in-kernel (Philox) noise


@pytest.mark.parametrize("shape", [
    (2, 35, 7, 9),      # H*W not a multiple of 4: one Philox call per element
    (2, 35, 8, 12),     # a multiple of 4: one call per 4 pixels, outputs interleaved
    (1, 184, 24, 24),   # ... over several pixel tiles per image
    (3, 20, 2, 2),      # ... a 4-pixel tile
])
def test_in_kernel_noise_exact_parity_with_helper(shape):
    logits = _logits(shape, torch.float32)
    grad = torch.randn(shape)
    torch.manual_seed(123)
    y, gx = _run(lambda x: ops.gumbel_softmax_st(x, 0.7, impl="triton"), logits, grad)
    torch.manual_seed(123)
    noise = gumbel_noise(shape, draw_seed(DEVICE))
    assert noise.dtype == torch.float32 and noise.shape == shape
    y_ref, gx_ref = _run(lambda x: ops.gumbel_softmax_st(x, 0.7, noise=noise, impl="ref"), logits, grad)
    assert torch.equal(y, y_ref)
    torch.testing.assert_close(gx, gx_ref, **tol(torch.float32))


def test_in_kernel_noise_reproducible_and_layout_independent():
    shape = (2, 20, 8, 8)
    logits = torch.zeros(shape)  # equal logits: the sample is decided by the noise alone

    def sample(seed, x):
        torch.manual_seed(seed)
        y = ops.gumbel_softmax_st(x, 1.0, impl="triton")
        assert ((y == 0) | (y == 1)).all() and torch.equal(y.sum(1), torch.ones(2, 8, 8))
        return y

    a = sample(1, logits)
    assert torch.equal(a, sample(1, logits))
    assert not torch.equal(a, sample(2, logits))
    # The Philox counter is the logical NCHW index: the same seed gives the same sample in any layout.
    b = sample(1, logits.contiguous(memory_format=torch.channels_last))
    assert torch.equal(a, b.contiguous())


@pytest.mark.slow
def test_in_kernel_noise_is_gumbel():
    stats = pytest.importorskip("scipy.stats")
    g = gumbel_noise((1, 1, 128, 256), torch.tensor([987654321], dtype=torch.int64)).flatten().double()
    n = g.numel()
    # Gumbel(0, 1): mean = Euler-Mascheroni, var = pi^2 / 6; 6-sigma bounds on the sample moments.
    assert abs(g.mean().item() - 0.5772156649) < 6 * math.sqrt(math.pi ** 2 / 6 / n)
    assert abs(g.var().item() - math.pi ** 2 / 6) < 6 * math.sqrt((12 / 5 + 2) * (math.pi ** 2 / 6) ** 2 / n)
    assert stats.kstest(g.cpu().numpy(), "gumbel_r").pvalue > 1e-4
    assert g.min() >= -math.log(-math.log(2.0 ** -24)) - 1e-3  # finite lower tail, no -inf


@pytest.mark.slow
def test_in_kernel_noise_sample_frequencies():
    """argmax(logits + g) ~ Categorical(softmax(logits)): uniform for equal logits, softmax otherwise."""
    stats = pytest.importorskip("scipy.stats")
    k, n_pix = 8, 64 * 64
    y = ops.gumbel_softmax_st(torch.zeros(1, k, 64, 64), 1.0, impl="triton")
    counts = y.sum(dim=(0, 2, 3)).double()
    assert counts.sum() == n_pix
    assert stats.chisquare(counts.cpu().numpy()).pvalue > 1e-4

    probs = torch.tensor([0.5, 0.25, 0.15, 0.07, 0.03], dtype=torch.float64)
    logits = torch.log(probs).float().view(1, 5, 1, 1).expand(1, 5, 128, 128)
    y = ops.gumbel_softmax_st(logits, 1.0, impl="triton")
    freq = y.sum(dim=(0, 2, 3)).double() / (128 * 128)
    sigma = torch.sqrt(probs * (1 - probs) / (128 * 128))
    assert ((freq - probs).abs() < 5 * sigma).all(), (freq, probs)


# ---------------------------------------------------------------- dispatch and autograd contract


def test_first_order_only():
    x = _logits((1, 5, 2, 3), torch.float32).requires_grad_()
    y = ops.gumbel_softmax_st(x, 1.0, noise=torch.zeros(1, 5, 2, 3), impl="triton")
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad((y * torch.randn_like(y)).sum(), x, create_graph=True)
    (g,) = torch.autograd.grad((y * torch.randn_like(y)).sum(), x)  # first order is fine
    assert g.abs().max() > 0


@pytest.fixture
def auto_eligible(monkeypatch):
    """Make the Triton impl eligible under ``auto`` as it is for CUDA tensors: on CPU, ``auto`` never
    picks the interpreter (a testing tool, only used when asked for by name)."""
    if DEVICE == "cpu":
        monkeypatch.setattr(_dispatch, "explicit_request", lambda: True, raising=False)


@needs_interpreter
def test_auto_on_cpu_uses_ref_and_use_impl_selects_the_interpreter():
    x = _logits((1, 5, 2, 3), torch.float32).cpu()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # CPU tensors are "not applicable": no fallback warning
        assert "-> ref" in ops.explain("gumbel_softmax_st", x, 1.0, None)
        ops.gumbel_softmax_st(x, 1.0)
    with ops.use_impl("gumbel_softmax_st", "triton"):
        assert "'triton'" in ops.explain("gumbel_softmax_st", x, 1.0, None)
        y = ops.gumbel_softmax_st(x.requires_grad_(), 1.0)
    assert type(y.grad_fn).__name__ == "GeneratedBackwardFor_sbgan_fast_gumbel_st_triton_defaultBackward"


def test_auto_selection_and_double_backward_scope(auto_eligible):
    x = _logits((1, 5, 2, 3), torch.float32)
    assert "-> triton" in ops.explain("gumbel_softmax_st", x, 1.0, None)
    with ops.double_backward():
        assert "-> ref" in ops.explain("gumbel_softmax_st", x, 1.0, None)
        with pytest.raises(_dispatch.ImplUnavailableError, match="second-order"):
            ops.gumbel_softmax_st(x, 1.0, impl="triton")
        # argmax_one_hot has no gradient in any impl: still eligible.
        assert "-> triton" in ops.explain("argmax_one_hot", x)


def test_cpu_without_interpreter(monkeypatch):
    x = _logits((1, 5, 2, 3), torch.float32).cpu()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert "-> ref" in ops.explain("gumbel_softmax_st", x, 1.0, None)
    with pytest.raises(_dispatch.ImplUnavailableError) as info:
        ops.argmax_one_hot(x, impl="triton")
    msg = str(info.value)
    assert "argmax_one_hot" in msg and "'triton'" in msg and "cpu" in msg and "Fix:" in msg


def test_float64_is_not_applicable():
    x = _logits((1, 5, 2, 3), torch.float64)
    assert "-> ref" in ops.explain("gumbel_softmax_st", x, 1.0, None)
    with pytest.raises(_dispatch.ImplUnavailableError, match="float64"):
        ops.gumbel_softmax_st(x, impl="triton")
