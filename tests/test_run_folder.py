"""Run-folder semantics: the lock, resuming, the next stage in a used folder, leftovers of killed writes,
stats.jsonl after a resume, and what is checked before anything is written."""
import json
import os
import socket
import subprocess
import sys

import pytest

from sbgan_fast.errors import RunLockedError
from sbgan_fast.train.run import LOCK_NAME, RunLock
from sbgan_fast.train.trainer import Trainer, train

from tiny import folder_dataset, tiny_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _hold_lock_in_another_process(folder):
    code = ("import sys, time\nfrom sbgan_fast.train.run import RunLock\nRunLock.acquire(sys.argv[1])\n"
            "print('held', flush=True)\ntime.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.slow
def test_a_second_run_on_a_folder_in_use_is_refused_naming_the_holder(tmp_path):
    out = tmp_path / "r"
    holder = _hold_lock_in_another_process(out)
    try:
        with pytest.raises(RunLockedError) as info:
            Trainer(tiny_cfg(out, "stages=seg", max_steps=1))
        msg = str(info.value)
        assert f"pid {holder.pid}" in msg and socket.gethostname() in msg and str(out) in msg
        assert not (out / "config.json").exists() and not (out / "stats.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone (killed: its lock file is left behind): the next run takes the lock over
    assert (out / LOCK_NAME).is_file()
    train(tiny_cfg(out, "stages=seg", max_steps=1))
    assert not (out / LOCK_NAME).exists()          # released at the end of the run


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (out / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "x"}))
    t = Trainer(tiny_cfg(out, "stages=seg", max_steps=1))
    try:
        err = capsys.readouterr().err
        assert "taking over" in err and f"pid {dead.pid}" in err
        held = json.loads((out / LOCK_NAME).read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    finally:
        t.close()
    assert not (out / LOCK_NAME).exists()


@pytest.mark.slow
def test_the_lock_is_held_for_the_whole_run_and_released_on_errors(tmp_path):
    out = tmp_path / "r"
    seen = []
    t = Trainer(tiny_cfg(out, "stages=seg", max_steps=2))
    t.updater.on_gradients = lambda g, l: seen.append(json.loads((out / LOCK_NAME).read_text())["pid"])
    t.run()
    assert seen and set(seen) == {os.getpid()}
    assert not (out / LOCK_NAME).exists()
    # a run refused at start (here: it would overwrite the checkpoints) leaves no lock behind
    with pytest.raises(FileExistsError):
        Trainer(tiny_cfg(out, "stages=seg", max_steps=2))
    assert not (out / LOCK_NAME).exists()


def test_lock_without_flock_falls_back_to_the_recorded_pid(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "no locks")
    monkeypatch.setattr(fcntl, "flock", no_flock)
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getppid(), "started": "x"}))
    with pytest.raises(RunLockedError, match=f"pid {os.getppid()}"):
        RunLock.acquire(str(folder))
    (folder / LOCK_NAME).write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "x"}))
    with pytest.raises(RunLockedError, match="elsewhere"):
        RunLock.acquire(str(folder))
    (folder / LOCK_NAME).unlink()
    lock = RunLock.acquire(str(folder))
    lock.release()
    assert not (folder / LOCK_NAME).exists()


def test_resume_without_checkpoints_is_an_error(tmp_path):
    from sbgan_fast.errors import RunFolderError
    for out in (tmp_path / "missing", tmp_path / "empty"):
        if out.name == "empty":
            (out / "checkpoints").mkdir(parents=True)
        with pytest.raises(RunFolderError, match="nothing to resume"):
            Trainer(tiny_cfg(out, "stages=seg", max_steps=1), resume=True)
    assert not (tmp_path / "missing").exists()


@pytest.mark.slow
def test_the_next_stage_runs_in_a_used_folder_without_resume(tmp_path):
    out = tmp_path / "r"
    train(tiny_cfg(out, "stages=seg", max_steps=1))
    train(tiny_cfg(out, "stages=spade", max_steps=1))     # nothing of the spade stage is there yet
    assert (out / "checkpoints" / "spade-latest.pt").is_file()
    with pytest.raises(FileExistsError, match="spade-latest.pt"):   # it would overwrite the spade checkpoint
        Trainer(tiny_cfg(out, "stages=spade", max_steps=1))
    with pytest.raises(FileExistsError, match="seg-latest.pt"):
        Trainer(tiny_cfg(out, "stages=seg,spade", max_steps=1))


def test_temporary_files_of_killed_writes_are_removed_and_never_count(tmp_path, capsys):
    out = tmp_path / "r"
    (out / "checkpoints").mkdir(parents=True)
    tmp = out / "checkpoints" / ".tmp-k1ll3d.pt"
    tmp.write_bytes(b"half a checkpoint")
    t = Trainer(tiny_cfg(out, "stages=seg", max_steps=1))      # not "already holds checkpoints"
    t.close()
    assert not tmp.exists() and "temporary file" in capsys.readouterr().err


@pytest.mark.slow
def test_stats_hold_each_step_once_after_a_resume(tmp_path):
    import shutil
    out = tmp_path / "r"
    kw = ("stages=seg", "log_every=1", "ckpt_every=0")
    train(tiny_cfg(out, *kw, max_steps=3))
    ck = out / "checkpoints" / "seg-latest.pt"
    shutil.copy(ck, tmp_path / "step3.pt")
    train(tiny_cfg(out, *kw, max_steps=5), resume=True)
    # as if the run had been killed after logging step 5 but before writing its checkpoint, mid-line
    shutil.copy(tmp_path / "step3.pt", ck)
    with open(out / "stats.jsonl", "a") as f:
        f.write('{"stage": "seg", "st')
    train(tiny_cfg(out, *kw, max_steps=5), resume=True)
    steps = [json.loads(line)["step"] for line in open(out / "stats.jsonl")]
    assert steps == [1, 2, 3, 4, 5]


@pytest.mark.slow
def test_a_failing_sample_grid_costs_no_checkpoint(tmp_path, capsys, monkeypatch):
    import sbgan_fast.metrics.grids as grids
    from sbgan_fast.train import checkpoint as ckpt_io

    def broken(*a, **k):
        raise ValueError("colorize: label value 255 is outside the palette's range")
    monkeypatch.setattr(grids, "save_pairs_grid", broken)
    out = tmp_path / "r"
    train(tiny_cfg(out, "stages=seg", "sample_every=2", "ckpt_every=2", max_steps=5))
    assert ckpt_io.load_checkpoint(str(out / "checkpoints" / "seg-latest.pt"))["step"] == 5
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if "sample grid" in ln]
    assert len(lines) == 2, err          # the first failure, then one summary line at the end of the stage
    assert "step 2 not written (ValueError: colorize: label value 255" in lines[0] and "training goes on" in lines[0]
    assert "3 sample grids" in lines[1]


@pytest.mark.slow
def test_the_checkpoint_of_a_step_is_written_before_its_sample_grid(tmp_path, monkeypatch):
    import sbgan_fast.metrics.grids as grids
    out = tmp_path / "r"
    seen = []
    real = grids.save_pairs_grid

    def spy(labels, images, palette, path, **kwargs):
        seen.append((os.path.basename(path), sorted(os.listdir(out / "checkpoints"))))
        return real(labels, images, palette, path, **kwargs)
    monkeypatch.setattr(grids, "save_pairs_grid", spy)
    train(tiny_cfg(out, "stages=seg", "sample_every=2", "ckpt_every=2", max_steps=2))
    assert seen == [("seg-0000002.png", ["seg-latest.pt"])]


@pytest.mark.slow
def test_a_file_that_fails_to_decode_mid_run_stops_after_a_checkpoint(tmp_path):
    from sbgan_fast.data.datasets import DataError
    from sbgan_fast.train import checkpoint as ckpt_io
    data = folder_dataset(tmp_path) + ["stages=seg", "ckpt_every=0", "log_every=1"]
    out = tmp_path / "r"
    bad = tmp_path / "lab" / "2.png"
    good = bad.read_bytes()
    t = Trainer(tiny_cfg(out, *data, max_steps=6))
    updates = []

    def break_a_file_after_two_steps(grads, losses):
        updates.append(1)
        if len(updates) == 4:          # two seg steps (a G and a D update each)
            bad.write_bytes(good[:40])   # every batch of this 4-pair dataset reads it
    t.updater.on_gradients = break_a_file_after_two_steps
    with pytest.raises(DataError) as info:
        t.run()
    msg = str(info.value)
    assert "2.png" in msg and "stopped before step 3 of stage seg" in msg and "seg-latest.pt" in msg
    assert "\n" not in msg
    assert ckpt_io.load_checkpoint(str(out / "checkpoints" / "seg-latest.pt"))["step"] == 2
    bad.write_bytes(good)
    train(tiny_cfg(out, *data, max_steps=4), resume=True)
    assert ckpt_io.load_checkpoint(str(out / "checkpoints" / "seg-latest.pt"))["step"] == 4
