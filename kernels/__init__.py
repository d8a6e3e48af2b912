"""Triton launch code for sbgan_fast.ops (installed as sbgan_fast.kernels; relative imports only)."""


def _interpreter_index_fix() -> bool:
    """Make Triton's CPU interpreter accept a runtime scalar as a ``range`` bound under NumPy >= 2.4.

    The interpreter holds a kernel's scalar arguments (and what is computed from them) as 1-element
    1-d NumPy arrays, and Triton releases before 3.7 turn one into a Python int with ``int(array)``,
    which NumPy 2.4 refuses ("only 0-dimensional arrays can be converted to Python scalars"): every
    loop ``for t in range(0, n)`` with a runtime ``n`` then fails under TRITON_INTERPRET=1. Where the
    installed interpreter has that fault, its per-launch patch of ``tl.tensor`` is wrapped so that
    ``__index__`` squeezes the array first, as newer Triton releases do. Compiled kernels are not
    affected. Returns whether the wrap was installed."""
    import warnings
    try:
        import numpy as np
        from triton.runtime import interpreter
        original = interpreter._patch_lang_tensor
    except (ImportError, AttributeError):  # no Triton, or an interpreter laid out differently
        return False
    if getattr(original, "_sbgan_index_fix", False):
        return True

    class _Probe:  # what original() installs on tl.tensor, recorded on a stand-in class instead
        pass

    class _Scope:
        @staticmethod
        def set_attr(obj, name, value):
            setattr(obj, name, value)

    class _Handle:
        data = np.array([3])

    try:
        original(_Probe, _Scope())
        probe = _Probe()
        probe.handle = _Handle()
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # NumPy 1.25 to 2.3 only warn
            if probe.__index__() == 3:
                return False  # this interpreter already handles 1-element arrays
    except (TypeError, DeprecationWarning):
        pass
    except Exception:  # anything unexpected: leave the interpreter as it is
        return False

    def _patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    _patch_lang_tensor._sbgan_index_fix = True
    interpreter._patch_lang_tensor = _patch_lang_tensor
    return True


def _interpreting() -> bool:
    import os
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() not in ("", "0", "false", "no", "off")


if _interpreting():   # only the CPU interpreter is touched; nothing is patched for compiled kernels
    _interpreter_index_fix()
