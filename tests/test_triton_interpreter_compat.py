"""sbgan_fast.kernels' fix for Triton interpreters (before 3.7) that turn a runtime scalar into a
Python int with ``int(array)``, which NumPy >= 2.4 refuses for the 1-element arrays they hold: a
kernel looping ``for t in range(0, runtime_n)`` then fails under TRITON_INTERPRET=1.

The faulty interpreter is rebuilt here on top of the installed one, so the fix is exercised whatever
Triton CI has."""
import numpy as np
import pytest
import torch

triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")
interpreter = pytest.importorskip("triton.runtime.interpreter")

from sbgan_fast.kernels import _interpreter_index_fix  # noqa: E402
from sbgan_fast.ops import _triton  # noqa: E402
from tolerances import FP32_LOOSE_SUM

pytestmark = pytest.mark.skipif(not _triton.interpreter_requested(), reason="needs TRITON_INTERPRET=1")


@triton.jit
def _chunked_sum_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for t in range(0, tl.cdiv(n, BLOCK)):  # a runtime bound: the interpreter calls __index__ on it
        offs = t * BLOCK + tl.arange(0, BLOCK)
        acc += tl.load(x_ptr + offs, mask=offs < n, other=0.0)
    tl.store(out_ptr, tl.sum(acc, axis=0))


def _chunked_sum(x):
    out = torch.zeros(1, dtype=torch.float32)
    _chunked_sum_kernel[(1,)](x, out, x.numel(), BLOCK=16)
    return out[0]


def _interpreter_with_index(convert):
    """The installed interpreter's tl.tensor patch, with ``__index__`` made ``convert(data)``."""
    installed = interpreter._patch_lang_tensor

    def patch(tensor, scope):
        installed(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: convert(self.handle.data))
    return patch


def _numpy_refuses_1d_to_int() -> bool:
    try:
        int(np.array([3]))
    except TypeError:
        return True
    return False


def test_faulty_interpreter_is_wrapped_and_runtime_loop_bounds_work(monkeypatch):
    monkeypatch.setattr(interpreter, "_patch_lang_tensor", _interpreter_with_index(int))
    x = torch.randn(50)
    if _numpy_refuses_1d_to_int():  # the fault is real with this NumPy: show it before the fix
        with pytest.raises(Exception, match="0-dimensional"):
            _chunked_sum(x)
    assert _interpreter_index_fix() is True
    wrapped = interpreter._patch_lang_tensor
    torch.testing.assert_close(_chunked_sum(x), x.sum(), **FP32_LOOSE_SUM)
    assert _interpreter_index_fix() is True  # idempotent: not wrapped twice
    assert interpreter._patch_lang_tensor is wrapped


def test_sound_interpreter_is_left_alone(monkeypatch):
    sound = _interpreter_with_index(lambda data: int(data.squeeze()))
    monkeypatch.setattr(interpreter, "_patch_lang_tensor", sound)
    assert _interpreter_index_fix() is False
    assert interpreter._patch_lang_tensor is sound
    x = torch.randn(37)
    torch.testing.assert_close(_chunked_sum(x), x.sum(), **FP32_LOOSE_SUM)
