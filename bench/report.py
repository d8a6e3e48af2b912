"""Write bench/RESULTS.md from the CSVs under bench/results/ (append-only records of every run).

    python bench/report.py [--last N]

A hand-written preamble in bench/RESULTS_NOTES.md, if present, is put first. Then summaries: the last GPU
suite run (``suite_items.csv``: each item's status, time and estimate, and the table of targets evaluated on the
rows that run measured, ``suite_targets.py``), ``triton_ops.csv`` and ``one_hot.csv`` as one table per device
(ms and GB/s of each provider, speed-up over the reference), ``train_step.csv`` as one table per device and model
configuration (rows: seg at each resolution, spade, e2e; columns: images/s, s/kimg and peak memory of each
provider, fast / ref, the compiled providers against fast and their first-compile seconds, and the range of
the rows' load averages where recorded), ``loader_vs_step.csv`` as the loader alone, the step on in-memory
batches and the step fed by the loader side by side with a verdict, ``quality.csv`` (``bench_quality.py``) as
the newest rows per device and the mean over seeds of each commit, configuration and budget. Last, every CSV's
newest N rows per device (rows carry the device name, versions and commit).

Rows written before a column existed read it as empty: train_step rows without ``res`` timed the seg stage at
its final resolution (``size``); rows without ``preset``/``upsampling``/``data`` form their own groups.
"""
from __future__ import annotations

import argparse
import csv
import os
import sys
from collections import OrderedDict, defaultdict

HERE = os.path.dirname(os.path.abspath(__file__))
PROVIDER_ORDER = ("ref", "fast", "fast-no-gather", "compiled", "compiled-graphs")
COMPILED = ("compiled", "compiled-graphs")   # providers with a first-compile time (``compile_s``)
STAGE_ORDER = ("seg", "spade", "e2e", "e2e-reuse")
GROUP_KEY = ("device", "preset", "size", "classes", "upsampling", "ngf", "seg_width", "batch", "data")


# ------------------------------------------------------------------------------------------ CSV records
def read_rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def append_rows(path, rows) -> None:
    """Append dict rows to a CSV. A row with columns the file lacks rewrites the file once with the union of
    columns (old columns first, in their order); older rows read the new columns as empty."""
    if not rows:
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fields = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if not set(fields) <= set(header):
            old = read_rows(path)
            union = header + [k for k in fields if k not in header]
            with open(path + ".tmp", "w", newline="", encoding="utf-8") as f:
                wr = csv.DictWriter(f, fieldnames=union, restval="")
                wr.writeheader()
                wr.writerows(old)
            os.replace(path + ".tmp", path)
            header = union
        with open(path, "a", newline="", encoding="utf-8") as f:
            csv.DictWriter(f, fieldnames=header, restval="").writerows(rows)
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            wr = csv.DictWriter(f, fieldnames=fields, restval="")
            wr.writeheader()
            wr.writerows(rows)


# ------------------------------------------------------------------------------------------ formatting
def table(rows, fields, header=None) -> str:
    out = ["| " + " | ".join(header or fields) + " |", "|" + "---|" * len(fields)]
    for r in rows:
        out.append("| " + " | ".join(str(r.get(f, "")) for f in fields) + " |")
    return "\n".join(out)


def num(x):
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if v != v else v          # NaN (peak memory on the CPU) -> None


def fmt(x, digits=2) -> str:
    v = num(x)
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:.0f}"
    return f"{v:.{digits}f}"


def res_of(r) -> str:
    """The timed resolution: rows without ``res`` (older) timed the final resolution, i.e. ``size``."""
    return r.get("res") or r.get("size", "?")


def res_sort_key(stage, res):
    try:
        h = int(res.split("x")[0])
    except (ValueError, AttributeError):
        h = 0
    s = STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)
    return (s, h)


# ------------------------------------------------------------------------------------------ summaries
def train_step_summary(rows) -> list:
    """Per device and model configuration: stage x resolution rows, provider columns (the newest row of each)."""
    groups = OrderedDict()
    for r in rows:
        groups.setdefault(tuple(r.get(k, "") for k in GROUP_KEY), []).append(r)
    parts = []
    for key, rs in groups.items():
        g = dict(zip(GROUP_KEY, key))
        latest = OrderedDict()
        for r in rs:
            latest[(r["stage"], res_of(r), r["provider"])] = r
        provs = [p for p in PROVIDER_ORDER if any(k[2] == p for k in latest)]
        provs += sorted({k[2] for k in latest} - set(provs))
        fast = next((r for (s, _, p), r in reversed(latest.items()) if p == "fast"), None)
        newest = max(r.get("date", "") for r in rs)
        commits = sorted({r.get("commit", "?") for r in rs})
        desc = (f"preset {g['preset'] or 'not recorded'}, {g['size']}, {g['classes']} classes, SPADE "
                f"'{g['upsampling'] or 'not recorded'}', ngf {g['ngf']}, seg width {g['seg_width']}, batch {g['batch']}, "
                f"data {g['data'] or 'not recorded (synthetic)'}")
        if fast is not None:
            desc += f"; fast: {fast.get('precision', '?')}, channels-last {fast.get('channels_last', '?')}"
        desc += ("; ref: fp32, NCHW" if "ref" in provs else "") + f". Newest row {newest}, commit(s) {', '.join(commits)}."
        loads = [float(x) for r in rs for x in str(r.get("load") or "").split("/") if num(x) is not None]
        if loads:
            desc += f" 1-minute load average while these rows ran: {min(loads):.1f} to {max(loads):.1f}."
        comp = [p for p in provs if p in COMPILED]
        header = ["stage", "res"] + [f"{p} img/s" for p in provs]
        if "ref" in provs:
            header += [f"{p} / ref" for p in provs if p != "ref"]
        if "fast" in provs:
            header += [f"{p} / fast" for p in comp]
        header += [f"{p} compile s" for p in comp]
        header += [f"{p} s/kimg" for p in provs] + [f"{p} peak MiB" for p in provs]
        out = []
        cells = sorted({(s, res) for (s, res, _) in latest}, key=lambda sr: res_sort_key(*sr))
        for s, res in cells:
            row = {"stage": s, "res": res}
            for p in provs:
                r = latest.get((s, res, p), {})
                row[f"{p} img/s"] = fmt(r.get("images_per_s"))
                row[f"{p} s/kimg"] = fmt(r.get("s_per_kimg"), 1)
                row[f"{p} peak MiB"] = fmt(r.get("peak_mem_mib"), 0)
            fast_ips = num(latest.get((s, res, "fast"), {}).get("images_per_s"))
            for p in comp:
                v = num(latest.get((s, res, p), {}).get("images_per_s"))
                row[f"{p} / fast"] = f"{v / fast_ips:.2f}x" if v and fast_ips else "-"
                row[f"{p} compile s"] = fmt(latest.get((s, res, p), {}).get("compile_s"), 1)
            ref = num(latest.get((s, res, "ref"), {}).get("images_per_s"))
            for p in provs:
                if p != "ref" and "ref" in provs:
                    v = num(latest.get((s, res, p), {}).get("images_per_s"))
                    row[f"{p} / ref"] = f"{v / ref:.2f}x" if v and ref else "-"
            out.append(row)
        parts += [f"### {g['device']}", "", desc, "", table(out, header), ""]
    return parts


def loader_summary(rows, last) -> list:
    by_dev = defaultdict(list)
    for r in rows:
        by_dev[r.get("device", "?")].append(r)
    fields = ["date", "dataset", "size", "stage", "res", "provider", "precision", "batch", "loader",
              "loader img/s", "step img/s (in memory)", "step img/s (fed by the loader)", "fed / in memory", "verdict"]
    parts = []
    for dev, rs in by_dev.items():
        out = []
        for r in rs[-last:]:
            ld = r.get("loader", "?") + (f", {r['workers']} workers" if r.get("workers") not in (None, "") else "")
            out.append({"date": r.get("date", ""), "dataset": r.get("data", ""), "size": r.get("size", ""),
                        "stage": r.get("stage", ""), "res": res_of(r), "provider": r.get("provider", ""),
                        "precision": r.get("precision", ""), "batch": r.get("batch", ""), "loader": ld,
                        "loader img/s": fmt(r.get("loader_images_per_s")),
                        "step img/s (in memory)": fmt(r.get("step_images_per_s")),
                        "step img/s (fed by the loader)": fmt(r.get("fed_images_per_s")),
                        "fed / in memory": fmt(r.get("fed_vs_step")), "verdict": r.get("verdict", "")})
        parts += [f"### {dev}", "", table(out, fields), ""]
    return parts


QUALITY_COLUMNS = (("FID", "fid_mean", 1), ("FID std", "fid_std", 1), ("KID", "kid_mean", 4),
                   ("KID std", "kid_std", 4), ("cond. FID", "fid_cond", 1), ("class TV", "class_tv", 3),
                   ("diversity", "diversity", 3), ("real div.", "real_diversity", 3), ("img/s", "images_per_s", 2),
                   ("wall s", "wall_s", 0))


def quality_summary(rows, last) -> list:
    """Per device: the newest rows (one per seed) and, per commit, configuration, overrides and budget with two
    seeds or more, the mean and std over seeds of each figure."""
    by_dev = OrderedDict()
    for r in rows:
        by_dev.setdefault(r.get("device", "?"), []).append(r)
    head = ["date", "commit", "config", "overrides", "budget", "seed", "n x sets"]
    parts = []
    for dev, rs in by_dev.items():
        out = []
        for r in rs[-last:]:
            row = {"date": r.get("date", ""), "commit": r.get("commit", ""), "config": r.get("config", ""),
                   "overrides": r.get("overrides", "") or "-", "budget": r.get("budget_steps", ""),
                   "seed": r.get("seed", ""), "n x sets": f"{r.get('n', '?')} x {r.get('sets', '?')}",
                   "load": f"{r.get('load_start', '?')} -> {r.get('load_end', '?')}"}
            for name, key, digits in QUALITY_COLUMNS:
                row[name] = fmt(r.get(key), digits)
            out.append(row)
        parts += [f"### {dev}", "", table(out, head + [c[0] for c in QUALITY_COLUMNS] + ["load"]), ""]
        groups = OrderedDict()
        for r in rs:
            key = (r.get("commit", ""), r.get("config", ""), r.get("overrides", ""), r.get("budget_steps", ""),
                   r.get("n", ""), r.get("sets", ""))
            groups.setdefault(key, OrderedDict())[r.get("seed", "")] = r     # the newest row of each seed
        means = []
        for (commit, config, overrides, budget, n, sets), seeds in groups.items():
            if len(seeds) < 2:
                continue
            row = {"commit": commit, "config": config, "overrides": overrides or "-", "budget": budget,
                   "seeds": ",".join(seeds), "n x sets": f"{n} x {sets}"}
            for name, key, digits in QUALITY_COLUMNS:
                vals = [num(r.get(key)) for r in seeds.values()]
                vals = [v for v in vals if v is not None]
                if not vals:
                    row[name] = "-"
                    continue
                mean = sum(vals) / len(vals)
                std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5 if len(vals) > 1 else 0.0
                row[name] = f"{fmt(mean, digits)} +- {fmt(std, digits)}"
            means.append(row)
        if means:
            parts += ["Mean +- std (ddof 1) over seeds:", "",
                      table(means, ["commit", "config", "overrides", "budget", "seeds", "n x sets"]
                            + [c[0] for c in QUALITY_COLUMNS]), ""]
    return parts


ABLATION_ARMS = ("progan", "sbgan", "e2e_all", "e2e_seg", "e2e_spade", "spade_real", "spade_synth")


def _mean_std(vals, digits) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return fmt(mean, digits)
    std = (sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) ** 0.5
    return f"{fmt(mean, digits)} +- {fmt(std, digits)}"


def ablation_summary(rows, verdict: str) -> list:
    """Per device and run of the ablation (commit, configuration, overrides, budget, n, sets): one row per arm with
    the mean +- std (ddof 1) over its seeds (the newest row of each seed), then the verdict line."""
    by_run = OrderedDict()
    for r in rows:
        key = (r.get("device", "?"), r.get("commit", ""), r.get("config", ""), r.get("overrides", ""),
               r.get("budget_s", ""), r.get("n", ""), r.get("sets", ""))
        by_run.setdefault(key, OrderedDict()).setdefault(r.get("arm", "?"), OrderedDict())[r.get("seed", "")] = r
    parts = []
    for (dev, commit, config, overrides, budget, n, sets), arms in by_run.items():
        out = []
        for arm in sorted(arms, key=lambda a: ABLATION_ARMS.index(a) if a in ABLATION_ARMS else len(ABLATION_ARMS)):
            seeds = arms[arm]
            col = (lambda key: [num(r.get(key)) for r in seeds.values()])
            out.append({"arm": arm, "seeds": ",".join(seeds), "FID": _mean_std(col("fid_mean"), 1),
                        "KID": _mean_std(col("kid_mean"), 4), "cond. FID": _mean_std(col("fid_cond"), 1),
                        "class TV": _mean_std(col("class_tv"), 3), "trained s": _mean_std(col("train_s"), 0)})
        parts += [f"### {dev}: {config} {overrides or ''}, commit {commit}, budget {budget} s per arm, FID "
                  f"{n} x {sets}", "",
                  table(out, ["arm", "seeds", "FID", "KID", "cond. FID", "class TV", "trained s"]), ""]
    parts += [f"Verdict: {verdict}" if verdict else
              "Verdict: not written yet (`bench/ablation_verdict.md`, by hand after a real run).", ""]
    return parts


def suite_summary(csvs) -> list:
    """The last GPU suite run: its items and its targets (from the rows carrying its ``suite_run``)."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import suite_targets
    items = csvs.get("suite_items", [])
    run = items[-1].get("suite_run", "") if items else ""
    if not run:
        return []
    mine = [r for r in items if r.get("suite_run") == run]
    first = mine[0]
    dry = first.get("mode") == "dry"
    parts = ["## GPU suite: last run (summary of `results/suite_items.csv`)", "",
             f"Run `{run}` on {first.get('device', '?')}, budget {first.get('budget_s', '?')} s"
             + (" (**dry run on the CPU**: tiny shapes, the numbers test the script and measure nothing)"
                if dry else "")
             + ". `bash bench/run_gpu_suite.sh` runs the items in this order while their estimates fit the budget.", ""]
    parts += [table(mine, ["item", "status", "seconds", "estimate_s", "estimate_from", "left_s", "note"]), ""]
    rows = {name: [r for r in rs if r.get("suite_run") == run] for name, rs in csvs.items() if name != "suite_items"}
    parts += ["Targets, from the rows this run measured (\"not measured\" where its item did not run):", ""]
    parts += [table(suite_targets.evaluate(rows), ["target", "goal", "measured", "met"],
                    ["target", "goal", "measured", "met?"]), ""]
    return parts


def ops_summary(csvs) -> list:
    """Op microbenchmarks per device: the newest row of each case and provider, speed-up over ``ref``."""
    parts = []
    for name, fast_provs in (("triton_ops", ("triton", "compile")), ("one_hot", ())):
        rows = csvs.get(name, [])
        if not rows:
            continue
        by_dev = OrderedDict()
        for r in rows:
            mode = r.get("mode")
            if r.get("resize_mode") not in (None, "", "nearest"):  # one_hot.csv: the labels' resize rule
                mode = f"{mode}, {r['resize_mode']}"
            key = (r.get("op"), r.get("shape"), r.get("dtype"), r.get("layout") if name == "triton_ops" else "",
                   mode)
            by_dev.setdefault(r.get("device", "?"), OrderedDict()).setdefault(key, OrderedDict())[r.get("provider")] = r
        parts += [f"## Op microbenchmarks (summary of `results/{name}.csv`)", "",
                  "The newest row of each case and provider: median ms, GB/s from the bytes the op must move at "
                  "minimum, as a share of the measured copy bandwidth, and the speed-up over the reference "
                  + ("(`ref`)." if name == "triton_ops" else "(`torch_F.one_hot` for one_hot, `ref` = one-hot + "
                                                             "conv2d for onehot_conv2d)."), ""]
        for dev, cases in by_dev.items():
            out = []
            for (op, shape, dtype, layout, mode), provs in cases.items():
                base = provs.get("ref") if name == "triton_ops" else None
                for prov, r in provs.items():
                    ms, gbps, copy = num(r.get("median_ms")), num(r.get("gbps")), num(r.get("copy_gbps"))
                    if name == "triton_ops":
                        bm = num(base.get("median_ms")) if base else None
                        speed = f"{bm / ms:.2f}x" if bm and ms else "-"
                    else:
                        speed = f"{num(r.get('speedup')):.2f}x" if num(r.get("speedup")) else "-"
                    out.append({"op": op, "mode": mode, "shape": shape, "dtype": dtype, "layout": r.get("layout", ""),
                                "provider": prov, "ms": fmt(ms, 3), "GB/s": fmt(gbps, 1),
                                "% of copy": f"{100 * gbps / copy:.0f} %" if gbps is not None and copy else "-",
                                "speed-up": speed, "date": r.get("utc_time", ""), "commit": r.get("commit", "")})
            parts += [f"### {dev}", "", table(out, ["op", "mode", "shape", "dtype", "layout", "provider", "ms", "GB/s",
                                                    "% of copy", "speed-up", "date", "commit"]), ""]
    return parts


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--last", type=int, default=60, help="newest rows per CSV and device in the raw tables")
    p.add_argument("--results", default=os.path.join(HERE, "results"), help="folder of the CSVs")
    p.add_argument("--notes", default=os.path.join(HERE, "RESULTS_NOTES.md"))
    p.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = p.parse_args(argv)
    parts = ["# Benchmark results", "",
             "Generated by `python bench/report.py` from `bench/results/*.csv` (the benchmarks run it after "
             "appending their rows). Every row names the device it was measured on; CPU rows say nothing about "
             "GPU performance.", ""]
    if os.path.isfile(args.notes):
        parts += [open(args.notes, encoding="utf-8").read().strip(), ""]
    res_dir = args.results
    csvs = OrderedDict()
    for name in sorted(os.listdir(res_dir)) if os.path.isdir(res_dir) else []:
        if name.endswith(".csv"):
            rows = read_rows(os.path.join(res_dir, name))
            if rows:
                csvs[name[:-4]] = rows
    parts += suite_summary(csvs)
    parts += ops_summary(csvs)
    if "train_step" in csvs:
        parts += ["## Training step per stage (summary of `results/train_step.csv`)", "",
                  "The newest row of each stage, resolution and provider; batches held in memory (no loader). "
                  "`seg` rows time the first steps of the stabilize phase at each resolution of the progressive "
                  "schedule.", ""]
        parts += train_step_summary(csvs["train_step"])
    if "loader_vs_step" in csvs:
        parts += ["## Loader against training step (summary of `results/loader_vs_step.csv`)", "",
                  "Same steps, same batches: the loader alone, the step on the batches held in memory, and the step "
                  "fed live by the loader. Verdict: the loader is the bottleneck when it alone delivers fewer "
                  "images/s than the step consumes.", ""]
        parts += loader_summary(csvs["loader_vs_step"], args.last)
    if "quality" in csvs:
        parts += ["## Quality (summary of `results/quality.csv`)", "",
                  "`python bench/bench_quality.py`: a configuration trained for a fixed budget (`budget`: steps per "
                  "stage, `schedule`: the configuration's own), then unconditional FID and KID (mean and std over "
                  "the sets), conditional FID, the total variation distance between the class histograms of "
                  "generated and real label maps (`class TV`, 0 = the same class frequencies), the mean pairwise "
                  "disagreement of the generated maps (`diversity`) beside that of real maps, training images/s and "
                  "wall time. `load`: the 1-minute load average at the start and the end (images/s and wall time "
                  "from a loaded machine are not clean figures).", ""]
        parts += quality_summary(csvs["quality"], args.last)
    if "ablation" in csvs:
        verdict_path = os.path.join(os.path.dirname(os.path.abspath(args.out)), "ablation_verdict.md")
        verdict = open(verdict_path, encoding="utf-8").read().strip() if os.path.isfile(verdict_path) else ""
        parts += ["## Ablation (summary of `results/ablation.csv`)", "",
                  "`python bench/bench_quality.py --ablation --budget-s S`: the paper's ablations in miniature on the "
                  "built-in scenes, every arm trained for the same time per seed (each arm's schedules scaled by "
                  "one factor from a calibration run; `trained s`: the seconds it actually trained). `progan`: "
                  "ProGAN on the images; `sbgan`: SB-GAN without fine-tuning (seg + spade); `e2e_all` / `e2e_seg` "
                  "/ `e2e_spade`: with end-to-end fine-tuning (e2e.finetune); `spade_real` / `spade_synth`: the "
                  "spade stage alone on real label maps / on real plus synthetic maps from the sbgan arm's G_seg "
                  "(the paper's Table 3: conditional FID). Mean +- std (ddof 1) over seeds.", ""]
        parts += ablation_summary(csvs["ablation"], verdict)
    parts += ["## Raw rows", ""]
    for name, rows in csvs.items():
        by_dev = defaultdict(list)
        for r in rows:
            by_dev[r.get("device", "?")].append(r)
        parts += [f"### {name}", ""]
        for dev, rs in by_dev.items():
            parts += [f"#### {dev}", "", table(rs[-args.last:], list(rows[0].keys())), ""]
    with open(args.out, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
