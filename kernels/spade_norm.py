"""Triton kernels for SPADE normalization (launch code only).

``out = (x - mean) * rstd * (1 + gamma) + beta`` with param-free batch or instance statistics.

Tensor view: x, gamma, beta, grad tensors are (N, C, H, W) with arbitrary strides (NCHW,
channels-last, slices); every kernel indexes each tensor through its own strides. A program owns a
``(BLOCK_HW, BLOCK_C)`` tile of one image ``n`` (grid axis 1 = n), so per-image quantities are
scalars and per-channel ones are vectors. Block shapes follow the layout: long ``BLOCK_HW`` when
H*W is the contiguous dim (NCHW), long ``BLOCK_C`` when C is (channels-last).

Statistics ("groups"): batch norm has one group per channel (reduced over N, H, W), instance norm
one per (n, c) (reduced over H, W); ``stat_n_stride`` (0 or C) maps (n, c) to the group index
``n * stat_n_stride + c``. All statistics are fp32 whatever the input dtype; inputs are converted to
fp32 right after loading.

Numerics of the forward statistics: no ``sum(x^2) - n * mean^2`` (it cancels catastrophically when
|mean| >> std). Each tile computes its own mean and centred sum of squares from registers (an exact
two-pass over data already loaded), tiles are merged with Chan et al.'s pairwise update
(``M2 = M2_a + M2_b + delta^2 * n_a * n_b / n``) along a chunk of H*W, and a finalize kernel merges
the per-(n, chunk) partials of each group with the centred formula, block by block. The backward's two per-group sums
(``sum(gy)``, ``sum(gy * x_hat)`` with ``gy = grad * (1 + gamma)``) are plain fp32 sums of partials
(no cancellation-prone difference is formed from them).

Launchers take and return torch tensors; no autograd, no argument checks beyond shapes
(``sbgan_fast.ops.spade_norm`` checks at the public boundary).
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from .utils import INTERPRETER_TILE, flat_hw, is_interpreted, strides, tile_budget, tile_offsets


@triton.jit
def _chunk_tile(C, HW, tiles_per_chunk, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's part of a (n_chunks, N, cdiv(C, BLOCK_C)) reduction grid: (chunk, image n,
    channels c (BLOCK_C,), channel mask, first flat spatial index of the chunk, its number of rows)."""
    chunk = tl.program_id(0)
    n = tl.program_id(1)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    start = chunk * tiles_per_chunk * BLOCK_HW
    rows = tl.minimum(tiles_per_chunk * BLOCK_HW, HW - start)
    return chunk, n, c, c < C, start, rows


@triton.jit
def _elementwise_tile(C, HW, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's tile of a (cdiv(HW, BLOCK_HW), N, cdiv(C, BLOCK_C)) elementwise grid: (image n,
    flat spatial indices hw (BLOCK_HW,), channels c (BLOCK_C,), channel mask, tile mask)."""
    n = tl.program_id(1)
    hw = tl.program_id(0) * BLOCK_HW + tl.arange(0, BLOCK_HW)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    return n, hw, c, cmask, (hw < HW)[:, None] & cmask[None, :]


@triton.jit
def _load_stats(mean_ptr, rstd_ptr, n, c, cmask, stat_n_stride):
    """(group indices, mean, rstd) of image n, channels c: group ``n * stat_n_stride + c``."""
    sidx = n * stat_n_stride + c
    return sidx, tl.load(mean_ptr + sidx, mask=cmask, other=0.0), tl.load(rstd_ptr + sidx, mask=cmask, other=0.0)


@triton.jit
def _stats_partial_kernel(x_ptr, part_ptr, C, HW, W, sxn, sxc, sxh, sxw,
                          tiles_per_chunk, n_chunks, part_stride,
                          FLAT_HW: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per (n, chunk of H*W, c): (count, mean, M2) into part[0..2, n, chunk, c].

    Grid: (n_chunks, N, cdiv(C, BLOCK_C))."""
    chunk, n, c, cmask, start, rows = _chunk_tile(C, HW, tiles_per_chunk, BLOCK_HW, BLOCK_C)
    mean = tl.zeros([BLOCK_C], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for t in range(0, tl.cdiv(rows, BLOCK_HW)):
        hw = start + t * BLOCK_HW + tl.arange(0, BLOCK_HW)
        mask = (hw < HW)[:, None] & cmask[None, :]
        x = tl.load(x_ptr + tile_offsets(n, hw, c, sxn, sxc, sxh, sxw, W, FLAT_HW),
                    mask=mask, other=0.0).to(tl.float32)
        nb = tl.minimum(rows - t * BLOCK_HW, BLOCK_HW).to(tl.float32)
        mb = tl.sum(x, axis=0) / nb
        d = tl.where(mask, x - mb[None, :], 0.0)
        m2b = tl.sum(d * d, axis=0)
        na = t * BLOCK_HW * 1.0
        ntot = na + nb
        delta = mb - mean
        mean = mean + delta * (nb / ntot)
        m2 = m2 + m2b + delta * delta * (na * nb / ntot)
    out = part_ptr + (n * n_chunks + chunk).to(tl.int64) * C + c
    tl.store(out, tl.zeros([BLOCK_C], dtype=tl.float32) + rows.to(tl.float32), mask=cmask)
    tl.store(out + part_stride, mean, mask=cmask)
    tl.store(out + 2 * part_stride, m2, mask=cmask)


@triton.jit
def _stats_finalize_kernel(part_ptr, mean_ptr, var_ptr, rstd_ptr, rm_ptr, rv_ptr,
                           G, C, J, group_outer_stride, part_stride, eps, momentum,
                           HAS_RUNNING: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_G: tl.constexpr):
    """Merge the J partials (count, mean, M2) of each group g; partial j of g sits at
    (g // C) * group_outer_stride + j * C + g % C. A (BLOCK_J, BLOCK_G) block of partials is merged
    at once with the centred formula (mean = sum n_j m_j / n, M2 = sum M2_j + n_j (m_j - mean)^2),
    blocks are merged with Chan's update. Writes mean, biased var, rstd = 1/sqrt(var + eps); with
    HAS_RUNNING updates running_mean/var (unbiased var) in place with ``momentum``.

    Grid: (cdiv(G, BLOCK_G),)."""
    g = tl.program_id(0) * BLOCK_G + tl.arange(0, BLOCK_G)
    gmask = g < G
    base = (g // C).to(tl.int64) * group_outer_stride + g % C
    mean = tl.zeros([BLOCK_G], dtype=tl.float32)
    m2 = tl.zeros([BLOCK_G], dtype=tl.float32)
    cnt = tl.zeros([BLOCK_G], dtype=tl.float32)
    for j0 in range(0, J, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J)
        mask = (j < J)[:, None] & gmask[None, :]
        idx = base[None, :] + (j * C)[:, None]
        nj = tl.load(part_ptr + idx, mask=mask, other=0.0)
        mj = tl.load(part_ptr + part_stride + idx, mask=mask, other=0.0)
        m2j = tl.load(part_ptr + 2 * part_stride + idx, mask=mask, other=0.0)
        nb = tl.sum(nj, axis=0)
        nb_safe = tl.where(nb > 0.0, nb, 1.0)  # 0 only on lanes past the end
        mb = tl.sum(nj * mj, axis=0) / nb_safe
        d = tl.where(mask, mj - mb[None, :], 0.0)
        m2b = tl.sum(m2j + nj * d * d, axis=0)
        ntot = cnt + nb
        ntot_safe = tl.where(ntot > 0.0, ntot, 1.0)
        delta = mb - mean
        mean = mean + delta * (nb / ntot_safe)
        m2 = m2 + m2b + delta * delta * (cnt * nb / ntot_safe)
        cnt = ntot
    cnt = tl.where(cnt > 0.0, cnt, 1.0)
    var = m2 / cnt
    rstd = 1.0 / tl.sqrt_rn(var + eps)
    tl.store(mean_ptr + g, mean, mask=gmask)
    tl.store(var_ptr + g, var, mask=gmask)
    tl.store(rstd_ptr + g, rstd, mask=gmask)
    if HAS_RUNNING:
        rm = tl.load(rm_ptr + g, mask=gmask, other=0.0).to(tl.float32)
        rv = tl.load(rv_ptr + g, mask=gmask, other=0.0).to(tl.float32)
        unbiased = m2 / tl.maximum(cnt - 1.0, 1.0)
        rm = momentum * mean + (1.0 - momentum) * rm
        rv = momentum * unbiased + (1.0 - momentum) * rv
        tl.store(rm_ptr + g, rm.to(rm_ptr.dtype.element_ty), mask=gmask)
        tl.store(rv_ptr + g, rv.to(rv_ptr.dtype.element_ty), mask=gmask)


@triton.jit
def _apply_kernel(x_ptr, gamma_ptr, beta_ptr, mean_ptr, rstd_ptr, out_ptr,
                  C, HW, W, stat_n_stride,
                  sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw, sbn, sbc, sbh, sbw, son, soc, soh, sow,
                  FLAT_HW: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """out = (x - mean) * rstd * (1 + gamma) + beta. Grid: (cdiv(HW, BLOCK_HW), N, cdiv(C, BLOCK_C))."""
    n, hw, c, cmask, mask = _elementwise_tile(C, HW, BLOCK_HW, BLOCK_C)
    sidx, mean, rstd = _load_stats(mean_ptr, rstd_ptr, n, c, cmask, stat_n_stride)
    x = tl.load(x_ptr + tile_offsets(n, hw, c, sxn, sxc, sxh, sxw, W, FLAT_HW), mask=mask, other=0.0)
    gm = tl.load(gamma_ptr + tile_offsets(n, hw, c, sgn, sgc, sgh, sgw, W, FLAT_HW), mask=mask, other=0.0)
    bt = tl.load(beta_ptr + tile_offsets(n, hw, c, sbn, sbc, sbh, sbw, W, FLAT_HW), mask=mask, other=0.0)
    x_hat = (x.to(tl.float32) - mean[None, :]) * rstd[None, :]
    out = x_hat * (1.0 + gm.to(tl.float32)) + bt.to(tl.float32)
    tl.store(out_ptr + tile_offsets(n, hw, c, son, soc, soh, sow, W, FLAT_HW),
             out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bwd_reduce_kernel(dy_ptr, x_ptr, gamma_ptr, mean_ptr, rstd_ptr, dgamma_ptr, part_ptr,
                       C, HW, W, stat_n_stride, tiles_per_chunk, n_chunks, part_stride,
                       sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw, son, soc, soh, sow,
                       WRITE_DGAMMA: tl.constexpr, FLAT_HW: tl.constexpr,
                       BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """Per (n, chunk, c): sum(gy) and sum(gy * x_hat) into part[0..1, n, chunk, c], gy = dy * (1 + gamma);
    with WRITE_DGAMMA also dgamma = dy * x_hat. Grid: (n_chunks, N, cdiv(C, BLOCK_C))."""
    chunk, n, c, cmask, start, rows = _chunk_tile(C, HW, tiles_per_chunk, BLOCK_HW, BLOCK_C)
    sidx, mean, rstd = _load_stats(mean_ptr, rstd_ptr, n, c, cmask, stat_n_stride)
    acc1 = tl.zeros([BLOCK_C], dtype=tl.float32)
    acc2 = tl.zeros([BLOCK_C], dtype=tl.float32)
    for t in range(0, tl.cdiv(rows, BLOCK_HW)):
        hw = start + t * BLOCK_HW + tl.arange(0, BLOCK_HW)
        mask = (hw < HW)[:, None] & cmask[None, :]
        dy = tl.load(dy_ptr + tile_offsets(n, hw, c, sdn, sdc, sdh, sdw, W, FLAT_HW),
                     mask=mask, other=0.0).to(tl.float32)
        x = tl.load(x_ptr + tile_offsets(n, hw, c, sxn, sxc, sxh, sxw, W, FLAT_HW),
                    mask=mask, other=0.0).to(tl.float32)
        gm = tl.load(gamma_ptr + tile_offsets(n, hw, c, sgn, sgc, sgh, sgw, W, FLAT_HW),
                     mask=mask, other=0.0).to(tl.float32)
        x_hat = tl.where(mask, (x - mean[None, :]) * rstd[None, :], 0.0)
        gy = dy * (1.0 + gm)
        acc1 += tl.sum(gy, axis=0)
        acc2 += tl.sum(gy * x_hat, axis=0)
        if WRITE_DGAMMA:
            tl.store(dgamma_ptr + tile_offsets(n, hw, c, son, soc, soh, sow, W, FLAT_HW),
                     (dy * x_hat).to(dgamma_ptr.dtype.element_ty), mask=mask)
    out = part_ptr + (n * n_chunks + chunk).to(tl.int64) * C + c
    tl.store(out, acc1, mask=cmask)
    tl.store(out + part_stride, acc2, mask=cmask)


@triton.jit
def _bwd_apply_kernel(dy_ptr, x_ptr, gamma_ptr, mean_ptr, rstd_ptr, sums_ptr, dx_ptr, dgamma_ptr,
                      C, HW, W, stat_n_stride, sums_stride, inv_count,
                      sdn, sdc, sdh, sdw, sxn, sxc, sxh, sxw, sgn, sgc, sgh, sgw,
                      sxon, sxoc, sxoh, sxow, sgon, sgoc, sgoh, sgow,
                      HAS_SUMS: tl.constexpr, WRITE_DX: tl.constexpr, WRITE_DGAMMA: tl.constexpr,
                      FLAT_HW: tl.constexpr, BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """dx = rstd * (gy - s1 / count - x_hat * s2 / count) with batch statistics (HAS_SUMS), else
    dx = gy * rstd (statistics are constants); dgamma = dy * x_hat.

    Grid: (cdiv(HW, BLOCK_HW), N, cdiv(C, BLOCK_C))."""
    n, hw, c, cmask, mask = _elementwise_tile(C, HW, BLOCK_HW, BLOCK_C)
    sidx, mean, rstd = _load_stats(mean_ptr, rstd_ptr, n, c, cmask, stat_n_stride)
    dy = tl.load(dy_ptr + tile_offsets(n, hw, c, sdn, sdc, sdh, sdw, W, FLAT_HW),
                 mask=mask, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + tile_offsets(n, hw, c, sxn, sxc, sxh, sxw, W, FLAT_HW),
                mask=mask, other=0.0).to(tl.float32)
    x_hat = (x - mean[None, :]) * rstd[None, :]
    if WRITE_DX:
        gm = tl.load(gamma_ptr + tile_offsets(n, hw, c, sgn, sgc, sgh, sgw, W, FLAT_HW),
                     mask=mask, other=0.0).to(tl.float32)
        gy = dy * (1.0 + gm)
        if HAS_SUMS:
            s1 = tl.load(sums_ptr + sidx, mask=cmask, other=0.0) * inv_count
            s2 = tl.load(sums_ptr + sums_stride + sidx, mask=cmask, other=0.0) * inv_count
            dx = (gy - s1[None, :] - x_hat * s2[None, :]) * rstd[None, :]
        else:
            dx = gy * rstd[None, :]
        tl.store(dx_ptr + tile_offsets(n, hw, c, sxon, sxoc, sxoh, sxow, W, FLAT_HW),
                 dx.to(dx_ptr.dtype.element_ty), mask=mask)
    if WRITE_DGAMMA:
        tl.store(dgamma_ptr + tile_offsets(n, hw, c, sgon, sgoc, sgoh, sgow, W, FLAT_HW),
                 (dy * x_hat).to(dgamma_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def blocks_for(x: torch.Tensor) -> Tuple[int, int, int]:
    """(BLOCK_HW, BLOCK_C, num_warps) for x's layout: the contiguous dim gets the long side."""
    _, c, h, w = x.shape
    hw = h * w
    interp = is_interpreted()
    tile = tile_budget()
    if x.stride(1) == 1 and c > 1:  # channels-last: C is contiguous
        block_c = min(triton.next_power_of_2(c), tile if interp else 128)
        block_hw = min(triton.next_power_of_2(hw), max(1, tile // block_c))
    else:
        block_hw = min(triton.next_power_of_2(hw), tile if interp else 256)
        block_c = min(triton.next_power_of_2(c), max(1, tile // block_hw))
    return block_hw, block_c, 4


def _chunking(x: torch.Tensor, block_hw: int, block_c: int,
              tiles_per_chunk: Optional[int]) -> Tuple[int, int]:
    """(tiles_per_chunk, n_chunks) splitting H*W of each image for the reduction kernels: enough
    programs to fill the GPU (about 4 per SM), as few as possible under the interpreter."""
    n, c, h, w = x.shape
    tiles = triton.cdiv(h * w, block_hw)
    if tiles_per_chunk is None:
        if is_interpreted() or x.device.type != "cuda":
            n_chunks = 1
        else:
            index = x.device.index if x.device.index is not None else torch.cuda.current_device()
            base = n * triton.cdiv(c, block_c)
            n_chunks = max(1, min(tiles, triton.cdiv(4 * _sm_count(index), base)))
        tiles_per_chunk = triton.cdiv(tiles, n_chunks)
    tiles_per_chunk = max(1, int(tiles_per_chunk))
    return tiles_per_chunk, triton.cdiv(tiles, tiles_per_chunk)


def _check_like(name: str, t: torch.Tensor, x: torch.Tensor) -> None:
    if tuple(t.shape) != tuple(x.shape):
        raise ValueError(f"sbgan_fast.kernels.spade_norm: {name} must have shape {tuple(x.shape)}, "
                         f"got {tuple(t.shape)}")


def _check_stats(name: str, t: torch.Tensor, numel: int) -> None:
    if t.dtype != torch.float32 or t.numel() != numel or not t.is_contiguous():
        raise ValueError(f"sbgan_fast.kernels.spade_norm: {name} must be a contiguous fp32 tensor of "
                         f"{numel} elements, got {t.dtype} {tuple(t.shape)}")


def compute_stats(x: torch.Tensor, *, instance: bool, eps: float,
                  running_mean: Optional[torch.Tensor] = None, running_var: Optional[torch.Tensor] = None,
                  momentum: float = 0.1, block_hw: Optional[int] = None, block_c: Optional[int] = None,
                  tiles_per_chunk: Optional[int] = None, block_j: Optional[int] = None):
    """Per-group statistics of x in fp32.

    Args:
        x: (N, C, H, W) fp32/fp16/bf16, any strides.
        instance: groups are (n, c) (instance norm) instead of c (batch norm).
        eps: added to the variance for rstd.
        running_mean, running_var: optional contiguous (C,) float buffers (batch norm only), updated
            in place: ``r = momentum * stat + (1 - momentum) * r`` with the unbiased variance.
        block_hw, block_c, tiles_per_chunk, block_j: override the launch shape (tests use them to
            exercise the multi-tile, multi-chunk and multi-block merges); block_j: partials merged
            per step of the finalize kernel (rounded up to a power of 2).
    Returns:
        (mean, var, rstd): contiguous fp32 tensors of C (batch) or N*C (instance) elements; var biased.
    """
    n, c, h, w = x.shape
    if (running_mean is None) != (running_var is None):
        raise ValueError("sbgan_fast.kernels.spade_norm: give both running_mean and running_var or neither")
    if running_mean is not None:
        if instance:
            raise ValueError("sbgan_fast.kernels.spade_norm: running statistics are for batch norm only")
        for name, t in (("running_mean", running_mean), ("running_var", running_var)):
            if t.numel() != c or not t.is_contiguous() or not t.is_floating_point():
                raise ValueError(f"sbgan_fast.kernels.spade_norm: {name} must be a contiguous float tensor of "
                                 f"{c} elements, got {t.dtype} {tuple(t.shape)}")
    dflt_hw, dflt_c, num_warps = blocks_for(x)
    block_hw = block_hw or dflt_hw
    block_c = block_c or dflt_c
    tpc, n_chunks = _chunking(x, block_hw, block_c, tiles_per_chunk)
    part = torch.empty((3, n, n_chunks, c), dtype=torch.float32, device=x.device)
    part_stride = n * n_chunks * c
    grid = (n_chunks, n, triton.cdiv(c, block_c))
    _stats_partial_kernel[grid](x, part, c, h * w, w, *x.stride(), tpc, n_chunks, part_stride,
                                FLAT_HW=flat_hw(x), BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=num_warps)
    groups = n * c if instance else c
    stats = torch.empty((3, groups), dtype=torch.float32, device=x.device)
    mean, var, rstd = stats[0], stats[1], stats[2]
    # partial j of group g: (g // C) * outer + j * C + g % C (batch: g < C, j runs over (n, chunk)).
    partials_per_group = n_chunks if instance else n * n_chunks
    if is_interpreted():  # one program, one block of partials
        dflt_j = triton.next_power_of_2(partials_per_group)
        block_g = max(1, min(triton.next_power_of_2(groups), INTERPRETER_TILE // dflt_j))
    else:  # spread groups over programs; merge up to 32 partials per load
        dflt_j = min(triton.next_power_of_2(partials_per_group), 32)
        block_g = min(triton.next_power_of_2(groups), 128)
    block_j = dflt_j if block_j is None else triton.next_power_of_2(int(block_j))
    has_running = running_mean is not None
    _stats_finalize_kernel[(triton.cdiv(groups, block_g),)](
        part, mean, var, rstd, running_mean if has_running else mean, running_var if has_running else var,
        groups, c, partials_per_group, n_chunks * c, part_stride, float(eps), float(momentum),
        HAS_RUNNING=has_running, BLOCK_J=block_j, BLOCK_G=block_g, num_warps=4)
    return mean, var, rstd


def apply(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
          out: torch.Tensor, *, instance: bool) -> torch.Tensor:
    """out = (x - mean) * rstd * (1 + gamma) + beta (fp32 math), written in out's dtype and strides.

    x, gamma, beta, out: (N, C, H, W), any float dtypes and strides; mean, rstd: contiguous fp32 of
    C (batch) or N*C (instance) elements."""
    n, c, h, w = x.shape
    for name, t in (("gamma", gamma), ("beta", beta), ("out", out)):
        _check_like(name, t, x)
    groups = n * c if instance else c
    _check_stats("mean", mean, groups)
    _check_stats("rstd", rstd, groups)
    if x.numel() == 0:
        return out
    block_hw, block_c, num_warps = blocks_for(x)
    grid = (triton.cdiv(h * w, block_hw), n, triton.cdiv(c, block_c))
    _apply_kernel[grid](x, gamma, beta, mean, rstd, out, c, h * w, w, c if instance else 0,
                        *x.stride(), *gamma.stride(), *beta.stride(), *out.stride(),
                        FLAT_HW=flat_hw(x, gamma, beta, out), BLOCK_HW=block_hw, BLOCK_C=block_c,
                        num_warps=num_warps)
    return out


def backward_sums(dy: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor, mean: torch.Tensor,
                  rstd: torch.Tensor, *, instance: bool, dgamma: Optional[torch.Tensor] = None,
                  block_hw: Optional[int] = None, block_c: Optional[int] = None,
                  tiles_per_chunk: Optional[int] = None) -> torch.Tensor:
    """The per-group sums of the batch-statistics backward, and optionally dgamma in the same pass.

    Args:
        dy, x, gamma: (N, C, H, W) any float dtypes and strides; mean, rstd: as from compute_stats.
        dgamma: optional (N, C, H, W) output for dy * x_hat.
    Returns:
        fp32 (2, G) tensor (G = C or N*C): row 0 = sum(gy), row 1 = sum(gy * x_hat),
        gy = dy * (1 + gamma), x_hat = (x - mean) * rstd; local to this process (all-reduce it for
        synchronized batch norm).
    """
    n, c, h, w = x.shape
    _check_like("dy", dy, x)
    _check_like("gamma", gamma, x)
    if dgamma is not None:
        _check_like("dgamma", dgamma, x)
    groups = n * c if instance else c
    _check_stats("mean", mean, groups)
    _check_stats("rstd", rstd, groups)
    dflt_hw, dflt_c, num_warps = blocks_for(x)
    block_hw = block_hw or dflt_hw
    block_c = block_c or dflt_c
    tpc, n_chunks = _chunking(x, block_hw, block_c, tiles_per_chunk)
    part = torch.empty((2, n, n_chunks, c), dtype=torch.float32, device=x.device)
    grid = (n_chunks, n, triton.cdiv(c, block_c))
    _bwd_reduce_kernel[grid](dy, x, gamma, mean, rstd, dgamma if dgamma is not None else x, part,
                             c, h * w, w, c if instance else 0, tpc, n_chunks, n * n_chunks * c,
                             *dy.stride(), *x.stride(), *gamma.stride(), *strides(dgamma),
                             WRITE_DGAMMA=dgamma is not None, FLAT_HW=flat_hw(dy, x, gamma, dgamma),
                             BLOCK_HW=block_hw, BLOCK_C=block_c, num_warps=num_warps)
    if instance:
        return part.sum(dim=2).reshape(2, n * c)
    return part.sum(dim=(1, 2))


def backward_apply(dy: torch.Tensor, x: torch.Tensor, gamma: torch.Tensor, mean: torch.Tensor,
                   rstd: torch.Tensor, *, instance: bool, sums: Optional[torch.Tensor] = None,
                   count: Optional[float] = None, dx: Optional[torch.Tensor] = None,
                   dgamma: Optional[torch.Tensor] = None) -> None:
    """Write dx and/or dgamma (elementwise pass).

    With ``sums`` (from :func:`backward_sums`, all-reduced if synchronized) and the group element
    ``count``: batch-statistics gradient ``dx = rstd * (gy - sum(gy)/count - x_hat * sum(gy x_hat)/count)``;
    without: statistics treated as constants, ``dx = gy * rstd``. ``dgamma = dy * x_hat``.
    """
    n, c, h, w = x.shape
    _check_like("dy", dy, x)
    _check_like("gamma", gamma, x)
    groups = n * c if instance else c
    _check_stats("mean", mean, groups)
    _check_stats("rstd", rstd, groups)
    if dx is not None:
        _check_like("dx", dx, x)
    if dgamma is not None:
        _check_like("dgamma", dgamma, x)
    if sums is not None:
        if sums.dtype != torch.float32 or tuple(sums.shape) != (2, groups) or not sums.is_contiguous():
            raise ValueError(f"sbgan_fast.kernels.spade_norm: sums must be contiguous fp32 (2, {groups}), "
                             f"got {sums.dtype} {tuple(sums.shape)}")
        if not count or count <= 0:
            raise ValueError(f"sbgan_fast.kernels.spade_norm: count must be positive with sums, got {count}")
    if (dx is None and dgamma is None) or x.numel() == 0:
        return
    block_hw, block_c, num_warps = blocks_for(x)
    grid = (triton.cdiv(h * w, block_hw), n, triton.cdiv(c, block_c))
    _bwd_apply_kernel[grid](dy, x, gamma, mean, rstd, sums if sums is not None else mean,
                            dx if dx is not None else x, dgamma if dgamma is not None else x,
                            c, h * w, w, c if instance else 0, groups,
                            1.0 / float(count) if sums is not None else 1.0,
                            *dy.stride(), *x.stride(), *gamma.stride(), *strides(dx), *strides(dgamma),
                            HAS_SUMS=sums is not None, WRITE_DX=dx is not None, WRITE_DGAMMA=dgamma is not None,
                            FLAT_HW=flat_hw(dy, x, gamma, dx, dgamma), BLOCK_HW=block_hw, BLOCK_C=block_c,
                            num_warps=num_warps)
