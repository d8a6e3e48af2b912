"""Helpers shared by the benchmarks: where rows go, what they record, copy bandwidth and timing.

* Rows go to ``bench/results/`` unless ``SBGAN_BENCH_RESULTS`` names another folder (the GPU suite's
  ``--dry-run`` writes into a temporary one, never into the committed CSVs).
* ``SBGAN_SUITE_RUN`` (set by ``bench/gpu_suite.py``) is recorded in the ``suite_run`` column, so a suite run can
  find the rows it measured.
* ``SBGAN_BENCH_DRY=1``: tiny shapes on the CPU (under ``TRITON_INTERPRET=1``): the benchmarks run their code
  paths and write rows whose numbers say nothing about speed.
"""
from __future__ import annotations

import datetime
import functools
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import report  # noqa: E402  (bench/report.py: append_rows)

TRUE = ("1", "true", "on", "yes")


def results_dir() -> str:
    """Folder of the CSV records: ``SBGAN_BENCH_RESULTS`` or ``bench/results``."""
    return os.environ.get("SBGAN_BENCH_RESULTS") or os.path.join(HERE, "results")


def dry() -> bool:
    """``SBGAN_BENCH_DRY`` is set: tiny shapes on the CPU, a test of the code path, not a measurement."""
    return os.environ.get("SBGAN_BENCH_DRY", "0").strip().lower() in TRUE


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in TRUE


def suite_run() -> str:
    return os.environ.get("SBGAN_SUITE_RUN", "")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


#: the benchmarks' own outputs: a tree that differs from its commit only there is not ``+dirty``
OUTPUT_PATHS = ("bench/results", "bench/RESULTS.md")


@functools.lru_cache(maxsize=None)
def git_commit(repo: Optional[str] = None) -> str:
    """Short commit of the repository, ``+dirty`` when tracked files other than the benchmarks' own outputs
    (:data:`OUTPUT_PATHS`: the CSV files and ``RESULTS.md`` an earlier row of the same run rewrote) differ from it."""
    repo = repo or os.path.dirname(HERE)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "."]
                               + [f":(exclude){p}" for p in OUTPUT_PATHS], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device) -> str:
    import torch
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


@functools.lru_cache(maxsize=None)
def environment(device: str) -> Dict[str, str]:
    """Columns every row carries: device name, torch and Triton versions, commit, suite run."""
    import torch
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "none"
    return dict(device=device_name(device), torch=torch.__version__, triton=triton_version, commit=git_commit(),
                suite_run=suite_run())


def sync(device) -> None:
    import torch
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_ms(fn: Callable[[], object], device, *, rep_ms: int = 100, cpu_repeat: int = 5) -> Tuple[float, float, float]:
    """(median, 20th, 80th percentile) milliseconds of ``fn()`` after one warm-up call (compilation,
    autotuning and allocation stay out). CUDA: ``triton.testing.do_bench`` (device events, L2 flushed between
    runs), falling back to CUDA events; CPU: ``cpu_repeat`` wall-clock runs."""
    import torch
    fn()
    sync(device)
    if torch.device(device).type == "cuda":
        try:
            from triton.testing import do_bench
        except ImportError:
            do_bench = None
        if do_bench is not None:
            q = do_bench(fn, warmup=25, rep=rep_ms, quantiles=[0.5, 0.2, 0.8])
            return float(q[0]), float(q[1]), float(q[2])
        times = []
        for _ in range(max(10, cpu_repeat)):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            times.append(a.elapsed_time(b))
    else:
        times = []
        for _ in range(cpu_repeat):
            t0 = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t0))
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]  # noqa: E731
    return statistics.median(times), pick(0.2), pick(0.8)


@functools.lru_cache(maxsize=None)
def copy_gbps(device: str) -> float:
    """Measured copy bandwidth (GB/s, bytes read + bytes written): the practical ceiling of a memory-bound op.
    CUDA: a 512 MiB device-to-device copy; CPU: 64 MiB (4 MiB in a dry run)."""
    import torch
    dev = torch.device(device)
    numel = (1 << 27) if dev.type == "cuda" else ((1 << 20) if dry() else (1 << 24))
    src = torch.empty(numel, dtype=torch.float32, device=dev).uniform_()
    dst = torch.empty_like(src)
    med, _, _ = time_ms(lambda: dst.copy_(src), dev, rep_ms=200)
    del src, dst
    return 2 * numel * 4 / (med * 1e-3) / 1e9


def append_row(name: str, row: dict) -> str:
    """Append ``row`` to ``<results_dir>/<name>.csv`` at once (a run cut short keeps what it measured)."""
    path = os.path.join(results_dir(), name + ".csv")
    report.append_rows(path, [row])
    return path


def fnum(x: float) -> str:
    """A rate for a CSV cell: one decimal, three significant digits below 1 (tiny dry-run rates stay readable)."""
    return f"{x:.1f}" if abs(x) >= 1 else f"{x:.3g}"


def shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)
