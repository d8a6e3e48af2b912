"""Build description of the C++/CUDA extension ``sbgan_fast._C`` (sources in ``csrc/``).

``setup.py`` calls :func:`get_extension_kwargs` and passes the result to ``setup()``.

* CPU kernels (``csrc/*.cpp``, ``csrc/cpu/*.cpp``) are always compiled, with OpenMP.
* CUDA kernels (``csrc/cuda/*.cu``) are added when torch is a CUDA build and ``nvcc`` is found, or when
  ``SBGAN_FAST_FORCE_CUDA=1`` (then a missing toolkit is an error). No GPU is needed to build:
  set ``TORCH_CUDA_ARCH_LIST`` (default here ``9.0``) since it cannot be detected without one.
* ``SBGAN_FAST_NO_EXT=1`` skips the extension.
* Without torch (e.g. pip's isolated build environment: use ``--no-build-isolation``) or without a C++
  compiler the extension is skipped with a message and the pure-Python package still installs; the
  ops then use their reference paths (``impl='auto'`` warns once, ``SBGAN_FAST_STRICT=1`` raises).
"""
from __future__ import annotations

import glob
import os
import shutil
import sys
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
EXT_NAME = "sbgan_fast._C"


def _say(msg: str) -> None:
    print(f"sbgan_fast build: {msg}", file=sys.stderr)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0") not in ("", "0", "false", "False")


def _sources(pattern: str) -> List[str]:
    """Source paths relative to the directory of setup.py (setuptools requires relative paths)."""
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def _cxx_compiler() -> str:
    cxx = os.environ.get("CXX", "c++").split()[0]
    return shutil.which(cxx) or ""


def _nvidia_wheel_includes() -> List[str]:
    """Include folders of the ``nvidia-*`` CUDA wheels installed with a CUDA build of torch: torch's
    headers include cuBLAS/cuSPARSE headers that a bare system toolkit may lack."""
    dirs: List[str] = []
    for entry in sys.path:
        root = os.path.join(entry, "nvidia")
        if not os.path.isdir(root):
            continue
        for inc in sorted(glob.glob(os.path.join(root, "*", "include")) + glob.glob(os.path.join(root, "include"))):
            if os.path.isdir(inc) and inc not in dirs:
                dirs.append(inc)
    return dirs


def _cuda_wanted(torch_mod) -> bool:
    if _env_flag("SBGAN_FAST_FORCE_CUDA"):
        return True
    if not torch_mod.version.cuda:
        return False
    from torch.utils.cpp_extension import CUDA_HOME

    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else ""
    return bool(nvcc and os.path.exists(nvcc))


def get_extension_kwargs() -> Dict[str, object]:
    """``setup()`` keyword arguments (``ext_modules``, ``cmdclass``) for ``sbgan_fast._C``, or ``{}``
    when the extension is skipped (see the module docstring)."""
    if _env_flag("SBGAN_FAST_NO_EXT"):
        _say("SBGAN_FAST_NO_EXT=1: skipping the C++ extension")
        return {}
    try:
        import torch
        from torch.utils import cpp_extension
    except Exception as e:  # pragma: no cover - depends on the build environment
        _say(f"torch is not importable here ({e}); skipping the C++ extension. "
             "Install torch first and build with: pip install --no-build-isolation -e .")
        return {}
    if not _cxx_compiler():
        _say("no C++ compiler found (set CXX or install g++); skipping the C++ extension")
        return {}

    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    cxx_flags = ["-O3", "-fopenmp"]  # the C++ standard is torch's choice (C++20 from torch 2.14)
    define_macros = []
    include_dirs = [os.path.join(HERE, "csrc")]
    use_cuda = _cuda_wanted(torch)
    if use_cuda:
        if not torch.version.cuda:
            raise RuntimeError("SBGAN_FAST_FORCE_CUDA=1 but this torch is a CPU build "
                               f"(torch {torch.__version__}); install a CUDA build of torch")
        if not cpp_extension.CUDA_HOME:
            raise RuntimeError("SBGAN_FAST_FORCE_CUDA=1 but no CUDA toolkit was found; set CUDA_HOME "
                               "to the folder holding bin/nvcc")
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        sources += _sources("csrc/cuda/*.cu")
        define_macros.append(("SBGAN_FAST_WITH_CUDA", None))
        include_dirs += _nvidia_wheel_includes()
        ext = cpp_extension.CUDAExtension(
            EXT_NAME, sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--expt-relaxed-constexpr"]},
            extra_link_args=["-fopenmp"])
        _say(f"building {EXT_NAME} with CUDA kernels (CUDA_HOME={cpp_extension.CUDA_HOME}, "
             f"TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']})")
    else:
        ext = cpp_extension.CppExtension(
            EXT_NAME, sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags}, extra_link_args=["-fopenmp"])
        _say(f"building {EXT_NAME} (CPU kernels only)")
    return {"ext_modules": [ext],
            "cmdclass": {"build_ext": cpp_extension.BuildExtension.with_options(no_python_abi_suffix=False)}}
