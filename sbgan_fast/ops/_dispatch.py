"""One dispatch for every custom op.

Every op takes ``impl='auto' | 'triton' | 'cuda' | 'cpp' | 'ref'``.

* ``ref`` is plain PyTorch: works everywhere, any gradient order, torch.compile.
* An explicit impl succeeds or raises :class:`ImplUnavailableError` naming the op, the impl, the
  reason and the fix.
* ``auto`` picks the first eligible fast impl (in the op's priority order). Two kinds of "no":

  - *not applicable*: the inputs are outside what the fast impl is for (a GPU kernel given CPU
    tensors, a first-order kernel where a second-order graph is being built, an unsupported dtype).
    ``ref`` is then simply the right choice: no warning.
  - *unavailable*: the fast impl should have run but cannot (Triton not installed on a CUDA machine,
    the C++ extension not built). ``auto`` falls back to ``ref`` with **one warning per reason**, and
    ``SBGAN_FAST_STRICT=1`` turns that fallback into an error, so a broken build can never pass as a
    slow run.

``SBGAN_FAST_IMPL`` sets the default impl (``auto`` if unset), :func:`use_impl` overrides it in a
scope, and :func:`explain` says what would be chosen and why.

Inside ``torch.compile`` all of this runs while tracing (dynamo guards on the scopes, so entering
:func:`double_backward` or :func:`use_impl` recompiles): the compiled graph calls the chosen impl.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import warnings
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from ..errors import SbganError

IMPLS = ("auto", "triton", "cuda", "cpp", "ref")


class ImplUnavailableError(SbganError, RuntimeError):
    """An explicitly requested impl (or any fallback under strict mode) cannot run."""


class SbganFallbackWarning(UserWarning):
    """``impl='auto'`` fell back to the reference path although a fast path should have run."""


@dataclasses.dataclass(frozen=True)
class Verdict:
    """Why an impl cannot run. ``applicable=False`` means "not for these inputs" (silent under auto);
    ``applicable=True`` means "should have run but is unavailable" (warned, strict error)."""

    reason: str
    fix: str = ""
    applicable: bool = True


# A check returns None when the impl can run, else a Verdict.
Check = Callable[..., Optional[Verdict]]


@dataclasses.dataclass
class Backend:
    impl: str
    fn: Callable
    check: Check
    supports_double_backward: bool = False


class _State(threading.local):
    def __init__(self) -> None:
        self.overrides: Dict[Optional[str], List[str]] = {}
        self.double_backward_depth = 0
        self.explicit = False


_state = _State()
_registry: Dict[str, Dict[str, Backend]] = {}
_priority: Dict[str, List[str]] = {}
_warned: set = set()


def register(op: str, impl: str, fn: Callable, *, check: Optional[Check] = None,
             supports_double_backward: bool = False) -> None:
    """Register ``fn`` as implementation ``impl`` of ``op``. Fast impls are tried by ``auto`` in
    registration order; ``ref`` must always be registered and must support any gradient order."""
    if impl not in IMPLS or impl == "auto":
        raise ValueError(f"register({op!r}): impl must be one of {IMPLS[1:]}, got {impl!r}")
    _registry.setdefault(op, {})[impl] = Backend(
        impl, fn, check or (lambda *a, **k: None),
        supports_double_backward=supports_double_backward or impl == "ref")
    order = _priority.setdefault(op, [])
    if impl != "ref" and impl not in order:
        order.append(impl)


def ops() -> List[str]:
    return sorted(_registry)


def strict() -> bool:
    return os.environ.get("SBGAN_FAST_STRICT", "0") not in ("", "0", "false", "False")


def default_impl(op: str) -> str:
    """What ``impl='auto'`` means for ``op`` right now: the innermost :func:`use_impl` override for
    ``op`` (or for all ops), else ``SBGAN_FAST_IMPL``, else ``auto``."""
    for key in (op, None):
        stack = _state.overrides.get(key)
        if stack:
            return stack[-1]
    env = os.environ.get("SBGAN_FAST_IMPL", "auto") or "auto"
    if env not in IMPLS:
        raise ValueError(f"SBGAN_FAST_IMPL={env!r} is not one of {IMPLS}")
    return env


@contextlib.contextmanager
def use_impl(name: Optional[str], impl: str) -> Iterator[None]:
    """Within the scope, calls of op ``name`` (every op when ``name`` is None) that pass
    ``impl='auto'`` use ``impl`` instead. Explicit impls other than ``auto`` are not overridden."""
    if impl not in IMPLS:
        raise ValueError(f"use_impl: impl must be one of {IMPLS}, got {impl!r}")
    if name is not None and name not in _registry:
        raise ValueError(f"use_impl: unknown op {name!r}; known ops: {ops()}")
    stack = _state.overrides.setdefault(name, [])
    stack.append(impl)
    try:
        yield
    finally:
        stack.pop()


@contextlib.contextmanager
def double_backward() -> Iterator[None]:
    """Marks a scope in which a second-order graph is built (e.g. the WGAN-GP discriminator
    forward): ``auto`` then never chooses a first-order-only fast impl."""
    _state.double_backward_depth += 1
    try:
        yield
    finally:
        _state.double_backward_depth -= 1


def building_double_backward() -> bool:
    return _state.double_backward_depth > 0


def explicit_request() -> bool:
    """True while a check runs for an impl that was asked for by name (argument, ``use_impl`` or
    ``SBGAN_FAST_IMPL``), False while ``auto`` is choosing. Lets a check allow test-only routes (the
    Triton interpreter on CPU tensors) when asked for explicitly, and never under ``auto``."""
    return _state.explicit


def _check(be: "Backend", explicit: bool, args: tuple, kwargs: dict) -> Optional[Verdict]:
    prev, _state.explicit = _state.explicit, explicit
    try:
        return be.check(*args, **kwargs)
    finally:
        _state.explicit = prev


def _resolve(op: str, impl: str, args: tuple, kwargs: dict) -> Tuple[Backend, str, Optional[Verdict]]:
    """Return (backend, explanation, fallback verdict or None)."""
    if op not in _registry:
        raise ValueError(f"unknown op {op!r}; known ops: {ops()}")
    backends = _registry[op]
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        impl = default_impl(op)
    if impl != "auto":
        be = backends.get(impl)
        if be is None:
            raise ImplUnavailableError(
                f"sbgan_fast.ops.{op}: impl={impl!r} does not exist for this op. "
                f"Fix: use one of {['auto', 'ref'] + _priority[op]}.")
        verdict = _check(be, True, args, kwargs)
        if verdict is None and building_double_backward() and not be.supports_double_backward:
            verdict = Verdict("it supports first-order gradients only and a second-order graph is being "
                              "built", "use impl='ref' (or 'auto') here", applicable=False)
        if verdict is not None:
            raise ImplUnavailableError(
                f"sbgan_fast.ops.{op}: impl={impl!r} cannot run: {verdict.reason}."
                + (f" Fix: {verdict.fix}." if verdict.fix else ""))
        return be, f"{op}: impl={impl!r} requested explicitly", None
    # auto
    notes = []
    fallback: Optional[Verdict] = None
    for name in _priority[op]:
        be = backends[name]
        verdict = _check(be, False, args, kwargs)
        if verdict is None and building_double_backward() and not be.supports_double_backward:
            verdict = Verdict("first-order only and a second-order graph is being built", applicable=False)
        if verdict is None:
            notes.append(f"{name}: chosen")
            return be, f"{op}: auto -> {name} (" + "; ".join(notes) + ")", None
        notes.append(f"{name}: {'unavailable' if verdict.applicable else 'not applicable'}, {verdict.reason}")
        if verdict.applicable and fallback is None:
            fallback = Verdict(f"{name}: {verdict.reason}", verdict.fix, True)
    notes.append("ref: chosen")
    return backends["ref"], f"{op}: auto -> ref (" + "; ".join(notes) + ")", fallback


def dispatch(op: str, impl: str, *args, **kwargs) -> Callable:
    """Return the function that runs ``op`` for these arguments (see module docstring)."""
    be, _, fallback = _resolve(op, impl, args, kwargs)
    if fallback is not None:
        msg = (f"sbgan_fast.ops.{op}: falling back to the reference path because {fallback.reason}."
               + (f" Fix: {fallback.fix}." if fallback.fix else ""))
        if strict():
            raise ImplUnavailableError(msg + " (SBGAN_FAST_STRICT=1 makes this an error.)")
        _warn_once(op, fallback.reason, msg)
    return be.fn


def constant_under_compile(fn: Callable) -> Callable:
    """What ``torch.compiler.assume_constant_result`` does (torch.compile calls ``fn`` once while
    tracing and uses its result as a constant), without importing torch._dynamo when this package is
    imported."""
    fn._dynamo_marked_constant = True
    return fn


@constant_under_compile  # under torch.compile: run once while tracing, not traced
def _warn_once(op: str, reason: str, msg: str) -> None:
    key = (op, reason)
    if key not in _warned:
        _warned.add(key)
        warnings.warn(msg, SbganFallbackWarning, stacklevel=4)


def explain(op: str, *args, impl: str = "auto", **kwargs) -> str:
    """Say which impl a call ``op(*args, impl=impl, **kwargs)`` would use and why."""
    try:
        _, text, fallback = _resolve(op, impl, args, kwargs)
    except ImplUnavailableError as e:
        return f"error: {e}"
    if fallback is not None:
        text += f" [fallback warning: {fallback.reason}" + (" ; strict mode would raise]" if not strict()
                                                            else " ; strict mode raises]")
    return text


def reset_warnings() -> None:
    """Forget which fallback warnings were already given (for tests)."""
    _warned.clear()
