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

CUDA graphs (``seg.cuda_graphs_max_res``, off by default): at the seg stage's first resolutions (4x8, 8x16 at
batch 16) a step is a few hundred kernels of microseconds each, so on a GPU it is bound by the launches, not by
the arithmetic. With ``compile=true`` on a CUDA device and ``seg.cuda_graphs_max_res=R``, :class:`SegGraphs`
gives G_seg and D_seg a second compiled entry, ``torch.compile(mode="reduce-overhead")`` (inductor's CUDA graph
trees: each graph's kernels recorded once and replayed by one launch), which their calls take during the seg
steps at heights ``<= R``; elsewhere (higher resolutions, previews, the e2e stage) they run the plain compiled
code. Each such step begins with ``torch.compiler.cudagraph_mark_step_begin()``, which ends the previous step's
graph outputs' lifetime: the stage keeps none of them across steps (its logged losses, gradient checks and
optimizer steps read tensors computed outside the graphs or within the same step, and the optimizers zero
gradients to ``None`` before each update, so no ``.grad`` outlives its step). The WGAN-GP pass still runs eagerly
(:func:`eager` forces every compiled entry, this one too, to its eager code). The replayed kernels are the ones
the plain compiled path runs, on copies of the same inputs: the results are the same. The first two steps at a
resolution warm up and record its graphs. Inductor itself runs a graph without CUDA graphs when it cannot record
it (a CPU tensor among its inputs, e.g. a fade-in weight, or unsupported ops) and says why in its log; the
stage logs once per resolution how many graphs it skipped. Without ``compile=true`` or a CUDA device the setting
does nothing but log one line. It has been written and tested on the CPU with a stand-in backend (the routing,
the step marks, the fallback, equal results); on a GPU the parity of seg steps with and without graphs is
``tests/test_cuda_graphs.py``'s ``gpu`` test and the speed is the GPU suite's ``step-seg-graphs`` item.
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterable, Iterator, Optional

import torch

BACKEND = "inductor"   # the torch.compile backend of compile=true
RECOMPILE_LIMIT = 64   # graphs per compiled function: 7 resolutions x (G phase, D phase, preview) with room to spare
_compiled = False      # set by compile_networks: until then eager() is a plain no-op (torch._dynamo never imported)
GRAPH_NETS = ("G_seg", "D_seg")                     # the networks SegGraphs runs as CUDA graphs
GRAPH_COMPILE: Dict[str, Any] = {"mode": "reduce-overhead"}   # torch.compile arguments of their CUDA-graph entry
_graphs_on = False     # inside a SegGraphs.step at a graphed resolution: G_seg and D_seg take their graphs entry


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


def cuda_graphs_unavailable(compile_on: bool, device: torch.device) -> Optional[str]:
    """Why ``seg.cuda_graphs_max_res`` cannot take effect with these settings, or None when it can."""
    if not compile_on:
        return "CUDA graphs are part of compiled training and need compile=true (--compile)"
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"CUDA graphs need a CUDA device, this run is on {device}"
    return None


class SegGraphs:
    """CUDA graphs for the compiled G_seg and D_seg at the seg stage's resolutions up to ``max_res`` (see the
    module docstring).

    Args:
        nets: the networks, ``G_seg`` and ``D_seg`` already compiled in place (:func:`compile_networks`).
        max_res: the highest seg height (label-map rows) whose steps use the graphs.
        compile_kwargs: the ``torch.compile`` arguments of the graphs entry (default :data:`GRAPH_COMPILE`).

    Use: ``with graphs.step(res): <one seg training step>``.
    """

    def __init__(self, nets: Dict[str, torch.nn.Module], max_res: int,
                 compile_kwargs: Optional[Dict[str, Any]] = None, names=GRAPH_NETS):
        self.max_res = int(max_res)
        self._skips_seen = self._skips()
        self._reported: set = set()
        kwargs = dict(GRAPH_COMPILE if compile_kwargs is None else compile_kwargs)
        for name in names:   # the generator and critic of the stage (G_seg, D_seg; the ProGAN stage's G_img, D_img)
            _add_graphs_entry(nets[name], name, kwargs)

    def active(self, res: int) -> bool:
        return res <= self.max_res

    @contextlib.contextmanager
    def step(self, res: int) -> Iterator[None]:
        """One seg training step at height ``res``: through the graphs when ``res <= max_res``."""
        global _graphs_on
        if not self.active(res):
            yield
            return
        torch.compiler.cudagraph_mark_step_begin()   # the previous step's graph outputs are dead from here
        before, _graphs_on = _graphs_on, True
        try:
            yield
        finally:
            _graphs_on = before

    @staticmethod
    def _skips() -> int:
        from torch._dynamo.utils import counters
        return int(counters["inductor"]["cudagraph_skips"])

    def skipped_note(self, res: int) -> Optional[str]:
        """Once per resolution: a line saying how many graphs inductor ran without CUDA graphs since the last
        call (None when none, or when already said for ``res``)."""
        now = self._skips()
        new, self._skips_seen = now - self._skips_seen, now
        if new <= 0 or res in self._reported:
            return None
        self._reported.add(res)
        return (f"seg {res}: inductor ran {new} compiled graph(s) without CUDA graphs (it could not record them; "
                "TORCH_LOGS=cudagraphs gives its reasons); their results are unchanged")


def _add_graphs_entry(m: torch.nn.Module, name: str, kwargs: Dict[str, Any]) -> None:
    """Give the in-place compiled module ``m`` a second compiled entry (``torch.compile(m._call_impl,
    **kwargs)``), taken by its calls while a :meth:`SegGraphs.step` is on, the plain compiled one otherwise."""
    plain = getattr(m, "_compiled_call_impl", None)
    if plain is None:
        raise RuntimeError(f"CUDA graphs for {name}: the network is not compiled (compile=true compiles it first)")
    entries = getattr(m, "_sbgan_graph_entries", None)
    if entries is not None:            # installed before (another stage object over the same networks)
        if entries[2] == kwargs:
            return
        plain = entries[0]
    graphs = torch.compile(m._call_impl, **kwargs)

    def call(*args, **kw):
        return (graphs if _graphs_on else plain)(*args, **kw)

    m._sbgan_graph_entries = (plain, graphs, kwargs)
    m._compiled_call_impl = call
