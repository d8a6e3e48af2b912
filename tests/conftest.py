import os

# Triton reads TRITON_INTERPRET when @triton.jit runs: set it before any kernel module is imported,
# so Triton kernels run on CPU tensors here.
os.environ.setdefault("TRITON_INTERPRET", "1")

import random  # noqa: E402
import shutil  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    yield


@pytest.fixture
def shared_fixtures():
    """Path to ../shared/fixtures (real sample data); skip when absent."""
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.normpath(os.path.join(here, "..", "..", "shared", "fixtures"))
    if not os.path.isdir(path):
        pytest.skip(f"real sample data not found at {path}")
    return path


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request):
    """A folder shared by one test module's tests, removed when the module ends (the module-scoped
    training runs write checkpoints of tens of MB; a session that keeps them all fills a small disk)."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_"))
    yield path
    shutil.rmtree(path, ignore_errors=True)
