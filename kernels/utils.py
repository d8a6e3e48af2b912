"""Triton utilities shared by the kernel modules (launch code and ``@triton.jit`` helpers).

Tensor view used by every kernel: a 4-d (N, C, H, W) tensor with arbitrary strides (NCHW,
channels-last, slices), indexed through its own strides. ``FLAT_HW`` kernels collapse (h, w) into one
index when ``stride(H) == W * stride(W)`` (:func:`flat_hw`).

Tile budget: on a GPU a program holds about :data:`GPU_TILE` elements; under Triton's CPU interpreter
(``TRITON_INTERPRET=1`` when the kernels are defined) every program costs ~30 ms whatever its size, so
tiles are as large as Triton allows (:data:`INTERPRETER_TILE`, :func:`tile_budget`).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

try:  # Triton's CPU interpreter (TRITON_INTERPRET=1 when the kernels below are defined)
    from triton.runtime.interpreter import InterpretedFunction as _InterpretedFunction
except ImportError:  # pragma: no cover - older/newer Triton layouts
    _InterpretedFunction = ()

#: Elements per program tile on a GPU and under the interpreter.
GPU_TILE = 4096
INTERPRETER_TILE = 1 << 16


@triton.jit
def tile_offsets(n, hw, c, s_n, s_c, s_h, s_w, W, FLAT_HW: tl.constexpr):
    """int64 element offsets (BLOCK_HW, BLOCK_C) of image ``n``, flat spatial indices ``hw``
    (BLOCK_HW,) and channels ``c`` (BLOCK_C,) for strides (s_n, s_c, s_h, s_w)."""
    hw64 = hw.to(tl.int64)
    if FLAT_HW:  # s_h == W * s_w: (h, w) collapse to one index
        row = hw64 * s_w
    else:
        h = hw64 // W
        row = h * s_h + (hw64 - h * W) * s_w
    return n.to(tl.int64) * s_n + row[:, None] + (c.to(tl.int64) * s_c)[None, :]


def is_interpreted() -> bool:
    """True when the kernels were defined under ``TRITON_INTERPRET=1`` (they then run on CPU tensors)."""
    return bool(_InterpretedFunction) and isinstance(tile_offsets, _InterpretedFunction)


def tile_budget() -> int:
    """Elements per program tile: :data:`INTERPRETER_TILE` under the interpreter, else :data:`GPU_TILE`."""
    return INTERPRETER_TILE if is_interpreted() else GPU_TILE


def flat_hw(*tensors: Optional[torch.Tensor]) -> bool:
    """Whether (h, w) collapse to one index in every given (N, C, H, W) tensor (None is skipped)."""
    for t in tensors:
        if t is not None and t.shape[2] > 1 and t.stride(2) != t.shape[3] * t.stride(3):
            return False
    return True


def strides(t: Optional[torch.Tensor]) -> Tuple[int, int, int, int]:
    """The 4 strides of ``t``, or zeros for an absent tensor (its pointer is then never read)."""
    return tuple(t.stride()) if t is not None else (0, 0, 0, 0)
