"""Spectral normalization with the legacy state-dict layout and fp32 power iteration.

``spectral_norm(conv)`` re-parametrizes ``conv.weight`` as ``weight_orig / sigma(weight_orig)``, where
sigma is the largest singular value of ``weight_orig`` reshaped to (out, -1), estimated by power
iteration. The module then holds

* ``weight_orig``: the trainable Parameter (same shape and dtype as the original weight),
* ``weight_u`` (out,) and ``weight_v`` (in * kh * kw,): buffers with the current singular vectors,

so a state dict has the keys ``X.weight_orig``, ``X.weight_u``, ``X.weight_v`` (plus ``X.bias``), the
layout written by ``torch.nn.utils.spectral_norm`` and by every published SPADE / SB-GAN checkpoint;
state dicts move between the two implementations in both directions.

Behaviour:

* Training forward (``module.training``): ``n_power_iterations`` (default 1) steps of
  ``v = normalize(W^T u); u = normalize(W v)`` update the buffers in place, without gradient; then
  ``sigma = u . (W v)`` with gradient through W only.
* Eval forward: no iteration, the stored u and v are used (the weight is a deterministic function of
  the state dict).
* The power iteration and sigma are always computed in fp32 with autocast disabled (autocast would
  otherwise run ``mv`` in half precision); the normalized weight is returned in ``weight_orig``'s dtype
  and the wrapped layer's own op (conv / linear) then follows autocast as usual.
* Any gradient order is supported (plain differentiable PyTorch ops).
"""
from __future__ import annotations

from typing import Any, Optional, TypeVar

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["SpectralNorm", "spectral_norm", "remove_spectral_norm", "is_spectral_normed"]

T_module = TypeVar("T_module", bound=nn.Module)

# Version written into the state-dict metadata, as torch's implementation does, so that a state dict
# saved from this module loads into a ``torch.nn.utils.spectral_norm`` module without its
# old-checkpoint conversion kicking in.
_STATE_VERSION = 1


class SpectralNorm:
    """Forward pre-hook that recomputes ``module.<name>`` from ``<name>_orig`` before each forward."""

    def __init__(self, name: str = "weight", n_power_iterations: int = 1, dim: int = 0, eps: float = 1e-12):
        if n_power_iterations < 0:
            raise ValueError(f"spectral_norm: n_power_iterations must be >= 0, got {n_power_iterations}")
        self.name = name
        self.n_power_iterations = int(n_power_iterations)
        self.dim = int(dim)
        self.eps = float(eps)

    def weight_matrix(self, weight: torch.Tensor) -> torch.Tensor:
        """(out, in*kh*kw) view of ``weight`` (the normalized dim first), in fp32."""
        w = weight.float()
        if self.dim != 0:
            w = w.movedim(self.dim, 0)
        return w.reshape(w.shape[0], -1)

    def compute_weight(self, module: nn.Module, do_power_iteration: bool) -> torch.Tensor:
        weight = getattr(module, self.name + "_orig")
        u = getattr(module, self.name + "_u")
        v = getattr(module, self.name + "_v")
        with torch.autocast(device_type=weight.device.type, enabled=False):
            w_mat = self.weight_matrix(weight)
            if do_power_iteration and self.n_power_iterations > 0:
                with torch.no_grad():
                    uf, vf = u.float(), v.float()
                    for _ in range(self.n_power_iterations):
                        vf = F.normalize(torch.mv(w_mat.t(), uf), dim=0, eps=self.eps)
                        uf = F.normalize(torch.mv(w_mat, vf), dim=0, eps=self.eps)
                    u.copy_(uf)
                    v.copy_(vf)
                # The buffers were updated in place; clone so that autograd (and DataParallel-style
                # buffer sharing) sees values that no later in-place update can change.
                u = u.clone(memory_format=torch.contiguous_format)
                v = v.clone(memory_format=torch.contiguous_format)
            sigma = torch.dot(u.float(), torch.mv(w_mat, v.float()))
            out = weight.float() / sigma
        return out.to(weight.dtype)

    def __call__(self, module: nn.Module, inputs: Any) -> None:
        setattr(module, self.name, self.compute_weight(module, do_power_iteration=module.training))

    @staticmethod
    def apply(module: nn.Module, name: str, n_power_iterations: int, dim: int, eps: float) -> "SpectralNorm":
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, SpectralNorm) and hook.name == name:
                raise RuntimeError(f"spectral_norm: {type(module).__name__}.{name} is already spectral-normalized")
        weight = getattr(module, name, None)
        if not isinstance(weight, nn.Parameter):
            raise ValueError(f"spectral_norm: {type(module).__name__} has no Parameter named {name!r}")
        if isinstance(weight, nn.parameter.UninitializedParameter):
            raise ValueError("spectral_norm: the module's weight is uninitialized (lazy module); "
                             "run a forward first")
        fn = SpectralNorm(name, n_power_iterations, dim, eps)
        with torch.no_grad():
            w_mat = fn.weight_matrix(weight)
            h, w = w_mat.shape
            u = F.normalize(torch.randn(h, device=weight.device, dtype=torch.float32), dim=0, eps=eps)
            v = F.normalize(torch.randn(w, device=weight.device, dtype=torch.float32), dim=0, eps=eps)
        delattr(module, name)
        module.register_parameter(name + "_orig", weight)
        # Until the first forward, ``module.<name>`` is the raw weight's data (as torch's version does),
        # so code that reads the attribute before running the module still finds a tensor.
        setattr(module, name, weight.data)
        module.register_buffer(name + "_u", u.to(weight.dtype) if weight.dtype.is_floating_point else u)
        module.register_buffer(name + "_v", v.to(weight.dtype) if weight.dtype.is_floating_point else v)
        module.register_forward_pre_hook(fn)
        module._register_state_dict_hook(_StateDictVersionHook(fn))
        return fn

    def remove(self, module: nn.Module) -> None:
        with torch.no_grad():
            weight = self.compute_weight(module, do_power_iteration=False)
        delattr(module, self.name)
        delattr(module, self.name + "_u")
        delattr(module, self.name + "_v")
        delattr(module, self.name + "_orig")
        module.register_parameter(self.name, nn.Parameter(weight.detach()))


class _StateDictVersionHook:
    def __init__(self, fn: SpectralNorm):
        self.fn = fn

    def __call__(self, module, state_dict, prefix, local_metadata) -> None:
        local_metadata.setdefault("spectral_norm", {})[self.fn.name + ".version"] = _STATE_VERSION


def spectral_norm(module: T_module, name: str = "weight", n_power_iterations: int = 1, eps: float = 1e-12,
                  dim: Optional[int] = None) -> T_module:
    """Spectral-normalize ``module.<name>`` in place and return the module.

    Args:
        module: a layer with a weight Parameter (Conv*, Linear, ...).
        name: the parameter's name.
        n_power_iterations: power-iteration steps per training forward (1 as in SPADE / SB-GAN).
        eps: for the vector normalizations.
        dim: the output dim of the weight; default 1 for ConvTranspose*, else 0.
    Returns:
        ``module`` with ``<name>_orig`` (Parameter), ``<name>_u``, ``<name>_v`` (buffers) and a
        forward pre-hook that sets ``module.<name>`` to the normalized weight.
    """
    if dim is None:
        dim = 1 if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
    SpectralNorm.apply(module, name, n_power_iterations, dim, eps)
    return module


def is_spectral_normed(module: nn.Module, name: str = "weight") -> bool:
    """True if ``module.<name>`` is spectral-normalized (by this module's hook)."""
    return any(isinstance(h, SpectralNorm) and h.name == name for h in module._forward_pre_hooks.values())


def remove_spectral_norm(module: T_module, name: str = "weight") -> T_module:
    """Bake the current normalized weight (stored u, v; no iteration) into a plain Parameter."""
    for key, hook in list(module._forward_pre_hooks.items()):
        if isinstance(hook, SpectralNorm) and hook.name == name:
            hook.remove(module)
            del module._forward_pre_hooks[key]
            for skey, shook in list(module._state_dict_hooks.items()):
                if isinstance(shook, _StateDictVersionHook) and shook.fn is hook:
                    del module._state_dict_hooks[skey]
            return module
    raise ValueError(f"remove_spectral_norm: {name!r} of {type(module).__name__} is not spectral-normalized")
