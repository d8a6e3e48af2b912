"""GPU microbenchmarks of the Triton ops against the reference and ``torch.compile(reference)``.

Ops: straight-through Gumbel-softmax (in-kernel noise, the training path), the argmax one-hot
(sampling), SPADE normalization (training-mode batch norm with running statistics, instance norm).
Providers: ``ref`` (plain PyTorch), ``compile`` (``torch.compile`` of the reference), ``triton``.
Modes: ``fwd`` (forward with the autograd graph recorded, as in training), ``bwd`` (backward alone,
the graph retained), ``fwd+bwd``.

Run on a CUDA machine (the benchmarks skip without one and under TRITON_INTERPRET=1: CPU timings
say nothing about GPU performance)::

    python -m pytest bench/bench_triton_ops.py -q                        # time and record
    python -m pytest bench/bench_triton_ops.py -q --benchmark-disable    # CI: run each once, check
    python -m pytest bench/bench_triton_ops.py -q -k "not compile"       # without the torch.compile baselines

Dry run (``SBGAN_BENCH_DRY=1`` with ``TRITON_INTERPRET=1``, as ``bench/run_gpu_suite.sh --dry-run`` runs it):
tiny fp32 shapes on the CPU under Triton's interpreter, so the benchmark's own code runs without a GPU; its rows
say CPU and measure nothing.

Each timed case appends one row to ``bench/results/triton_ops.csv`` (``SBGAN_BENCH_RESULTS`` names another
folder): op, provider, mode, shape, dtype, layout, median / 20% / 80% time in ms (``triton.testing.do_bench``,
L2 flushed between runs), GB/s from the bytes the op must move at minimum (below), the measured
device-to-device copy bandwidth for comparison, device name, torch and triton versions, the git commit and the
suite run. pytest-benchmark's own table times the same callable with a synchronize after each call.

Minimum bytes moved (each tensor counted once, ``s`` = element size, ``n`` = elements):
gumbel fwd ``2ns`` (logits in, one-hot out), bwd ``3ns`` (logits, grad in; grad out; the noise is
regenerated), argmax ``2ns``; SPADE fwd ``4ns`` (x, gamma, beta in; out), bwd ``5ns`` (grad, x, gamma
in; dx, dgamma out; dbeta is the incoming grad itself). ``fwd+bwd`` is the sum.

``SBGAN_FAST_STRICT=1`` is set for the whole module, so a fallback can never pass as a slow run.
"""
from __future__ import annotations

import functools
import os
import sys

import pytest
import torch

from sbgan_fast import ops
from sbgan_fast.ops.gumbel import argmax_one_hot_ref, gumbel_softmax_st_ref
from sbgan_fast.ops.spade_norm import spade_norm_ref

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402  (bench/benchlib.py)

_INTERPRETING = benchlib.interpreting()
_DRY = benchlib.dry() and _INTERPRETING
DEVICE = "cpu" if _DRY else "cuda"
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not _DRY and not torch.cuda.is_available(), reason="GPU benchmark: needs a CUDA device"),
    pytest.mark.skipif(_INTERPRETING and not _DRY,
                       reason="GPU benchmark: TRITON_INTERPRET=1 would time the CPU interpreter "
                              "(SBGAN_BENCH_DRY=1 runs tiny shapes as a check of the code path)"),
]

CSV_NAME = "triton_ops"
PROVIDERS = ("ref", "compile", "triton")
MODES = ("fwd", "bwd", "fwd+bwd")
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

# (shape, dtype, layout). Cityscapes at 256x512 (35 classes): batch 8 (the kernels' target shape) and the
# segmentation GAN's batch of 4 above 128; ADE-Indoor at 256x256 (95 classes, batch 12).
GUMBEL_CASES = [
    ((8, 35, 256, 512), torch.float32, "nchw"),
    ((8, 35, 256, 512), torch.bfloat16, "channels_last"),
    ((4, 35, 256, 512), torch.float32, "nchw"),
    ((4, 35, 256, 512), torch.bfloat16, "channels_last"),
    ((12, 95, 256, 256), torch.float32, "nchw"),
    ((12, 95, 256, 256), torch.bfloat16, "channels_last"),
]
# (shape, dtype, layout, norm). SPADE generator layers at 256x512, batch 8: the 16nf head at the
# smallest size, middle and last up-blocks; plus instance norm.
SPADE_CASES = [
    ((8, 1024, 16, 32), torch.bfloat16, "channels_last", "batch"),
    ((8, 256, 128, 256), torch.bfloat16, "channels_last", "batch"),
    ((8, 64, 256, 512), torch.bfloat16, "channels_last", "batch"),
    ((8, 128, 128, 256), torch.float32, "nchw", "batch"),
    ((8, 256, 64, 128), torch.float32, "nchw", "instance"),
]
if _DRY:  # tiny fp32 stand-ins (the interpreter runs bf16 poorly); the 35-class Gumbel case stays a target case
    GUMBEL_CASES = [((2, 35, 8, 16), torch.float32, "nchw")]
    SPADE_CASES = [((2, 8, 4, 8), torch.float32, "nchw", "batch"), ((2, 8, 4, 8), torch.float32, "nchw", "instance")]
    MODES = ("fwd+bwd",)  # the targets' mode; each interpreted launch costs about a second on a busy CPU


@pytest.fixture(scope="module", autouse=True)
def _strict_and_compile_cache():
    import torch._dynamo
    old_strict = os.environ.get("SBGAN_FAST_STRICT")
    os.environ["SBGAN_FAST_STRICT"] = "1"
    old_limit = torch._dynamo.config.cache_size_limit
    torch._dynamo.config.cache_size_limit = max(old_limit, 64)  # one compile per case and mode
    yield
    torch._dynamo.config.cache_size_limit = old_limit
    if old_strict is None:
        os.environ.pop("SBGAN_FAST_STRICT", None)
    else:
        os.environ["SBGAN_FAST_STRICT"] = old_strict


# ------------------------------------------------------------------------------------------------ harness


def _measure(benchmark, fn, *, op, provider, mode, shape, dtype, layout, nbytes):
    """Run ``fn`` under pytest-benchmark and, when timing is on, append a timed row to the CSV."""
    def synced():
        fn()
        benchlib.sync(DEVICE)

    if benchmark.disabled:  # --benchmark-disable: run once so that the asserts and the code path count
        benchmark(synced)
        return
    med, p20, p80 = benchlib.time_ms(fn, DEVICE, cpu_repeat=1 if _DRY else 5)
    gbps = nbytes / (med * 1e-3) / 1e9
    row = dict(utc_time=benchlib.utc_now(), op=op, provider=provider, mode=mode, shape=benchlib.shape_str(shape),
               dtype=DTYPE_NAMES[dtype], layout=layout, median_ms=f"{med:.4f}", p20_ms=f"{p20:.4f}",
               p80_ms=f"{p80:.4f}", gbps=benchlib.fnum(gbps), copy_gbps=benchlib.fnum(benchlib.copy_gbps(DEVICE)),
               **benchlib.environment(DEVICE))
    benchlib.append_row(CSV_NAME, row)
    benchmark.extra_info.update(row)
    if not _DRY:  # the dry run's single timing above is all it needs
        benchmark.pedantic(synced, rounds=20, warmup_rounds=3)


def _layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout != "nchw":
        raise ValueError(f"layout must be 'nchw' or 'channels_last', got {layout!r}")
    return t.contiguous()


def _compiled(fn):
    """torch.compile of a reference callable (compiled on its first call, outside the timings)."""
    return torch.compile(fn, dynamic=False)


def _mode_callable(fn, inputs, grad, mode):
    """A zero-argument callable timing ``mode`` of ``out = fn(*inputs)``."""
    if mode == "fwd":
        return lambda: fn(*inputs)
    if mode == "bwd":
        out = fn(*inputs)
        return lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True)
    if mode == "fwd+bwd":
        return lambda: torch.autograd.grad(fn(*inputs), inputs, grad)
    raise ValueError(mode)


def _case_id(case):
    shape, dtype, layout = case[:3]
    return "-".join(["x".join(map(str, shape)), DTYPE_NAMES[dtype], layout] + list(case[3:]))


# ------------------------------------------------------------------------------------------------ Gumbel


def _gumbel_inputs(shape, dtype, layout):
    p = torch.randn(shape, device=DEVICE).softmax(dim=1)
    logits = _layout(torch.log(p + 1e-5).to(dtype), layout).requires_grad_()
    grad = _layout(torch.randn(shape, device=DEVICE).to(dtype), layout)
    return logits, grad


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", GUMBEL_CASES, ids=_case_id)
def test_gumbel_softmax_st(benchmark, case, provider, mode):
    shape, dtype, layout = case
    logits, grad = _gumbel_inputs(shape, dtype, layout)
    if provider == "triton":  # exactness check with shared noise before timing
        noise = torch.empty(shape, device=DEVICE).exponential_().add_(1e-10).log_().neg_()
        y = ops.gumbel_softmax_st(logits, 1.0, noise=noise, impl="triton")
        assert torch.equal(y, gumbel_softmax_st_ref(logits, 1.0, noise)), "hard sample differs from ref"
    if provider == "compile":
        fn = _compiled(lambda x: gumbel_softmax_st_ref(x, 1.0))
    else:
        fn = functools.partial(ops.gumbel_softmax_st, tau=1.0, impl=provider)
    out = fn(logits)
    assert torch.equal(out.float().sum(dim=1), torch.ones_like(out[:, 0], dtype=torch.float32))
    per_pass = {"fwd": 2, "bwd": 3, "fwd+bwd": 5}[mode]
    _measure(benchmark, _mode_callable(fn, (logits,), grad, mode), op="gumbel_softmax_st", provider=provider,
             mode=mode, shape=shape, dtype=dtype, layout=layout,
             nbytes=per_pass * logits.numel() * logits.element_size())


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", GUMBEL_CASES, ids=_case_id)
def test_argmax_one_hot(benchmark, case, provider):
    shape, dtype, layout = case
    probs = _layout(torch.rand(shape, device=DEVICE).to(dtype), layout)
    fn = _compiled(argmax_one_hot_ref) if provider == "compile" else functools.partial(
        ops.argmax_one_hot, impl=provider)
    assert torch.equal(fn(probs), argmax_one_hot_ref(probs))
    _measure(benchmark, lambda: fn(probs), op="argmax_one_hot", provider=provider, mode="fwd", shape=shape,
             dtype=dtype, layout=layout, nbytes=2 * probs.numel() * probs.element_size())


# ------------------------------------------------------------------------------------------------ SPADE


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", SPADE_CASES, ids=_case_id)
def test_spade_norm(benchmark, case, provider, mode):
    shape, dtype, layout, norm = case
    c = shape[1]
    x = _layout(torch.randn(shape, device=DEVICE).to(dtype), layout).requires_grad_()
    gamma = _layout((0.1 * torch.randn(shape, device=DEVICE)).to(dtype), layout).requires_grad_()
    beta = _layout((0.1 * torch.randn(shape, device=DEVICE)).to(dtype), layout).requires_grad_()
    grad = _layout(torch.randn(shape, device=DEVICE).to(dtype), layout)
    running = {}
    if norm == "batch":
        running = dict(running_mean=torch.zeros(c, device=DEVICE), running_var=torch.ones(c, device=DEVICE))

    def ref(a, b, d):
        return spade_norm_ref(a, b, d, norm, 1e-5, running.get("running_mean"), running.get("running_var"))

    if provider == "triton":  # parity check before timing (fresh running buffers)
        kw = {k: v.clone() for k, v in running.items()}
        out = ops.spade_norm(x, gamma, beta, norm=norm, impl="triton", **kw)
        kw_r = {k: v.clone() for k, v in running.items()}
        out_r = ops.spade_norm(x, gamma, beta, norm=norm, impl="ref", **kw_r)
        atol = 1e-4 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(out.float(), out_r.float(), atol=atol, rtol=atol)
        for k in kw:
            torch.testing.assert_close(kw[k], kw_r[k], atol=1e-4, rtol=1e-4)
    if provider == "compile":
        fn = _compiled(ref)
    else:
        def fn(a, b, d):
            return ops.spade_norm(a, b, d, norm=norm, impl=provider, **running)
    per_pass = {"fwd": 4, "bwd": 5, "fwd+bwd": 9}[mode]
    _measure(benchmark, _mode_callable(fn, (x, gamma, beta), grad, mode), op=f"spade_norm[{norm}]",
             provider=provider, mode=mode, shape=shape, dtype=dtype, layout=layout,
             nbytes=per_pass * x.numel() * x.element_size())
