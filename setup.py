"""Build script for sbgan_fast.

The Python package installs with nothing but torch, numpy and pillow. The C++ extension
(`sbgan_fast._C`, sources in `csrc/`) is built when torch's C++ extension tooling and a compiler
are present; set SBGAN_FAST_NO_EXT=1 to skip it. `kernels/` is installed as `sbgan_fast.kernels`
(a PyPI package named `kernels` exists: no top-level `kernels` is ever installed).
"""
import os
import sys

from setuptools import setup

# setup.py may run with a cwd that is not on sys.path (PEP 517 backends): make csrc_build importable.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

PACKAGES = [
    "sbgan_fast",
    "sbgan_fast.ops",
    "sbgan_fast.nn",
    "sbgan_fast.models",
    "sbgan_fast.train",
    "sbgan_fast.data",
    "sbgan_fast.metrics",
    "sbgan_fast.kernels",
]


def extension_kwargs():
    """Return setup() keyword arguments for the C++/CUDA extension, or {} when it cannot be built."""
    if os.environ.get("SBGAN_FAST_NO_EXT", "0") == "1":
        return {}
    try:
        from csrc_build import get_extension_kwargs  # noqa: E402  (build helper beside this file)
    except ImportError:
        return {}
    return get_extension_kwargs()


setup(
    name="sbgan_fast",
    version="0.1.0",
    description="A performance-engineered Semantic Bottleneck GAN (SB-GAN)",
    packages=PACKAGES,
    package_dir={"sbgan_fast.kernels": "kernels"},
    package_data={"sbgan_fast.data": ["palettes/*.json"]},
    python_requires=">=3.10",
    install_requires=["torch", "numpy", "pillow"],
    extras_require={
        "train": ["tqdm", "pyyaml", "tensorboard", "nvidia-ml-py"],
        "triton": ["triton"],
        "test": ["pytest", "pytest-benchmark", "scipy"],
    },
    entry_points={"console_scripts": ["sbgan-fast = sbgan_fast.cli:main"]},
    **extension_kwargs(),
)
