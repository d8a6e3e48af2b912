"""Triton kernels for the straight-through Gumbel-softmax and the argmax one-hot (launch code only).

Tensor view used by every kernel here: a 4-d (N, K, H, W) tensor with arbitrary strides (NCHW,
channels-last, slices). One program owns ``BLOCK_P`` pixels of one image ``n`` and all ``K`` classes
of those pixels (``BLOCK_K = next_power_of_2(K)``, masked), so the class reductions (max, argmax,
softmax sums) stay in registers and the logits are read once.

Noise. ``NOISE_MODE`` selects where the Gumbel noise comes from:

* ``NOISE_EXPLICIT``: a noise tensor of the logits' shape (any float dtype, any strides);
* ``NOISE_PHILOX``: generated in the kernel from a 64-bit seed read from a device tensor (so drawing
  the seed from torch's generator never synchronises the host) and the element's *logical* NCHW
  index ``i = ((n * K + k) * H + h) * W + w``. The noise of an element therefore
  does not depend on the memory layout or on the block sizes, and the backward kernel regenerates
  exactly the forward's noise instead of saving it. ``u ~ U[0, 1)`` of index ``i`` is output ``i & 3`` of
  Philox4x32-10 with counter ``i >> 2`` (``tl.rand4x``): where H*W is a multiple of 4 a tile makes one
  Philox call per 4 pixels of a class and interleaves its outputs, a quarter of the per-element work;
  ``E = -log(1 - u) ~ Exp(1)`` (finite for every ``u``), ``g = -log(E + 1e-10)`` (the reference's form);
* ``NOISE_NONE``: no noise and no temperature (the argmax one-hot of sampling time).

Scores are ``(logits + g) * inv_tau`` in fp32 (inputs are converted to fp32 right after loading),
computed in that order with FMA contraction disabled (``enable_fp_fusion=False``), so the hard sample
is bitwise the reference's ``argmax`` given the same noise. Ties go to the lowest class index and a
NaN score wins (the first NaN), as in ``torch.argmax``.

All launchers take and return torch tensors; they do no autograd and no argument checking beyond
shapes (``sbgan_fast.ops.gumbel`` checks at the public boundary).
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .utils import INTERPRETER_TILE, flat_hw, is_interpreted, strides, tile_budget, tile_offsets

NOISE_EXPLICIT = 0
NOISE_PHILOX = 1
NOISE_NONE = 2

#: Largest class count handled in one register tile (the ops layer falls back to ``ref`` above it).
MAX_CLASSES = 16384


@triton.jit
def _tile(HW, K, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """This program's tile of a (cdiv(H*W, BLOCK_P), N) grid: (image n, pixels hw (BLOCK_P,), classes k
    (BLOCK_K,), in-bounds mask (BLOCK_P, BLOCK_K))."""
    n = tl.program_id(1)
    hw = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    k = tl.arange(0, BLOCK_K)
    mask = (hw < HW)[:, None] & (k < K)[None, :]
    return n, hw, k, mask


@triton.jit
def _gumbel_of_uniform(u):
    """Gumbel(0, 1) noise in fp32 from u ~ U[0, 1)."""
    e = -tl.log(1.0 - u)
    return -tl.log(e + 1e-10)


@triton.jit
def _philox_uniform(seed, idx):
    """U[0, 1) of int32 logical indices ``idx`` (any shape): output ``idx & 3`` of Philox4x32 with counter
    ``idx >> 2``."""
    u0, u1, u2, u3 = tl.rand4x(seed, idx >> 2)
    j = idx & 3
    return tl.where(j == 0, u0, tl.where(j == 1, u1, tl.where(j == 2, u2, u3)))


@triton.jit
def _philox_uniform_rows4(seed, base, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """``_philox_uniform(seed, base[None, :] + p[:, None])`` for p in [0, BLOCK_P), every ``base`` a multiple of
    4: one Philox call per 4 rows (its 4 outputs interleaved), a quarter of the per-element work."""
    q = tl.arange(0, BLOCK_P // 4)
    u0, u1, u2, u3 = tl.rand4x(seed, (base >> 2)[None, :] + q[:, None])
    u = tl.join(tl.join(u0, u1), tl.join(u2, u3))                     # u[q, k, j, i] = u_(2i+j)
    return tl.reshape(tl.permute(u, (0, 3, 2, 1)), (BLOCK_P, BLOCK_K))  # row 4q + 2i + j


@triton.jit
def _load_scores(x_ptr, noise_ptr, seed_ptr, n, hw, k, mask, K, HW, W,
                 sxn, sxk, sxh, sxw, sgn, sgk, sgh, sgw, inv_tau,
                 NOISE_MODE: tl.constexpr, FLAT_HW: tl.constexpr, ROWS4: tl.constexpr,
                 BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """fp32 scores (BLOCK_P, BLOCK_K) of image ``n``; masked lanes are -inf. ``ROWS4``: H*W and BLOCK_P are
    multiples of 4 (each group of 4 pixels of a class shares one Philox call)."""
    x_off = tile_offsets(n, hw, k, sxn, sxk, sxh, sxw, W, FLAT_HW)
    x = tl.load(x_ptr + x_off, mask=mask, other=0.0).to(tl.float32)
    if NOISE_MODE == 0:
        g_off = tile_offsets(n, hw, k, sgn, sgk, sgh, sgw, W, FLAT_HW)
        g = tl.load(noise_ptr + g_off, mask=mask, other=0.0).to(tl.float32)
        s = (x + g) * inv_tau
    elif NOISE_MODE == 1:
        seed = tl.load(seed_ptr)
        if ROWS4:
            u = _philox_uniform_rows4(seed, (n * K + k) * HW + tl.program_id(0) * BLOCK_P, BLOCK_P, BLOCK_K)
        else:
            u = _philox_uniform(seed, (n * K + k[None, :]) * HW + hw[:, None])
        s = (x + _gumbel_of_uniform(u)) * inv_tau
    else:
        s = x
    return tl.where(mask, s, float("-inf"))


@triton.jit
def _first_argmax(s, k, mask, BLOCK_K: tl.constexpr):
    """torch.argmax semantics over axis 1: first NaN if any, else first maximum."""
    is_nan = s != s
    has_nan = tl.max(is_nan.to(tl.int32), axis=1) > 0
    key = tl.where(is_nan, float("inf"), s)
    m = tl.max(key, axis=1)
    cand = tl.where(has_nan[:, None], is_nan, key == m[:, None]) & mask
    return tl.min(tl.where(cand, k[None, :], BLOCK_K), axis=1)


@triton.jit
def _store_one_hot(out_ptr, s, n, hw, k, mask, son, sok, soh, sow, W,
                   FLAT_HW: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[n, :, hw] = one_hot(argmax_k s) (see :func:`_first_argmax`) in out's dtype."""
    idx = _first_argmax(s, k, mask, BLOCK_K)
    y = tl.where(k[None, :] == idx[:, None], 1.0, 0.0)
    o_off = tile_offsets(n, hw, k, son, sok, soh, sow, W, FLAT_HW)
    tl.store(out_ptr + o_off, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gumbel_hard_kernel(x_ptr, noise_ptr, seed_ptr, out_ptr,
                        K, HW, W,
                        sxn, sxk, sxh, sxw,
                        sgn, sgk, sgh, sgw,
                        son, sok, soh, sow,
                        inv_tau,
                        NOISE_MODE: tl.constexpr, FLAT_HW: tl.constexpr, ROWS4: tl.constexpr,
                        BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """out[n, :, h, w] = one_hot(argmax_k scores[n, k, h, w]) in out's dtype.

    Grid: (cdiv(H*W, BLOCK_P), N)."""
    n, hw, k, mask = _tile(HW, K, BLOCK_P, BLOCK_K)
    s = _load_scores(x_ptr, noise_ptr, seed_ptr, n, hw, k, mask, K, HW, W,
                     sxn, sxk, sxh, sxw, sgn, sgk, sgh, sgw, inv_tau, NOISE_MODE, FLAT_HW, ROWS4,
                     BLOCK_P, BLOCK_K)
    _store_one_hot(out_ptr, s, n, hw, k, mask, son, sok, soh, sow, W, FLAT_HW, BLOCK_K)


@triton.jit
def _gumbel_softmax_bwd_kernel(x_ptr, noise_ptr, seed_ptr, dy_ptr, dx_ptr,
                               K, HW, W,
                               sxn, sxk, sxh, sxw,
                               sgn, sgk, sgh, sgw,
                               sdn, sdk, sdh, sdw,
                               son, sok, soh, sow,
                               inv_tau,
                               NOISE_MODE: tl.constexpr, FLAT_HW: tl.constexpr, ROWS4: tl.constexpr,
                               BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """dx = y * (dy - sum_k(dy * y)) * inv_tau with y = softmax_k(scores), recomputed here.

    Grid: (cdiv(H*W, BLOCK_P), N)."""
    n, hw, k, mask = _tile(HW, K, BLOCK_P, BLOCK_K)
    s = _load_scores(x_ptr, noise_ptr, seed_ptr, n, hw, k, mask, K, HW, W,
                     sxn, sxk, sxh, sxw, sgn, sgk, sgh, sgw, inv_tau, NOISE_MODE, FLAT_HW, ROWS4,
                     BLOCK_P, BLOCK_K)
    m = tl.max(s, axis=1)
    m = tl.where(m == float("-inf"), 0.0, m)  # rows past the end: keep exp() finite
    e = tl.exp(s - m[:, None])
    den = tl.sum(e, axis=1)
    y = e / tl.where(den == 0.0, 1.0, den)[:, None]  # den == 0 only on rows past the end
    d_off = tile_offsets(n, hw, k, sdn, sdk, sdh, sdw, W, FLAT_HW)
    dy = tl.load(dy_ptr + d_off, mask=mask, other=0.0).to(tl.float32)
    dot = tl.sum(dy * y, axis=1)
    dx = y * (dy - dot[:, None]) * inv_tau
    o_off = tile_offsets(n, hw, k, son, sok, soh, sow, W, FLAT_HW)
    tl.store(dx_ptr + o_off, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _gumbel_noise_kernel(seed_ptr, out_ptr, numel, BLOCK: tl.constexpr):
    """out.view(-1)[i] = the Philox Gumbel noise of logical NCHW index i (out contiguous fp32)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    g = _gumbel_of_uniform(_philox_uniform(tl.load(seed_ptr), i))
    tl.store(out_ptr + i, g, mask=i < numel)


def _blocks(num_classes: int, hw: int) -> Tuple[int, int, int]:
    """(BLOCK_P, BLOCK_K, num_warps) for K classes and H*W pixels per image."""
    block_k = triton.next_power_of_2(max(num_classes, 1))
    tile = tile_budget()
    block_p = max(1, min(triton.next_power_of_2(max(hw, 1)), tile // block_k))
    num_warps = 4 if block_p * block_k <= 4096 else 8
    return block_p, block_k, num_warps


def _rows4(hw: int, block_p: int) -> bool:
    """Whether every tile's pixel rows start at a multiple of 4 of every class's logical index (then 4 pixels
    share one Philox call): H*W and BLOCK_P multiples of 4."""
    return hw % 4 == 0 and block_p % 4 == 0


def _check_4d(name: str, t: torch.Tensor, shape) -> None:
    if t.dim() != 4 or tuple(t.shape) != tuple(shape):
        raise ValueError(f"sbgan_fast.kernels.gumbel: {name} must have shape {tuple(shape)}, got {tuple(t.shape)}")


def _noise_args(logits, noise, seed):
    if noise is not None:
        _check_4d("noise", noise, logits.shape)
        return NOISE_EXPLICIT, noise, logits, strides(noise)  # seed pointer unused: any tensor
    if seed is None:
        raise ValueError("sbgan_fast.kernels.gumbel: give either noise or seed")
    if seed.dtype != torch.int64 or seed.numel() < 1:
        raise ValueError(f"sbgan_fast.kernels.gumbel: seed must be an int64 tensor, got {seed.dtype}")
    return NOISE_PHILOX, logits, seed, (0, 0, 0, 0)


def gumbel_hard(logits: torch.Tensor, out: torch.Tensor, inv_tau: float, *,
                noise: Optional[torch.Tensor] = None, seed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Write ``one_hot(argmax((logits + g) * inv_tau, dim=1))`` into ``out``.

    Args:
        logits: (N, K, H, W) fp32/fp16/bf16, any strides.
        out: (N, K, H, W) tensor of any float dtype and strides (written fully, no overlap allowed).
        inv_tau: 1 / tau as a Python float (used as fp32).
        noise: (N, K, H, W) Gumbel noise, any float dtype and strides; or
        seed: int64 tensor (>= 1 element, on logits' device) for in-kernel Philox noise.
    Returns:
        ``out``.
    """
    n, k, h, w = logits.shape
    _check_4d("out", out, logits.shape)
    mode, noise_t, seed_t, g_strides = _noise_args(logits, noise, seed)
    if logits.numel() == 0:
        return out
    block_p, block_k, num_warps = _blocks(k, h * w)
    flat = flat_hw(logits, out, noise)
    grid = (triton.cdiv(h * w, block_p), n)
    _gumbel_hard_kernel[grid](logits, noise_t, seed_t, out, k, h * w, w,
                              *logits.stride(), *g_strides, *out.stride(), float(inv_tau),
                              NOISE_MODE=mode, FLAT_HW=flat, ROWS4=_rows4(h * w, block_p), BLOCK_P=block_p,
                              BLOCK_K=block_k, num_warps=num_warps, enable_fp_fusion=False)
    return out


def argmax_one_hot(x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """Write ``one_hot(argmax(x, dim=1))`` of a (N, K, H, W) fp32/fp16/bf16 tensor into ``out``."""
    n, k, h, w = x.shape
    _check_4d("out", out, x.shape)
    if x.numel() == 0:
        return out
    block_p, block_k, num_warps = _blocks(k, h * w)
    flat = flat_hw(x, out)
    grid = (triton.cdiv(h * w, block_p), n)
    _gumbel_hard_kernel[grid](x, x, x, out, k, h * w, w,
                              *x.stride(), 0, 0, 0, 0, *out.stride(), 1.0,
                              NOISE_MODE=NOISE_NONE, FLAT_HW=flat, ROWS4=False, BLOCK_P=block_p, BLOCK_K=block_k,
                              num_warps=num_warps, enable_fp_fusion=False)
    return out


def gumbel_softmax_backward(logits: torch.Tensor, grad_out: torch.Tensor, grad_in: torch.Tensor,
                            inv_tau: float, *, noise: Optional[torch.Tensor] = None,
                            seed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Write the gradient of ``softmax((logits + g) * inv_tau, dim=1)`` w.r.t. logits into ``grad_in``.

    Args:
        logits: (N, K, H, W) fp32/fp16/bf16, any strides (the forward's input).
        grad_out: (N, K, H, W) incoming gradient, any float dtype and strides.
        grad_in: (N, K, H, W) output tensor (any float dtype and strides, no overlap).
        inv_tau, noise, seed: exactly as given to :func:`gumbel_hard` in the forward.
    Returns:
        ``grad_in`` = y * (grad_out - sum_k(grad_out * y)) * inv_tau, y recomputed in fp32.
    """
    n, k, h, w = logits.shape
    _check_4d("grad_out", grad_out, logits.shape)
    _check_4d("grad_in", grad_in, logits.shape)
    mode, noise_t, seed_t, g_strides = _noise_args(logits, noise, seed)
    if logits.numel() == 0:
        return grad_in
    block_p, block_k, num_warps = _blocks(k, h * w)
    flat = flat_hw(logits, grad_out, grad_in, noise)
    grid = (triton.cdiv(h * w, block_p), n)
    _gumbel_softmax_bwd_kernel[grid](logits, noise_t, seed_t, grad_out, grad_in, k, h * w, w,
                                     *logits.stride(), *g_strides, *grad_out.stride(), *grad_in.stride(),
                                     float(inv_tau), NOISE_MODE=mode, FLAT_HW=flat, ROWS4=_rows4(h * w, block_p),
                                     BLOCK_P=block_p, BLOCK_K=block_k, num_warps=num_warps)
    return grad_in


def gumbel_noise(shape, seed: torch.Tensor) -> torch.Tensor:
    """The exact fp32 noise the Philox path uses for ``seed``: a contiguous (N, K, H, W) tensor on
    seed's device, element (n, k, h, w) from counter ((n * K + k) * H + h) * W + w."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 4:
        raise ValueError(f"sbgan_fast.kernels.gumbel.gumbel_noise: shape must be (N, K, H, W), got {shape}")
    if seed.dtype != torch.int64 or seed.numel() < 1:
        raise ValueError(f"sbgan_fast.kernels.gumbel.gumbel_noise: seed must be an int64 tensor, got {seed.dtype}")
    out = torch.empty(shape, dtype=torch.float32, device=seed.device)
    numel = out.numel()
    if numel == 0:
        return out
    block = min(triton.next_power_of_2(numel), INTERPRETER_TILE if is_interpreted() else 1024)
    _gumbel_noise_kernel[(triton.cdiv(numel, block),)](seed, out, numel, BLOCK=block, enable_fp_fusion=False)
    return out
