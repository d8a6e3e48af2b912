"""The run folder and the process around a run: the folder's write check and lock, and the stop signals.

A run folder holds ``config.json`` (the resolved config), ``stats.jsonl`` (one JSON object per log
interval, :mod:`.logger`), ``tb/`` (TensorBoard scalars and image grids), ``samples/`` (PNG grids) and
``checkpoints/``.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Dict, Optional


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
