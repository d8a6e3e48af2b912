"""The C++ label-embedding convolution (``ops.onehot_conv2d(impl='cpp')``) against the reference path
``F.conv2d(one_hot(resize(labels)), weight, bias, padding)``: output, grad_weight and grad_bias, on both
resize rules (``mode='nearest'`` and ``mode='nearest-exact'``).

Skips when ``sbgan_fast._C`` is not built (tests/test_one_hot.py holds the test that fails instead
under ``SBGAN_FAST_REQUIRE_EXT=1``).
"""
import pytest
import torch
import torch.nn.functional as F

from sbgan_fast import ops
from sbgan_fast.ops import _cpp
from sbgan_fast.ops.one_hot import one_hot_ref
from sbgan_fast.ops.onehot_conv2d import onehot_conv2d_ref

from tolerances import tol

EXT_ERROR = _cpp.extension_error()
pytestmark = pytest.mark.skipif(EXT_ERROR is not None, reason=f"{EXT_ERROR}; build it with: {_cpp.BUILD_FIX}")

SIZES = [None, (22, 26), (6, 7), (15, 9)]  # identity, x2 up, down, odd mix
SIZE_IDS = ["same", "up2", "down", "odd"]
MODES = ["nearest", "nearest-exact"]
# (weight dtype, kernel size, padding)
CONFIGS = [(torch.float32, 3, 1), (torch.float64, 3, 1), (torch.float32, 3, 0), (torch.float64, 1, 0),
           (torch.float32, 1, 1)]


def _labels(n, h, w, k, dontcare=None):
    lab = torch.randint(0, k, (n, h, w))
    if dontcare is not None:
        lab[torch.rand(n, h, w) < 0.2] = dontcare
    return lab


def _run(fn, lab, weight, bias, grad, **kw):
    """Output and gradients of fn(lab, weight, bias) for the upstream gradient ``grad``."""
    w = weight.detach().clone().requires_grad_()
    b = None if bias is None else bias.detach().clone().requires_grad_()
    out = fn(lab, w, b, **kw)
    out.backward(grad)
    return out.detach(), w.grad, None if b is None else b.grad


def _close(got, want, dtype, what):
    torch.testing.assert_close(got.double(), want.double(), **tol(dtype), msg=lambda m: f"{what}: {m}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("dontcare", [None, 255], ids=["no-dc", "dc255"])
@pytest.mark.parametrize("k", [20, 35, 95, 151])
def test_parity_fp32_fp64(k, dontcare, size, mode):
    lab = _labels(2, 11, 13, k, dontcare)
    c = k + (dontcare is not None)
    for dtype, ksize, padding in CONFIGS:
        weight = torch.randn(8, c, ksize, ksize, dtype=dtype)
        bias = torch.randn(8, dtype=dtype)
        h, w = size or lab.shape[1:]
        grad = torch.randn(2, 8, h + 2 * padding - ksize + 1, w + 2 * padding - ksize + 1, dtype=dtype)
        kw = dict(dontcare=dontcare, size=size, padding=padding, mode=mode)
        got = _run(lambda *a, **k_: ops.onehot_conv2d(*a, impl="cpp", **k_), lab, weight, bias, grad, **kw)
        want = _run(lambda *a, **k_: ops.onehot_conv2d(*a, impl="ref", **k_), lab, weight, bias, grad, **kw)
        what = f"dtype={dtype} kernel={ksize} padding={padding}"
        assert got[0].dtype == dtype and got[0].shape == want[0].shape and got[0].is_contiguous()
        _close(got[0], want[0], dtype, "output " + what)
        _close(got[1], want[1], dtype, "grad_weight " + what)
        _close(got[2], want[2], dtype, "grad_bias " + what)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("size", [None, (14, 20)], ids=["same", "up"])
def test_parity_half(dtype, size, mode):
    """Half weights, fp32 accumulation: compared with the exact (fp64) result of the same half weights,
    within the table's tolerance for that dtype (the error is the final rounding only)."""
    k, dontcare = 35, 255
    lab = _labels(2, 9, 12, k, dontcare)
    weight = torch.randn(16, k + 1, 3, 3).to(dtype)
    bias = torch.randn(16).to(dtype)
    grad = torch.randn(2, 16, *(size or (9, 12))).to(dtype)
    out, gw, gb = _run(lambda *a, **kw: ops.onehot_conv2d(*a, impl="cpp", **kw), lab, weight, bias, grad,
                       dontcare=dontcare, size=size, padding=1, mode=mode)
    exact = _run(lambda *a, **kw: onehot_conv2d_ref(*a, **kw), lab, weight.double(), bias.double(), grad.double(),
                 dontcare=dontcare, size=size, padding=1, mode=mode)
    assert out.dtype == gw.dtype == gb.dtype == dtype
    _close(out, exact[0], dtype, "output")
    _close(gw, exact[1], dtype, "grad_weight")
    _close(gb, exact[2], dtype, "grad_bias")


def test_no_bias_rectangular_kernel_and_padding_pair():
    lab = _labels(2, 10, 12, 20)
    weight = torch.randn(5, 20, 1, 3)
    grad = torch.randn(2, 5, 12, 12)
    got = _run(lambda l, w, b: ops.onehot_conv2d(l, w, None, padding=(1, 1), impl="cpp"), lab, weight, None, grad)
    want = _run(lambda l, w, b: F.conv2d(one_hot_ref(l, 20), w, None, padding=(1, 1)), lab, weight, None, grad)
    _close(got[0], want[0], torch.float32, "output")
    _close(got[1], want[1], torch.float32, "grad_weight")


def test_channels_last_weight_gives_channels_last_output():
    """As F.conv2d: a channels-last weight gives a channels-last output; a channels-last upstream
    gradient is read in place."""
    lab = _labels(2, 8, 10, 35)
    weight = torch.randn(16, 35, 3, 3).contiguous(memory_format=torch.channels_last)
    bias = torch.randn(16)
    ref = onehot_conv2d_ref(lab, weight, bias)
    grad = torch.randn_like(ref).contiguous(memory_format=torch.channels_last)
    got = _run(lambda *a: ops.onehot_conv2d(*a, impl="cpp"), lab, weight, bias, grad)
    want = _run(lambda *a: ops.onehot_conv2d(*a, impl="ref"), lab, weight, bias, grad)
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    assert got[0].stride() == ref.stride()
    for g, w, name in zip(got, want, ("output", "grad_weight", "grad_bias")):
        _close(g, w, torch.float32, name)


def test_label_forms_and_dtypes():
    k = 35
    base = _labels(2, 12, 14, k)
    weight = torch.randn(4, k, 3, 3)
    for mode in MODES:
        want = onehot_conv2d_ref(base, weight, None, None, (7, 9), 1, mode)
        for lab in (base.to(torch.uint8), base.to(torch.int32), base.unsqueeze(1),
                    base.transpose(1, 2).contiguous().transpose(1, 2)):
            got = ops.onehot_conv2d(lab, weight, size=(7, 9), mode=mode, impl="cpp")
            _close(got, want, torch.float32, f"{mode}: labels {lab.dtype} {tuple(lab.shape)} {lab.stride()}")


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_fp64(mode):
    lab = _labels(1, 5, 6, 7, dontcare=255)
    weight = torch.randn(3, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda w, b: ops.onehot_conv2d(lab, w, b, dontcare=255, size=(7, 4), mode=mode, impl="cpp"), (weight, bias))


def test_mode_changes_the_result_as_the_rule_says():
    """The two rules read different source pixels on a downscale (here 11x13 -> 6x7), and each equals
    the convolution of the one-hot map of the labels resized by its own rule (an oracle independent
    of the op's resize: explicit index tables)."""
    lab = _labels(2, 11, 13, 20)
    weight = torch.randn(4, 20, 3, 3, dtype=torch.float64)
    outs = {}
    for mode in MODES:
        rows = torch.tensor(ops.nearest_source_indices(11, 6, mode))
        cols = torch.tensor(ops.nearest_source_indices(13, 7, mode))
        want = F.conv2d(one_hot_ref(lab[:, rows][:, :, cols], 20, dtype=torch.float64), weight, padding=1)
        outs[mode] = ops.onehot_conv2d(lab, weight, size=(6, 7), mode=mode, impl="cpp")
        _close(outs[mode], want, torch.float64, mode)
    assert ops.nearest_source_indices(11, 6, "nearest") == (0, 1, 3, 5, 7, 9)
    assert ops.nearest_source_indices(11, 6, "nearest-exact") == (0, 2, 4, 6, 8, 10)
    assert not torch.allclose(outs["nearest"], outs["nearest-exact"])


def test_backward_is_deterministic_across_thread_counts():
    lab = _labels(4, 24, 32, 35)
    weight = torch.randn(32, 35, 3, 3)
    grad = torch.randn(4, 32, 24, 32)
    old = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            results.append(_run(lambda *a: ops.onehot_conv2d(*a, impl="cpp"), lab, weight, None, grad))
    finally:
        torch.set_num_threads(old)
    for r in results[1:]:
        assert torch.equal(r[0], results[0][0]) and torch.equal(r[1], results[0][1])


def test_only_bias_needs_grad():
    lab = _labels(1, 6, 6, 10)
    weight = torch.randn(4, 10, 3, 3)
    bias = torch.randn(4, requires_grad=True)
    ops.onehot_conv2d(lab, weight, bias, impl="cpp").sum().backward()
    torch.testing.assert_close(bias.grad, torch.full((4,), 36.0))


@pytest.mark.parametrize("bad", [-1, 20, 300])
def test_out_of_range_label_raises_naming_value(bad):
    lab = _labels(2, 8, 8, 20)
    lab[0, 3, 3] = bad
    with pytest.raises(ValueError, match=rf"onehot_conv2d: label value {bad} is outside \[0, 20\)"):
        ops.onehot_conv2d(lab, torch.randn(4, 20, 3, 3), impl="cpp")
    with pytest.raises(ValueError, match=rf"label value {bad} "):
        ops.onehot_conv2d(lab, torch.randn(4, 21, 3, 3), dontcare=255, size=(16, 16), impl="cpp")


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and _cpp.cuda_compiled()),
                    reason="needs a CUDA device and sbgan_fast._C built with its CUDA kernels")
@pytest.mark.parametrize("mode", MODES)
def test_cuda_kernels_match_reference(mode):
    """The CUDA forward and backward on both rules against the reference (output, grad_weight, grad_bias)."""
    k, dontcare = 35, 255
    for src, size in [((11, 13), (6, 7)), ((9, 12), (14, 20)), ((3, 5), (7, 13))]:
        lab = _labels(2, *src, k, dontcare)
        weight = torch.randn(16, k + 1, 3, 3)
        bias = torch.randn(16)
        grad = torch.randn(2, 16, *size)
        kw = dict(dontcare=dontcare, size=size, padding=1, mode=mode)
        got = _run(lambda *a, **k_: ops.onehot_conv2d(*a, impl="cuda", **k_), lab.cuda(), weight.cuda(),
                   bias.cuda(), grad.cuda(), **kw)
        want = _run(lambda *a, **k_: ops.onehot_conv2d(*a, impl="ref", **k_), lab, weight, bias, grad, **kw)
        for g, w, name in zip(got, want, ("output", "grad_weight", "grad_bias")):
            _close(g.cpu(), w, torch.float32, f"{name} {src}->{size}")


@pytest.mark.parametrize("impl", ["ref", "cpp", "auto"])
def test_bad_mode_raises_naming_op_argument_and_values(impl):
    lab = _labels(1, 4, 4, 5)
    weight = torch.randn(4, 5, 3, 3)
    msg = r"^onehot_conv2d: mode must be 'nearest' or 'nearest-exact', got 'nearest_exact'$"
    with pytest.raises(ValueError, match=msg):
        ops.onehot_conv2d(lab, weight, size=(3, 3), mode="nearest_exact", impl=impl)
    if impl == "cpp":  # the kernels check it too (same message)
        with pytest.raises(ValueError, match=msg):
            torch.ops.sbgan_fast.onehot_conv2d(lab, weight, None, None, [3, 3], [1, 1], "nearest_exact")
        with pytest.raises(ValueError, match=msg):
            torch.ops.sbgan_fast.onehot_conv2d_backward(torch.randn(1, 4, 3, 3), lab, weight, None, [3, 3], [1, 1],
                                                        "nearest_exact")


@pytest.mark.parametrize("mode", [None] + MODES, ids=["default", *MODES])
def test_fake_tensors_give_the_shapes(mode):
    """The ops' fake (shape-only) kernels accept the mode argument (torch.compile traces through them)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    extra = () if mode is None else (mode,)
    with FakeTensorMode() as fake:
        lab = fake.from_tensor(_labels(2, 9, 11, 5))
        weight = fake.from_tensor(torch.randn(4, 5, 3, 3))
        out = torch.ops.sbgan_fast.onehot_conv2d(lab, weight, None, None, [6, 7], [1, 1], *extra)
        gw, gb = torch.ops.sbgan_fast.onehot_conv2d_backward(out, lab, weight, None, [6, 7], [1, 1], *extra)
    assert out.shape == (2, 4, 6, 7) and gw.shape == (4, 5, 3, 3) and gb.shape == (4,)


def test_argument_errors():
    lab = _labels(1, 4, 4, 5)
    with pytest.raises(ValueError, match="weight must be"):
        ops.onehot_conv2d(lab, torch.randn(4, 5, 3), impl="cpp")
    with pytest.raises(ValueError, match="smaller than the kernel"):
        ops.onehot_conv2d(lab, torch.randn(4, 5, 7, 7), padding=0, impl="cpp")
    with pytest.raises(ValueError, match=r"bias must be \(C_out,\)"):
        ops.onehot_conv2d(lab, torch.randn(4, 5, 3, 3), torch.randn(3), impl="cpp")
    with pytest.raises(TypeError, match="integer dtype"):
        ops.onehot_conv2d(lab.float(), torch.randn(4, 5, 3, 3), impl="cpp")


def test_dispatch():
    lab = _labels(1, 6, 6, 10)
    weight = torch.randn(4, 10, 3, 3, requires_grad=True)
    assert "auto -> cpp" in ops.explain("onehot_conv2d", lab, weight, None, None, None, 1)
    assert "auto -> cpp" in ops.explain("onehot_conv2d", lab, weight, size=(3, 3), mode="nearest-exact")
    with pytest.raises(ops.ImplUnavailableError) as e:
        ops.onehot_conv2d(lab, weight, impl="cuda")
    msg = str(e.value)
    assert "onehot_conv2d" in msg and "impl='cuda'" in msg and "CUDA tensors" in msg and "Fix:" in msg
    # First order only: never chosen by auto while a second-order graph is built; explicit use raises.
    with ops.double_backward():
        assert "auto -> ref" in ops.explain("onehot_conv2d", lab, weight, None, None, None, 1)
        with pytest.raises(ops.ImplUnavailableError, match="first-order"):
            ops.onehot_conv2d(lab, weight, impl="cpp")
    # Padding the kernel does not support ('same') is not applicable: auto uses ref silently.
    assert "auto -> ref" in ops.explain("onehot_conv2d", lab, weight, None, None, None, "same")
