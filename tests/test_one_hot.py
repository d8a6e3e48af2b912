"""The C++ one-hot label embedding (``ops.one_hot(impl='cpp')``) against the reference path.

The output is exact, so every comparison is bitwise (values, dtype, shape and strides), on both resize
rules (``mode='nearest'``: torch's ``F.interpolate`` rule; ``mode='nearest-exact'``: PIL's ``NEAREST``,
checked against PIL itself). Tests of the kernels skip when ``sbgan_fast._C`` is not built, except :func:`test_extension_is_built_when_required`,
which fails under ``SBGAN_FAST_REQUIRE_EXT=1`` (CI builds the extension and sets it).
"""
import glob
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from sbgan_fast import ops
from sbgan_fast.ops import _cpp, _dispatch
from sbgan_fast.ops.one_hot import one_hot_ref

EXT_ERROR = _cpp.extension_error()
needs_ext = pytest.mark.skipif(EXT_ERROR is not None, reason=f"{EXT_ERROR}; build it with: {_cpp.BUILD_FIX}")

SIZES = [None, (26, 40), (7, 9), (13, 31), (5, 18)]  # identity, x2 up, down, odd up/down mixes
SIZE_IDS = ["same", "up2", "down", "odd-up", "odd-mixed"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.uint8, torch.bool]
FORMATS = [torch.contiguous_format, torch.channels_last]
MODES = ["nearest", "nearest-exact"]


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
    assert EXT_ERROR is None, f"{EXT_ERROR}; fix: {_cpp.BUILD_FIX}"
    assert hasattr(torch.ops.sbgan_fast, "one_hot") and hasattr(torch.ops.sbgan_fast, "onehot_conv2d")


@needs_ext
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("size", SIZES, ids=SIZE_IDS)
@pytest.mark.parametrize("dontcare", [None, 255], ids=["no-dc", "dc255"])
@pytest.mark.parametrize("k", [20, 35, 95, 151, 184])
def test_parity_dtypes_formats(k, dontcare, size, mode):
    lab = _labels(2, 13, 20, k, dontcare)
    for fmt in FORMATS:
        for dtype in DTYPES:
            got = ops.one_hot(lab, k, dontcare=dontcare, size=size, mode=mode, dtype=dtype, memory_format=fmt,
                              impl="cpp")
            want = one_hot_ref(lab, k, dontcare, size, dtype, fmt, mode=mode)
            _assert_same(got, want)


@needs_ext
@pytest.mark.parametrize("label_dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64])
def test_label_dtypes_and_4d_input(label_dtype):
    k = 35
    dontcare = 255 if label_dtype not in (torch.int8,) else -1
    lab = _labels(3, 11, 17, k, dontcare, torch.int64).to(label_dtype)
    for lab_in in (lab, lab.unsqueeze(1)):
        for size in (None, (6, 25)):
            for mode in MODES:
                got = ops.one_hot(lab_in, k, dontcare=dontcare, size=size, mode=mode, impl="cpp")
                _assert_same(got, one_hot_ref(lab_in, k, dontcare, size, mode=mode))


@needs_ext
def test_strided_labels():
    """Non-contiguous label maps (a transposed view, a slice, channels-last (N,1,H,W)) are read in place."""
    k = 20
    base = _labels(2, 24, 30, k)
    views = [base.transpose(1, 2), base[:, ::2, 1::3], base.unsqueeze(1).contiguous(memory_format=torch.channels_last)]
    for lab in views:
        for size in (None, (9, 14)):
            for mode in MODES:
                _assert_same(ops.one_hot(lab, k, size=size, mode=mode, impl="cpp"),
                             one_hot_ref(lab, k, None, size, mode=mode))


# ------------------------------------------------------------------ the 'nearest-exact' rule is PIL's NEAREST

def _pil_nearest(lab: torch.Tensor, size) -> torch.Tensor:
    """PIL's NEAREST resize of each uint8 (H, W) map of lab (N, H, W) to size = (H', W'), as int64."""
    out = [np.asarray(Image.fromarray(m.numpy().astype(np.uint8)).resize((size[1], size[0]), Image.NEAREST))
           for m in lab]
    return torch.from_numpy(np.stack(out)).long()


# (source H x W, target H' x W'): Cityscapes files to every progressive resolution, the 256x512 training
# size to every lower one, an ADE-like non-integer ratio, and odd down- and upscales. 2x84 -> 7x34 holds
# exact ties (see test_nearest_exact_follows_pil_where_torch_differs).
PIL_CASES = ([((1024, 2048), (4 * 2 ** i, 8 * 2 ** i)) for i in range(7)]
             + [((256, 512), (4 * 2 ** i, 8 * 2 ** i)) for i in range(6)]
             + [((375, 500), (64, 64)), ((7, 13), (3, 5)), ((3, 5), (7, 13)), ((2, 84), (7, 34))])
PIL_IDS = [f"{h}x{w}-{h2}x{w2}" for (h, w), (h2, w2) in PIL_CASES]


@pytest.mark.parametrize("src,size", PIL_CASES, ids=PIL_IDS)
def test_nearest_exact_equals_pil_nearest(src, size):
    """Labels resized with mode='nearest-exact' (reference and C++ kernel) equal PIL's
    Image.resize(..., Image.NEAREST) of the uint8 map, pixel for pixel, down and up, integer and
    non-integer ratios."""
    k, dontcare = 35, 255
    g = torch.Generator().manual_seed(src[0] * 7 + size[1])
    lab = torch.randint(0, k, (1,) + src, generator=g)
    lab[torch.rand((1,) + src, generator=g) < 0.1] = dontcare
    want = _pil_nearest(lab, size)
    assert torch.equal(ops.nearest_resize_labels(lab, size, "nearest-exact"), want)
    want_oh = one_hot_ref(want, k, dontcare)
    _assert_same(one_hot_ref(lab, k, dontcare, size, mode="nearest-exact"), want_oh)
    if EXT_ERROR is None:
        _assert_same(ops.one_hot(lab, k, dontcare=dontcare, size=size, mode="nearest-exact", impl="cpp"), want_oh)


@pytest.mark.parametrize("src,size", PIL_CASES[:-1], ids=PIL_IDS[:-1])
def test_nearest_exact_equals_torch_nearest_exact_where_they_agree(src, size):
    """On these shapes torch's F.interpolate(mode='nearest-exact') picks the same pixels as PIL;
    mode='nearest' (the default) is torch's 'nearest' (the blocks' top-left corners)."""
    k = 20
    lab = torch.randint(0, k, (1,) + src, generator=torch.Generator().manual_seed(3))
    want = F.interpolate(lab[:, None].float(), size=size, mode="nearest-exact")[:, 0].long()
    assert torch.equal(ops.nearest_resize_labels(lab, size, "nearest-exact"), want)
    want_nearest = F.interpolate(lab[:, None].float(), size=size, mode="nearest")[:, 0].long()
    assert torch.equal(ops.nearest_resize_labels(lab, size), want_nearest)
    if EXT_ERROR is None:
        _assert_same(ops.one_hot(lab, k, size=size, mode="nearest-exact", impl="cpp"), one_hot_ref(want, k))
        _assert_same(ops.one_hot(lab, k, size=size, impl="cpp"), one_hot_ref(want_nearest, k))


def test_nearest_exact_equals_pil_on_real_label_files(shared_fixtures):
    """The label files of the sample datasets (8-bit 'L' / 'P' PNGs, Cityscapes and ADE20K layouts), resized
    with PIL's NEAREST straight from the file, equal the ops' 'nearest-exact' resize of the decoded map at
    the progressive resolutions and at non-integer ratios."""
    files = sorted(glob.glob(os.path.join(shared_fixtures, "**", "*gtFine_labelIds.png"), recursive=True))[:2]
    files += sorted(glob.glob(os.path.join(shared_fixtures, "ade20k_sceneparsing", "**", "annotations", "**",
                                           "*.png"), recursive=True))[:3]
    assert files, "no label files among the fixtures"
    for path in files:
        with Image.open(path) as im:
            assert im.mode in ("L", "P"), (path, im.mode)
            lab = torch.from_numpy(np.asarray(im).astype(np.int64))[None]
            for size in [(4 * 2 ** i, 8 * 2 ** i) for i in range(5)] + [(64, 64), (37, 50)]:
                want = torch.from_numpy(np.asarray(im.resize((size[1], size[0]), Image.NEAREST)).astype(np.int64))
                assert torch.equal(ops.nearest_resize_labels(lab, size, "nearest-exact")[0], want), (path, size)
                if EXT_ERROR is None:
                    got = ops.one_hot(lab, 256, size=size, mode="nearest-exact", dtype=torch.uint8, impl="cpp")
                    _assert_same(got, one_hot_ref(want[None], 256, dtype=torch.uint8))


def test_nearest_exact_follows_pil_where_torch_differs():
    """Where the centre of a block falls exactly on a source pixel boundary, PIL's running double sum
    and torch's fp32 product round differently (here 2 -> 7: output 3 has centre 3.5 * 2/7 = 1.0; 84
    -> 34: output 8 has centre 8.5 * 84/34 = 21.0). mode='nearest-exact' follows PIL."""
    assert ops.nearest_source_indices(2, 7, "nearest-exact") == (0, 0, 0, 0, 1, 1, 1)
    lab = torch.arange(2 * 84).view(1, 2, 84) % 251
    want = _pil_nearest(lab, (7, 34))
    torch_exact = F.interpolate(lab[:, None].float(), size=(7, 34), mode="nearest-exact")[:, 0].long()
    assert not torch.equal(torch_exact, want)  # the two rules differ on this shape
    assert torch.equal(ops.nearest_resize_labels(lab, (7, 34), "nearest-exact"), want)
    if EXT_ERROR is None:
        got = ops.one_hot(lab, 251, size=(7, 34), mode="nearest-exact", impl="cpp")
        _assert_same(got, one_hot_ref(want, 251))


def _indices_via(fn, n_in, n_out):
    """The source column of each output column of fn (a resize of a (1, 1, n_in) label map to
    (1, n_out) returning a one-hot map), read back through two digits in base 64."""
    col = torch.arange(n_in).view(1, 1, n_in)
    digits = torch.arange(64, dtype=torch.float32)
    lo = digits @ fn(col % 64, (1, n_out))[0, :, 0]  # the class of each column (one-hot, fp32)
    hi = digits @ fn(col // 64, (1, n_out))[0, :, 0]
    return tuple(int(v) for v in (hi * 64 + lo).tolist())


def test_source_indices_sweep_equals_pil_and_cpp():
    """The index rule itself on many sizes: nearest_source_indices(mode='nearest-exact') equals PIL on
    every (in, out) up to 32 and on random pairs up to 3000 (PIL mode 'I' holds values >= 256), and
    the C++ kernel reads the same source columns, on both rules."""
    g = np.random.default_rng(0)
    pairs = [(i, o) for i in range(1, 33) for o in range(1, 33)]
    pairs += [tuple(int(v) for v in g.integers(1, 3001, size=2)) for _ in range(40)]
    for n_in, n_out in pairs:
        row = np.arange(n_in, dtype=np.int32).reshape(1, n_in)
        pil = tuple(np.asarray(Image.fromarray(row).resize((n_out, 1), Image.NEAREST))[0].tolist())
        assert ops.nearest_source_indices(n_in, n_out, "nearest-exact") == pil, (n_in, n_out)
    if EXT_ERROR is None:
        for n_in, n_out in pairs[::7] + pairs[-40:]:
            for mode in MODES:
                got = _indices_via(lambda l, s: ops.one_hot(l, 64, size=s, mode=mode, dtype=torch.float32,
                                                            impl="cpp"), n_in, n_out)
                assert got == ops.nearest_source_indices(n_in, n_out, mode), (n_in, n_out, mode)


@pytest.mark.gpu
@pytest.mark.skipif(not (EXT_ERROR is None and torch.cuda.is_available() and _cpp.cuda_compiled()),
                    reason="needs a CUDA device and sbgan_fast._C built with its CUDA kernels")
@pytest.mark.parametrize("mode", MODES)
def test_cuda_kernel_equals_reference(mode):
    """The CUDA kernel reads the same source pixels as the reference on both rules (bitwise)."""
    for src, size in [((13, 20), (7, 9)), ((13, 20), (26, 40)), ((375, 500), (64, 64)), ((3, 5), (7, 13)),
                      ((2, 84), (7, 34)), ((13, 20), None)]:
        lab = _labels(2, *src, 35, 255)
        for fmt in FORMATS:
            got = ops.one_hot(lab.cuda(), 35, dontcare=255, size=size, mode=mode, memory_format=fmt, impl="cuda")
            _assert_same(got.cpu(), one_hot_ref(lab, 35, 255, size, memory_format=fmt, mode=mode))


@pytest.mark.parametrize("impl", ["ref", "cpp", "auto"])
def test_bad_mode_raises_naming_op_argument_and_values(impl):
    lab = _labels(1, 4, 4, 5)
    msg = r"^one_hot: mode must be 'nearest' or 'nearest-exact', got 'bilinear'$"
    with pytest.raises(ValueError, match=msg):
        ops.one_hot(lab, 5, size=(2, 2), mode="bilinear", impl=impl)
    with pytest.raises(ValueError, match=r"one_hot: mode must be 'nearest' or 'nearest-exact', got None"):
        ops.one_hot(lab, 5, mode=None, impl=impl)
    with pytest.raises(ValueError, match=r"^nearest_resize_labels: mode must be 'nearest' or 'nearest-exact'"):
        ops.nearest_resize_labels(lab, (2, 2), "exact")
    if EXT_ERROR is None and impl == "cpp":  # the kernel checks it too (same message)
        with pytest.raises(ValueError, match=msg):
            torch.ops.sbgan_fast.one_hot(lab, 5, None, [2, 2], torch.float32, False, "bilinear")


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
    assert "auto -> cpp" in ops.explain("one_hot", lab, 5, size=(2, 2), mode="nearest-exact")
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
    monkeypatch.setattr(_cpp, "extension_error", lambda: "the C++ extension sbgan_fast._C is not built (test)")
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


@pytest.mark.slow
@needs_ext
@pytest.mark.parametrize("mode", [None] + MODES, ids=["default", *MODES])
def test_torch_compile_traces_the_op(mode):
    """The op has a fake (shape-only) kernel, so torch.compile traces it without a graph break (the
    schema's mode defaults to 'nearest')."""
    lab = _labels(2, 6, 8, 5)
    extra = () if mode is None else (mode,)
    fn = torch.compile(lambda x: torch.ops.sbgan_fast.one_hot(x, 5, None, [3, 4], torch.float32, True, *extra),
                       backend="eager", fullgraph=True)
    _assert_same(fn(lab), one_hot_ref(lab, 5, None, (3, 4), torch.float32, torch.channels_last,
                                      mode=mode or "nearest"))


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_reference_resize_under_torch_compile(mode):
    """The reference resize traces in one graph on both rules (the index tables are constants)."""
    lab = _labels(2, 7, 13, 5)
    fn = torch.compile(lambda x: ops.nearest_resize_labels(x, (3, 26), mode), backend="eager", fullgraph=True)
    assert torch.equal(fn(lab), ops.nearest_resize_labels(lab, (3, 26), mode))
