"""What the ops' Triton impls share: lazy import of Triton and ``sbgan_fast.kernels``, and the
eligibility checks (verdicts) every Triton impl applies.

Triton and the kernel modules are imported the first time a check decides that a Triton impl could
run, so ``sbgan_fast`` imports without Triton.

Eligibility (read at call time):

* CUDA tensors: eligible; if Triton (or the kernels) cannot be imported the impl is *unavailable*
  (``auto`` warns once and uses ``ref``; strict mode and an explicit ``impl='triton'`` raise with the
  fix ``pip install triton``).
* CPU tensors: eligible only when ``TRITON_INTERPRET=1`` is set (Triton's interpreter, used by the
  tests) *and* ``impl='triton'`` was asked for by name; otherwise *not applicable* (``auto`` silently
  uses ``ref``). Triton reads that variable when a kernel is defined, so setting it after
  ``sbgan_fast.kernels`` was imported cannot work: that case is reported as unavailable with the fix.
* float64, more than 65535 images, 2**31 or more elements: not applicable (each op adds its own).
* Inside torch.compile the checks run while tracing (:func:`load` and :func:`kernels_interpreted` are
  evaluated then, not traced); the impl chosen is part of the compiled graph.
* Second-order graphs: the Triton impls are first-order only (:func:`first_order_only` raises in their
  backward when a graph for second-order gradients is being built); they are registered with
  ``supports_double_backward=False`` so ``auto`` never picks them inside
  :func:`sbgan_fast.ops.double_backward`.
"""
from __future__ import annotations

import importlib
import os
from typing import Dict, Optional, Sequence

import torch

from . import _dispatch
from ._dispatch import Verdict

TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_MAX_GRID_Y = 65535
_MAX_NUMEL = 2 ** 31 - 1
KERNEL_MODULES = ("sbgan_fast.kernels.utils", "sbgan_fast.kernels.gumbel", "sbgan_fast.kernels.spade_norm")

_import_error: Optional[str] = None
_kernels_loaded = False
_modules: Dict[str, object] = {}


def interpreter_requested() -> bool:
    """``TRITON_INTERPRET`` as Triton reads it (truthy: '1', 'true', 'on', 'yes'), read now."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


@_dispatch.constant_under_compile  # under torch.compile: called once while tracing, not traced
def load() -> Optional[str]:
    """Import Triton and the kernel modules once; return None or the import error text."""
    global _import_error, _kernels_loaded
    if _kernels_loaded:
        return None
    if _import_error is not None:
        return _import_error
    try:
        importlib.import_module("triton")
        for name in KERNEL_MODULES:
            _modules[name.rsplit(".", 1)[1]] = importlib.import_module(name)
    except Exception as e:  # ImportError, or a Triton too old for the kernels
        _import_error = f"{type(e).__name__}: {e}"
        return _import_error
    _kernels_loaded = True
    return None


def kernels(name: str):
    """The kernel module ``sbgan_fast.kernels.<name>`` ('utils', 'gumbel', 'spade_norm'); imports them
    when :func:`load` has not run yet (raising the import error where Triton is missing)."""
    if name not in _modules:
        for module in KERNEL_MODULES:
            _modules[module.rsplit(".", 1)[1]] = importlib.import_module(module)
    return _modules[name]


@_dispatch.constant_under_compile
def kernels_interpreted() -> bool:
    """Whether the kernels were defined under Triton's interpreter (call after :func:`load` succeeded)."""
    return kernels("utils").is_interpreted()


def unavailable(op: str) -> _dispatch.ImplUnavailableError:
    """The error of a Triton-only helper called where Triton cannot be imported."""
    return _dispatch.ImplUnavailableError(
        f"sbgan_fast.ops.{op}: Triton cannot be imported ({load()}). Fix: pip install triton.")


def device_verdict(tensors: Sequence[torch.Tensor]) -> Optional[Verdict]:
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        return Verdict(f"its tensors are on different devices ({sorted(map(str, devices))})",
                       "put all tensors on one device", applicable=False)
    device = devices.pop()
    interp = interpreter_requested()
    if device.type == "cpu" and interp and not _dispatch.explicit_request():
        return Verdict("the tensors are on cpu; Triton's interpreter (TRITON_INTERPRET=1) runs CPU tensors only "
                       "when impl='triton' is asked for by name (it is a testing tool, never auto's choice)",
                       "pass impl='triton' or use ops.use_impl(..., 'triton')", applicable=False)
    if device.type != "cuda" and not (device.type == "cpu" and interp):
        return Verdict(f"the tensors are on {device.type}; the Triton kernels need CUDA tensors "
                       f"(CPU tensors run only in Triton's interpreter, TRITON_INTERPRET=1)",
                       "use CUDA tensors, or impl='ref'", applicable=False)
    err = load()
    if err is not None:
        return Verdict(f"Triton or sbgan_fast.kernels cannot be imported ({err})", "pip install triton")
    interpreted = kernels_interpreted()
    if interp and not interpreted:
        return Verdict("TRITON_INTERPRET=1 is set but sbgan_fast.kernels was imported before it was set "
                       "(Triton reads it when the kernels are defined)",
                       "set TRITON_INTERPRET=1 before the first use of the Triton impls, or unset it")
    if interpreted and not interp:
        return Verdict("sbgan_fast.kernels was imported under TRITON_INTERPRET=1, which is no longer set "
                       "(the kernels would run in the slow CPU interpreter)",
                       "keep TRITON_INTERPRET unset until the Triton impls have been used, or set it again")
    return None


def dtype_verdict(name: str, t: torch.Tensor) -> Optional[Verdict]:
    if t.dtype not in TRITON_DTYPES:
        return Verdict(f"{name} has dtype {t.dtype}; the Triton kernels take float32, float16 and bfloat16",
                       "use impl='ref' for other dtypes", applicable=False)
    return None


def size_verdict(t: torch.Tensor) -> Optional[Verdict]:
    if t.numel() > _MAX_NUMEL:
        return Verdict(f"the tensor has {t.numel()} elements (>= 2**31)", "use impl='ref'", applicable=False)
    if t.shape[0] > _MAX_GRID_Y:
        return Verdict(f"the batch has {t.shape[0]} images (> {_MAX_GRID_Y}, the launch grid limit)",
                       "split the batch or use impl='ref'", applicable=False)
    return None


def first_order_only(op: str) -> None:
    """Called at the top of each backward: grad mode is on there exactly when the caller asked for
    ``create_graph=True``, i.e. a graph for second-order gradients is being built through this op,
    which the kernels cannot differentiate again; raise rather than silently drop those terms."""
    if torch.is_grad_enabled():
        raise RuntimeError(
            f"sbgan_fast.ops.{op}: impl='triton' supports first-order gradients only, but a second-order "
            f"graph is being built through it (create_graph=True). Fix: use impl='ref' here, or build that "
            f"graph inside sbgan_fast.ops.double_backward() so that impl='auto' picks the reference path.")
