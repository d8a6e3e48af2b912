"""End-to-end training-step throughput: images/s, s/kimg and peak memory per stage and provider.

    python bench/bench_train_step.py --stages spade,e2e,seg --providers ref,fast,fast-no-gather
    python bench/bench_train_step.py --preset cityscapes --size 256x512 --batch 8      # real shapes (GPU)
    python bench/bench_train_step.py --quick                                           # tiny CPU smoke run

Providers:
  ref             the model as the authors' code runs it: fp32, NCHW, every custom op on its reference
                  path (``ops.use_impl(None, 'ref')``): one-hot maps materialised and convolved, PyTorch
                  norms, PyTorch Gumbel-softmax.
  fast            ``impl='auto'``: the fastest eligible impl of every op (C++ gather embedding on CPU;
                  Triton + CUDA kernels on a GPU), ``--precision`` (bf16/fp16 on a GPU) and
                  channels-last (on by default on a GPU).
  fast-no-gather  as ``fast`` but the label-embedding convolution on its reference path: isolates the
                  gain of the gather route (``ops.onehot_conv2d``).
Each stage runs its real step function (losses, both optimizers) on the built-in synthetic scenes at the
requested size; the first ``--warmup`` steps are not timed. Rows are appended to
``bench/results/train_step.csv`` with the device name, versions and commit. Speed claims come only from
runs on the device they name: CPU rows say CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch

from sbgan_fast import ops
from sbgan_fast.train.config import build_config
from sbgan_fast.train.stages import STAGE_CLASSES
from sbgan_fast.train.trainer import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
CSV = os.path.join(HERE, "results", "train_step.csv")
PROVIDERS = ("ref", "fast", "fast-no-gather")


def provider_scope(name: str):
    if name == "ref":
        return ops.use_impl(None, "ref")
    if name == "fast":
        return contextlib.nullcontext()
    if name == "fast-no-gather":
        return ops.use_impl("onehot_conv2d", "ref")
    raise ValueError(f"unknown provider {name!r}; choose from {PROVIDERS}")


def device_name(dev: torch.device) -> str:
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def git_commit() -> str:
    try:
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True).strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def make_config(args, out: str, provider: str):
    h, w = (int(v) for v in args.size.split("x"))
    ar = w / h
    n_up = {"normal": 5, "more": 6, "most": 7}[args.num_upsampling_layers]
    overrides = [
        "data.dataset=synthetic", f"data.height={h}", f"data.width={w}", "data.synthetic_size=64",
        f"seg.max_dim={h}", f"seg.aspect_ratio={ar}", f"spade.crop_size={w}", f"spade.aspect_ratio={ar}",
        f"spade.num_upsampling_layers={args.num_upsampling_layers}", f"spade.ngf={args.ngf}", f"spade.ndf={args.ngf}",
        f"seg.width_mult={args.seg_width}", f"seg.batch_size={args.batch}", f"seg.batch_size_high={args.batch}",
        f"spade.batch_size={args.batch}", f"e2e.batch_size={args.batch}", "spade.vgg_loss=false",
        "progress=false", "tensorboard=false", "sample_every=0", "ckpt_every=0", "e2e.d2_pretrain_epochs=0",
        f"device={args.device}", f"data.num_classes={args.classes}",
    ]
    if provider == "ref":
        overrides += ["precision=fp32", "channels_last=false"]
    else:
        overrides += [f"precision={args.precision}"]
    if w // (2 ** n_up) < 1:
        raise SystemExit(f"--size {args.size} is too small for num_upsampling_layers={args.num_upsampling_layers}")
    return build_config(args.preset, None, overrides, out=out)


def bench_stage(trainer: Trainer, stage_name: str, provider: str, warmup: int, steps: int):
    stage = STAGE_CLASSES[stage_name](trainer)
    trainer.optims = stage.make_optimizers()
    trainer.updater.reset(trainer.optims, list(trainer.nets.values()))

    def train_step(step, batch):
        trainer.updater.begin_step()
        stage.step(step, batch)
        trainer.updater.end_step(stage_name, step, None)

    dev = trainer.device
    if stage_name == "seg":  # time the final resolution
        start = stage.phases[-1].start
    else:
        start = 0
    batches = [{k: v for k, v in trainer.dataset[i].items() if k in ("image", "label")} for i in range(64)]

    def batch_at(i):
        off, bs = stage.schedule(start + i)
        items = [batches[(off + j) % len(batches)] for j in range(bs)]
        return {k: torch.stack([it[k] for it in items]) for k in items[0]}, bs

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    with provider_scope(provider):
        for i in range(warmup):
            b, _ = batch_at(i)
            train_step(start + i, b)
        sync()
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        images = 0
        t0 = time.perf_counter()
        for i in range(warmup, warmup + steps):
            b, bs = batch_at(i)
            train_step(start + i, b)
            images += bs
        sync()
        dt = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(dev) / 2 ** 20 if dev.type == "cuda" else float("nan")
    return {"ms_per_step": 1e3 * dt / steps, "images_per_s": images / dt, "s_per_kimg": 1e3 * dt / images,
            "peak_mem_mib": peak}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cityscapes")
    p.add_argument("--stages", default="spade,e2e,seg")
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--size", default="64x128", help="image HxW (the seg stage times its final resolution)")
    p.add_argument("--classes", type=int, default=35)
    p.add_argument("--num-upsampling-layers", default="more")
    p.add_argument("--ngf", type=int, default=16, help="64 = the authors' width")
    p.add_argument("--seg-width", type=float, default=0.25, help="seg networks' width multiplier (1 = authors')")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", help="precision of the fast providers (fp32|bf16|fp16)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (32x64, ngf 8, 1+1 steps)")
    p.add_argument("--no-csv", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.size, args.ngf, args.seg_width, args.batch, args.warmup, args.steps = "32x64", 8, 0.125, 2, 1, 1
        args.num_upsampling_layers = "normal"
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for provider in args.providers.split(","):
            cfg = make_config(args, os.path.join(tmp, "run"), provider)
            for stage_name in args.stages.split(","):
                torch.manual_seed(0)
                trainer = Trainer(cfg)
                res = bench_stage(trainer, stage_name, provider, args.warmup, args.steps)
                row = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "stage": stage_name,
                       "provider": provider, "size": args.size, "classes": args.classes, "ngf": args.ngf,
                       "seg_width": args.seg_width, "batch": args.batch, "precision": cfg.precision,
                       "channels_last": bool(trainer.channels_last),
                       "device": device_name(trainer.device), "torch": torch.__version__, "commit": git_commit(),
                       **{k: round(v, 3) for k, v in res.items()}}
                rows.append(row)
                print(f"{stage_name:6s} {provider:15s} {res['ms_per_step']:9.1f} ms/step {res['images_per_s']:8.2f} img/s "
                      f"{res['s_per_kimg']:8.1f} s/kimg  peak {res['peak_mem_mib']:.0f} MiB", flush=True)
                trainer.logger.close()
                for f in os.listdir(cfg.out):
                    if f.endswith(".jsonl") or f.endswith(".json"):
                        os.remove(os.path.join(cfg.out, f))
    by = {(r["stage"], r["provider"]): r for r in rows}
    for stage_name in args.stages.split(","):
        ref = by.get((stage_name, "ref"))
        for prov in ("fast", "fast-no-gather"):
            if ref and (stage_name, prov) in by:
                print(f"{stage_name}: {prov} / ref = {by[(stage_name, prov)]['images_per_s'] / ref['images_per_s']:.2f}x")
    if not args.no_csv:
        os.makedirs(os.path.dirname(CSV), exist_ok=True)
        new = not os.path.exists(CSV)
        with open(CSV, "a", newline="") as f:
            wr = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                wr.writeheader()
            wr.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
