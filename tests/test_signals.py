"""SIGTERM, SIGINT and SIGUSR1 stop training after the current step with a checkpoint and a way to resume;
a second Ctrl-C exits at once; under torchrun every process stops at the same step."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from sbgan_fast.errors import Interrupted
from sbgan_fast.train import checkpoint as ckpt_io
from sbgan_fast.train.run import StopSignals
from sbgan_fast.train.trainer import Trainer, train

from tiny import TINY, tiny_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a seg stage long enough to be interrupted; no periodic checkpoints: the one after the signal is the test
LONG = TINY + ["stages=seg", "seg.epochs_per_phase=50", "ckpt_every=0", "log_every=1", "sample_every=0",
               "monitor_every=0"]


def _steps(out):
    path = os.path.join(out, "stats.jsonl")
    if not os.path.isfile(path):
        return []
    return [json.loads(line)["step"] for line in open(path) if line.endswith("\n")]


def _start(out, extra_env=None, args=(), **popen):
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(extra_env or {}))
    cmd = [sys.executable, "-m", "sbgan_fast", "train", "--out", str(out), "--device", "cpu", *args, *LONG]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            **popen)


def _wait_for_steps(out, n, procs, timeout=300):
    deadline = time.monotonic() + timeout
    while len(_steps(out)) < n:
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"training exited early ({p.returncode}): {p.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail("training did not start in time")
        time.sleep(0.2)


def _finish(procs, timeout=300):
    try:
        return [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.mark.slow
def test_sigterm_stops_after_the_step_with_a_checkpoint(tmp_path):
    sig = signal.SIGTERM
    out = tmp_path / "r"
    proc = _start(out)
    _wait_for_steps(out, 2, [proc])
    proc.send_signal(sig)
    (_, err), = _finish([proc])
    assert proc.returncode == 128 + sig, err
    ck = ckpt_io.load_checkpoint(str(out / "checkpoints" / "seg-latest.pt"))
    steps = _steps(out)
    assert ck["step"] == steps[-1] >= 2, (ck["step"], steps)     # nothing trained after the checkpoint
    assert f"{signal.Signals(sig).name} received" in err and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert "to continue, run sbgan-fast train" in last and last.endswith("--resume"), err
    assert not (out / "run.lock").exists()
    # and the printed command continues the run (two more steps)
    r = subprocess.run([sys.executable, "-m", "sbgan_fast", "train", "--out", str(out), "--device", "cpu", *LONG,
                        "--max-steps", str(ck["step"] + 2), "--resume"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert _steps(out) == list(range(1, ck["step"] + 3))


@pytest.mark.slow
def test_a_signal_to_the_whole_process_group_spares_the_loader_workers(tmp_path):
    """torchrun and a terminal's Ctrl-C signal the whole process group, data-loader workers included: the
    workers ignore it and the run stops as with a signal to the main process alone."""
    out = tmp_path / "r"
    proc = _start(out, args=["data.num_workers=2"], start_new_session=True)
    _wait_for_steps(out, 2, [proc])
    os.killpg(proc.pid, signal.SIGTERM)
    (_, err), = _finish([proc])
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err and "exited unexpectedly" not in err
    assert ckpt_io.load_checkpoint(str(out / "checkpoints" / "seg-latest.pt"))["step"] == _steps(out)[-1]


@pytest.mark.slow
def test_ctrl_c_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    full = train(tiny_cfg(tmp_path / "a", "stages=seg", max_steps=4))
    t = Trainer(tiny_cfg(tmp_path / "b", "stages=seg", "ckpt_every=0", max_steps=4))
    updates = []

    def ctrl_c_during_step_two(grads, losses):
        updates.append(1)
        if len(updates) == 3:                       # the G update of step 2
            os.kill(os.getpid(), signal.SIGINT)
    t.updater.on_gradients = ctrl_c_during_step_two
    with pytest.raises(Interrupted) as info:
        t.run()
    assert info.value.signum == signal.SIGINT and info.value.checkpoint.endswith("seg-latest.pt")
    assert ckpt_io.load_checkpoint(info.value.checkpoint)["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # the handlers are restored
    resumed = train(tiny_cfg(tmp_path / "b", "stages=seg", "ckpt_every=0", max_steps=4), resume=True)
    for name in ("G_seg", "D_seg"):
        a, b = full.nets[name].state_dict(), resumed.nets[name].state_dict()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}.{k}"


def test_a_second_ctrl_c_exits_at_once():
    before = signal.getsignal(signal.SIGINT)        # Python's default, or SIG_IGN in a background job
    s = StopSignals(say=False)
    assert s.install()
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        assert s.received == signal.SIGUSR1
        os.kill(os.getpid(), signal.SIGTERM)        # repeated: ignored, still stopping after the step
        assert s.received == signal.SIGUSR1
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
    finally:
        s.restore()
    assert signal.getsignal(signal.SIGINT) is before


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.distributed
def test_every_torchrun_process_stops_at_the_same_step(tmp_path):
    """Two gloo processes started as torchrun starts them; SIGUSR1 reaches rank 1 only."""
    out = tmp_path / "r"
    port = _free_port()
    procs = [_start(out, {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
                          "RANK": str(r), "LOCAL_RANK": str(r), "OMP_NUM_THREADS": "1"}, ["--dist-timeout", "120"])
             for r in range(2)]
    _wait_for_steps(out, 2, procs)
    procs[1].send_signal(signal.SIGUSR1)
    errs = [e for _, e in _finish(procs)]
    assert [p.returncode for p in procs] == [128 + signal.SIGUSR1] * 2, errs
    ck = ckpt_io.load_checkpoint(str(out / "checkpoints" / "seg-latest.pt"))
    assert ck["world_size"] == 2 and ck["step"] == _steps(out)[-1] >= 2
    assert "stopped by SIGUSR1" in errs[0] and "torchrun" in errs[0]


def test_the_process_group_timeout_is_a_setting(tmp_path, monkeypatch):
    import datetime

    import torch.distributed as dist

    from sbgan_fast.cli import build_parser
    assert tiny_cfg(tmp_path / "r").dist_timeout == 600.0
    assert build_parser().parse_args(["train", "--dist-timeout", "90"]).dist_timeout == 90.0
    from sbgan_fast.config import ConfigError
    with pytest.raises(ConfigError, match="dist_timeout"):
        tiny_cfg(tmp_path / "r", "dist_timeout=0")
    seen = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **k: seen.update(k) or (_ for _ in ()).throw(
        RuntimeError("stop here")))
    for k, v in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(RuntimeError, match="stop here"):
        Trainer(tiny_cfg(tmp_path / "r", "stages=seg", "dist_timeout=42", max_steps=1, device="cpu"))
    assert seen["timeout"] == datetime.timedelta(seconds=42)


_HANG = """
import os, sys, time, torch
from sbgan_fast.train import dist as D
info, dev = D.setup("cpu", "gloo", timeout_s=float(sys.argv[1]))
if info.rank == 1:
    time.sleep(120)                      # alive but stuck
t0 = time.monotonic()
try:
    D.all_reduce_(torch.ones(1), info)
except Exception as e:
    print(f"rank 0 raised {type(e).__name__} after {time.monotonic() - t0:.0f} s", flush=True)
    os._exit(3)
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_a_hung_process_fails_the_others_after_the_timeout(tmp_path):
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, "-c", _HANG, "3"], cwd=ROOT, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE,
                              env=dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
                                       RANK=str(r), LOCAL_RANK=str(r)))
             for r in range(2)]
    try:
        out, err = procs[0].communicate(timeout=100)    # far less than the 120 s rank 1 is stuck for
        assert procs[0].returncode == 3 and "rank 0 raised" in out, (out, err)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
