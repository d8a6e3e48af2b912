"""The Triton kernels compile for a Hopper GPU (sm_90), on a machine without one.

The parity tests run the kernels in Triton's CPU interpreter, which never meets the real compiler
(type and constexpr errors, unsupported ops, layouts, ptxas failures). Here the Triton impls of
``sbgan_fast.ops`` are driven forward and backward on realistic inputs with every kernel launch
*recorded instead of run*; each distinct launch (kernel, argument types, the specialisation Triton
derives from the argument values, constexprs, options) is then compiled with ``triton.compile`` for
``GPUTarget("cuda", 90, 32)``: TTIR, TTGIR, LLVM IR, PTX and a cubin from the ptxas bundled with
Triton. So the block sizes, flags and dtypes compiled are the ones the launchers pick on a GPU, not
a copy of them.

The recording and compiling run in a child process without ``TRITON_INTERPRET``: in this process
conftest.py set it before Triton was imported, so ``triton.language``'s own JIT helpers (``tl.rand``,
``tl.max``, ``tl.cdiv``...) and the kernels are interpreter objects the compiler cannot lower, and the
launchers would pick the interpreter's block sizes. The child uses a fresh Triton cache, so every
launch is really compiled. On CPU tensors the reduction launchers use one chunk per image; the
multi-chunk launch a GPU picks for small batches is exercised with an explicit ``tiles_per_chunk``.

``pytest -s tests/test_triton_compile.py`` (or ``python tests/test_triton_compile.py``) prints the
registers, spilled bytes and shared memory of every compiled launch, as ptxas reports them.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import traceback
from dataclasses import dataclass
from typing import Dict, List, Optional

import pytest
import torch

triton = pytest.importorskip("triton")

from sbgan_fast.ops import _triton, gumbel  # noqa: E402
from sbgan_fast.ops.spade_norm import spade_norm_triton  # noqa: E402

pytestmark = pytest.mark.slow   # compiles every kernel for sm_90 once (about a minute)

CAPABILITY = 90
#: Kernels whose first pointer argument is not the op's input (one dtype whatever the input's).
INTERNAL_INPUT_KERNELS = {"_stats_finalize_kernel", "_gumbel_noise_kernel"}
INPUT_DTYPES = {"fp32", "fp16", "bf16"}


# ------------------------------------------------------------------------------------------------
# Scenarios: the ops driven as training and sampling drive them (run in the child process)
# ------------------------------------------------------------------------------------------------

def _tensor(shape, dtype, layout, requires_grad=False):
    """A (N, C, H, W) tensor in layout 'nchw', 'channels_last' or 'sliced' (a view strided in C, H
    and W, so that H and W do not collapse into one index: the kernels' FLAT_HW=False path)."""
    t = torch.randn(shape, dtype=torch.float32).to(dtype)
    if layout == "channels_last":
        t = t.contiguous(memory_format=torch.channels_last)
    elif layout == "sliced":
        n, c, h, w = shape
        holder = torch.zeros((n, c + 3, h + 2, 2 * w + 1), dtype=dtype)
        t = holder[:, 1:c + 1, 1:h + 1, 1::2]
    return t.requires_grad_(requires_grad)


def _gumbel(k, dtype, layout, explicit_noise=False, hw=(32, 48)):
    """Forward and backward; H*W not a multiple of 4 (e.g. 31x47) selects the per-element Philox path."""
    def run(kg, ks):
        logits = _tensor((2, k) + hw, dtype, layout, requires_grad=True)
        noise = _tensor((2, k) + hw, dtype, layout) if explicit_noise else None
        y = gumbel.gumbel_softmax_st_triton(logits, 0.7, noise)
        y.backward(torch.ones_like(y))
    return run


def _argmax(k, dtype, layout):
    def run(kg, ks):
        gumbel.argmax_one_hot_triton(_tensor((2, k, 32, 48), dtype, layout))
    return run


def _philox_noise(kg, ks):
    gumbel.gumbel_noise((2, 35, 32, 48), gumbel.draw_seed("cpu"))


def _spade(c, dtype, layout, norm="batch", training=True, param_dtype=None):
    """spade_norm forward and backward; with ``param_dtype``, gamma and beta come in that dtype from
    an autocast region (the output then takes their dtype)."""
    def run(kg, ks):
        shape = (2, c, 32, 32)
        x = _tensor(shape, dtype, layout, requires_grad=True)
        gamma = _tensor(shape, param_dtype or dtype, layout, requires_grad=True)
        beta = _tensor(shape, param_dtype or dtype, layout, requires_grad=True)
        rm, rv = (torch.zeros(c), torch.ones(c)) if norm != "instance" else (None, None)
        ctx = torch.autocast("cpu", dtype=param_dtype) if param_dtype else contextlib.nullcontext()
        with ctx:
            y = spade_norm_triton(x, gamma, beta, norm=norm, running_mean=rm, running_var=rv,
                                     training=training)
        y.backward(torch.ones_like(y))
    return run


def _spade_chunked(c, dtype, layout):
    """The reduction kernels with several chunks per image (what a GPU picks for small batches)."""
    def run(kg, ks):
        shape = (2, c, 64, 64)
        x, dy, gamma = (_tensor(shape, dtype, layout) for _ in range(3))
        mean, _, rstd = ks.compute_stats(x, instance=False, eps=1e-5, tiles_per_chunk=3)
        ks.backward_sums(dy, x, gamma, mean, rstd, instance=False, tiles_per_chunk=3)
    return run


CL, NCHW, SLICED = "channels_last", "nchw", "sliced"
f32, f16, bf16 = torch.float32, torch.float16, torch.bfloat16
#: (id, scenario). The class counts are the real data sets' (35, 20, 95, 151, 184); every kernel
#: meets every input dtype at least once (checked by test_every_kernel_and_dtype_compiled).
SCENARIOS = [
    ("gumbel-k35-fp32-nchw", _gumbel(35, f32, NCHW)),
    ("gumbel-k20-fp16-cl", _gumbel(20, f16, CL)),
    ("gumbel-k95-bf16-cl", _gumbel(95, bf16, CL)),
    ("gumbel-k151-fp16-nchw", _gumbel(151, f16, NCHW)),
    ("gumbel-k184-fp32-cl", _gumbel(184, f32, CL)),
    ("gumbel-explicit-noise-k35-bf16-nchw", _gumbel(35, bf16, NCHW, explicit_noise=True)),
    ("gumbel-k95-fp32-sliced", _gumbel(95, f32, SLICED)),
    ("gumbel-k35-bf16-nchw-odd", _gumbel(35, bf16, NCHW, hw=(31, 47))),
    ("argmax-k184-fp32-nchw", _argmax(184, f32, NCHW)),
    ("argmax-k35-fp16-cl", _argmax(35, f16, CL)),
    ("argmax-k151-bf16-nchw", _argmax(151, bf16, NCHW)),
    ("philox-noise", _philox_noise),
    ("spade-batch-c256-fp32-nchw", _spade(256, f32, NCHW)),
    ("spade-batch-c1024-fp16-cl", _spade(1024, f16, CL)),
    ("spade-instance-c64-bf16-nchw", _spade(64, bf16, NCHW, norm="instance")),
    ("spade-eval-c512-bf16-cl", _spade(512, bf16, CL, training=False)),
    ("spade-autocast-c128-fp32-bf16-cl", _spade(128, f32, CL, param_dtype=bf16)),
    ("spade-batch-c256-bf16-sliced", _spade(256, bf16, SLICED)),
    ("spade-chunked-c256-fp16-nchw", _spade_chunked(256, f16, NCHW)),
]


# ------------------------------------------------------------------------------------------------
# Child process: record the launches, specialise them as JITFunction.run does, compile for sm_90
# ------------------------------------------------------------------------------------------------

def _unavailable_reason() -> Optional[str]:
    try:
        from triton import knobs
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import ASTSource, make_backend  # noqa: F401
        from triton.runtime.jit import JITFunction, create_function_from_signature  # noqa: F401
    except ImportError as e:
        return f"this Triton ({triton.__version__}) lacks the ahead-of-time compile API used here: {e}"
    if not hasattr(JITFunction, "_pack_args"):
        return f"this Triton ({triton.__version__}) has no JITFunction._pack_args (launch specialisation)"
    try:
        make_backend(GPUTarget("cuda", CAPABILITY, 32))
    except Exception as e:  # a Triton build without the NVIDIA backend
        return f"Triton has no CUDA backend for sm_{CAPABILITY}: {type(e).__name__}: {e}"
    try:
        ptxas = knobs.nvidia.ptxas
    except Exception as e:  # RuntimeError: Cannot find ptxas
        return f"no usable ptxas (bundled in triton/backends/nvidia/bin, or TRITON_PTXAS_PATH): {e}"
    if ptxas is None or not os.access(ptxas.path, os.X_OK):
        return "the ptxas bundled with Triton is missing or not executable"
    return None


@dataclass
class Launch:
    fn: object  # triton.runtime.jit.JITFunction
    args: tuple
    kwargs: dict


def _entry_kernels(module) -> Dict[str, object]:
    """The JIT functions of ``module`` that no other JIT function there calls: the launched kernels."""
    from triton.runtime.jit import JITFunction
    fns = {name: f for name, f in vars(module).items() if isinstance(f, JITFunction)}
    return {name: f for name, f in fns.items()
            if not any(re.search(rf"\b{name}\s*\(", g.src) for other, g in fns.items() if other != name)}


class Recorder:
    """Replaces the launch of every entry kernel of the modules by a record of its arguments."""

    def __init__(self, modules):
        self.launches: List[Launch] = []
        self.kernels = {}
        for module in modules:
            for name, fn in _entry_kernels(module).items():
                self.kernels[name] = fn
                fn.run = self._recorder(fn)  # kernel[grid](...) calls kernel.run(..., grid=, warmup=)

    def _recorder(self, fn):
        def run(*args, grid, warmup, **kwargs):
            self.launches.append(Launch(fn, args, kwargs))
        return run

    def take(self) -> List[Launch]:
        out, self.launches = self.launches, []
        return out


def _ptxas_figures(log: str, name: str) -> dict:
    """Registers, spill stores/loads and stack frame (bytes) of kernel ``name`` from ptxas -v."""
    part = log.split(f"Function properties for {name}", 1)[-1]
    regs = re.search(r"Used (\d+) registers", part)
    frame = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", part)
    return {"registers": int(regs.group(1)) if regs else None,
            "stack": int(frame.group(1)) if frame else None,
            "spill_stores": int(frame.group(2)) if frame else None,
            "spill_loads": int(frame.group(3)) if frame else None}


class Sm90Compiler:
    """Compiles recorded launches for sm_90 with the specialisation JITFunction.run would give them."""

    def __init__(self):
        from triton.backends.compiler import GPUTarget
        from triton.compiler.compiler import make_backend
        self.target = GPUTarget("cuda", CAPABILITY, 32)
        self.backend = make_backend(self.target)
        self._binders = {}
        self.done: Dict[str, dict] = {}

    def _specialise(self, launch: Launch):
        from triton import knobs
        from triton.runtime.jit import create_function_from_signature
        fn, backend = launch.fn, self.backend
        kwargs = dict(launch.kwargs)
        kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
        kwargs["instrumentation_mode"] = knobs.compilation.instrumentation_mode
        if fn not in self._binders:
            self._binders[fn] = create_function_from_signature(fn.signature, fn.params, backend)
        bound, specialization, options = self._binders[fn](*launch.args, **kwargs)
        return fn._pack_args(backend, kwargs, bound, specialization, options)

    def compile(self, launch: Launch) -> str:
        """Compile (once per distinct specialisation); returns the key of its entry in ``done``."""
        from triton import knobs
        from triton.compiler.compiler import ASTSource
        options, signature, constexprs, attrs = self._specialise(launch)
        name = launch.fn.__name__
        key = repr((name, signature, sorted(constexprs.items()), sorted(attrs.items()), options))
        if key in self.done:
            return key
        log = io.StringIO()
        with knobs.nvidia.scope(), knobs.compilation.scope(), contextlib.redirect_stdout(log):
            knobs.nvidia.dump_ptxas_log = True  # printed after ptxas succeeds
            # two of our keys may share one Triton cache entry: compile anyway, so ptxas prints its figures
            knobs.compilation.always_compile = True
            kernel = triton.compile(ASTSource(launch.fn, signature, constexprs, attrs), target=self.target,
                                    options=options.__dict__)
        names = list(signature)
        declared = {p.name for p in launch.fn.params if p.is_constexpr}
        ptx = kernel.asm.get("ptx", "")
        cubin = kernel.asm.get("cubin", b"")
        self.done[key] = {
            "kernel": name,
            "input": next(v for v in signature.values() if v.startswith("*"))[1:],
            "constexprs": {names[path[0]]: value for path, value in constexprs.items()
                           if names[path[0]] in declared},
            # integer arguments equal to 1, which Triton specialises as constants (unit strides)
            "ones": [names[path[0]] for path in constexprs if names[path[0]] not in declared],
            "num_warps": options.num_warps,
            "ptx_target": next((line.split()[1] for line in ptx.splitlines() if line.startswith(".target")), None),
            "ptx_entry": f".entry {name}" in ptx,
            "cubin_bytes": len(cubin) if isinstance(cubin, bytes) and cubin[:4] == b"\x7fELF" else 0,
            "shared": kernel.metadata.shared,
            **_ptxas_figures(log.getvalue(), name),
        }
        return key


def _worker(out_path: str, shard: int = 0, shards: int = 1) -> None:
    """Child process entry: write a JSON report of the launches of scenarios ``shard::shards`` and
    their compilation."""
    reason = _unavailable_reason()
    if reason is None and _triton.interpreter_requested():
        reason = "TRITON_INTERPRET is set in the compile process"
    if reason is not None:
        with open(out_path, "w") as f:
            json.dump({"unavailable": reason}, f)
        return
    torch.manual_seed(0)
    kg, ks = _triton.kernels("gumbel"), _triton.kernels("spade_norm")
    recorder = Recorder([kg, ks])
    compiler = Sm90Compiler()
    scenarios = {}
    for sid, scenario in SCENARIOS[shard::shards]:
        entry = {"launches": [], "errors": []}
        recorder.take()
        try:
            scenario(kg, ks)
        except Exception:
            entry["errors"].append("driving the op failed:\n" + traceback.format_exc(limit=-6))
        for launch in recorder.take():
            try:
                entry["launches"].append(compiler.compile(launch))
            except Exception as e:  # CompilationError, PTXASError, ...
                entry["errors"].append(f"{launch.fn.__name__} {launch.kwargs}: {type(e).__name__}: {e}")
        scenarios[sid] = entry
    from triton import knobs
    with open(out_path, "w") as f:
        json.dump({"triton": triton.__version__, "ptxas": str(knobs.nvidia.ptxas.version),
                   "kernels": sorted(recorder.kernels), "scenarios": scenarios, "compiled": compiler.done}, f)


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def report(module_tmp):
    """Run the compile processes (one per core, up to 2) once for the module and merge their
    reports; skip when the compile path is unavailable."""
    work = module_tmp
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(work / "triton_cache")  # fresh: every launch is really compiled
    shards = max(1, min(2, os.cpu_count() or 1))
    outs = [work / f"report{i}.json" for i in range(shards)]
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", str(out), str(i), str(shards)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i, out in enumerate(outs)]
    merged = {"scenarios": {}, "compiled": {}}
    try:
        for proc, out in zip(procs, outs):
            stdout, stderr = proc.communicate(timeout=600)
            if proc.returncode != 0 or not out.exists():
                pytest.fail(f"the sm_{CAPABILITY} compile process failed (exit {proc.returncode}):\n"
                            f"{stdout[-3000:]}\n{stderr[-6000:]}")
            data = json.loads(out.read_text())
            if "unavailable" in data:
                pytest.skip(f"cannot compile for sm_{CAPABILITY} here: {data['unavailable']}")
            merged["scenarios"].update(data.pop("scenarios"))
            merged["compiled"].update(data.pop("compiled"))
            merged.update(data)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return merged


@pytest.mark.slow
@pytest.mark.parametrize("scenario", [sid for sid, _ in SCENARIOS])
def test_launches_compile_for_sm90(report, scenario):
    entry = report["scenarios"][scenario]
    assert not entry["errors"], "\n\n".join(entry["errors"])
    assert entry["launches"], "the scenario launched no kernel"
    for key in entry["launches"]:
        result = report["compiled"][key]
        assert result["ptx_target"] == f"sm_{CAPABILITY}a", f"{result['kernel']}: PTX target {result['ptx_target']}"
        assert result["ptx_entry"], f"{result['kernel']}: no entry in the PTX"
        assert result["cubin_bytes"] > 0, f"{result['kernel']}: no cubin"
        assert result["registers"] is not None and result["spill_stores"] is not None, \
            f"{result['kernel']}: no register/spill figures in the ptxas log"


def test_every_kernel_and_dtype_compiled(report):
    """Every launched kernel of kernels/*.py is compiled, each for fp32, fp16 and bf16 inputs (its
    first pointer argument) unless that argument is internal. Prints the resource table."""
    seen = {name: set() for name in report["kernels"]}
    for result in report["compiled"].values():
        seen[result["kernel"]].add(result["input"])
    missing = sorted(name for name, dtypes in seen.items() if not dtypes)
    assert not missing, f"kernels never compiled (add a scenario): {missing}"
    for name, dtypes in seen.items():
        if name not in INTERNAL_INPUT_KERNELS:
            assert dtypes >= INPUT_DTYPES, f"{name} compiled only for {sorted(dtypes)} inputs"
    print(f"\n{len(report['compiled'])} launches compiled for sm_{CAPABILITY} "
          f"(Triton {report['triton']}, ptxas {report['ptxas']}):")
    for r in sorted(report["compiled"].values(), key=lambda r: (r["kernel"], r["input"])):
        consts = " ".join(f"{k}={v}" for k, v in r["constexprs"].items())
        ones = ",".join(r["ones"]) or "-"
        print(f"  {r['kernel']:<27} {r['input']:<4} {consts:<58} ones={ones:<16} warps={r['num_warps']} "
              f"regs={r['registers']} spill st/ld={r['spill_stores']}/{r['spill_loads']} B "
              f"stack={r['stack']} B shared={r['shared']} B")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        _worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:  # print the resource table
        sys.exit(pytest.main([os.path.abspath(__file__), "-q", "-s", "-k", "every_kernel"]))
