"""The GPU suite under a time budget: build, parity tests, op microbenchmarks and training steps, in order of
importance, each item only when its estimated cost still fits; results are kept whatever happens.

    bash bench/run_gpu_suite.sh [--budget SECONDS] [--out DIR]        # on a CUDA machine (default budget 480 s)
    bash bench/run_gpu_suite.sh --dry-run [--budget SECONDS]           # the same script on the CPU, tiny shapes
    bash bench/run_gpu_suite.sh --list                                 # the items and their estimates

Items, in this order (``--only``/``--skip`` take comma lists of their names):

  build               the extension for this device (``pip install --no-build-isolation --no-deps -e .`` beside
                      the torch and Triton already installed, CUDA kernels required), unless it is already built
                      and newer than its sources (``--rebuild`` forces it); then a check that it loads
  parity              the kernel parity tests on the device, strict mode (``SBGAN_FAST_STRICT=1``)
  ops-triton          Gumbel-softmax, argmax one-hot and SPADE norm microbenchmarks at Cityscapes shapes (ms,
                      GB/s against the measured copy bandwidth), ref against triton
  ops-onehot          one-hot embedding and label-embedding convolution, ref against the CUDA kernels
  step-spade          spade training step at 256x512, authors' widths: ref fp32 NCHW vs fast bf16 channels-last
  step-e2e            the same for the e2e step
  step-spade-compile  the compiled provider (``compiled``: fast + compile=true) of the spade step
  step-e2e-compile    the same for the e2e step
  step-seg            seg step at 4x8 and 256x512, ref vs fast
  step-seg-graphs     seg step at 4x8 compiled with CUDA graphs (``compiled-graphs``) and without (``compiled``),
                      then the test that seg steps give the same results with and without them
(the compiled items are slots: skipped with a message if bench_train_step.py lacks their provider)
  ops-compile         the rest: torch.compile baselines of the op benchmarks, the gather embedding alone
  onehot-compile      (spade fast-no-gather), seg at the other resolutions, e2e-reuse, ADE-Indoor at 256x256,
  step-spade-nogather the loader against the step (when SBGAN_DATA_ROOT is set) and the loaders alone
  step-seg-all
  step-e2e-reuse
  step-ade
  loader-vs-step
  loaders

Budget: before each item its cost is estimated: the seconds it took the last time it ran on this device (times
1.25, from ``results/suite_items.csv``), else the guess written below; an item whose estimate exceeds what is
left of the budget (less a reserve for the report) is skipped with a message, and the next items are still
tried. A running item is stopped at what is left of the budget (and at 3x its estimate plus 2 minutes), keeping
every row it already wrote.

Results: every benchmark appends its rows the moment they are measured (``bench/results/*.csv``, each row with
this run's ``suite_run``); after every item and on SIGTERM/SIGINT/SIGHUP (and at the end) ``RESULTS.md`` is
regenerated and, with ``--out DIR``, ``results/*.csv``, ``RESULTS.md`` and the log are copied to DIR. The last
thing printed is the table of targets: target, goal, measured, met? ("not measured" where its item did not run).

``--dry-run``: the same items on the CPU with tiny shapes under Triton's interpreter (``TRITON_INTERPRET=1``), a
budget of 150 s unless given, rows in a temporary folder (``--results`` to choose it), never in bench/results.
Its numbers test the script, not any speed. The torch.compile items are not run there (the CPU compiler takes
minutes).
"""
from __future__ import annotations

import argparse
import ast
import datetime
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Union

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import report  # noqa: E402  (bench/report.py)
import suite_targets  # noqa: E402  (bench/suite_targets.py)

DEFAULT_BUDGET_S = 480.0
DRY_BUDGET_S = 150.0
RESERVE_S = {"gpu": 15.0, "dry": 3.0}  # kept for the report, the copy and the summary at the end
MEASURED_MARGIN = 1.25                 # a measured duration times this is the estimate
CHECK_ONLY_S = 20.0                    # the build item when the extension is up to date: an import and a check
CHECK_ONLY = "a check of the built extension"
OUT_FILES = 8                          # a lent device machine returns at most this many files from its $OUT
SUITE_CSV = "suite_items.csv"
PARITY_FILES = ["tests/test_gumbel.py", "tests/test_spade_norm.py", "tests/test_one_hot.py",
                "tests/test_onehot_conv2d.py", "tests/test_ops_compile.py"]
# a few cases of each parity file (the interpreter runs about a launch per second on a busy 2-core machine)
DRY_PARITY = ["tests/test_gumbel.py::test_explicit_noise_parity[nchw-dtype0]",
              "tests/test_spade_norm.py::test_parity[True-batch-nchw-dtype0]",
              "tests/test_one_hot.py::test_parity_dtypes_formats[35-no-dc-down-nearest-exact]",
              "tests/test_onehot_conv2d.py::test_parity_fp32_fp64[35-dc255-up2-nearest]"]
# Cityscapes at 256x512, 35 classes, SPADE 'more', the authors' widths (ngf 64, seg width 1), batch 8
CS = ["--preset", "cityscapes", "--size", "256x512", "--classes", "35", "--num-upsampling-layers", "more",
      "--ngf", "64", "--seg-width", "1", "--batch", "8", "--precision", "bf16", "--warmup", "3", "--steps", "10"]
ADE = ["--preset", "ade_indoor", "--size", "256x256", "--classes", "95", "--num-upsampling-layers", "normal",
       "--ngf", "64", "--seg-width", "1", "--batch", "8", "--precision", "bf16", "--warmup", "3", "--steps", "10"]
# the dry run: bench_train_step's --quick (32x64, ngf 8, SPADE 'normal') with smaller seg networks, one step
DRY_STEP = ["--quick", "--set", "seg.z_dim=32", "--seg-width", "0.0625", "--threads", "1", "--warmup", "0",
            "--steps", "1"]
DRY_ADE = ["--preset", "ade_indoor", "--classes", "95", "--size", "32x32"] + DRY_STEP
NO_COMPILE_ON_CPU = "dry run: torch.compile is not run on the CPU (its compiler takes minutes here)"


class Interrupted(Exception):
    def __init__(self, signum: int):
        super().__init__(f"signal {signal.Signals(signum).name}")
        self.signum = signum


# ------------------------------------------------------------------------------------------ items
Command = List[str]


@dataclass
class Item:
    name: str
    what: str
    guess_s: float                 # stated guess of its cost on an H100/H200 until it has run there
    dry_guess_s: float             # the same for the dry run on a CPU
    commands: Callable[["Suite"], Union[List[Command], str]]   # the commands to run, or why it is skipped
    env: Dict[str, str] = field(default_factory=dict)
    junit: bool = False            # a pytest run: its summary (passed/failed/skipped) becomes the item's note


def _py(s: "Suite", *args) -> Command:
    return [s.python, *args]


def _step(s: "Suite", stages, providers, gpu_extra=(), dry_extra=(), ade=False) -> List[Command]:
    shape = (DRY_ADE if ade else DRY_STEP) if s.dry else (ADE if ade else CS)
    return [_py(s, "bench/bench_train_step.py", *shape, "--stages", stages, "--providers", providers,
                "--no-report", *(dry_extra if s.dry else gpu_extra))]


def _slot(s: "Suite", names, stages, seg_res=None, before=()) -> Union[List[Command], str]:
    """A provider that bench_train_step.py may not have: its commands (after the ``before`` providers, each the
    first of its names that bench_train_step.py offers), or why the slot is skipped."""
    provs = []
    for group in list(before) + [names]:
        prov = s.train_provider(group)
        if prov is None:
            return (f"slot: bench_train_step.py has no provider {' or '.join(repr(n) for n in group)} yet "
                    "(kept for when it exists)")
        provs.append(prov)
    if s.dry:
        return NO_COMPILE_ON_CPU
    extra = ["--seg-res", seg_res, "--steps", "30"] if seg_res else []
    return _step(s, stages, ",".join(provs), gpu_extra=extra)


def _seg_graphs(s: "Suite") -> Union[List[Command], str]:
    """The seg step at 4x8 compiled without and with CUDA graphs, then the test that seg steps give the same
    results with and without them on this device (``tests/test_cuda_graphs.py``, its ``gpu`` test)."""
    cmds = _slot(s, suite_targets.GRAPH_PROVIDERS, "seg", seg_res="4", before=[suite_targets.COMPILE_PROVIDERS])
    if isinstance(cmds, str):
        return cmds
    return cmds + [_py(s, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                       f"--junitxml={s.junit_path('step-seg-graphs')}", "-m", "gpu", "tests/test_cuda_graphs.py")]


def _build(s: "Suite") -> List[Command]:
    if s.dry:
        return [_py(s, "bench/gpu_suite.py", "_check", "--dry")]
    if not s.rebuild and s.extension_up_to_date():
        s.say("build: the extension is newer than csrc/, setup.py and csrc_build.py: checking it only "
              "(--rebuild builds anyway)")
        return [_py(s, "bench/gpu_suite.py", "_check")]
    return [_py(s, "bench/gpu_suite.py", "_build"), _py(s, "bench/gpu_suite.py", "_check")]


def _parity(s: "Suite") -> List[Command]:
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={s.junit_path('parity')}"]
    if s.dry:
        return [_py(s, *args, *DRY_PARITY)]
    if s.has_xdist:   # one worker per file: the Triton compiles of the four files overlap
        args += ["-n", "4", "--dist", "loadfile"]
    return [_py(s, *args, *PARITY_FILES)]


def _ops_triton(s: "Suite", k: str) -> List[Command]:
    return [_py(s, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={s.junit_path('ops-' + k)}",
                "bench/bench_triton_ops.py", "-k", "not compile" if k == "triton" else "compile")]


def _loader_vs_step(s: "Suite") -> Union[List[Command], str]:
    root = os.environ.get("SBGAN_DATA_ROOT", "")
    if not root:
        return ("set SBGAN_DATA_ROOT to a dataset root in its official layout (and SBGAN_DATA_DATASET="
                "cityscapes|ade_indoor|ade20k) to time the loader against the step")
    dataset = os.environ.get("SBGAN_DATA_DATASET", "cityscapes")
    shapes = {"cityscapes": CS, "ade_indoor": ADE,
              "ade20k": [a if a != "95" else "151" for a in ADE]}
    if dataset not in shapes:
        return f"SBGAN_DATA_DATASET={dataset!r}: expected cityscapes, ade_indoor or ade20k"
    shape = DRY_STEP if s.dry else shapes[dataset]
    extra = os.environ.get("SBGAN_DATA_ARGS", "").split()
    return [_py(s, "bench/bench_train_step.py", *shape, "--steps", "2" if s.dry else "20", "--providers", "fast",
                "--stages", "spade,seg", "--seg-res", "all", "--loader", "torch" if s.dry else "torch,dali",
                "--workers", "0" if s.dry else "8", "--dataset", dataset, "--data-root", root, *extra,
                "--no-report")]


ITEMS: List[Item] = [
    Item("build", "the extension for this device, then a check that it loads with its CUDA kernels", 120, 10,
         _build),
    Item("parity", "kernel parity tests on the device, strict mode", 120, 30, _parity,
         env={"SBGAN_FAST_REQUIRE_EXT": "1"}, junit=True),
    Item("ops-triton", "Gumbel, argmax one-hot, SPADE norm: ref vs triton at Cityscapes shapes", 75, 25,
         lambda s: _ops_triton(s, "triton"), junit=True),
    Item("ops-onehot", "one-hot embedding and label-embedding convolution: ref vs the CUDA kernels", 30, 15,
         lambda s: [_py(s, "bench/bench_one_hot.py", "--what", "one_hot,conv",
                        *(["--device", "cpu", "--tiny"] if s.dry else ["--device", "cuda"]))]),
    Item("step-spade", "spade step 256x512, authors' widths: ref fp32 NCHW vs fast bf16 channels-last", 60, 25,
         lambda s: _step(s, "spade", "ref,fast")),
    Item("step-e2e", "e2e step 256x512, authors' widths: ref vs fast", 80, 35, lambda s: _step(s, "e2e", "ref,fast")),
    Item("step-spade-compile", "spade step: fast + torch.compile (images/s, peak memory)", 200, 60,
         lambda s: _slot(s, suite_targets.COMPILE_PROVIDERS, "spade")),
    Item("step-e2e-compile", "e2e step: fast + torch.compile (images/s, peak memory)", 240, 60,
         lambda s: _slot(s, suite_targets.COMPILE_PROVIDERS, "e2e")),
    Item("step-seg", "seg step at 4x8 and 256x512: ref vs fast", 60, 25,
         lambda s: _step(s, "seg", "ref,fast", gpu_extra=["--seg-res", "4,256", "--steps", "30"],
                         dry_extra=["--seg-res", "4,32"])),
    Item("step-seg-graphs", "seg step at 4x8 compiled, without and with CUDA graphs; then their parity test", 240,
         40, _seg_graphs, junit=True),
    Item("ops-compile", "torch.compile baselines of the op microbenchmarks", 300, 120,
         lambda s: NO_COMPILE_ON_CPU if s.dry else _ops_triton(s, "compile"), junit=True),
    Item("onehot-compile", "torch.compile baseline of the label-embedding convolution", 120, 60,
         lambda s: NO_COMPILE_ON_CPU if s.dry else [_py(s, "bench/bench_one_hot.py", "--device", "cuda",
                                                        "--what", "conv-compile")]),
    Item("step-spade-nogather", "spade step: fast without the gather embedding (its gain alone)", 60, 20,
         lambda s: _step(s, "spade", "fast-no-gather")),
    Item("step-seg-all", "seg step at the other resolutions: ref vs fast", 150, 30,
         lambda s: _step(s, "seg", "ref,fast", gpu_extra=["--seg-res", "8,16,32,64,128", "--steps", "20"],
                         dry_extra=["--seg-res", "8,16"])),
    Item("step-e2e-reuse", "e2e step reusing the generator update's fakes (fast)", 70, 25,
         lambda s: _step(s, "e2e-reuse", "fast")),
    Item("step-ade", "ADE-Indoor 256x256, 95 classes: spade and e2e, ref vs fast", 200, 50,
         lambda s: _step(s, "spade,e2e", "ref,fast", ade=True)),
    Item("loader-vs-step", "the loader against the step at the real shape (SBGAN_DATA_ROOT)", 200, 40,
         _loader_vs_step),
    Item("loaders", "loader throughput alone on synthesised Cityscapes and ADE files", 120, 40,
         lambda s: [_py(s, "bench/bench_loaders.py", *(["--n", "2", "--workers", "0"] if s.dry
                                                       else ["--n", "16", "--device", "cuda"]))]),
]
ITEM_NAMES = [it.name for it in ITEMS]


# ------------------------------------------------------------------------------------------ the run
class Suite:
    def __init__(self, args):
        self.dry = args.dry_run
        self.mode = "dry" if self.dry else "gpu"
        self.python = sys.executable
        default = DRY_BUDGET_S if self.dry else DEFAULT_BUDGET_S
        self.budget = float(args.budget if args.budget is not None else default)
        self.reserve = RESERVE_S[self.mode]
        self.rebuild = args.rebuild
        self.start = time.monotonic()
        self.run_id = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + f"-{self.mode}"
        if args.results:
            self.results = os.path.abspath(args.results)
        elif self.dry:
            self.results = os.path.join(tempfile.mkdtemp(prefix="sbgan_gpu_suite_dry_"), "results")
        else:
            self.results = os.path.join(HERE, "results")
        os.makedirs(self.results, exist_ok=True)
        self.results_md = os.path.join(os.path.dirname(self.results), "RESULTS.md")
        self.out = os.path.abspath(args.out) if args.out else None
        self.scratch = tempfile.mkdtemp(prefix="sbgan_gpu_suite_")
        self.log_path = os.path.join(self.scratch, "gpu_suite.log")
        self._log = open(self.log_path, "a", encoding="utf-8")
        self._lock = threading.Lock()
        self.device = "CPU (dry run)" if self.dry else _gpu_name()
        self.has_xdist = _importable("xdist")
        self.records: List[dict] = []
        self.child: Optional[subprocess.Popen] = None
        self._warned_out = False

    # -- output ----------------------------------------------------------------------------------
    def say(self, text: str = "") -> None:
        with self._lock:
            sys.stdout.write(text + "\n")
            sys.stdout.flush()
            self._log.write(text + "\n")
            self._log.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        """Seconds an item may still use (the reserve for the report excluded)."""
        return self.budget - self.elapsed() - self.reserve

    def junit_path(self, item_name: str) -> str:
        return os.path.join(self.scratch, f"{item_name}.xml")

    def env(self, item: Item) -> Dict[str, str]:
        env = dict(os.environ)
        env.update({"SBGAN_FAST_STRICT": "1", "SBGAN_SUITE_RUN": self.run_id, "SBGAN_BENCH_RESULTS": self.results,
                    "PYTHONUNBUFFERED": "1", "PIP_ROOT_USER_ACTION": "ignore", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                    "TRITON_INTERPRET": "1" if self.dry else "0", "SBGAN_BENCH_DRY": "1" if self.dry else "0"})
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.update(item.env)
        return env

    # -- what is there ---------------------------------------------------------------------------
    def train_provider(self, names) -> Optional[str]:
        """The first of ``names`` that bench_train_step.py offers as a provider: read from its ``PROVIDERS``
        literal (without importing torch), else from any quoted mention of the name in its source."""
        with open(os.path.join(HERE, "bench_train_step.py"), encoding="utf-8") as f:
            src = f.read()
        offered = None
        try:
            for node in ast.parse(src).body:
                if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "PROVIDERS"
                                                         for t in node.targets)):
                    offered = set(ast.literal_eval(node.value))
        except (SyntaxError, ValueError, TypeError):
            offered = None
        if offered is None:
            offered = {n for n in names if f'"{n}"' in src or f"'{n}'" in src}
        return next((n for n in names if n in offered), None)

    def extension_up_to_date(self) -> bool:
        so = os.path.join(REPO, "sbgan_fast", "_C" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
        if not os.path.isfile(so):
            return False
        sources = [os.path.join(REPO, "setup.py"), os.path.join(REPO, "csrc_build.py")]
        for root, _, files in os.walk(os.path.join(REPO, "csrc")):
            sources += [os.path.join(root, f) for f in files]
        built = os.path.getmtime(so)
        return all(os.path.getmtime(p) < built for p in sources if os.path.exists(p))

    # -- estimates -------------------------------------------------------------------------------
    def estimate(self, item: Item):
        """(seconds, where the figure comes from) of ``item`` on this device."""
        guess = item.dry_guess_s if self.dry else item.guess_s
        last = None
        path = os.path.join(self.results, SUITE_CSV)
        if os.path.isfile(path):
            for r in report.read_rows(path):
                if (r.get("item") == item.name and r.get("mode") == self.mode and r.get("device") == self.device
                        and r.get("status") in ("ok", "failed", "timeout") and _f(r.get("seconds")) is not None
                        and r.get("estimate_from") != CHECK_ONLY):   # a build that only checked says nothing of a build
                    last = r
        if last is None:
            return guess, "guess"
        sec = _f(last["seconds"])
        when = last.get("utc_time", "?")
        if last["status"] == "ok":
            return sec * MEASURED_MARGIN, f"measured {sec:.0f} s on {when}"
        if last["status"] == "timeout":
            return max(guess, 2 * sec), f"stopped after {sec:.0f} s on {when}"
        return max(guess, sec * MEASURED_MARGIN), f"failed after {sec:.0f} s on {when}"

    # -- one item --------------------------------------------------------------------------------
    def run_item(self, item: Item) -> None:
        rec = {"utc_time": _utc(), "suite_run": self.run_id, "mode": self.mode, "device": self.device,
               "item": item.name, "status": "", "seconds": "", "estimate_s": "", "estimate_from": "",
               "budget_s": f"{self.budget:.0f}", "left_s": "", "note": ""}
        try:
            cmds = item.commands(self)
        except Exception as e:  # noqa: BLE001  (a broken item must not end the suite)
            cmds = f"could not prepare the item: {type(e).__name__}: {e}"
        est, src = self.estimate(item)
        if item.name == "build" and isinstance(cmds, list) and len(cmds) == 1:   # up to date: the check alone
            est, src = min(est, CHECK_ONLY_S), CHECK_ONLY
        left = self.left()
        rec.update(estimate_s=f"{est:.0f}", estimate_from=src, left_s=f"{max(left, 0):.0f}")
        if isinstance(cmds, str):
            rec.update(status="skipped", note=cmds)
            self.say(f"--- {item.name}: skipped: {cmds}")
            return self.record(rec)
        if est > left:
            note = f"needs about {est:.0f} s ({src}), {max(left, 0):.0f} s of the budget left"
            rec.update(status="skipped", note=note)
            self.say(f"--- {item.name}: skipped: {note}")
            return self.record(rec)
        cap = min(left, 3 * est + 120)
        self.say(f"\n==> {item.name}: {item.what} (estimate {est:.0f} s, {src}; {left:.0f} s left; "
                 f"stopped after {cap:.0f} s)")
        t0 = time.monotonic()
        status, note = "ok", ""
        try:
            for cmd in cmds:
                self.say("$ " + " ".join(cmd))
                rc = self.run_command(cmd, self.env(item), cap - (time.monotonic() - t0))
                if rc is None:
                    status, note = "timeout", f"stopped after {time.monotonic() - t0:.0f} s (budget or cap)"
                    break
                if rc != 0:
                    status, note = "failed", f"exit status {rc}"
                    break
        except Interrupted as e:
            status, note = "interrupted", str(e)
            raise
        finally:
            rec.update(status=status, seconds=f"{time.monotonic() - t0:.1f}")
            summary = _junit_summary(self.junit_path(item.name)) if item.junit else ""
            rec["note"] = "; ".join(x for x in (note, summary) if x)
            self.say(f"--- {item.name}: {status} in {float(rec['seconds']):.0f} s"
                     + (f" ({rec['note']})" if rec["note"] else ""))
            self.record(rec)

    def run_items(self, items: List[Item]) -> None:
        """Every item in order; after a build that failed or ran out of time the rest are recorded as not run."""
        for i, it in enumerate(items):
            self.run_item(it)
            if it.name == "build" and self.records[-1]["status"] in ("failed", "timeout"):   # nothing after it can pass
                for later in items[i + 1:]:
                    self.record({"utc_time": _utc(), "suite_run": self.run_id, "mode": self.mode,
                                 "device": self.device, "item": later.name, "status": "not run", "seconds": "",
                                 "estimate_s": "", "estimate_from": "", "budget_s": f"{self.budget:.0f}",
                                 "left_s": "", "note": "the build item did not succeed (see the log)"})
                return

    def run_command(self, cmd: Command, env: Dict[str, str], timeout: float) -> Optional[int]:
        """Run ``cmd`` (output to the terminal and the log); its exit status, or None when stopped at ``timeout``."""
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_die_with_parent)
        self.child = proc
        reader = threading.Thread(target=self._pump, args=(proc.stdout,), daemon=True)
        reader.start()
        try:
            proc.wait(timeout=max(timeout, 0.1))
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            self.say(f"!!! stopped after {timeout:.0f} s: {' '.join(cmd[:3])} ...")
            self.kill_child(grace=10)
            rc = None
        except BaseException:   # interrupted: stop the child at once, the report comes first
            self.kill_child(grace=2)
            raise
        finally:
            reader.join(timeout=10)
            self.child = None
        return rc

    def _pump(self, stream) -> None:
        for raw in iter(stream.readline, b""):
            self.say(raw.decode("utf-8", "replace").rstrip("\n"))

    def kill_child(self, grace: float = 2) -> None:
        """SIGTERM to the child's process group, SIGKILL after ``grace`` seconds."""
        proc = self.child
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5)):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    # -- records and report ----------------------------------------------------------------------
    def record(self, rec: dict) -> None:
        self.records.append(rec)
        report.append_rows(os.path.join(self.results, SUITE_CSV), [rec])
        self.publish()

    def run_rows(self) -> Dict[str, List[dict]]:
        """Rows of every CSV measured by this run (``suite_run`` column)."""
        out = {}
        for name in ("triton_ops", "one_hot", "train_step", "loader_vs_step"):
            path = os.path.join(self.results, name + ".csv")
            if os.path.isfile(path):
                out[name] = [r for r in report.read_rows(path) if r.get("suite_run") == self.run_id]
        return out

    def publish(self) -> None:
        """Regenerate RESULTS.md and copy results, RESULTS.md and the log to --out (never raises)."""
        try:
            notes = os.path.join(HERE, "RESULTS_NOTES.md") if not self.dry else os.path.join(self.scratch, "none")
            with _quiet():
                report.main(["--results", self.results, "--out", self.results_md, "--notes", notes])
        except Exception as e:  # noqa: BLE001
            self.say(f"!!! RESULTS.md could not be regenerated: {type(e).__name__}: {e}")
        if not self.out:
            return
        try:
            os.makedirs(os.path.join(self.out, "results"), exist_ok=True)
            for f in sorted(os.listdir(self.results)):
                if f.endswith(".csv"):
                    shutil.copy2(os.path.join(self.results, f), os.path.join(self.out, "results", f))
            if os.path.isfile(self.results_md):
                shutil.copy2(self.results_md, os.path.join(self.out, "RESULTS.md"))
            with self._lock:
                self._log.flush()
                shutil.copy2(self.log_path, os.path.join(self.out, "gpu_suite.log"))
            n = sum(len(files) for _, _, files in os.walk(self.out))
            if n > OUT_FILES and not self._warned_out:
                self._warned_out = True
                self.say(f"!!! {self.out} holds {n} files; a lent device machine returns at most {OUT_FILES}")
        except OSError as e:
            self.say(f"!!! could not copy the results to {self.out}: {e}")

    def summary(self) -> str:
        lines = suite_targets.evaluate(self.run_rows())
        where = ("DRY RUN on the CPU: tiny shapes, these numbers test the script and measure nothing" if self.dry
                 else self.device)
        head = f"Targets ({where}; suite run {self.run_id}, rows of this run only)"
        return head + "\n" + suite_targets.text_table(lines)

    def items_table(self) -> str:
        rows = [{"item": r["item"], "status": r["status"], "seconds": r["seconds"] or "-",
                 "estimate": f"{r['estimate_s']} ({r['estimate_from']})", "note": r["note"]} for r in self.records]
        if not rows:
            return "(no item was reached)"
        cols = ["item", "status", "seconds", "estimate", "note"]
        width = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in cols}
        out = [" | ".join(c.ljust(width[c]) for c in cols), "-+-".join("-" * width[c] for c in cols)]
        out += [" | ".join(str(r[c]).ljust(width[c]) for c in cols) for r in rows]
        return "\n".join(out)

    def close(self):
        self._log.close()


# ------------------------------------------------------------------------------------------ helpers
def _f(x) -> Optional[float]:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _utc() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _importable(name: str) -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _gpu_name() -> str:
    """The GPU's name from nvidia-smi (no torch import here), as torch.cuda.get_device_name reports it."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout.strip().splitlines()
        return out[0].strip() if out else "cuda"
    except (OSError, subprocess.SubprocessError):
        return "cuda"


def _die_with_parent() -> None:
    """In the child: be killed when the suite dies (even by SIGKILL), Linux only."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001
        pass


def _junit_summary(path: str) -> str:
    if not os.path.isfile(path):
        return ""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError:
        return ""
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    n = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = n["tests"] - n["failures"] - n["errors"] - n["skipped"]
    failed = [f"{c.get('classname', '').split('.')[-1]}::{c.get('name')}" for s in suites for c in s.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    text = f"{passed} passed, {n['failures'] + n['errors']} failed, {n['skipped']} skipped"
    if failed:
        text += ": failed " + ", ".join(failed[:5]) + (" ..." if len(failed) > 5 else "")
    return text


class _quiet:
    """Silence report.main's 'wrote ...' line."""

    def __enter__(self):
        self._old = sys.stdout
        sys.stdout = open(os.devnull, "w")

    def __exit__(self, *exc):
        sys.stdout.close()
        sys.stdout = self._old


# ------------------------------------------------------------------------------------------ sub-commands
def pip_build_command() -> Command:
    """The build: an editable install beside the torch already there (no build isolation, no dependencies: it
    never installs or replaces a torch)."""
    return [sys.executable, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-input", "-e", REPO]


def _cmd_build() -> int:
    """pip install --no-build-isolation --no-deps -e . with the CUDA kernels for this device's architecture."""
    import torch
    if not torch.cuda.is_available():
        print("build: no CUDA device is visible to torch; on a machine without a GPU use --dry-run", flush=True)
        return 2
    major, minor = torch.cuda.get_device_capability()
    env = dict(os.environ, SBGAN_FAST_FORCE_CUDA="1")
    env.setdefault("TORCH_CUDA_ARCH_LIST", f"{major}.{minor}")
    cmd = pip_build_command()
    print(f"build: torch {torch.__version__} (CUDA {torch.version.cuda}), {torch.cuda.get_device_name()}, "
          f"TORCH_CUDA_ARCH_LIST={env['TORCH_CUDA_ARCH_LIST']}\n$ {' '.join(cmd)}", flush=True)
    return subprocess.call(cmd, env=env)


def _cmd_check(dry: bool) -> int:
    """The extension loads (with its CUDA kernels on a GPU) beside the torch and Triton installed."""
    import torch
    from sbgan_fast.ops import _cpp
    try:
        import triton
        tv = triton.__version__
    except ImportError:
        tv = "not installed"
    err = _cpp.extension_error()
    cuda = torch.cuda.is_available()
    kernels = err is None and _cpp.cuda_compiled()
    print(f"check: torch {torch.__version__} (CUDA {torch.version.cuda}), Triton {tv}, "
          f"device {torch.cuda.get_device_name() if cuda else 'CPU'}, extension "
          f"{'loaded' if err is None else err}, CUDA kernels {'yes' if kernels else 'no'}", flush=True)
    if dry:
        print("check: dry run: the build step on a GPU runs `pip install --no-build-isolation --no-deps -e .` "
              "(CUDA kernels required); here it only checks the extension built for this machine", flush=True)
        return 0 if err is None else 1
    if not cuda:
        print("check: no CUDA device is visible to torch", flush=True)
        return 1
    if not kernels:
        print(f"check: the extension has no CUDA kernels; {_cpp.CUDA_BUILD_FIX}", flush=True)
        return 1
    return 0


# ------------------------------------------------------------------------------------------ main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=float, default=None,
                   help=f"seconds for the whole run (default {DEFAULT_BUDGET_S:.0f}; "
                        f"{DRY_BUDGET_S:.0f} with --dry-run)")
    p.add_argument("--out", default=None, help="copy results/*.csv, RESULTS.md and the log here (e.g. $OUT)")
    p.add_argument("--results", default=None, help="folder of the CSVs (default bench/results; a temporary folder "
                                                   "with --dry-run)")
    p.add_argument("--dry-run", action="store_true", help="the same items on the CPU, tiny shapes, Triton's "
                                                         "interpreter, a temporary results folder")
    p.add_argument("--only", default=None, help="comma list of items to run (others are not attempted)")
    p.add_argument("--skip", default=None, help="comma list of items not to attempt")
    p.add_argument("--rebuild", action="store_true", help="build the extension even when it looks up to date")
    p.add_argument("--list", action="store_true", help="print the items with their estimates and exit")
    args = p.parse_args(argv)
    if args.budget is not None and args.budget <= 0:
        raise SystemExit(f"--budget {args.budget:g}: expected a positive number of seconds")
    for opt in ("only", "skip"):
        names = [n for n in (getattr(args, opt) or "").split(",") if n]
        bad = [n for n in names if n not in ITEM_NAMES]
        if bad:
            raise SystemExit(f"--{opt}: unknown item {bad[0]!r}; items: {', '.join(ITEM_NAMES)}")
        setattr(args, opt, names or None)
    return args


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv[:1] == ["_build"]:
        return _cmd_build()
    if argv[:1] == ["_check"]:
        return _cmd_check("--dry" in argv[1:])
    args = parse_args(argv)
    suite = Suite(args)
    items = [it for it in ITEMS if (args.only is None or it.name in args.only)
             and (args.skip is None or it.name not in args.skip)]
    if args.list:
        for it in items:
            est, src = suite.estimate(it)
            print(f"{it.name:20s} {est:6.0f} s  ({src})  {it.what}")
        return 0

    def on_signal(signum, frame):
        raise Interrupted(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    suite.say(f"GPU suite {'DRY RUN (CPU, tiny shapes, Triton interpreter) ' if suite.dry else ''}run {suite.run_id}: "
              f"budget {suite.budget:.0f} s, device {suite.device}, results {suite.results}, log {suite.log_path}"
              + (f", copied to {suite.out}" if suite.out else ""))
    interrupted = None
    try:
        suite.run_items(items)
    except Interrupted as e:
        interrupted = e
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):   # the wrap-up is not interrupted again
            signal.signal(sig, signal.SIG_IGN)
        suite.kill_child()
        if interrupted is not None:
            suite.say(f"\n!!! interrupted by {interrupted} after {suite.elapsed():.0f} s: writing what was measured")
            done = {r["item"] for r in suite.records}
            for it in items:
                if it.name not in done:
                    suite.records.append({"item": it.name, "status": "not reached", "seconds": "", "estimate_s": "-",
                                          "estimate_from": "interrupted", "note": ""})
        suite.publish()
        failed = [r["item"] for r in suite.records if r["status"] in ("failed", "timeout")]
        suite.say(f"\nItems ({suite.elapsed():.0f} s of a {suite.budget:.0f} s budget):\n{suite.items_table()}")
        suite.say(f"\nRESULTS.md: {suite.results_md}" + (f" (copied to {suite.out})" if suite.out else ""))
        suite.say("\n" + suite.summary())
        suite.publish()   # the log with the summary
        suite.close()
    if interrupted is not None:
        return 128 + interrupted.signum
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
