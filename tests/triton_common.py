"""Shared set-up of the Triton parity tests: the device their tensors live on (CPU under Triton's
interpreter, the GPU when run with TRITON_INTERPRET=0 on a CUDA machine) and the dtypes they cover."""
import pytest
import torch

from sbgan_fast.ops import _triton

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
DEVICE = "cuda" if torch.cuda.is_available() and not _triton.interpreter_requested() else "cpu"
needs_interpreter = pytest.mark.skipif(not _triton.interpreter_requested(), reason="needs TRITON_INTERPRET=1")


@pytest.fixture(autouse=True)
def _default_device():
    """Tensors of these tests are created on DEVICE (CPU under the interpreter)."""
    previous = torch.get_default_device()
    torch.set_default_device(DEVICE)
    yield
    torch.set_default_device(previous)
