"""The authors' checkpoint layouts, read and written.

* G_spd, D_spd and D2 keep the reference's module names, so their state dicts are the reference's:
  :func:`load_reference_state_dict` loads one strictly with errors that name the keys, and
  :func:`reference_state_dict` writes one.
* G_seg and D_seg (the progressive label-map GAN) use one module per block, with the discriminator's blocks
  numbered from the highest resolution down (``n = log2(max_dim) - 1`` blocks)::

      G: blocks.0.fc1.*, blocks.{j}.conv1.* (j > 0), blocks.{j}.conv2.*, blocks.{j}.to_mask.*
      D: blocks.{n-1-j}.from_mask.*, blocks.{n-1-j}.conv1.*, blocks.{n-1-j}.conv2.*, blocks.{n-1}.fc3.*

  :class:`ReferenceLayout` maps them to the networks' own keys (each network lists its layers), and
  :func:`reference_state` / :func:`load_mapped` read a checkpoint through that map. Both layouts hold the unscaled
  equalized weights.
"""
from __future__ import annotations

import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Tuple

import torch
from torch import nn


def load_reference_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], *, who: str,
                              hint: str) -> None:
    """Load a reference-layout state dict into ``model`` (strict), with errors that name the keys.

    A leading ``module.`` on every key (DataParallel) is stripped. Missing ``num_batches_tracked``
    buffers (unused with a fixed momentum) keep the model's values; any other missing or unexpected
    key raises KeyError, a shape mismatch raises ValueError naming the key and ``hint`` (the
    constructor arguments that decide shapes).
    """
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{who}: state_dict must be a mapping of name -> tensor, got {type(state_dict).__name__}")
    sd = dict(state_dict)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    own = model.state_dict()
    missing = [k for k in own if k not in sd and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        def show(keys):
            return ", ".join(keys[:8]) + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
        msg = f"{who}: the state dict does not match the network built with {hint}."
        if missing:
            msg += f" Missing keys: {show(missing)}."
        if unexpected:
            msg += f" Unexpected keys: {show(unexpected)}."
        raise KeyError(msg)
    bad = [f"{k}: checkpoint {tuple(sd[k].shape)} vs network {tuple(v.shape)}"
           for k, v in own.items() if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        raise ValueError(f"{who}: tensor shapes differ from the network built with {hint}: "
                         + "; ".join(bad[:5]) + (f" ... ({len(bad)} in all)" if len(bad) > 5 else ""))
    for k, v in own.items():
        sd.setdefault(k, v)
    model.load_state_dict(sd, strict=True)


def reference_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``model.state_dict()`` as a plain dict of detached tensors (reference key layout)."""
    return {k: v.detach() for k, v in model.state_dict().items()}


def extract_state_dict(owner: str, state_dict: Mapping, checkpoint_key: str,
                       rgb: bool = False) -> Dict[str, torch.Tensor]:
    """Accept a bare state dict or a whole checkpoint holding it under ``checkpoint_key``; drop a ``module.`` prefix.
    ``rgb``: the network has RGB heads (the image ProGAN), else label-map heads; a checkpoint of the other kind
    raises."""
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"{owner}.from_reference_state_dict: state_dict must be a mapping, got "
                        f"{type(state_dict).__name__}")
    if checkpoint_key in state_dict and isinstance(state_dict[checkpoint_key], Mapping):
        state_dict = state_dict[checkpoint_key]
    sd = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise ValueError(f"{owner}.from_reference_state_dict: no tensors found (expected the network's state dict "
                         f"or a checkpoint with a {checkpoint_key!r} entry); keys: {sorted(state_dict)[:8]}")
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if not rgb and any(".to_rgb." in k or ".from_rgb." in k for k in sd):
        raise ValueError(f"{owner}.from_reference_state_dict: this checkpoint holds an RGB progressive GAN "
                         f"(to_rgb/from_rgb heads), not the label-map networks (to_mask/from_mask)")
    if rgb and any(".to_mask." in k or ".from_mask." in k for k in sd):
        raise ValueError(f"{owner}.from_reference_state_dict: this checkpoint holds the label-map networks "
                         f"(to_mask/from_mask heads), not an RGB progressive GAN (to_rgb/from_rgb)")
    return sd


def reference_block_count(owner: str, sd: Mapping[str, torch.Tensor]) -> int:
    indices = set()
    for k in sd:
        m = re.match(r"blocks\.(\d+)\.", k)
        if m is None:
            raise ValueError(f"{owner}.from_reference_state_dict: unexpected key {k!r} (reference keys look like "
                             f"'blocks.<i>.<layer>.weight')")
        indices.add(int(m.group(1)))
    n = max(indices) + 1
    missing = sorted(set(range(n)) - indices)
    if missing:
        raise ValueError(f"{owner}.from_reference_state_dict: blocks {missing} are missing from the state dict")
    return n


def load_mapped(model: nn.Module, owner: str, sd: Mapping[str, torch.Tensor], ref_to_own: Mapping[str, str]) -> None:
    """Copy reference tensors into ``model`` through ``ref_to_own``; every key must match both ways."""
    unexpected = sorted(set(sd) - set(ref_to_own))
    missing = sorted(set(ref_to_own) - set(sd))
    if unexpected or missing:
        raise ValueError(f"{owner}.from_reference_state_dict: the state dict does not match the architecture "
                         f"(check num_classes, max_dim, aspect_ratio); missing keys: {missing[:8]}"
                         f"{' ...' if len(missing) > 8 else ''}; unexpected keys: {unexpected[:8]}"
                         f"{' ...' if len(unexpected) > 8 else ''}")
    own = model.state_dict()
    converted = {}
    for ref_key, own_key in ref_to_own.items():
        value = sd[ref_key]
        if tuple(value.shape) != tuple(own[own_key].shape):
            raise ValueError(f"{owner}.from_reference_state_dict: {ref_key!r} has shape {tuple(value.shape)}, the "
                             f"architecture expects {tuple(own[own_key].shape)} (check num_classes, aspect_ratio, "
                             f"width_mult)")
        converted[own_key] = value
    model.load_state_dict(converted, strict=True)


def reference_state(owner: str, state_dict: Mapping, checkpoint_key: str, n: int,
                    max_dim, rgb: bool = False) -> Tuple[Dict[str, torch.Tensor], int]:
    """(reference tensors of ``state_dict`` (see :func:`extract_state_dict`), block count n), checked to hold the
    ``n`` blocks that ``max_dim`` needs."""
    sd = extract_state_dict(owner, state_dict, checkpoint_key, rgb)
    n_ref = reference_block_count(owner, sd)
    if n_ref != n:
        raise ValueError(f"{owner}.from_reference_state_dict: the state dict has {n_ref} blocks (max_dim "
                         f"{2 ** (n_ref + 1)}), but max_dim={max_dim} needs {n}")
    return sd, n


class ReferenceLayout:
    """Key mapping to and from the authors' checkpoint layout; subclasses list their layers in
    :meth:`_reference_layers`."""

    def _reference_layers(self) -> List[Tuple[str, str]]:
        """``[(reference layer prefix, own layer prefix), ...]`` in the reference's order."""
        raise NotImplementedError

    def _reference_key_map(self) -> "OrderedDict[str, str]":
        """Reference key -> own key (weight and bias of every layer), in the reference's order."""
        return OrderedDict((f"{ref}.{p}", f"{own}.{p}") for ref, own in self._reference_layers()
                           for p in ("weight", "bias"))

    def to_reference_state_dict(self) -> "OrderedDict[str, torch.Tensor]":
        """State dict in the authors' layout (see the module docstring); tensors share storage with the model."""
        own = self.state_dict()
        return OrderedDict((ref, own[own_key]) for ref, own_key in self._reference_key_map().items())
