"""The ``compile`` setting: the five networks and the VGG loss run through ``torch.compile``.

Each module is compiled in place with :meth:`torch.nn.Module.compile`: its ``__call__`` goes through a compiled
graph (forward and, via AOT autograd, backward) while the module itself, its parameters, buffers and state dict stay
the plain module's. Optimizers, checkpoints (no ``_orig_mod.`` prefix), resume, the gradient collectives and the
previews therefore see exactly what they see without compiling, and a checkpoint written with ``compile=true``
loads with it off and the other way round.

The WGAN-GP penalty differentiates D_seg's gradient again (a double backward), which a compiled graph's backward
does not support: :func:`sbgan_fast.train.losses.gradient_penalty` runs that one D_seg pass eagerly
(:func:`eager`), with the first-order-free op dispatch it uses anyway.

Graphs: dynamo specializes on the int ``res`` of G_seg and the input size of D_seg, on grad mode (G_seg runs under
``no_grad`` in the D phase), on whether D_seg's input requires gradients and on train/eval mode (previews), not on
the float fade-in alpha; so the seg stage builds a few graphs per resolution (measured on the tiny configuration:
14 graphs for three resolutions; shapes are not made dynamic). :data:`RECOMPILE_LIMIT` raises
dynamo's per-function limit so that the authors' seven seg resolutions stay compiled instead of falling back to
eager after the eighth graph.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterable, Optional

import torch

BACKEND = "inductor"   # the torch.compile backend of compile=true
RECOMPILE_LIMIT = 64   # graphs per compiled function: 7 resolutions x (G phase, D phase, preview) with room to spare
_compiled = False      # set by compile_networks: until then eager() is a plain no-op (torch._dynamo never imported)


def compile_networks(nets: Dict[str, torch.nn.Module], vgg: Optional[torch.nn.Module] = None,
                     backend: Optional[str] = None) -> None:
    """Compile every module of ``nets`` (and ``vgg``) in place (:meth:`torch.nn.Module.compile`) with ``backend``
    (default :data:`BACKEND`)."""
    global _compiled
    _compiled = True
    cfg = torch._dynamo.config
    for key in ("recompile_limit", "cache_size_limit"):      # the name changed across torch versions
        if hasattr(cfg, key):
            setattr(cfg, key, max(getattr(cfg, key), RECOMPILE_LIMIT))
    mods: Iterable[torch.nn.Module] = list(nets.values()) + ([vgg] if vgg is not None else [])
    for m in mods:
        m.compile(backend=backend or BACKEND)


def eager():
    """A context in which compiled modules run their plain eager code (the double-backward pass); nothing at all
    in a process that compiled nothing."""
    if not _compiled:
        return contextlib.nullcontext()
    stance = getattr(torch.compiler, "set_stance", None)
    return stance("force_eager") if stance is not None else contextlib.nullcontext()
