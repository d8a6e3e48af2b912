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

Each timed case appends one row to ``bench/results/triton_ops.csv``: op, provider, mode, shape, dtype,
layout, median / 20% / 80% time in ms (``triton.testing.do_bench``, L2 flushed between runs), GB/s
from the bytes the op must move at minimum (below), the measured device-to-device copy bandwidth for
comparison, device name, torch and triton versions and the git commit. pytest-benchmark's own table
times the same callable with a synchronize after each call.

Minimum bytes moved (each tensor counted once, ``s`` = element size, ``n`` = elements):
gumbel fwd ``2ns`` (logits in, one-hot out), bwd ``3ns`` (logits, grad in; grad out; the noise is
regenerated), argmax ``2ns``; SPADE fwd ``4ns`` (x, gamma, beta in; out), bwd ``5ns`` (grad, x, gamma
in; dx, dgamma out; dbeta is the incoming grad itself). ``fwd+bwd`` is the sum.

``SBGAN_FAST_STRICT=1`` is set for the whole module, so a fallback can never pass as a slow run.
"""
from __future__ import annotations

import csv
import datetime
import functools
import os
import subprocess
from pathlib import Path

import pytest
import torch

from sbgan_fast import ops
from sbgan_fast.ops.gumbel import argmax_one_hot_ref, gumbel_softmax_st_ref
from sbgan_fast.ops.spade_norm import spade_norm_ref

_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="GPU benchmark: needs a CUDA device"),
    pytest.mark.skipif(_INTERPRETING, reason="GPU benchmark: TRITON_INTERPRET=1 would time the CPU interpreter"),
]

RESULTS = Path(__file__).resolve().parent / "results" / "triton_ops.csv"
FIELDS = ["utc_time", "op", "provider", "mode", "shape", "dtype", "layout", "median_ms", "p20_ms", "p80_ms",
          "gbps", "copy_gbps", "device", "torch", "triton", "commit"]
PROVIDERS = ("ref", "compile", "triton")
MODES = ("fwd", "bwd", "fwd+bwd")
DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}

# (shape, dtype, layout). Cityscapes segmentation GAN at 256x512 (35 classes, batch 4 above 128) and
# ADE-Indoor at 256x256 (95 classes, batch 12).
GUMBEL_CASES = [
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


@functools.lru_cache(maxsize=None)
def _environment():
    import triton
    repo = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
        commit += "+dirty" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    return dict(device=torch.cuda.get_device_name(), torch=torch.__version__, triton=triton.__version__,
                commit=commit)


@functools.lru_cache(maxsize=None)
def _copy_gbps() -> float:
    """Measured device-to-device copy bandwidth (read + write of 512 MiB), the practical ceiling."""
    from triton.testing import do_bench
    src = torch.empty(1 << 27, dtype=torch.float32, device="cuda").uniform_()
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=25, rep=200, quantiles=[0.5])
    ms = ms[0] if isinstance(ms, (list, tuple)) else ms
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def _append_row(row: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    new = not RESULTS.exists() or RESULTS.stat().st_size == 0
    with open(RESULTS, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerow(row)


def _measure(benchmark, fn, *, op, provider, mode, shape, dtype, layout, nbytes):
    """Run ``fn`` under pytest-benchmark and, when timing is on, append a do_bench row to the CSV."""
    def synced():
        fn()
        torch.cuda.synchronize()

    if benchmark.disabled:  # --benchmark-disable: run once so that the asserts and the code path count
        benchmark(synced)
        return
    from triton.testing import do_bench
    fn()  # warm-up (compilation, autotuning, allocator) outside every measurement
    torch.cuda.synchronize()
    med, p20, p80 = do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8])
    gbps = nbytes / (med * 1e-3) / 1e9
    row = dict(utc_time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), op=op,
               provider=provider, mode=mode, shape="x".join(map(str, shape)), dtype=DTYPE_NAMES[dtype],
               layout=layout, median_ms=f"{med:.4f}", p20_ms=f"{p20:.4f}", p80_ms=f"{p80:.4f}",
               gbps=f"{gbps:.1f}", copy_gbps=f"{_copy_gbps():.1f}", **_environment())
    _append_row(row)
    benchmark.extra_info.update(row)
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
    p = torch.randn(shape, device="cuda").softmax(dim=1)
    logits = _layout(torch.log(p + 1e-5).to(dtype), layout).requires_grad_()
    grad = _layout(torch.randn(shape, device="cuda").to(dtype), layout)
    return logits, grad


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("case", GUMBEL_CASES, ids=_case_id)
def test_gumbel_softmax_st(benchmark, case, provider, mode):
    shape, dtype, layout = case
    logits, grad = _gumbel_inputs(shape, dtype, layout)
    if provider == "triton":  # exactness check with shared noise before timing
        noise = torch.empty(shape, device="cuda").exponential_().add_(1e-10).log_().neg_()
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
    probs = _layout(torch.rand(shape, device="cuda").to(dtype), layout)
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
    x = _layout(torch.randn(shape, device="cuda").to(dtype), layout).requires_grad_()
    gamma = _layout((0.1 * torch.randn(shape, device="cuda")).to(dtype), layout).requires_grad_()
    beta = _layout((0.1 * torch.randn(shape, device="cuda")).to(dtype), layout).requires_grad_()
    grad = _layout(torch.randn(shape, device="cuda").to(dtype), layout)
    running = {}
    if norm == "batch":
        running = dict(running_mean=torch.zeros(c, device="cuda"), running_var=torch.ones(c, device="cuda"))

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
