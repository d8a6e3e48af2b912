"""The C++ one-hot label embedding (``ops.one_hot(impl='cpp')``) against the reference path.

The output is exact, so every comparison is bitwise (values, dtype, shape and strides). Tests of the
kernels skip when ``sbgan_fast._C`` is not built, except :func:`test_extension_is_built_when_required`,
which fails under ``SBGAN_FAST_REQUIRE_EXT=1`` (CI builds the extension and sets it).
"""
import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from sbgan_fast import ops
from sbgan_fast.ops import _dispatch, _fast_cpp
from sbgan_fast.ops.one_hot import one_hot_ref

EXT_ERROR = _fast_cpp.extension_error()
needs_ext = pytest.mark.skipif(EXT_ERROR is not None, reason=f"{EXT_ERROR}; build it with: {_fast_cpp.BUILD_FIX}")

SIZES = [None, (26, 40), (7, 9), (13, 31), (5, 18)]  # identity, x2 up, down, odd up/down mixes
SIZE_IDS = ["same", "up2", "down", "odd-up", "odd-mixed"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.bool]
FORMATS = [torch.contiguous_format, torch.channels_last]


def _labels(n, h, w, k, dontcare=None, dtype=torch.int64):
    lab = torch.randint(0, k, (n, h, w))
    if dontcare is not None:
        lab[torch.rand(n, h, w) < 0.2] = dontcare
    return lab.to(dtype)


def _assert_same(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape, (a.dtype, b.dtype, a.shape, b.shape)
    assert a.stride() == b.stride(), (a.stride(), b.stride())
    assert torch.equal(a, b)


def test_extension_is_built_when_required():
    """CI sets SBGAN_FAST_REQUIRE_EXT=1: a missing or broken build must fail, never skip."""
    if os.environ.get("SBGAN_FAST_REQUIRE_EXT", "0") in ("", "0"):
        pytest.skip("SBGAN_FAST_REQUIRE_EXT is not set")
    assert EXT_ERROR is None, f"{EXT_ERROR}; fix: {_fast_cpp.BUILD_FIX}"
    assert hasattr(torch.ops.sbgan_fast, "one_hot") and hasattr(torch.ops.sbgan_fast, "onehot_conv2d")


@needs_ext
@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("dontcare", [None, 255], ids=["no-dc", "dc255"])
@pytest.mark.parametrize("k", [20, 35, 95, 151, 184])
def test_parity_dtypes_formats(k, dontcare, size):
    lab = _labels(2, 13, 20, k, dontcare)
    for fmt in FORMATS:
        for dtype in DTYPES:
            got = ops.one_hot(lab, k, dontcare=dontcare, size=size, dtype=dtype, memory_format=fmt, impl="cpp")
            want = one_hot_ref(lab, k, dontcare, size, dtype, fmt)
            _assert_same(got, want)


@needs_ext
@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_label_dtypes_and_4d_input(label_dtype):
    k = 35
    dontcare = 255 if label_dtype not in (torch.int8,) else -1
    lab = _labels(3, 11, 17, k, dontcare, torch.int64).to(label_dtype)
    for lab_in in (lab, lab.unsqueeze(1)):
        for size in (None, (6, 25)):
            got = ops.one_hot(lab_in, k, dontcare=dontcare, size=size, impl="cpp")
            _assert_same(got, one_hot_ref(lab_in, k, dontcare, size))


@needs_ext
def test_strided_labels():
    """Non-contiguous label maps (a transposed view, a slice, channels-last (N,1,H,W)) are read in place."""
    k = 20
    base = _labels(2, 24, 30, k)
    views = [base.transpose(1, 2), base[:, ::2, 1::3], base.unsqueeze(1).contiguous(memory_format=torch.channels_last)]
    for lab in views:
        for size in (None, (9, 14)):
            _assert_same(ops.one_hot(lab, k, size=size, impl="cpp"), one_hot_ref(lab, k, None, size))


@needs_ext
@pytest.mark.parametrize("size", [(1, 1), (3, 5), (31, 47), (64, 10), (2, 200)])
def test_resize_equals_interpolating_the_one_hot(size):
    """Independent oracle: resizing the labels must equal F.interpolate(nearest) of the full one-hot."""
    k = 35
    lab = _labels(2, 17, 23, k)
    full = F.one_hot(lab, k).permute(0, 3, 1, 2).float()
    want = F.interpolate(full, size=size, mode="nearest")
    got = ops.one_hot(lab, k, size=size, impl="cpp")
    assert torch.equal(got, want)


@needs_ext
def test_dontcare_goes_to_last_channel():
    lab = torch.tensor([[[0, 255, 2], [255, 1, 0]]])
    out = ops.one_hot(lab, 3, dontcare=255, impl="cpp")
    assert out.shape == (1, 4, 2, 3)
    assert torch.equal(out[0, 3], (lab[0] == 255).float())
    assert torch.equal(out.sum(1), torch.ones(1, 2, 3))
    # A don't-care value inside [0, K) takes precedence, as in the reference.
    _assert_same(ops.one_hot(lab.clamp(max=2), 3, dontcare=0, impl="cpp"), one_hot_ref(lab.clamp(max=2), 3, 0))


@needs_ext
@pytest.mark.parametrize("bad,dontcare,size", [(-3, None, None), (35, None, None), (200, 255, None),
                                              (-1, 255, (6, 9)), (99, None, (24, 36))])
def test_out_of_range_label_raises_naming_value(bad, dontcare, size):
    lab = _labels(2, 12, 18, 35)
    lab[1, 4, 6] = bad  # a pixel that every tested resize samples
    for fmt in FORMATS:
        with pytest.raises(ValueError, match=rf"label value {bad} is outside \[0, 35\)"):
            ops.one_hot(lab, 35, dontcare=dontcare, size=size, memory_format=fmt, impl="cpp")
    # The reference path names the same value.
    with pytest.raises(ValueError, match=rf"label value {bad} "):
        one_hot_ref(lab, 35, dontcare)


@needs_ext
def test_reports_smallest_negative_else_largest():
    lab = torch.zeros(1, 4, 4, dtype=torch.int64)
    lab[0, 0, 0], lab[0, 1, 1], lab[0, 2, 2] = 40, -2, -7
    with pytest.raises(ValueError, match="label value -7 "):
        ops.one_hot(lab, 10, impl="cpp")
    lab[0, 1, 1] = lab[0, 2, 2] = 0
    lab[0, 3, 3] = 12
    with pytest.raises(ValueError, match="label value 40 "):
        ops.one_hot(lab, 10, impl="cpp")


@needs_ext
def test_argument_errors():
    lab = _labels(1, 4, 4, 5)
    with pytest.raises(TypeError, match="integer dtype"):
        ops.one_hot(lab.float(), 5, impl="cpp")
    with pytest.raises(ValueError, match=r"\(N,H,W\) or \(N,1,H,W\)"):
        ops.one_hot(lab.view(1, 1, 1, 4, 4), 5, impl="cpp")
    with pytest.raises(ValueError, match="size must be a pair of positive ints"):
        ops.one_hot(lab, 5, size=(0, 3), impl="cpp")
    with pytest.raises(ValueError, match="num_classes must be positive"):
        ops.one_hot(lab, 0, impl="cpp")


@needs_ext
def test_empty_batch():
    lab = torch.zeros(0, 5, 6, dtype=torch.int64)
    _assert_same(ops.one_hot(lab, 7, size=(3, 3), impl="cpp"), one_hot_ref(lab, 7, None, (3, 3)))


@needs_ext
def test_dispatch_auto_picks_cpp_on_cpu():
    lab = _labels(1, 4, 4, 5)
    text = ops.explain("one_hot", lab, 5, None, None, torch.float32, torch.contiguous_format)
    assert "auto -> cpp" in text, text
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning on the way
        _assert_same(ops.one_hot(lab, 5), one_hot_ref(lab, 5))


def test_cuda_impl_with_cpu_tensors_raises():
    lab = _labels(1, 4, 4, 5)
    with pytest.raises(ops.ImplUnavailableError) as e:
        ops.one_hot(lab, 5, impl="cuda")
    msg = str(e.value)
    assert "one_hot" in msg and "impl='cuda'" in msg and "CUDA tensors" in msg and "Fix:" in msg


def test_missing_extension_is_reported(monkeypatch):
    """With the extension unavailable: an explicit impl raises with the build fix; auto warns once and
    runs the reference; strict mode raises."""
    monkeypatch.setattr(_fast_cpp, "extension_error", lambda: "the C++ extension sbgan_fast._C is not built (test)")
    ops.reset_warnings()
    lab = _labels(1, 4, 4, 5)
    with pytest.raises(ops.ImplUnavailableError, match=r"impl='cpp' cannot run: the C\+\+ extension .*Fix: pip install"):
        ops.one_hot(lab, 5, impl="cpp")
    monkeypatch.delenv("SBGAN_FAST_STRICT", raising=False)
    with pytest.warns(ops.SbganFallbackWarning, match="not built"):
        out = ops.one_hot(lab, 5)
    _assert_same(out, one_hot_ref(lab, 5))
    monkeypatch.setenv("SBGAN_FAST_STRICT", "1")
    with pytest.raises(ops.ImplUnavailableError, match="SBGAN_FAST_STRICT"):
        ops.one_hot(lab, 5)
    ops.reset_warnings()


def test_not_applicable_inputs_use_ref_silently():
    lab = _labels(1, 4, 4, 5)
    text = _dispatch.explain("one_hot", lab, 5, None, None, torch.int32, torch.contiguous_format)
    assert "cpp: not applicable" in text and "auto -> ref" in text, text
    assert "fallback warning" not in text


@needs_ext
def test_torch_compile_traces_the_op():
    """The op has a fake (shape-only) kernel, so torch.compile traces it without a graph break."""
    lab = _labels(2, 6, 8, 5)
    fn = torch.compile(lambda x: torch.ops.sbgan_fast.one_hot(x, 5, None, [3, 4], torch.float32, True),
                       backend="eager", fullgraph=True)
    _assert_same(fn(lab), one_hot_ref(lab, 5, None, (3, 4), torch.float32, torch.channels_last))
