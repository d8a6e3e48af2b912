"""The package's import graph: no cycle, and no import that climbs a layer (read from the source, not run).

Layers, bottom to top (ARCHITECTURE.md):

  0  errors, config                 what every layer may use
  1  ops                            the custom ops and their dispatch (over kernels/ and csrc/)
  2  nn                             layers built from the ops
  3  models | data                  networks (and the semantic bottleneck) | datasets and loaders; siblings,
                                    neither imports the other
  4  metrics                        FID, KID, grids: networks and data in, numbers and pictures out
  5  train                          stages, the loop, checkpoints, distributed
  6  sample, cli, __main__          the application

A module may import its own layer and anything below, except that models and data never import each other; the
imports form no cycle, within a package or across packages.
"""
import ast
import os

import pytest

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sbgan_fast")

LAYER = {"errors": 0, "config": 0, "ops": 1, "nn": 2, "models": 3, "data": 3, "metrics": 4, "train": 5,
         "sample": 6, "cli": 6, "__main__": 6}


def _modules():
    """{dotted module name: path} of every .py file under sbgan_fast/."""
    mods = {}
    for root, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(root, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                mods[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = path
    return mods


def _imports(mod, path, mods):
    """The sbgan_fast modules `mod` imports (at any depth of the file: lazy imports count too)."""
    is_pkg = path.endswith("__init__.py")
    pkg = mod if is_pkg else mod.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("sbgan_fast"):
                continue
            for alias in node.names:            # `from pkg import module` imports the module
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in mods else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("sbgan_fast"))
    out.discard(mod)
    return {m for m in out if m in mods or m == "sbgan_fast"}


def _graph():
    mods = _modules()
    return {m: _imports(m, p, mods) for m, p in mods.items()}


def _layer(mod):
    parts = mod.split(".")
    if len(parts) == 1:                         # the package itself (sbgan_fast/__init__.py)
        return None
    top = parts[1]
    if top not in LAYER and top.startswith("_"):                     # sbgan_fast._C and other private modules of the root
        return 0
    assert top in LAYER, f"{mod}: module outside every layer; add it to LAYER and ARCHITECTURE.md"
    return LAYER[top]


def _package(mod):
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_module_has_a_layer():
    for mod in _graph():
        _layer(mod)


def test_no_import_climbs_a_layer():
    bad = []
    for mod, deps in _graph().items():
        lm = _layer(mod)
        if lm is None:
            continue
        for dep in deps:
            ld = _layer(dep)
            if ld is None:
                continue
            if ld > lm or {_package(mod), _package(dep)} == {"models", "data"}:
                bad.append(f"{mod} -> {dep}")
    assert not bad, "imports that climb a layer or cross to a sibling:\n" + "\n".join(sorted(bad))


def test_no_import_cycle():
    graph = _graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_a_cycle_and_a_climb(tmp_path):
    """The reader itself: a relative `from . import x` and a lazy import inside a function are both edges."""
    pkg = tmp_path / "sbgan_fast" / "train"
    pkg.mkdir(parents=True)
    (tmp_path / "sbgan_fast" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("def f():\n    from .a import g\n")
    global ROOT
    old, ROOT = ROOT, str(tmp_path / "sbgan_fast")
    try:
        g = _graph()
        assert "sbgan_fast.train.b" in g["sbgan_fast.train.a"]
        assert "sbgan_fast.train.a" in g["sbgan_fast.train.b"]
        with pytest.raises(AssertionError, match="import cycles"):
            test_no_import_cycle()
        (pkg / "b.py").write_text("")
        test_no_import_cycle()
        ops = tmp_path / "sbgan_fast" / "ops"
        ops.mkdir()
        (ops / "__init__.py").write_text("import sbgan_fast.train.a\n")
        with pytest.raises(AssertionError, match="ops -> sbgan_fast.train.a"):
            test_no_import_climbs_a_layer()
    finally:
        ROOT = old
