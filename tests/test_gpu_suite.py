"""The budgeted GPU suite (bench/run_gpu_suite.sh -> bench/gpu_suite.py) in its dry run: the same script on the
CPU with tiny shapes under Triton's interpreter, so that the script itself is not what fails on a GPU.

Checked: a dry run writes benchmark rows (into a temporary folder, never into bench/results), the items table and
the table of targets last; an item whose estimate exceeds what is left of the budget is skipped with a message
(estimates come from the item's measured time when it ran before); a slot for a provider that does not exist is
skipped with a message; a run killed by SIGTERM still writes RESULTS.md and copies it out; an item past its time
is stopped. Nothing here asserts a speed."""
import csv
import hashlib
import os
import re
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUITE = os.path.join(ROOT, "bench", "run_gpu_suite.sh")
BENCH = os.path.join(ROOT, "bench")
N_ITEMS = 18


@pytest.fixture(scope="module")
def gpu_suite():
    sys.path.insert(0, BENCH)
    try:
        import gpu_suite as mod
        yield mod
    finally:
        sys.path.remove(BENCH)


def _env():
    env = dict(os.environ, PYTHON=sys.executable, PYTHONUNBUFFERED="1")
    for k in ("SBGAN_BENCH_RESULTS", "SBGAN_SUITE_RUN", "SBGAN_DATA_ROOT"):
        env.pop(k, None)
    return env


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _committed_results():
    folder = os.path.join(BENCH, "results")
    out = {}
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def _seed_estimate(results, item, seconds, status="ok"):
    """A suite_items.csv row saying ``item`` took ``seconds`` in an earlier dry run on this machine."""
    os.makedirs(results, exist_ok=True)
    with open(os.path.join(results, "suite_items.csv"), "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["utc_time", "suite_run", "mode", "device", "item", "status", "seconds"])
        w.writeheader()
        w.writerow({"utc_time": "2026-01-01T00:00:00+00:00", "suite_run": "earlier-dry", "mode": "dry",
                    "device": "CPU (dry run)", "item": item, "status": status, "seconds": seconds})


@pytest.mark.slow
def test_dry_run_rows_summary_and_budget_skip(tmp_path):
    results, out = str(tmp_path / "results"), str(tmp_path / "out")
    _seed_estimate(results, "step-seg", 100000)          # measured once: far more than the budget
    before = _committed_results()
    proc = subprocess.run(["bash", SUITE, "--dry-run", "--budget", "900", "--results", results, "--out", out,
                           "--only", "ops-triton,ops-onehot,step-spade,step-e2e-compile,step-seg"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    text = proc.stdout
    assert proc.returncode == 0, text[-4000:] + proc.stderr[-2000:]
    assert _committed_results() == before, "a dry run must not write into bench/results"

    items = {r["item"]: r for r in _rows(os.path.join(results, "suite_items.csv")) if r["suite_run"] != "earlier-dry"}
    run = items["ops-triton"]["suite_run"]
    assert run.endswith("-dry") and all(r["suite_run"] == run for r in items.values())
    for name in ("ops-triton", "ops-onehot", "step-spade"):
        assert items[name]["status"] == "ok", items[name]
    assert "8 passed, 0 failed" in items["ops-triton"]["note"]
    # the budget: step-seg's measured time (x1.25) does not fit, so it is skipped with a message
    assert items["step-seg"]["status"] == "skipped"
    assert "needs about 125000 s (measured 100000 s" in items["step-seg"]["note"]
    assert "--- step-seg: skipped: needs about 125000 s" in text
    # the compiled provider's slot: skipped with a message whether or not the provider exists yet
    assert items["step-e2e-compile"]["status"] == "skipped"
    assert items["step-e2e-compile"]["note"].startswith(("slot: bench_train_step.py has no provider", "dry run:"))

    # rows of this run, in the temporary folder
    ops = [r for r in _rows(os.path.join(results, "triton_ops.csv")) if r["suite_run"] == run]
    assert {(r["op"], r["provider"]) for r in ops} >= {("gumbel_softmax_st", "ref"), ("gumbel_softmax_st", "triton"),
                                                       ("spade_norm[batch]", "triton"), ("argmax_one_hot", "triton")}
    assert all(float(r["median_ms"]) > 0 and float(r["copy_gbps"]) > 0 for r in ops)
    oh = [r for r in _rows(os.path.join(results, "one_hot.csv")) if r["suite_run"] == run]
    assert {(r["op"], r["provider"]) for r in oh} >= {("one_hot", "cpp"), ("onehot_conv2d", "cpp"),
                                                      ("onehot_conv2d", "ref")}
    steps = [r for r in _rows(os.path.join(results, "train_step.csv")) if r["suite_run"] == run]
    assert [(r["stage"], r["provider"]) for r in steps] == [("spade", "ref"), ("spade", "fast")]

    # the table of targets is the last thing printed; items that did not run read "not measured"
    tail = text[text.rindex("Targets (DRY RUN"):]
    assert "target" in tail and "| met?" in tail
    lines = {ln.split("|")[0].strip(): ln for ln in tail.splitlines() if "|" in ln}
    gumbel = next(v for k, v in lines.items() if k.startswith("Gumbel-softmax ST fwd+bwd 2x35x8x16"))
    assert "% of" in gumbel and "not measured" not in gumbel
    assert "not measured" not in next(v for k, v in lines.items() if k.startswith("spade step: fast "))
    assert "not measured" in next(v for k, v in lines.items() if k.startswith("seg step at 4x8"))
    assert "not measured" in next(v for k, v in lines.items() if k.startswith("e2e step: fast "))

    # copied out: the CSVs, RESULTS.md and the log (the device returns at most 8 files)
    copied = sorted(os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs)
    assert {"RESULTS.md", "gpu_suite.log", "results/suite_items.csv", "results/train_step.csv"} <= set(copied)
    assert len(copied) <= 8, copied
    md = open(os.path.join(out, "RESULTS.md"), encoding="utf-8").read()
    assert f"Run `{run}`" in md and "dry run on the CPU" in md and "| step-seg | skipped |" in md


def test_budget_smaller_than_every_item_skips_them_all(tmp_path):
    results = str(tmp_path / "results")
    proc = subprocess.run(["bash", SUITE, "--dry-run", "--budget", "4", "--results", results], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    rows = _rows(os.path.join(results, "suite_items.csv"))
    assert len(rows) == N_ITEMS and all(r["status"] == "skipped" for r in rows)
    assert proc.stdout.count(": skipped: needs about") >= 10
    tail = proc.stdout[proc.stdout.rindex("Targets (DRY RUN"):]
    body = [ln for ln in tail.splitlines()[3:] if "|" in ln]
    assert body and all(ln.rstrip().endswith("not measured") for ln in body), tail
    assert os.path.isfile(str(tmp_path / "RESULTS.md"))


@pytest.mark.slow
def test_killed_run_still_writes_its_report(tmp_path):
    results, out = str(tmp_path / "results"), str(tmp_path / "out")
    proc = subprocess.Popen(["bash", SUITE, "--dry-run", "--results", results, "--out", out,
                             "--only", "step-spade,step-seg"], cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen, deadline = [], time.monotonic() + 120
    try:
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("$ ") and "bench_train_step.py" in line:   # the step's process has started
                time.sleep(1.0)
                proc.send_signal(signal.SIGTERM)
                break
            assert time.monotonic() < deadline, "".join(seen)
        rest = proc.stdout.read()
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = "".join(seen) + rest
    assert rc == 128 + signal.SIGTERM, text[-3000:]
    assert "interrupted by signal SIGTERM" in text
    assert re.search(r"^step-spade\s+\| interrupted ", text, flags=re.M)
    assert re.search(r"^step-seg\s+\| not reached ", text, flags=re.M)
    assert "target" in text[text.rindex("Targets (DRY RUN"):]
    items = _rows(os.path.join(out, "results", "suite_items.csv"))
    assert [(r["item"], r["status"]) for r in items] == [("step-spade", "interrupted")]
    md = open(os.path.join(out, "RESULTS.md"), encoding="utf-8").read()
    assert "| step-spade | interrupted |" in md
    assert "interrupted by signal SIGTERM" in open(os.path.join(out, "gpu_suite.log"), encoding="utf-8").read()


@pytest.mark.slow
def test_item_past_its_time_is_stopped_and_recorded(gpu_suite, tmp_path):
    suite = gpu_suite.Suite(gpu_suite.parse_args(["--dry-run", "--budget", "10", "--results", str(tmp_path / "r")]))
    try:
        sleeper = gpu_suite.Item("sleeper", "sleeps past the budget", 1, 1,
                                 lambda s: [[sys.executable, "-c", "import time; print('up', flush=True); "
                                                                   "time.sleep(120)"]])
        t0 = time.monotonic()
        suite.run_item(sleeper)
        assert time.monotonic() - t0 < 30
    finally:
        suite.close()
    rec = suite.records[-1]
    assert rec["status"] == "timeout" and "stopped after" in rec["note"], rec
    assert _rows(os.path.join(str(tmp_path / "r"), "suite_items.csv"))[-1]["status"] == "timeout"
    assert os.path.isfile(str(tmp_path / "RESULTS.md"))


def test_failed_build_stops_the_suite(gpu_suite, tmp_path):
    suite = gpu_suite.Suite(gpu_suite.parse_args(["--dry-run", "--budget", "60", "--results", str(tmp_path / "r")]))
    try:
        fail = gpu_suite.Item("build", "fails", 1, 1, lambda s: [[sys.executable, "-c", "raise SystemExit(3)"]])
        never = gpu_suite.Item("step-spade", "must not run", 1, 1, lambda s: pytest.fail("ran after a failed build"))
        suite.run_items([fail, never])
    finally:
        suite.close()
    assert [(r["item"], r["status"]) for r in suite.records] == [("build", "failed"), ("step-spade", "not run")]
    assert suite.records[0]["note"] == "exit status 3"


def test_estimates_use_this_devices_last_measurement(gpu_suite, tmp_path):
    results = str(tmp_path / "r")
    suite = gpu_suite.Suite(gpu_suite.parse_args(["--dry-run", "--results", results]))
    try:
        item = next(it for it in gpu_suite.ITEMS if it.name == "step-spade")
        assert suite.estimate(item) == (item.dry_guess_s, "guess")
        base = {"utc_time": "t", "suite_run": "x", "mode": "dry", "device": "CPU (dry run)", "item": "step-spade"}
        rows = [dict(base, status="ok", seconds="40"),
                dict(base, status="ok", seconds="999", device="NVIDIA H200"),     # another device
                dict(base, status="ok", seconds="999", mode="gpu"),               # another mode
                dict(base, status="skipped", seconds="")]                         # never ran
        gpu_suite.report.append_rows(os.path.join(results, "suite_items.csv"), rows)
        est, src = suite.estimate(item)
        assert est == pytest.approx(40 * gpu_suite.MEASURED_MARGIN) and src.startswith("measured 40 s")
        gpu_suite.report.append_rows(os.path.join(results, "suite_items.csv"),
                                     [dict(base, status="timeout", seconds="30")])
        est, src = suite.estimate(item)
        assert est == pytest.approx(max(item.dry_guess_s, 60)) and src.startswith("stopped after 30 s")
    finally:
        suite.close()
    with pytest.raises(SystemExit, match="unknown item 'nope'"):
        gpu_suite.parse_args(["--only", "nope"])
    with pytest.raises(SystemExit, match="--budget"):
        gpu_suite.parse_args(["--budget", "0"])


def test_gpu_commands_are_valid_for_the_benchmarks(gpu_suite, tmp_path, monkeypatch):
    """The commands the suite runs on a GPU (which the dry run replaces by tiny ones) parse with each benchmark's
    own arguments, and the build never installs a torch."""
    monkeypatch.delenv("SBGAN_DATA_ROOT", raising=False)
    suite = gpu_suite.Suite(gpu_suite.parse_args(["--results", str(tmp_path / "r")]))
    assert suite.mode == "gpu" and suite.budget == 480
    import bench_one_hot
    import bench_train_step
    seen = set()
    for item in gpu_suite.ITEMS:
        cmds = item.commands(suite)
        if isinstance(cmds, str):
            assert item.name == "loader-vs-step", (item.name, cmds)
            continue
        if item.name == "step-seg-graphs":   # with and without CUDA graphs, the same compiled step at 4x8
            a = bench_train_step.parse_args(cmds[0][2:])
            assert a.provider_list == ["compiled", "compiled-graphs"] and a.seg_res_set == {4} and a.warmup >= 3
        for cmd in cmds:
            assert cmd[0] == sys.executable
            script, args = cmd[1], cmd[2:]
            seen.add(script)
            if script == "bench/bench_train_step.py":
                a = bench_train_step.parse_args(args)
                assert a.size in ("256x512", "256x256") and a.ngf == 64 and a.seg_width == 1 and a.no_report
                assert a.precision == "bf16" and not a.quick
            elif script == "bench/bench_one_hot.py":
                assert bench_one_hot.parse_args(args).device == "cuda"
            elif script == "-m" and args[0] == "pytest":
                assert "--junitxml" in " ".join(args) and not any("dry" in x for x in args)
            elif script == "bench/gpu_suite.py":
                assert args[0] in ("_build", "_check") and "--dry" not in args
    assert {"bench/bench_train_step.py", "bench/bench_one_hot.py", "-m", "bench/gpu_suite.py"} <= seen
    env = suite.env(gpu_suite.ITEMS[1])
    assert env["TRITON_INTERPRET"] == "0" and env["SBGAN_FAST_STRICT"] == "1" and env["SBGAN_BENCH_DRY"] == "0"
    build = gpu_suite.pip_build_command()
    assert build[1:5] == ["-m", "pip", "install", "--no-build-isolation"] and "--no-deps" in build
    parity = gpu_suite.ITEMS[1].commands(suite)[0]
    assert [f for f in gpu_suite.PARITY_FILES if f in parity] == gpu_suite.PARITY_FILES
    suite.close()


@pytest.mark.slow
def test_dry_parity_cases_exist(gpu_suite):
    """The dry run's parity cases name tests that exist (a renamed parametrization would make pytest fail)."""
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
                           *gpu_suite.DRY_PARITY], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert f"{len(gpu_suite.DRY_PARITY)} tests collected" in proc.stdout, proc.stdout[-2000:]


def test_targets_from_rows(gpu_suite):
    t = gpu_suite.suite_targets
    env = {"device": "GPU", "size": "256x512", "res": "256x512", "classes": "35", "upsampling": "more", "ngf": "64",
           "seg_width": "1", "batch": "8", "data": "synthetic", "preset": "cityscapes"}
    rows = {
        "triton_ops": [
            {"op": "gumbel_softmax_st", "mode": "fwd+bwd", "shape": "8x35x256x512", "dtype": "fp32", "layout": "nchw",
             "provider": "ref", "median_ms": "10", "gbps": "300", "copy_gbps": "4000"},
            {"op": "gumbel_softmax_st", "mode": "fwd+bwd", "shape": "8x35x256x512", "dtype": "fp32", "layout": "nchw",
             "provider": "triton", "median_ms": "2", "gbps": "3000", "copy_gbps": "4000"},
            {"op": "spade_norm[batch]", "mode": "fwd+bwd", "shape": "8x64x256x512", "dtype": "bf16",
             "layout": "channels_last", "provider": "ref", "median_ms": "3"},
            {"op": "spade_norm[batch]", "mode": "fwd+bwd", "shape": "8x64x256x512", "dtype": "bf16",
             "layout": "channels_last", "provider": "triton", "median_ms": "2"}],
        "train_step": [dict(env, stage="spade", provider="ref", images_per_s="10", peak_mem_mib="1000"),
                       dict(env, stage="spade", provider="fast", images_per_s="25", peak_mem_mib="500"),
                       dict(env, stage="spade", provider="fast+compile", images_per_s="30", peak_mem_mib="500"),
                       dict(env, stage="seg", res="4x8", provider="fast", images_per_s="100"),
                       dict(env, stage="seg", res="4x8", provider="fast+compile", images_per_s="150"),
                       dict(env, stage="seg", res="4x8", provider="compiled-graphs", images_per_s="600")],
    }
    lines = {ln["target"]: ln for ln in t.evaluate(rows)}
    g = lines["Gumbel-softmax ST fwd+bwd 8x35x256x512 fp32 nchw: triton vs ref"]
    assert g["measured"].startswith("5.00x, 75 %") and g["met"] == "yes"
    s = lines["SPADE norm fwd+bwd: triton vs ref (smallest over shapes)"]
    assert s["measured"].startswith("1.50x") and s["met"] == "no"
    assert lines["spade step: fast (bf16, channels-last) vs ref (fp32, NCHW)"]["met"] == "yes"
    c = lines["spade step: fast+compile vs ref"]
    assert c["measured"] == "3.00x, peak 500 MiB = 50 % of ref's" and c["met"] == "yes"
    g = lines["seg step at 4x8: compiled-graphs (CUDA graphs) vs fast+compile (without)"]
    assert g["measured"] == "4.00x (600.0 vs 150.0 img/s); 6.00x fast (eager, 100.0 img/s)" and g["met"] == "yes"
    for name in ("e2e step: fast (bf16, channels-last) vs ref (fp32, NCHW)",
                 "one-hot embedding (NCHW) vs F.one_hot(...).permute(...).float()"):
        assert lines[name]["measured"] == lines[name]["met"] == "not measured"


def test_readme_gives_the_fresh_machine_commands():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    assert "bash bench/run_gpu_suite.sh --budget 480" in readme
    assert "bash bench/run_gpu_suite.sh --dry-run" in readme
