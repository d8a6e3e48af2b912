"""End-to-end training-step throughput: images/s, s/kimg and peak memory per stage and provider.

    python bench/bench_train_step.py --stages spade,e2e,seg --providers ref,fast,fast-no-gather
    python bench/bench_train_step.py --preset cityscapes --size 256x512 --batch 8 --precision bf16   # real shapes (GPU)
    python bench/bench_train_step.py --size 256x512 --loader torch,dali --data-root DIR             # loader vs step
    python bench/bench_train_step.py --quick                                                        # tiny CPU smoke run

Providers:
  ref             the model as the authors' code runs it: fp32, NCHW, every custom op on its reference
                  path (``ops.use_impl(None, 'ref')``): one-hot maps materialised and convolved, PyTorch
                  norms, PyTorch Gumbel-softmax.
  fast            ``impl='auto'``: the fastest eligible impl of every op (C++ gather embedding on CPU;
                  Triton + CUDA kernels on a GPU), ``--precision`` (``auto``: bf16 on a GPU, fp32 on the CPU)
                  and channels-last (on by default on a GPU).
  fast-no-gather  as ``fast`` but the label-embedding convolution on its reference path: isolates the
                  gain of the gather route (``ops.onehot_conv2d``).
  compiled        as ``fast`` with ``compile=true``: the networks and the VGG loss through ``torch.compile``
                  (inductor; ``sbgan_fast.train.compiled``). Its warm-up steps compile: their cost is reported
                  apart as ``compile_s`` (below), not in images/s; give it ``--warmup`` >= 1 (2 for seg rows with
                  fade-in). Dynamo's caches are reset before each compiled trainer, so every row compiles anew
                  (inductor's on-disk caches are used as found: ``TORCHINDUCTOR_FORCE_DISABLE_CACHES=1`` gives
                  cold-start times).
  compiled-graphs as ``compiled`` with ``seg.cuda_graphs_max_res`` at the final height: the seg stage's
                  G_seg and D_seg run as CUDA graphs at every resolution (inductor's CUDA graph trees; a
                  GPU setting: on the CPU it falls back to ``compiled`` and says so once). Needs ``--warmup``
                  >= 3 (a graph is warmed up, then recorded, then replayed).
Stage ``e2e-reuse`` is the e2e step with ``e2e.reuse_fakes=true`` (the discriminator update reuses the generator
update's fakes instead of making them again with a fresh z): beside ``e2e`` it measures what the authors' step
order costs.
Each stage runs its real step function (losses, both optimizers); the first ``--warmup`` steps of every
timed row are not timed. ``compile_s``: the seconds the warm-up steps took beyond as many steady-state steps
(the first compile of the compiled providers; empty for the others). ``load``: the 1-minute load average of
the machine when the row started and when it ended (a CPU row timed on a loaded machine is a noisy figure).
Stages are the outer loop and providers the inner one, so the providers of a stage are timed one after the
other (under a changing load, side by side in time). The seg stage is timed at every resolution of its
progressive schedule (the first steps of each stabilize phase; ``--seg-res`` picks some), one row per resolution
(column ``res``).

Data feed (``--loader``):
  none            (default) the step reads batches already in memory, built from the built-in synthetic
                  scenes at ``--size``.
  torch, dali     the step reads the real dataset ``--dataset`` under ``--data-root`` (official layouts) through
                  the trainer's own loader (``sbgan_fast.train.data_order.make_loader``: torch DataLoader with
                  ``--workers`` processes, or the DALI pipeline; label-only stages always use the torch loader).
                  For each row three numbers are measured over the same steps: the loader alone, the step on
                  the same batches held in memory, and the step fed live by the loader; they go side by side,
                  with a verdict, into ``bench/results/loader_vs_step.csv``.
Rows of the step in memory are appended to ``bench/results/train_step.csv`` (``SBGAN_BENCH_RESULTS`` names
another folder) with the device name, versions and commit, then ``bench/RESULTS.md`` is regenerated (``bench/report.py``; ``--no-report`` skips it). Speed
claims come only from runs on the device they name: CPU rows say CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch

from sbgan_fast import ops
from sbgan_fast.config import build_config
from sbgan_fast.train.data_order import make_loader
from sbgan_fast.train.stages import STAGE_CLASSES
from sbgan_fast.train.trainer import Trainer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import report  # noqa: E402  (bench/report.py)

RESULTS = os.environ.get("SBGAN_BENCH_RESULTS") or os.path.join(HERE, "results")   # the GPU suite's dry run: a temp folder
CSV = os.path.join(RESULTS, "train_step.csv")
LOADER_CSV = os.path.join(RESULTS, "loader_vs_step.csv")
PROVIDERS = ("ref", "fast", "fast-no-gather", "compiled", "compiled-graphs")
COMPILED = ("compiled", "compiled-graphs")   # providers with compile=true
STAGES = ("seg", "spade", "e2e", "e2e-reuse")
FEEDS = ("none", "torch", "dali")
REAL_DATASETS = ("cityscapes", "ade20k", "ade_indoor")


def provider_scope(name: str):
    if name == "ref":
        return ops.use_impl(None, "ref")
    if name in ("fast",) + COMPILED:
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
        return subprocess.check_output(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, text=True,
                                       stderr=subprocess.DEVNULL).strip()
    except Exception:  # noqa: BLE001
        return "unknown"


def parse_size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size {text!r}: expected HxW, e.g. 256x512") from None
    if h < 4 or w < 4:
        raise SystemExit(f"--size {text!r}: height and width must be at least 4")
    return h, w


def resolve_precision(args) -> str:
    if args.precision != "auto":
        return args.precision
    dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return "bf16" if torch.device(dev).type == "cuda" else "fp32"


def make_config(args, out: str, provider: str, feed: str):
    h, w = parse_size(args.size)
    ar = w / h
    n_up = {"normal": 5, "more": 6, "most": 7}[args.num_upsampling_layers]
    if w // (2 ** n_up) < 1:
        raise SystemExit(f"--size {args.size} is too small for num_upsampling_layers={args.num_upsampling_layers}")
    overrides = [
        f"data.height={h}", f"data.width={w}",
        f"seg.max_dim={h}", f"seg.aspect_ratio={ar}", f"spade.crop_size={w}", f"spade.aspect_ratio={ar}",
        f"spade.num_upsampling_layers={args.num_upsampling_layers}", f"spade.ngf={args.ngf}", f"spade.ndf={args.ngf}",
        f"seg.width_mult={args.seg_width}", f"seg.batch_size={args.batch}", f"seg.batch_size_high={args.batch}",
        f"spade.batch_size={args.batch}", f"e2e.batch_size={args.batch}", "spade.vgg_loss=false",
        "progress=false", "tensorboard=false", "sample_every=0", "ckpt_every=0", "monitor_every=0",
        "e2e.d2_pretrain_epochs=0", f"device={args.device}", f"data.num_classes={args.classes}",
    ]
    if feed == "none":
        overrides += ["data.dataset=synthetic", "data.synthetic_size=64"]
    else:
        overrides += [f"data.dataset={args.dataset}", f"data.root={args.data_root}", f"data.loader={feed}",
                      f"data.num_workers={args.workers}"]
    if provider == "ref":
        overrides += ["precision=fp32", "channels_last=false"]
    else:
        overrides += [f"precision={resolve_precision(args)}"]
    if provider in COMPILED:
        overrides += ["compile=true"]
    if provider == "compiled-graphs":
        overrides += [f"seg.cuda_graphs_max_res={h}"]
    overrides += list(args.set or [])
    return build_config(args.preset, None, overrides, out=out)


class StageBench:
    """One stage of one trainer: timed rows at given steps, with in-memory or loader-fed batches."""

    def __init__(self, trainer: Trainer, stage_name: str, provider: str, warmup: int, steps: int,
                 loader_steps: int = 0):
        self.t, self.name, self.provider = trainer, stage_name, provider
        self.warmup, self.steps = warmup, steps
        self.loader_steps = max(steps, loader_steps)
        if stage_name == "seg":
            # every stabilize phase must hold warmup + steps steps (a timed row never crosses a phase)
            c, n = trainer.cfg.seg, trainer.dataset_size
            need = (warmup + steps + 1) * max(c.batch_size, c.batch_size_high) / n
            c.epochs_per_phase = max(c.epochs_per_phase, need)
        self.stage = STAGE_CLASSES[stage_name.split("-")[0]](trainer)
        trainer.optims = self.stage.make_optimizers()
        trainer.updater.reset(trainer.optims, list(trainer.nets.values()))
        self.dev = trainer.device
        self._synthetic = None

    # -- where the timed rows start ------------------------------------------------------------
    def points(self, seg_res):
        """[(res label 'HxW', first step)] of the rows to time."""
        cfg = self.t.cfg
        if self.name != "seg":
            return [(f"{cfg.data.height}x{cfg.data.width}", 0)]
        out = []
        for ph in self.stage.phases:
            if ph.kind == "stabilize" and (seg_res is None or ph.res in seg_res):
                out.append((f"{ph.res}x{int(ph.res * cfg.seg.aspect_ratio)}", ph.start))
        if not out:
            raise SystemExit(f"--seg-res: none of {sorted(seg_res)} is a seg resolution (heights "
                             f"{[ph.res for ph in self.stage.phases if ph.kind == 'stabilize']})")
        return out

    # -- batches -------------------------------------------------------------------------------
    def synthetic_batches(self, start: int):
        """In-memory batches of steps [start, start + warmup + steps) cycled over 64 synthetic scenes."""
        if self._synthetic is None:
            ds = self.t.dataset
            self._synthetic = [{k: v for k, v in ds[i].items() if k in ("image", "label")}
                               for i in range(min(64, len(ds)))]
        items = self._synthetic
        out = []
        for i in range(start, start + self.warmup + self.steps):
            off, bs = self.stage.schedule(i)
            its = [items[(off + j) % len(items)] for j in range(bs)]
            out.append({k: torch.stack([it[k] for it in its]) for k in its[0]})
        return out

    def loader(self, start: int, steps: int = 0):
        cfg = self.t.cfg
        return make_loader(self.t.dataset, self.t.stream, self.stage.schedule, start,
                           start + self.warmup + (steps or self.steps), cfg.data.num_workers, cfg.seed,
                           device=self.dev, need_image=self.name != "seg")

    def loader_kind(self) -> str:
        from sbgan_fast.data.loaders import choose_loader
        ds = self.t.dataset
        need_image = self.name != "seg"
        if not need_image and hasattr(ds, "label_view"):
            ds = ds.label_view()
        return choose_loader(self.t.cfg.data.loader, ds, self.dev, need_image)

    def load(self, start: int):
        """(batches of steps [start, start + warmup + steps) from the loader, loader-alone images/s over
        ``loader_steps`` batches after the first ``warmup``: longer than the step's run, so batches that worker
        processes prefetched during the warm-up weigh little)."""
        batches, images, t0 = [], 0, None
        it = iter(self.loader(start, self.loader_steps))
        for i in range(self.warmup + self.loader_steps):
            if i == self.warmup:
                self.sync()
                t0 = time.perf_counter()
            b = next(it)
            if i >= self.warmup:
                images += b["label"].shape[0]
            if i < self.warmup + self.steps:
                batches.append(b)
        self.sync()
        return batches, images / (time.perf_counter() - t0)

    # -- timing --------------------------------------------------------------------------------
    def sync(self):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    def train_step(self, step, batch):
        u = self.t.updater
        u.begin_step()
        self.stage.step(step, batch)
        u.end_step(self.name, step, None)

    def run(self, start: int, batches):
        """Time steps [start + warmup, start + warmup + steps) over ``batches`` (a list or a loader)."""
        images, t0 = 0, None
        it = iter(batches)
        load0 = os.getloadavg()[0]
        with provider_scope(self.provider):
            tw = time.perf_counter()
            for i in range(self.warmup + self.steps):
                if i == self.warmup:
                    self.sync()
                    if self.dev.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(self.dev)
                    t0 = time.perf_counter()
                b = next(it)     # a loader's time to deliver the batch counts
                self.train_step(start + i, b)
                if i >= self.warmup:
                    images += b["label"].shape[0]
            self.sync()
            dt = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated(self.dev) / 2 ** 20 if self.dev.type == "cuda" else float("nan")
        # the warm-up steps' time beyond as many steady steps: the compiled providers' first compile
        compile_s = (max(0.0, (t0 - tw) - self.warmup * dt / self.steps)
                     if self.provider in COMPILED and self.warmup else float("nan"))
        return {"ms_per_step": 1e3 * dt / self.steps, "images_per_s": images / dt, "s_per_kimg": 1e3 * dt / images,
                "peak_mem_mib": peak, "compile_s": compile_s, "load": f"{load0:.1f}/{os.getloadavg()[0]:.1f}"}


def verdict(loader_ips: float, step_ips: float) -> str:
    return "loader is not the bottleneck" if loader_ips >= step_ips else "loader is the bottleneck"


def cleanup_run(trainer: Trainer) -> None:
    trainer.logger.close()
    out = trainer.cfg.out
    for f in os.listdir(out) if os.path.isdir(out) else []:
        if f.endswith(".jsonl") or f.endswith(".json"):
            os.remove(os.path.join(out, f))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="cityscapes")
    p.add_argument("--stages", default="spade,e2e,e2e-reuse,seg", help=f"comma list of {STAGES}")
    p.add_argument("--providers", default=",".join(PROVIDERS))
    p.add_argument("--size", default="64x128", help="image HxW (the seg stage's final resolution)")
    p.add_argument("--seg-res", default="all", help="seg resolutions (heights) to time: all, final, or e.g. 8,64")
    p.add_argument("--classes", type=int, default=35)
    p.add_argument("--num-upsampling-layers", default="more")
    p.add_argument("--ngf", type=int, default=16, help="64 = the authors' width")
    p.add_argument("--seg-width", type=float, default=0.25, help="seg networks' width multiplier (1 = authors')")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="precision of the fast providers (auto|fp32|bf16|fp16; "
                                                        "auto: bf16 on a GPU, fp32 on the CPU)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0 = torch default)")
    p.add_argument("--loader", default="none", help=f"data feed, a comma list of {FEEDS} (see above)")
    p.add_argument("--data-root", default=None, help="dataset root for --loader torch|dali")
    p.add_argument("--dataset", default=None, help=f"{REAL_DATASETS} (default: the preset's dataset)")
    p.add_argument("--workers", type=int, default=2, help="torch DataLoader workers (--loader torch)")
    p.add_argument("--loader-steps", type=int, default=20, help="batches timed for the loader alone "
                                                               "(at least --steps)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="extra config override (repeatable), "
                                                                       "e.g. data.list_dir=DIR")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (defaults 32x64, ngf 8, seg width 0.125, batch 2, "
                                                          "SPADE 'normal', 1+1 steps)")
    p.add_argument("--no-csv", action="store_true", help="do not append to bench/results/ (nor regenerate RESULTS.md)")
    p.add_argument("--no-report", action="store_true", help="do not regenerate bench/RESULTS.md")
    args = p.parse_args(argv)
    if args.quick:      # new defaults; options given explicitly still win
        p.set_defaults(size="32x64", ngf=8, seg_width=0.125, batch=2, warmup=1, steps=1, loader_steps=2,
                       num_upsampling_layers="normal")
        args = p.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    for s in stages:
        if s not in STAGES:
            raise SystemExit(f"--stages: unknown stage {s!r}; choose from {STAGES}")
    providers = [s for s in args.providers.split(",") if s]
    for s in providers:
        if s not in PROVIDERS:
            raise SystemExit(f"--providers: unknown provider {s!r}; choose from {PROVIDERS}")
    feeds = [s for s in args.loader.split(",") if s]
    for s in feeds:
        if s not in FEEDS:
            raise SystemExit(f"--loader: unknown feed {s!r}; choose from {FEEDS}")
    if args.warmup < 0 or args.steps < 1:
        raise SystemExit("--warmup must be >= 0 and --steps >= 1")
    if any(f != "none" for f in feeds):
        if not args.data_root or not os.path.isdir(args.data_root):
            raise SystemExit(f"--loader {args.loader} needs --data-root, an existing dataset folder "
                             f"(got {args.data_root!r})")
        if args.dataset is None:
            from sbgan_fast.config import preset as preset_config
            args.dataset = preset_config(args.preset).data.dataset
        if args.dataset not in REAL_DATASETS:
            raise SystemExit(f"--dataset {args.dataset!r}: the loader comparison reads one of {REAL_DATASETS}")
    if args.seg_res == "all":
        seg_res = None
    elif args.seg_res == "final":
        seg_res = {parse_size(args.size)[0]}
    else:
        try:
            seg_res = {int(v) for v in args.seg_res.split(",")}
        except ValueError:
            raise SystemExit(f"--seg-res {args.seg_res!r}: expected all, final or a comma list of heights") from None
    args.seg_res_set = seg_res
    args.stage_list, args.provider_list, args.feed_list = stages, providers, feeds
    return args


def collect(args):
    """Run the benchmark of parsed ``args``: (train_step rows, loader_vs_step rows)."""
    seg_res, stages, providers, feeds = args.seg_res_set, args.stage_list, args.provider_list, args.feed_list
    if args.threads:
        torch.set_num_threads(args.threads)
    commit = git_commit()
    rows, lrows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for feed in feeds:
            for stage_name in stages:
                for provider in providers:
                    cfg = make_config(args, os.path.join(tmp, "run"), provider, feed)
                    data = "synthetic" if feed == "none" else cfg.data.dataset
                    if provider in COMPILED:   # each compiled trainer compiles anew, within the recompile limit
                        torch._dynamo.reset()
                    torch.manual_seed(0)
                    trainer = Trainer(cfg)
                    trainer.cfg.e2e.reuse_fakes = stage_name == "e2e-reuse"
                    sb = StageBench(trainer, stage_name, provider, args.warmup, args.steps, args.loader_steps)
                    for res, start in sb.points(seg_res):
                        if feed == "none":
                            loader_ips, batches = None, sb.synthetic_batches(start)
                        else:
                            batches, loader_ips = sb.load(start)
                        res_mem = sb.run(start, batches)
                        del batches
                        base = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                                "preset": cfg.preset, "stage": stage_name, "res": res, "provider": provider,
                                "size": args.size, "classes": args.classes,
                                "upsampling": args.num_upsampling_layers, "ngf": args.ngf,
                                "seg_width": args.seg_width, "batch": args.batch, "precision": cfg.precision,
                                "channels_last": bool(trainer.channels_last), "data": data}
                        meta = {"device": device_name(trainer.device), "torch": torch.__version__, "commit": commit,
                                "suite_run": os.environ.get("SBGAN_SUITE_RUN", "")}
                        rows.append({**base, **meta, **{k: round(v, 3) if isinstance(v, float) else v
                                                        for k, v in res_mem.items()}})
                        if not args.no_csv:     # each row as soon as it is measured: a long run cut short keeps its rows
                            report.append_rows(CSV, rows[-1:])
                        msg = (f"{stage_name:6s} {res:>8s} {provider:15s} {res_mem['ms_per_step']:9.1f} ms/step "
                               f"{res_mem['images_per_s']:8.2f} img/s {res_mem['s_per_kimg']:8.1f} s/kimg  "
                               f"peak {res_mem['peak_mem_mib']:.0f} MiB  load {res_mem['load']}"
                               + (f"  compile {res_mem['compile_s']:.1f} s" if provider in COMPILED else ""))
                        if feed != "none":
                            res_fed = sb.run(start, sb.loader(start))
                            kind = sb.loader_kind()
                            lrows.append({**base, "loader": kind,
                                          "workers": args.workers if kind == "torch" else "",
                                          "loader_images_per_s": round(loader_ips, 3),
                                          "step_images_per_s": round(res_mem["images_per_s"], 3),
                                          "fed_images_per_s": round(res_fed["images_per_s"], 3),
                                          "fed_vs_step": round(res_fed["images_per_s"] / res_mem["images_per_s"], 3),
                                          "verdict": verdict(loader_ips, res_mem["images_per_s"]), **meta})
                            if not args.no_csv:
                                report.append_rows(LOADER_CSV, lrows[-1:])
                            msg += (f" | {kind} loader alone {loader_ips:8.2f} img/s, step fed by it "
                                    f"{res_fed['images_per_s']:8.2f} img/s: {lrows[-1]['verdict']}")
                        print(msg, flush=True)
                    cleanup_run(trainer)
                    del sb, trainer
    return rows, lrows


def main(argv=None) -> int:
    args = parse_args(argv)
    rows, lrows = collect(args)
    by = {(r["data"], r["stage"], r["res"], r["provider"]): r for r in rows}
    for (data, stage_name, res, prov), r in by.items():
        for base in ("ref", "fast") if prov in COMPILED else ("ref",):
            b = by.get((data, stage_name, res, base))
            if prov != base and b:
                print(f"{stage_name} {res} ({data}): {prov} / {base} = "
                      f"{r['images_per_s'] / b['images_per_s']:.2f}x")
    if not args.no_csv and not args.no_report:
        report.main(["--results", RESULTS, "--out", os.path.join(os.path.dirname(RESULTS), "RESULTS.md")])
    return 0


if __name__ == "__main__":
    sys.exit(main())
