"""Run-folder plumbing shared by the stages: device, data streams, logging, grids.

A run folder holds ``config.json`` (the resolved config), ``stats.jsonl`` (one JSON object per log
interval), ``tb/`` (TensorBoard scalars and image grids), ``samples/`` (PNG grids) and
``checkpoints/``.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Callable, Dict, Iterator, List, Optional

import torch

from ..config import TrainConfig


# ---------------------------------------------------------------------- run folder
def check_writable(out: str) -> None:
    """Check, before any training, that files can be created in the run folder and in its ``checkpoints/``
    (the run folder is created if needed; a ``checkpoints/`` made for the check is removed again).

    Raises:
        RunFolderError: naming the folder and the reason.
    """
    import tempfile

    from ..errors import RunFolderError
    for folder in (out, os.path.join(out, "checkpoints")):
        made = not os.path.lexists(folder)
        try:
            os.makedirs(folder, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise RunFolderError(f"run folder: cannot write to {folder} ({e.strerror or type(e).__name__}); fix its "
                                 "permissions or choose another --out") from None
        finally:
            if made and folder != out and os.path.isdir(folder):
                try:
                    os.rmdir(folder)
                except OSError:
                    pass


class StopSignals:
    """SIGTERM (what torchrun, SLURM and Kubernetes send before a kill), SIGINT (Ctrl-C) and SIGUSR1 (SLURM's
    pre-emption warning, ``--signal=USR1@120``) during training: the first one is recorded, and the trainer
    finishes the current step, writes the latest checkpoint and stops (:class:`~sbgan_fast.errors.Interrupted`).
    A second SIGINT raises ``KeyboardInterrupt`` at once; other repeated signals are ignored.

    Forked data-loader workers inherit these handlers and ignore SIGINT and SIGUSR1 (the main process stops
    the run and shuts them down). torch's workers die on a SIGTERM sent to the whole process group (torchrun,
    SLURM): :meth:`guard_loader_workers` keeps that death from being raised in the middle of the step (torch
    reports a dead worker from its SIGCHLD handler); the loader's next batch then fails and the run stops as
    it does on the signal alone."""

    NAMES = ("SIGTERM", "SIGINT", "SIGUSR1")

    def __init__(self, say: bool = True):
        self.received = 0
        self.say = say
        self._pid = os.getpid()
        self._old: Dict[int, object] = {}
        self._chld: Optional[tuple] = None    # (torch's SIGCHLD handler, the wrapper installed over it)

    def install(self) -> bool:
        """Install the handlers (main thread only; elsewhere nothing happens). Returns whether they were."""
        import signal
        import threading
        if threading.current_thread() is not threading.main_thread():
            return False
        self._pid = os.getpid()
        for name in self.NAMES:
            sig = getattr(signal, name, None)
            if sig is not None and sig not in self._old:
                self._old[sig] = signal.signal(sig, self._handle)
        return True

    def guard_loader_workers(self) -> None:
        """Call once a loader has started its worker processes: while stopping, a worker's death is left to
        the loader's next batch instead of interrupting the current step."""
        import signal
        if not self._old or not hasattr(signal, "SIGCHLD"):
            return
        cur = signal.getsignal(signal.SIGCHLD)
        if not callable(cur) or (self._chld is not None and cur is self._chld[1]):
            return

        def on_child(signum, frame):
            if not self.received:
                cur(signum, frame)
        signal.signal(signal.SIGCHLD, on_child)
        if self._chld is None:
            self._chld = (cur, on_child)
        else:
            self._chld = (self._chld[0], on_child)

    def restore(self) -> None:
        import signal
        for sig, old in self._old.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)
        self._old = {}
        if self._chld is not None:
            if signal.getsignal(signal.SIGCHLD) is self._chld[1]:
                signal.signal(signal.SIGCHLD, self._chld[0])
            self._chld = None

    def _handle(self, signum, frame) -> None:
        import signal
        if os.getpid() != self._pid:      # a forked data-loader worker
            return
        if self.received:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.received = int(signum)
        if self.say:
            from ..errors import signal_name
            again = " (Ctrl-C again to exit at once, without it)" if signum == signal.SIGINT else ""
            os.write(2, f"\n[sbgan_fast] {signal_name(signum)} received: finishing this step, then writing a "
                        f"checkpoint{again}\n".encode())


LOCK_NAME = "run.lock"
_held_locks: Dict[str, "RunLock"] = {}   # lock files held by this process (realpath -> lock)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # exists, another user's
        return True
    except OSError:
        return False
    return True


class RunLock:
    """The lock of a run folder, held for the whole run: ``<out>/run.lock`` holds the holder's host, pid and
    start time, and an exclusive ``flock`` on it is kept while the process runs (the kernel drops it when the
    process dies, however it dies). A second run on the folder gets :class:`~sbgan_fast.errors.RunLockedError`
    naming the holder; a lock file whose process is gone is taken over with a warning. On filesystems without
    ``flock`` the recorded pid decides (a holder on another host is then assumed alive).

    Several trainers of one process (tests, benchmarks) share the process's lock of a folder."""

    def __init__(self, folder: str, path: str, fd: int):
        self.folder, self.path, self.fd, self.count = folder, path, fd, 1

    @staticmethod
    def _me() -> Dict[str, object]:
        import socket
        return {"host": socket.gethostname(), "pid": os.getpid(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())}

    @staticmethod
    def _read(path: str) -> Dict[str, object]:
        try:
            with open(path, "r", encoding="utf-8") as f:
                data = json.loads(f.read() or "{}")
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    @staticmethod
    def _holder(info: Dict[str, object]) -> str:
        if not info.get("pid"):
            return "another process"
        return f"pid {info.get('pid')} on host {info.get('host', '?')} (started {info.get('started', '?')})"

    @classmethod
    def acquire(cls, folder: str, log: Callable[[str], None] = print) -> "RunLock":
        """Take the lock of ``folder`` (created if needed).

        Raises:
            RunLockedError: another live process holds it (named by host and pid).
            RunFolderError: the folder or the lock file cannot be created.
        """
        import errno
        import fcntl

        from ..errors import RunFolderError, RunLockedError
        path = os.path.join(folder, LOCK_NAME)
        try:
            os.makedirs(folder, exist_ok=True)
        except OSError as e:
            raise RunFolderError(f"run folder: cannot create {folder} ({e.strerror or type(e).__name__})") from None
        key = os.path.realpath(path)
        if key in _held_locks:
            _held_locks[key].count += 1
            return _held_locks[key]
        me = cls._me()
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as e:
                raise RunFolderError(f"run folder: cannot create the lock file {path} "
                                     f"({e.strerror or type(e).__name__})") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                flock = True
            except BlockingIOError:
                os.close(fd)
                raise RunLockedError(f"run folder {folder} is in use by another run: {cls._holder(cls._read(path))} "
                                     f"holds {path}. Wait for it to finish or stop it, or choose another "
                                     "--out") from None
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    os.close(fd)
                    raise
                flock = False
            try:   # a process releasing the lock unlinks the file: lock the file that is at ``path`` now
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        prev = cls._read(path)
        if prev.get("pid") and (prev.get("host"), prev.get("pid")) != (me["host"], me["pid"]):
            if not flock and (prev.get("host") != me["host"] or _pid_alive(int(prev["pid"]))):
                os.close(fd)
                raise RunLockedError(f"run folder {folder} is in use by another run: {cls._holder(prev)} holds "
                                     f"{path} (this filesystem has no file locks: if that run is gone, delete the "
                                     "file)")
            log(f"[sbgan_fast] warning: taking over the lock {path} of {cls._holder(prev)}: that process is gone")
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        os.fsync(fd)
        lock = cls(folder, path, fd)
        _held_locks[key] = lock
        return lock

    def release(self) -> None:
        """Give the lock up (the last holder of this process removes the lock file)."""
        if self.count <= 0:
            return
        self.count -= 1
        if self.count:
            return
        _held_locks.pop(os.path.realpath(self.path), None)
        try:
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)


# ---------------------------------------------------------------------- data order
class SampleStream:
    """An endless, resumable stream of dataset indices: epoch e is a permutation of range(n) drawn
    from a generator seeded by (seed, e). ``indices(offset, count)`` returns stream items
    [offset, offset+count), so any step's batch is a pure function of the schedule."""

    def __init__(self, n: int, seed: int):
        if n <= 0:
            raise ValueError("the dataset is empty")
        self.n, self.seed = n, seed
        self._cache: Dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 4:
                self._cache.pop(min(self._cache))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache[epoch] = torch.randperm(self.n, generator=g)
        return self._cache[epoch]

    def indices(self, offset: int, count: int) -> List[int]:
        out = []
        while count > 0:
            epoch, pos = divmod(offset, self.n)
            take = min(count, self.n - pos)
            out.extend(self._perm(epoch)[pos:pos + take].tolist())
            offset += take
            count -= take
        return out


class ScheduledBatches:
    """Batch sampler for torch's DataLoader: yields the index lists of steps [start, end) where
    ``schedule(step) -> (stream_offset, batch_size)``."""

    def __init__(self, stream: SampleStream, schedule: Callable[[int], tuple], start: int, end: int):
        self.stream, self.schedule, self.start, self.end = stream, schedule, start, end

    def __iter__(self) -> Iterator[List[int]]:
        for step in range(self.start, self.end):
            offset, bs = self.schedule(step)
            yield self.stream.indices(offset, bs)

    def __len__(self) -> int:
        return max(0, self.end - self.start)


def make_loader(dataset, stream: SampleStream, schedule, start: int, end: int, num_workers: int, seed: int, *,
                loader: Optional[str] = None, device=None, need_image: Optional[bool] = None):
    """Loader of steps [start, end). Official-layout datasets (built by ``data.factory``, which records
    ``data.loader`` on them) go through :func:`sbgan_fast.data.loaders.build_loader` (torch, DALI or a
    device-resident cache, same batch contract; label-only for the ``seg`` stage); others use a DataLoader.
    ``need_image`` None: False when ``schedule`` belongs to the seg stage."""
    opts = getattr(dataset, "loader_options", None)
    if opts is not None or loader is not None:
        from ..data.loaders import EpochTaggedBatches, build_loader
        stage = getattr(schedule, "__self__", None)     # the Stage whose bound schedule this is
        if need_image is None:
            need_image = getattr(stage, "name", None) != "seg"
        if device is None:
            device = getattr(stage, "dev", None) or "cpu"
        batches = (EpochTaggedBatches if getattr(dataset, "wants_epoch", False) else ScheduledBatches)(
            stream, schedule, start, end)
        return build_loader(dataset, batches, loader=loader or (opts or {}).get("loader", "auto"), device=device,
                            num_workers=num_workers, seed=seed + start, need_image=need_image)
    # The loader's own generator keeps it from drawing its worker base seed from torch's global RNG,
    # whose state is checkpointed: creating a loader on resume must not shift the training noise.
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=ScheduledBatches(stream, schedule, start, end), num_workers=num_workers,
        pin_memory=torch.cuda.is_available(), persistent_workers=False,
        generator=torch.Generator().manual_seed(seed + start))


def step_generator(seed: int, stage: str, step: int, device: torch.device) -> torch.Generator:
    """A generator for per-step random choices that must not depend on how the run was split
    (flips): seeded by (seed, stage, step)."""
    salt = {"seg": 1, "spade": 2, "e2e": 3, "d2": 4}[stage]
    g = torch.Generator(device="cpu")
    g.manual_seed((seed * 7919 + salt) * 1_000_003 + step)
    return g


def random_hflip(gen: torch.Generator, *tensors: torch.Tensor, total: Optional[int] = None, start: int = 0):
    """Flip each sample of every tensor (same decision across tensors) with probability 1/2.

    ``total``/``start``: the decisions are drawn for ``total`` samples (the global batch of a
    distributed step) and samples ``[start, start + n)`` of them are used, so a process's flips are its
    slice of the single-process flips. Default: ``total = n``, ``start = 0``."""
    n = tensors[0].shape[0]
    total = n if total is None else int(total)
    if not 0 <= start <= total - n:
        raise ValueError(f"random_hflip: samples [{start}, {start + n}) are outside the batch of {total}")
    flip = (torch.rand(total, generator=gen)[start:start + n] < 0.5).to(tensors[0].device)
    out = []
    for t in tensors:
        shape = (n,) + (1,) * (t.dim() - 1)
        out.append(torch.where(flip.view(shape), t.flip(-1), t))
    return out


# ---------------------------------------------------------------------- logging
class RunLogger:
    """JSONL stats, TensorBoard scalars/images and a rank-0 progress bar with images/s and ETA."""

    def __init__(self, cfg: TrainConfig, out_dir: str, enabled: bool = True):
        self.cfg, self.out_dir, self.enabled = cfg, out_dir, enabled
        self.tb = None
        self.bar = None
        self._warned_tb = False
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        self.stats_path = os.path.join(out_dir, "stats.jsonl")
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(os.path.join(out_dir, "tb"))
            except Exception as e:  # noqa: BLE001 - tensorboard missing or broken
                print(f"[sbgan_fast] TensorBoard logging off ({type(e).__name__}: {e}); "
                      "install 'tensorboard' to enable it", file=sys.stderr)

    def start_stage(self, stage: str, start: int, total: int, images_per_step: float) -> None:
        self._t0, self._s0 = time.perf_counter(), start
        self._ips = images_per_step
        if not self.enabled or not self.cfg.progress:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            return
        self.bar = tqdm(total=total, initial=start, desc=f"{stage:>5}", dynamic_ncols=True, unit="step",
                        file=sys.stderr, mininterval=1.0)

    def pause(self, seconds: float) -> None:
        """Leave ``seconds`` (e.g. an FID evaluation) out of the images/s figure."""
        if hasattr(self, "_t0"):
            self._t0 += seconds

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, stage: str, step: int, images: int, scalars: Dict[str, float]) -> Dict[str, float]:
        elapsed = time.perf_counter() - self._t0
        done = step - self._s0
        rec = {"stage": stage, "step": step, "images": images, "time": time.time(),
               "images_per_s": (done * self._ips / elapsed) if elapsed > 0 and done > 0 else 0.0}
        rec.update({k: float(v) for k, v in scalars.items()})
        if not self.enabled:
            return rec
        with open(self.stats_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec) + "\n")
        if self.tb is not None:
            for k, v in rec.items():
                if k not in ("stage", "step", "time", "images") and isinstance(v, float) and math.isfinite(v):
                    self.tb.add_scalar(f"{stage}/{k}", v, images)
        if self.bar is not None:
            short = {k: f"{v:.3g}" for k, v in scalars.items() if k.startswith("loss")}
            short["img/s"] = f"{rec['images_per_s']:.1f}"
            self.bar.set_postfix(short, refresh=False)
        return rec

    def truncate(self, stage: str, step: int) -> int:
        """Remove the records of ``stage`` after ``step`` from ``stats.jsonl`` (a stage resumed from the
        checkpoint of ``step`` logs the later steps again, so each step is recorded once), and a partial last
        line left by a killed write. Returns the number of lines removed."""
        if not self.enabled or not os.path.isfile(self.stats_path):
            return 0
        with open(self.stats_path, "r", encoding="utf-8") as f:
            lines = f.readlines()
        keep = []
        for i, line in enumerate(lines):
            try:
                rec = json.loads(line)
            except ValueError:
                if i == len(lines) - 1 and not line.endswith("\n"):
                    continue          # a partial record of a killed write
                keep.append(line)
                continue
            if isinstance(rec, dict) and rec.get("stage") == stage and isinstance(rec.get("step"), (int, float)) \
                    and rec["step"] > step:
                continue
            keep.append(line if line.endswith("\n") else line + "\n")
        if len(keep) == len(lines):
            return 0
        tmp = f"{self.stats_path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(keep)
        os.replace(tmp, self.stats_path)
        return len(lines) - len(keep)

    def image(self, tag: str, hwc_uint8, step: int) -> None:
        if self.enabled and self.tb is not None:
            self.tb.add_image(tag, hwc_uint8, step, dataformats="HWC")

    def end_stage(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        self.end_stage()
        if self.tb is not None:
            self.tb.close()
