"""The GPU targets of the kernels and of compiled training, evaluated from benchmark rows.

``evaluate(rows)`` takes the CSV records as ``{name: [row, ...]}`` (``triton_ops``, ``one_hot``, ``train_step``;
usually the rows of one suite run) and returns one line per target: what is compared, the goal, what was
measured and whether the goal was met (``yes``, ``no``, ``unknown`` where part of it could not be measured, or
``not measured``). Used by ``bench/gpu_suite.py`` (its closing table) and ``bench/report.py`` (RESULTS.md).

Targets (on an H100/H200, at Cityscapes shapes: N=8, K=35, 256x512, the authors' widths):
* Gumbel-softmax straight-through, forward+backward: >= 4x the reference and >= 70 % of the measured copy
  bandwidth (one line per 35-class shape, dtype and layout measured).
* SPADE normalization, forward+backward: >= 2x the reference (the smallest speed-up over the generator's
  activation shapes).
* one-hot label embedding: >= 5x ``F.one_hot(...).permute(...).float()``.
* label-embedding convolution: >= 3x one-hot + conv2d (forward and forward+backward, smallest over resolutions).
* training step (Cityscapes rows, batches in memory), ``fast`` (bf16, channels-last, fused kernels) against
  ``ref`` (fp32, NCHW): >= 2x images/s, spade and e2e; the spade step >= 1.3x from the gather embedding alone
  (``fast`` against ``fast-no-gather``).
* compiled training: ``fast`` + compile (provider ``compiled``) >= 2.5x ``ref`` images/s at <= 60 % of its peak
  memory (spade, e2e); the seg step at 4x8 >= 3x faster with CUDA graphs than without: ``compiled-graphs``
  (``compile=true`` + ``seg.cuda_graphs_max_res``) against ``compiled`` (the same compiled step without CUDA
  graphs), ``fast`` (eager) shown beside it.
"""
from __future__ import annotations

from typing import Dict, List, Optional

NOT_MEASURED = "not measured"
#: names the compiled-training provider of bench_train_step.py may carry (the first one present is used)
COMPILE_PROVIDERS = ("compiled", "fast+compile")
#: the provider that runs the seg step compiled with CUDA graphs (compared with the first of COMPILE_PROVIDERS)
GRAPH_PROVIDERS = ("compiled-graphs",)
TRAIN_KEY = ("device", "size", "res", "classes", "upsampling", "ngf", "seg_width", "batch", "data")


def _num(x) -> Optional[float]:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if v != v else v


def _line(target, goal, measured=NOT_MEASURED, met=NOT_MEASURED) -> Dict[str, str]:
    return {"target": target, "goal": goal, "measured": measured, "met": met}


def _yes(ok: bool) -> str:
    return "yes" if ok else "no"


def _newest(rows, **match) -> Dict[tuple, dict]:
    """The newest row (last in the file) per (shape, dtype, layout, provider) among rows matching ``match``."""
    out = {}
    for r in rows:
        if all(r.get(k) == v for k, v in match.items()):
            out[(r.get("shape"), r.get("dtype"), r.get("layout"), r.get("provider"))] = r
    return out


def _classes(shape: str) -> Optional[int]:
    try:
        return int(shape.split("x")[1])
    except (AttributeError, IndexError, ValueError):
        return None


def gumbel(rows) -> List[dict]:
    goal = ">= 4x ref and >= 70 % of copy bandwidth"
    latest = _newest(rows, op="gumbel_softmax_st", mode="fwd+bwd")
    out = []
    for (shape, dtype, layout, prov), fast in latest.items():
        ref = latest.get((shape, dtype, layout, "ref"))
        if prov != "triton" or ref is None or _classes(shape) != 35:
            continue
        t, tr, gbps, copy = (_num(fast.get("median_ms")), _num(ref.get("median_ms")), _num(fast.get("gbps")),
                             _num(fast.get("copy_gbps")))
        if not (t and tr and copy) or gbps is None:
            continue
        ratio, pct = tr / t, 100 * gbps / copy
        out.append(_line(f"Gumbel-softmax ST fwd+bwd {shape} {dtype} {layout}: triton vs ref", goal,
                         f"{ratio:.2f}x, {pct:.0f} % of {copy:.3g} GB/s", _yes(ratio >= 4 and pct >= 70)))
    return out or [_line("Gumbel-softmax ST fwd+bwd, 35 classes: triton vs ref", goal)]


def spade_norm(rows) -> List[dict]:
    target, goal = "SPADE norm fwd+bwd: triton vs ref (smallest over shapes)", ">= 2x ref"
    latest = {}
    for r in rows:
        if str(r.get("op", "")).startswith("spade_norm") and r.get("mode") == "fwd+bwd":
            latest[(r["op"], r.get("shape"), r.get("dtype"), r.get("layout"), r.get("provider"))] = r
    ratios = []
    for (op, shape, dtype, layout, prov), fast in latest.items():
        ref = latest.get((op, shape, dtype, layout, "ref"))
        t, tr = _num(fast.get("median_ms")), _num(ref.get("median_ms")) if ref else None
        if prov == "triton" and t and tr:
            ratios.append((tr / t, f"{op[len('spade_norm'):].strip('[]')} {shape} {dtype}"))
    if not ratios:
        return [_line(target, goal)]
    lo, hi = min(ratios), max(ratios)
    return [_line(target, goal, f"{lo[0]:.2f}x ({lo[1]}) to {hi[0]:.2f}x over {len(ratios)} shapes",
                  _yes(lo[0] >= 2))]


def one_hot(rows) -> List[dict]:
    target, goal = "one-hot embedding (NCHW) vs F.one_hot(...).permute(...).float()", ">= 5x"
    fast = cl = None
    for r in rows:
        if r.get("op") == "one_hot" and r.get("provider") in ("cuda", "cpp"):
            fast = r
        elif r.get("op") == "one_hot" and r.get("provider") in ("cuda_channels_last", "cpp_channels_last"):
            cl = r
    s = _num(fast.get("speedup")) if fast else None
    if s is None:
        return [_line(target, goal)]
    measured = f"{s:.2f}x ({fast['provider']}, {fast.get('shape')}, {_num(fast.get('gbps')) or 0:.0f} GB/s)"
    if cl and _num(cl.get("speedup")):
        measured += f"; channels-last {_num(cl.get('speedup')):.2f}x"
    return [_line(target, goal, measured, _yes(s >= 5))]


def onehot_conv(rows) -> List[dict]:
    target, goal = "label-embedding conv vs one-hot + conv2d (smallest over resolutions)", ">= 3x fwd and fwd+bwd"
    best = {}
    for r in rows:
        if r.get("op") == "onehot_conv2d" and r.get("provider") in ("cuda", "cpp"):
            best[(r.get("mode"), r.get("shape"))] = r
    parts, oks = [], []
    for mode in ("fwd", "fwd+bwd"):
        sp = [(_num(r.get("speedup")), k[1]) for k, r in best.items() if k[0] == mode and _num(r.get("speedup"))]
        if sp:
            lo = min(sp)
            parts.append(f"{mode} {lo[0]:.2f}x ({lo[1]})")
            oks.append(lo[0] >= 3)
    if not parts:
        return [_line(target, goal)]
    met = _yes(all(oks)) if len(oks) == 2 else "unknown"
    return [_line(target, goal, ", ".join(parts), met)]


def _train_pair(rows, stage, prov, base, res=None):
    """(newest row of ``prov``, newest ``base`` row of the same configuration) for ``stage``, or (None, None)."""
    fast = None
    for r in rows:
        if r.get("stage") == stage and r.get("provider") == prov and (res is None or r.get("res") == res):
            fast = r
    if fast is None:
        return None, None
    key = tuple(fast.get(k, "") for k in TRAIN_KEY)
    ref = None
    for r in rows:
        if r.get("stage") == stage and r.get("provider") == base and tuple(r.get(k, "") for k in TRAIN_KEY) == key:
            ref = r
    return fast, ref


def _present(rows, names):
    have = {r.get("provider") for r in rows}
    return next((n for n in names if n in have), None)


def train(rows) -> List[dict]:
    rows = [r for r in rows if r.get("preset") == "cityscapes" and r.get("data", "synthetic") == "synthetic"]
    out = []
    for stage in ("spade", "e2e"):
        target, goal = f"{stage} step: fast (bf16, channels-last) vs ref (fp32, NCHW)", ">= 2x images/s"
        fast, ref = _train_pair(rows, stage, "fast", "ref")
        a, b = (_num(fast.get("images_per_s")), _num(ref.get("images_per_s"))) if fast and ref else (None, None)
        out.append(_line(target, goal, f"{a / b:.2f}x ({a:.2f} vs {b:.2f} img/s, {fast.get('res')})", _yes(a / b >= 2))
                   if a and b else _line(target, goal))
    target, goal = "spade step: gather embedding alone (fast vs fast-no-gather)", ">= 1.3x images/s"
    fast, base = _train_pair(rows, "spade", "fast", "fast-no-gather")
    a, b = (_num(fast.get("images_per_s")), _num(base.get("images_per_s"))) if fast and base else (None, None)
    out.append(_line(target, goal, f"{a / b:.2f}x", _yes(a / b >= 1.3)) if a and b else _line(target, goal))
    comp = _present(rows, COMPILE_PROVIDERS) or COMPILE_PROVIDERS[0]
    for stage in ("spade", "e2e"):
        target = f"{stage} step: {comp} vs ref"
        goal = ">= 2.5x images/s at <= 60 % of ref's peak memory"
        fast, ref = _train_pair(rows, stage, comp, "ref")
        a, b = (_num(fast.get("images_per_s")), _num(ref.get("images_per_s"))) if fast and ref else (None, None)
        if not (a and b):
            out.append(_line(target, goal))
            continue
        ma, mb = _num(fast.get("peak_mem_mib")), _num(ref.get("peak_mem_mib"))
        if ma and mb:
            pct = 100 * ma / mb
            out.append(_line(target, goal, f"{a / b:.2f}x, peak {ma:.0f} MiB = {pct:.0f} % of ref's",
                             _yes(a / b >= 2.5 and pct <= 60)))
        else:
            out.append(_line(target, goal, f"{a / b:.2f}x, peak memory not measured",
                             "no" if a / b < 2.5 else "unknown"))
    graphs = _present(rows, GRAPH_PROVIDERS) or GRAPH_PROVIDERS[0]
    target, goal = f"seg step at 4x8: {graphs} (CUDA graphs) vs {comp} (without)", ">= 3x images/s"
    with_g, without = _train_pair(rows, "seg", graphs, comp, res="4x8")
    a, b = ((_num(with_g.get("images_per_s")), _num(without.get("images_per_s"))) if with_g and without
            else (None, None))
    if a and b:
        measured = f"{a / b:.2f}x ({a:.1f} vs {b:.1f} img/s)"
        _, eager = _train_pair(rows, "seg", graphs, "fast", res="4x8")
        e = _num(eager.get("images_per_s")) if eager else None
        if e:
            measured += f"; {a / e:.2f}x fast (eager, {e:.1f} img/s)"
        out.append(_line(target, goal, measured, _yes(a / b >= 3)))
    else:
        out.append(_line(target, goal))
    return out


def evaluate(rows: Dict[str, List[dict]]) -> List[dict]:
    """One line per target (see the module docstring) from ``{csv name: rows}``."""
    ops_rows, oh_rows, ts_rows = rows.get("triton_ops", []), rows.get("one_hot", []), rows.get("train_step", [])
    return gumbel(ops_rows) + spade_norm(ops_rows) + one_hot(oh_rows) + onehot_conv(oh_rows) + train(ts_rows)


def text_table(lines: List[dict]) -> str:
    """Fixed-width table of ``evaluate``'s lines (for a terminal)."""
    cols = [("target", "target"), ("goal", "goal"), ("measured", "measured"), ("met", "met?")]
    width = {k: max(len(h), *(len(str(ln[k])) for ln in lines)) for k, h in cols}
    head = " | ".join(h.ljust(width[k]) for k, h in cols)
    rule = "-+-".join("-" * width[k] for k, _ in cols)
    body = [" | ".join(str(ln[k]).ljust(width[k]) for k, _ in cols) for ln in lines]
    return "\n".join([head, rule] + body)
