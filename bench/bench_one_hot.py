"""Benchmarks of the one-hot label embedding and label-embedding convolution (C++ on the CPU, CUDA on a GPU)
against PyTorch.

Two ways to run it:

* pytest-benchmark, CPU (one group per shape; the providers of a group are comparable)::

      python -m pytest bench/bench_one_hot.py --benchmark-only            # full timings
      python -m pytest bench/bench_one_hot.py --benchmark-disable -q      # each case once, asserts only

* a plain table with speedups over the PyTorch baseline, on the CPU (``cpp`` kernels, best of repeated runs) or
  a GPU (``cuda`` kernels, median of ``triton.testing.do_bench``), each row also appended to
  ``bench/results/one_hot.csv`` (ms, GB/s from the bytes the op must move at minimum, the measured copy
  bandwidth, speedup over the baseline, device, versions, commit)::

      python bench/bench_one_hot.py [--quick] [--threads N] [--device cpu|cuda] [--what one_hot,conv,conv-compile]
                                    [--resize-mode nearest|nearest-exact]

Shapes (Cityscapes, 35 classes):
  one_hot        labels (8, 256, 512) -> (8, 35, 256, 512) fp32. Baseline: ``F.one_hot(l, K).permute(0, 3, 1, 2)
                 .float()`` (and the package's reference path).
  onehot_conv2d  SPADE's ``mlp_shared``: the full (N, 256, 512) label map resized to the layer's size, 3x3 conv
                 35 -> 128 channels, padding 1, at 8x16 ... 256x512 (batch 8; on the CPU smaller above 64x128).
                 Baselines: ``F.conv2d(one_hot(resize(labels)), w, b, padding=1)`` eager and (``conv-compile``)
                 under ``torch.compile``; forward and forward+backward (grad of weight and bias). The resize
                 rule is a parameter (``--resize-mode``; the pytest cases run both): ``nearest`` (SPADE's own,
                 the default) or ``nearest-exact`` (PIL's NEAREST); CSV column ``resize_mode``.
Every case first checks the fast result against the baseline (bitwise for one_hot; against a float64 reference
for the convolution). ``--tiny`` (the GPU suite's dry run) uses tiny shapes: its rows test the code, not speed.
Needs the compiled extension (``pip install --no-build-isolation -e .``); with ``--device cuda``, built with its
CUDA kernels.
Minimum bytes: one_hot reads the int64 labels and writes the fp32 map; onehot_conv2d forward reads the labels at
the output size and the weight and writes the output, forward+backward also reads the output gradient and the
labels again and writes the weight and bias gradients.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import pytest
import torch
import torch.nn.functional as F

from sbgan_fast import ops
from sbgan_fast.ops import _cpp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402  (bench/benchlib.py)

K = 35
C_OUT = 128
FULL = (256, 512)
CONV_RES = [(8, 16), (16, 32), (32, 64), (64, 128), (128, 256), (256, 512)]
RESIZE_MODES = ("nearest", "nearest-exact")


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


def ref_conv(labels, weight, bias, size, rule="nearest"):
    return ops.onehot_conv2d(labels, weight, bias, size=size, mode=rule, padding=1, impl="ref")


def cpp_conv(labels, weight, bias, size, rule="nearest"):
    return ops.onehot_conv2d(labels, weight, bias, size=size, mode=rule, padding=1, impl="cpp")


_compiled = {}


def compiled_ref_conv(labels, weight, bias, size, rule="nearest"):
    """torch.compile of one-hot + conv2d (without the reference's label range check, whose host
    synchronisation would split the graph: this favours the baseline)."""
    fn = _compiled.get("conv")
    if fn is None:
        fn = _compiled["conv"] = torch.compile(_plain_conv, dynamic=False)
    return fn(labels, weight, bias, size, rule)


def _plain_conv(labels, weight, bias, size, rule="nearest"):
    oh = F.one_hot(ops.nearest_resize_labels(labels, size, rule), K).permute(0, 3, 1, 2).to(weight.dtype)
    return F.conv2d(oh, weight, bias, padding=1)


def conv_params(requires_grad=False):
    g = torch.Generator().manual_seed(1)
    w = (torch.randn(C_OUT, K, 3, 3, generator=g) * 0.1).requires_grad_(requires_grad)
    b = torch.randn(C_OUT, generator=g).requires_grad_(requires_grad)
    return w, b


def fwd_bwd(fn, labels, weight, bias, size, grad, rule="nearest"):
    weight.grad = bias.grad = None
    out = fn(labels, weight, bias, size, rule)
    out.backward(grad)
    return out, weight.grad, bias.grad


def _need_ext():
    err = _cpp.extension_error()
    if err is not None:
        pytest.skip(f"{err}; build it with: {_cpp.BUILD_FIX}")


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


@pytest.mark.parametrize("rule", RESIZE_MODES)
@pytest.mark.parametrize("res", CONV_RES, ids=[f"{h}x{w}" for h, w in CONV_RES])
@pytest.mark.parametrize("provider", list(CONV_PROVIDERS))
def test_onehot_conv2d_forward(benchmark, provider, res, rule):
    _need_ext()
    labels = make_labels(conv_batch(*res))
    weight, bias = conv_params()
    fn = CONV_PROVIDERS[provider]
    with torch.no_grad():
        torch.testing.assert_close(fn(labels, weight, bias, res, rule), ref_conv(labels, weight, bias, res, rule),
                                   atol=1e-4, rtol=1e-4)
        benchmark.group = f"onehot_conv2d fwd N={labels.shape[0]} K={K}->{C_OUT} {res[0]}x{res[1]} {rule}"
        benchmark.pedantic(fn, args=(labels, weight, bias, res, rule), rounds=3, iterations=1, warmup_rounds=1)


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


def _seconds(dev, repeat):
    """Timer in seconds of ``fn(*args)``: best of ``repeat`` on the CPU, do_bench's median on a GPU."""
    if dev.type == "cuda":
        return lambda fn, *a: benchlib.time_ms(lambda: fn(*a), dev)[0] * 1e-3
    return lambda fn, *a: _best_time(fn, *a, repeat=repeat)


def _provider_fns(impl):
    return {
        "torch_F.one_hot": torch_one_hot,
        "ref": lambda l: ops.one_hot(l, K, impl="ref"),
        impl: lambda l: ops.one_hot(l, K, impl=impl),
        f"{impl}_channels_last": lambda l: ops.one_hot(l, K, memory_format=torch.channels_last, impl=impl),
    }


def _conv_fns(impl):
    return {"ref": ref_conv,
            impl: lambda l, w, b, s, r: ops.onehot_conv2d(l, w, b, size=s, mode=r, padding=1, impl=impl)}


def _check_conv(fn, labels, w, b, res, rule, grad=None):
    """``fn`` equals one-hot + conv2d computed in float64 (output; with ``grad``, the weight and bias gradients)."""
    if grad is None:  # forward only, without autograd (as it is timed: a compiled fn is not compiled twice)
        with torch.no_grad():
            torch.testing.assert_close(fn(labels, w, b, res, rule).double(),
                                       ref_conv(labels, w.double(), b.double(), res, rule), atol=1e-4, rtol=1e-4)
        return
    w64, b64 = w.detach().double().requires_grad_(), b.detach().double().requires_grad_()
    want = ref_conv(labels, w64, b64, res, rule)
    with torch.enable_grad():
        wg, bg = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
        got = fn(labels, wg, bg, res, rule)
        torch.testing.assert_close(got.double(), want, atol=1e-4, rtol=1e-4)
        got.backward(grad)
        want.backward(grad.double())
        # summed over up to ~1e6 values in fp32: a correct order differs by ~1e-3 there
        torch.testing.assert_close(wg.grad.double(), w64.grad, atol=1e-2, rtol=1e-3)
        torch.testing.assert_close(bg.grad.double(), b64.grad, atol=1e-2, rtol=1e-3)


class _Rows:
    """Printed table rows, each appended to ``results/one_hot.csv`` as soon as it is measured."""

    def __init__(self, dev, write):
        self.dev, self.write = dev, write
        self.env = benchlib.environment(str(dev))
        self.copy = benchlib.copy_gbps(str(dev))

    def add(self, *, op, provider, mode, shape, labels, layout, seconds, nbytes, baseline, base_seconds,
            resize_mode=""):
        gbps = nbytes / seconds / 1e9
        if self.write:
            benchlib.append_row("one_hot", dict(
                utc_time=benchlib.utc_now(), op=op, provider=provider, mode=mode, resize_mode=resize_mode,
                shape=benchlib.shape_str(shape),
                labels=benchlib.shape_str(labels), dtype="fp32", layout=layout, median_ms=f"{seconds * 1e3:.4f}",
                gbps=benchlib.fnum(gbps), copy_gbps=benchlib.fnum(self.copy), baseline=baseline,
                speedup=f"{base_seconds / seconds:.3f}", **self.env))
        return gbps


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no torch.compile, res <= 128x256")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile baseline")
    parser.add_argument("--device", default="cpu", help="cpu (C++ kernels) or cuda (CUDA kernels)")
    parser.add_argument("--what", default="one_hot,conv,conv-compile",
                        help="comma list of one_hot, conv, conv-compile (the torch.compile baseline of conv)")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes: a check of the code path, not a timing")
    parser.add_argument("--no-csv", action="store_true", help="do not append rows to bench/results/one_hot.csv")
    parser.add_argument("--resize-mode", choices=RESIZE_MODES, default="nearest",
                        help="resize rule of onehot_conv2d's labels (default: nearest, SPADE's own)")
    args = parser.parse_args(argv)
    what = [w for w in args.what.split(",") if w]
    for w in what:
        if w not in ("one_hot", "conv", "conv-compile"):
            raise SystemExit(f"--what: unknown part {w!r}; choose from one_hot, conv, conv-compile")
    if args.quick or args.no_compile:
        what = [w for w in what if w != "conv-compile"]
    if args.device not in ("cpu", "cuda"):
        raise SystemExit(f"--device {args.device!r}: expected cpu or cuda")
    args.what_list = what
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    what = args.what_list
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    err = _cpp.extension_error()
    if err is not None:
        raise SystemExit(f"{err}; build it with: {_cpp.BUILD_FIX}")
    if dev.type == "cuda" and not _cpp.cuda_compiled():
        raise SystemExit(f"sbgan_fast._C has no CUDA kernels; {_cpp.CUDA_BUILD_FIX}")
    impl = "cuda" if dev.type == "cuda" else "cpp"
    repeat = 1 if args.tiny else (3 if args.quick else 5)
    timed = _seconds(dev, repeat)
    rows = _Rows(dev, not args.no_csv)
    full = (16, 32) if args.tiny else FULL
    print(f"torch {torch.__version__}, {rows.env['device']}, copy bandwidth {rows.copy:.1f} GB/s"
          + (" (tiny shapes: not a timing)" if args.tiny else ""))

    if "one_hot" in what:
        n = 2 if args.tiny else 8
        labels = make_labels(n, full).to(dev)
        want = torch_one_hot(labels)
        fns = _provider_fns(impl)
        for name, fn in fns.items():
            got = fn(labels)
            assert torch.equal(got, want) and got.dtype == want.dtype, f"one_hot {name} differs from F.one_hot"
        del got, want
        base = timed(torch_one_hot, labels)
        nbytes = labels.numel() * 8 + labels.numel() * K * 4
        print(f"\none_hot N={n} K={K} {full[0]}x{full[1]} fp32 (baseline F.one_hot(..).permute(0,3,1,2).float())")
        for name, fn in fns.items():
            t = base if name == "torch_F.one_hot" else timed(fn, labels)
            gbps = rows.add(op="one_hot", provider=name, mode="fwd", shape=(n, K, *full), labels=labels.shape,
                            layout="channels_last" if name.endswith("channels_last") else "nchw", seconds=t,
                            nbytes=nbytes, baseline="torch_F.one_hot", base_seconds=base)
            print(f"  {name:20s} {t * 1e3:9.3f} ms  {gbps:8.1f} GB/s ({100 * gbps / rows.copy:5.1f} % of copy)  "
                  f"speedup {base / t:6.2f}x", flush=True)

    conv_res = CONV_RES[:2] if args.tiny else [r for r in CONV_RES if not args.quick or r[0] <= 128]
    if "conv" in what or "conv-compile" in what:
        fns = _conv_fns(impl)
        rule = args.resize_mode
        print(f"\nonehot_conv2d K={K} -> C_out={C_OUT}, 3x3, padding 1, labels {full[0]}x{full[1]} resized "
              f"(mode={rule}; baseline: one_hot + F.conv2d, eager; {impl} = the gather kernel)")
        for res in conv_res:
            n = 2 if args.tiny else (8 if dev.type == "cuda" else conv_batch(*res))
            labels = make_labels(n, full).to(dev)
            w, b = (t.to(dev) for t in conv_params())
            grad = torch.randn(n, C_OUT, *res, generator=torch.Generator().manual_seed(2)).to(dev)
            out_shape = (n, C_OUT, *res)
            out_b, lab_b, w_b = n * C_OUT * res[0] * res[1] * 4, n * res[0] * res[1] * 8, w.numel() * 4
            fwd_bytes = out_b + lab_b + w_b
            fb_bytes = fwd_bytes + out_b + lab_b + w_b + C_OUT * 4
            with torch.no_grad():
                t_ref = timed(ref_conv, labels, w, b, res, rule)
            line = f"  {res[0]:>3d}x{res[1]:<4d} N={n}"
            if "conv" in what:
                _check_conv(fns[impl], labels, w, b, res, rule, grad)
                with torch.no_grad():
                    t_fast = timed(fns[impl], labels, w, b, res, rule)
                wg, bg = (t.detach().clone().requires_grad_() for t in (w, b))
                tb_ref = timed(fwd_bwd, ref_conv, labels, wg, bg, res, grad, rule)
                tb_fast = timed(fwd_bwd, fns[impl], labels, wg, bg, res, grad, rule)
                for name, t, mode, nb, base in (("ref", t_ref, "fwd", fwd_bytes, t_ref),
                                                (impl, t_fast, "fwd", fwd_bytes, t_ref),
                                                ("ref", tb_ref, "fwd+bwd", fb_bytes, tb_ref),
                                                (impl, tb_fast, "fwd+bwd", fb_bytes, tb_ref)):
                    rows.add(op="onehot_conv2d", provider=name, mode=mode, shape=out_shape, labels=labels.shape,
                             layout="nchw", seconds=t, nbytes=nb, baseline="ref", base_seconds=base,
                             resize_mode=rule)
                line += (f"  fwd ref {t_ref * 1e3:8.3f} ms {impl} {t_fast * 1e3:8.3f} ms ({t_ref / t_fast:5.2f}x, "
                         f"{fwd_bytes / t_fast / 1e9:7.1f} GB/s)  fwd+bwd ref {tb_ref * 1e3:8.3f} ms {impl} "
                         f"{tb_fast * 1e3:8.3f} ms ({tb_ref / tb_fast:5.2f}x)")
            if "conv-compile" in what:
                _check_conv(compiled_ref_conv, labels, w, b, res, rule)
                with torch.no_grad():
                    t_cmp = timed(compiled_ref_conv, labels, w, b, res, rule)
                rows.add(op="onehot_conv2d", provider="ref_compiled", mode="fwd", shape=out_shape,
                         labels=labels.shape, layout="nchw", seconds=t_cmp, nbytes=fwd_bytes, baseline="ref",
                         base_seconds=t_ref, resize_mode=rule)
                line += f"  compiled ref fwd {t_cmp * 1e3:8.3f} ms ({t_ref / t_cmp:5.2f}x)"
            print(line, flush=True)


if __name__ == "__main__":
    main()
