"""Loader throughput (images/s) of the real-data loaders: torch DataLoader, DALI, and the uint8 memmap cache.

    python bench/bench_loaders.py [--n 32] [--batch 8] [--workers 0 2] [--threads 2] [--device cpu|cuda]
    python bench/bench_loaders.py --write-cityscapes DIR [--n 16]     # only write the Cityscapes look-alike

Workloads, synthesised in a temporary folder in the official layouts (smooth pictures with some texture, so the
encoded sizes are realistic):
  cityscapes  1024x2048 RGB PNG + labelIds PNG -> 256x512 (no crop)
  ade20k      683x512 RGB JPEG + annotation PNG -> square crop along the long edge -> 256x256
Each loader reads the same index batches (two passes over the files after one warm-up batch); the numbers are
images (pairs) per second including decoding, cropping, resizing and batching. ``--device cuda`` runs DALI with
GPU decoding and keeps the cache on the GPU.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))


def _picture(h, w, seed):
    from real_lookalike import smooth_image
    img = smooth_image(h, w, seed).astype(np.int16)
    img += np.random.default_rng(seed).integers(-12, 13, (h, w, 3), dtype=np.int16)   # sensor-like grain
    return np.clip(img, 0, 255).astype(np.uint8)


def make_cityscapes(cs, n):
    """Cityscapes look-alike in the official layout under ``cs``: n pairs, 1024x2048 RGB PNG + labelIds PNG."""
    from real_lookalike import label_blocks
    for i in range(n):
        city = ("aachen", "bochum")[i % 2]
        for sub in ("leftImg8bit", "gtFine"):
            os.makedirs(os.path.join(cs, sub, "train", city), exist_ok=True)
        stem = f"{city}_{i:06d}_000019"
        Image.fromarray(_picture(1024, 2048, i)).save(os.path.join(cs, "leftImg8bit", "train", city,
                                                                   stem + "_leftImg8bit.png"), compress_level=6)
        Image.fromarray(label_blocks(1024, 2048, [7, 8, 11, 21, 23, 26], i), mode="L").save(
            os.path.join(cs, "gtFine", "train", city, stem + "_gtFine_labelIds.png"))
    return cs


def make_data(root, n):
    from real_lookalike import label_blocks
    cs = make_cityscapes(os.path.join(root, "cs"), n)
    ade = os.path.join(root, "ade", "ADEChallengeData2016")
    for sub in ("images", "annotations"):
        os.makedirs(os.path.join(ade, sub, "training"), exist_ok=True)
    for i in range(n):
        stem = f"ADE_train_{i + 1:08d}"
        Image.fromarray(_picture(512, 683, 100 + i)).save(os.path.join(ade, "images", "training", stem + ".jpg"),
                                                          quality=90)
        Image.fromarray(label_blocks(512, 683, [0, 1, 5, 17, 150], i), mode="L").save(
            os.path.join(ade, "annotations", "training", stem + ".png"))
    return cs, os.path.join(root, "ade")


def run(loader, n_batches):
    it = iter(loader)
    next(it)                     # warm-up: worker start, pipeline build
    t0 = time.perf_counter()
    images = 0
    for _ in range(n_batches):
        b = next(it)
        images += b["label"].shape[0]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return images / (time.perf_counter() - t0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=24, help="files per dataset")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--threads", type=int, default=2, help="DALI threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--write-cityscapes", metavar="DIR", help="only write a Cityscapes look-alike of --n pairs "
                    "(1024x2048, official layout) into DIR and exit (e.g. for bench_train_step.py --loader)")
    args = ap.parse_args(argv)
    if args.write_cityscapes:
        if os.path.exists(args.write_cityscapes) and os.listdir(args.write_cityscapes):
            raise SystemExit(f"--write-cityscapes {args.write_cityscapes}: the folder exists and is not empty")
        print(make_cityscapes(args.write_cityscapes, args.n))
        return 0
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from sbgan_fast.data.cache import ResidentLoader, build_cache, fits_on_device
    from sbgan_fast.data.dali import DaliLoader, dali_status
    from sbgan_fast.data.loaders import build_loader
    from sbgan_fast.data.layouts import ade20k, cityscapes
    dev = torch.device(args.device)
    ok, why = dali_status()
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        cs_root, ade_root = make_data(tmp, args.n)
        print(f"# synthesised {args.n} Cityscapes-size and {args.n} ADE-size pairs in {time.perf_counter() - t:.0f} s; "
              f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, device {dev}")
        sets = {"cityscapes 1024x2048 png -> 256x512": cityscapes(cs_root, height=256, width=512),
                "ade20k 683x512 jpg -> crop -> 256x256": ade20k(ade_root, height=256, width=256)}
        for name, ds in sets.items():
            nb = 2 * len(ds) // args.batch
            batches = [[((s * args.batch + k) % len(ds), 0) if ds.wants_epoch else (s * args.batch + k) % len(ds)
                        for k in range(args.batch)] for s in range(nb + 1)]
            print(f"\n{name}  (batch {args.batch}, {nb} timed batches)")
            for w in args.workers:
                r = run(build_loader(ds, batches, loader="torch", device=dev, num_workers=w), nb)
                print(f"  torch DataLoader, {w} workers        {r:8.1f} images/s")
            r = run(build_loader(ds.label_view(), batches, loader="torch", device=dev, need_image=False), nb)
            print(f"  torch, label maps only (seg stage)   {r:8.1f} images/s")
            if ok:
                gpu = dev.type == "cuda"
                r = run(DaliLoader(ds, batches, device_id=(dev.index or 0) if gpu else None,
                                   num_threads=args.threads), nb)
                print(f"  DALI {'GPU (mixed decode)' if gpu else 'CPU'}, {args.threads} threads       "
                      f"{'' if gpu else ' '}{r:8.1f} images/s")
            else:
                print(f"  DALI: skipped ({why})")
            t = time.perf_counter()
            cached = build_cache(ds, os.path.join(tmp, "cache"), log=lambda m: None)
            print(f"  (cache built in {time.perf_counter() - t:.1f} s, {cached.nbytes / 2**20:.0f} MiB)")
            for w in args.workers:
                r = run(build_loader(cached, batches, loader="torch", device=dev, num_workers=w), nb)
                print(f"  cache (memmap), torch, {w} workers  {r:8.1f} images/s")
            if fits_on_device(cached.nbytes, dev):
                cached.to_device(dev)
                r = run(ResidentLoader(cached, batches), nb)
                print(f"  cache resident on {dev}             {r:8.1f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
