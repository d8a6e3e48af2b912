"""Benchmarks of the C++ one-hot label embedding and label-embedding convolution against PyTorch.

Two ways to run it:

* pytest-benchmark (one group per shape; the providers of a group are comparable)::

      python -m pytest bench/bench_one_hot.py --benchmark-only            # full timings
      python -m pytest bench/bench_one_hot.py --benchmark-disable -q      # each case once, asserts only

* a plain table with speedups over the PyTorch baseline (best of repeated runs)::

      python bench/bench_one_hot.py [--quick] [--threads N]

Shapes (Cityscapes, 35 classes):
  one_hot        labels (8, 256, 512) -> (8, 35, 256, 512) fp32. Baseline: ``F.one_hot(l, K).permute(0, 3, 1, 2)
                 .float()`` (and the package's reference path).
  onehot_conv2d  SPADE's ``mlp_shared``: the full (N, 256, 512) label map resized to the layer's size, 3x3 conv
                 35 -> 128 channels, padding 1, at 8x16 ... 256x512 (batch 8 up to 64x128, smaller above on
                 CPU). Baselines: ``F.conv2d(one_hot(resize(labels)), w, b, padding=1)`` eager and under
                 ``torch.compile``; forward and forward+backward (grad of weight and bias). The resize rule
                 is a parameter (``mode``: 'nearest', SPADE's own; 'nearest-exact', PIL's NEAREST; the
                 plain table takes ``--mode``).
Every case first checks that the fast result equals the baseline (bitwise for one_hot).
Needs the compiled extension (``pip install --no-build-isolation -e .``); CPU tensors.
"""
from __future__ import annotations

import argparse
import time

import pytest
import torch
import torch.nn.functional as F

from sbgan_fast import ops
from sbgan_fast.ops import _fast_cpp

K = 35
C_OUT = 128
FULL = (256, 512)
CONV_RES = [(8, 16), (16, 32), (32, 64), (64, 128), (128, 256), (256, 512)]
MODES = ("nearest", "nearest-exact")


def conv_batch(h: int, w: int) -> int:
    """Batch per resolution on CPU: 8 up to 64x128, then smaller so a case stays within seconds."""
    return 8 if h * w <= 64 * 128 else (4 if h * w <= 128 * 256 else 2)


def make_labels(n: int, size=FULL) -> torch.Tensor:
    """A label map with Cityscapes-like regions (blocks of one class), int64 (N, H, W)."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.randint(0, K, (n, 1, size[0] // 8, size[1] // 8), generator=g).float()
    return F.interpolate(coarse, size=size, mode="nearest")[:, 0].long()


def torch_one_hot(labels: torch.Tensor) -> torch.Tensor:
    return F.one_hot(labels, K).permute(0, 3, 1, 2).float()


def ref_conv(labels, weight, bias, size, mode="nearest"):
    return ops.onehot_conv2d(labels, weight, bias, size=size, mode=mode, padding=1, impl="ref")


def cpp_conv(labels, weight, bias, size, mode="nearest"):
    return ops.onehot_conv2d(labels, weight, bias, size=size, mode=mode, padding=1, impl="cpp")


_compiled = {}


def compiled_ref_conv(labels, weight, bias, size, mode="nearest"):
    """torch.compile of one-hot + conv2d (without the reference's label range check, whose host
    synchronisation would split the graph: this favours the baseline)."""
    fn = _compiled.get("conv")
    if fn is None:
        fn = _compiled["conv"] = torch.compile(_plain_conv, dynamic=False)
    return fn(labels, weight, bias, size, mode)


def _plain_conv(labels, weight, bias, size, mode="nearest"):
    oh = F.one_hot(ops.nearest_resize_labels(labels, size, mode), K).permute(0, 3, 1, 2).to(weight.dtype)
    return F.conv2d(oh, weight, bias, padding=1)


def conv_params(requires_grad=False):
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(C_OUT, K, 3, 3, generator=g) * 0.1).requires_grad_(requires_grad)
    b = torch.randn(C_OUT, generator=g).requires_grad_(requires_grad)
    return w, b


def fwd_bwd(fn, labels, weight, bias, size, grad, mode="nearest"):
    weight.grad = bias.grad = None
    out = fn(labels, weight, bias, size, mode)
    out.backward(grad)
    return out, weight.grad, bias.grad


def _need_ext():
    err = _fast_cpp.extension_error()
    if err is not None:
        pytest.skip(f"{err}; build it with: {_fast_cpp.BUILD_FIX}")


# ---------------------------------------------------------------------------------------- pytest-benchmark

ONE_HOT_PROVIDERS = {
    "torch_F.one_hot": lambda l: torch_one_hot(l),
    "ref": lambda l: ops.one_hot(l, K, impl="ref"),
    "cpp": lambda l: ops.one_hot(l, K, impl="cpp"),
    "cpp_channels_last": lambda l: ops.one_hot(l, K, memory_format=torch.channels_last, impl="cpp"),
}


@pytest.mark.parametrize("provider", list(ONE_HOT_PROVIDERS))
def test_one_hot(benchmark, provider):
    _need_ext()
    labels = make_labels(8)
    fn = ONE_HOT_PROVIDERS[provider]
    assert torch.equal(fn(labels), torch_one_hot(labels))
    benchmark.group = f"one_hot N=8 K={K} {FULL[0]}x{FULL[1]} fp32"
    benchmark.pedantic(fn, args=(labels,), rounds=5, iterations=1, warmup_rounds=1)


CONV_PROVIDERS = {"ref": ref_conv, "ref_compiled": compiled_ref_conv, "cpp": cpp_conv}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("res", CONV_RES, ids=[f"{h}x{w}" for h, w in CONV_RES])
@pytest.mark.parametrize("provider", list(CONV_PROVIDERS))
def test_onehot_conv2d_forward(benchmark, provider, res, mode):
    _need_ext()
    labels = make_labels(conv_batch(*res))
    weight, bias = conv_params()
    fn = CONV_PROVIDERS[provider]
    with torch.no_grad():
        torch.testing.assert_close(fn(labels, weight, bias, res, mode), ref_conv(labels, weight, bias, res, mode),
                                   atol=1e-4, rtol=1e-4)
        benchmark.group = f"onehot_conv2d fwd N={labels.shape[0]} K={K}->{C_OUT} {res[0]}x{res[1]} {mode}"
        benchmark.pedantic(fn, args=(labels, weight, bias, res, mode), rounds=3, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("res", CONV_RES[:-1], ids=[f"{h}x{w}" for h, w in CONV_RES[:-1]])
@pytest.mark.parametrize("provider", ["ref", "cpp"])
def test_onehot_conv2d_forward_backward(benchmark, provider, res):
    _need_ext()
    labels = make_labels(conv_batch(*res))
    weight, bias = conv_params(requires_grad=True)
    grad = torch.randn(labels.shape[0], C_OUT, *res, generator=torch.Generator().manual_seed(2))
    fn = CONV_PROVIDERS[provider]
    got = fwd_bwd(fn, labels, weight, bias, res, grad)
    got = [t.detach().clone() for t in got]
    want = fwd_bwd(ref_conv, labels, weight, bias, res, grad)
    for g, w in zip(got, want):
        # grad_bias / grad_weight sum up to ~1e5 values in fp32: two correct summation orders differ by
        # ~1e-3 there (the cpp sums are the closer ones to fp64; tests/ check parity on small shapes).
        torch.testing.assert_close(g, w, atol=1e-2, rtol=1e-3)
    benchmark.group = f"onehot_conv2d fwd+bwd N={labels.shape[0]} K={K}->{C_OUT} {res[0]}x{res[1]}"
    benchmark.pedantic(fwd_bwd, args=(fn, labels, weight, bias, res, grad), rounds=3, iterations=1,
                       warmup_rounds=1)


# ------------------------------------------------------------------------------------------- plain table

def _best_time(fn, *args, repeat=5) -> float:
    """Best of ``repeat`` runs after a warm-up: on a shared machine the minimum is the least noisy."""
    fn(*args)  # warm-up (and compile)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no torch.compile, res <= 128x256")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--mode", choices=MODES, default="nearest",
                        help="resize rule of onehot_conv2d (default: nearest, SPADE's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    err = _fast_cpp.extension_error()
    if err is not None:
        raise SystemExit(f"{err}; build it with: {_fast_cpp.BUILD_FIX}")
    repeat = 3 if args.quick else 5
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")

    labels = make_labels(8)
    assert torch.equal(ops.one_hot(labels, K, impl="cpp"), torch_one_hot(labels))
    base = _best_time(torch_one_hot, labels, repeat=repeat)
    print(f"\none_hot N=8 K={K} {FULL[0]}x{FULL[1]} fp32 (baseline F.one_hot(..).permute(0,3,1,2).float())")
    for name, fn in ONE_HOT_PROVIDERS.items():
        t = _best_time(fn, labels, repeat=repeat)
        print(f"  {name:20s} {t * 1e3:9.2f} ms   speedup {base / t:6.2f}x")

    res_list = [r for r in CONV_RES if not args.quick or r[0] <= 128]
    use_compile = not (args.quick or args.no_compile)
    mode = args.mode
    print(f"\nonehot_conv2d K={K} -> C_out={C_OUT}, 3x3, padding 1, labels {FULL[0]}x{FULL[1]} resized "
          f"(mode={mode}; baseline: one_hot + F.conv2d, eager)")
    print(f"  {'res':>8s} {'N':>2s} {'ref fwd':>10s} {'compiled':>10s} {'cpp fwd':>10s} {'speedup':>8s} "
          f"{'ref f+b':>10s} {'cpp f+b':>10s} {'speedup':>8s}")
    for res in res_list:
        n = conv_batch(*res)
        labels = make_labels(n)
        w, b = conv_params()
        with torch.no_grad():
            t_ref = _best_time(ref_conv, labels, w, b, res, mode, repeat=repeat)
            t_cmp = (_best_time(compiled_ref_conv, labels, w, b, res, mode, repeat=repeat) if use_compile
                     else float("nan"))
            t_cpp = _best_time(cpp_conv, labels, w, b, res, mode, repeat=repeat)
        wg, bg = conv_params(requires_grad=True)
        grad = torch.randn(n, C_OUT, *res)
        tb_ref = _best_time(fwd_bwd, ref_conv, labels, wg, bg, res, grad, mode, repeat=repeat)
        tb_cpp = _best_time(fwd_bwd, cpp_conv, labels, wg, bg, res, grad, mode, repeat=repeat)
        print(f"  {res[0]:>3d}x{res[1]:<4d} {n:>2d} {t_ref * 1e3:8.2f}ms {t_cmp * 1e3:8.2f}ms {t_cpp * 1e3:8.2f}ms "
              f"{t_ref / t_cpp:7.2f}x {tb_ref * 1e3:8.2f}ms {tb_cpp * 1e3:8.2f}ms {tb_ref / tb_cpp:7.2f}x")


if __name__ == "__main__":
    main()
