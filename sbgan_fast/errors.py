"""The project's own errors.

Every error that describes a problem with the user's input, files or run folder (a bad config value, an
unreadable or damaged data file or checkpoint, a checkpoint that does not fit the run, a run folder in use)
derives from :class:`SbganError`. The command line prints such an error as one line and exits with status 2
(``--debug`` or ``SBGAN_FAST_DEBUG=1`` also prints the traceback); any other exception is a bug and keeps its
traceback. Each subclass also derives from the built-in type its callers have always caught (``ValueError``,
``RuntimeError``, ``FileNotFoundError``, ...), so existing ``except`` clauses keep working.
"""
from __future__ import annotations

import signal
from typing import Optional

__all__ = ["SbganError", "CheckpointError", "CheckpointNotFoundError", "CheckpointMismatchError",
           "RunFolderError", "RunExistsError", "RunLockedError", "Interrupted", "one_line"]


class SbganError(Exception):
    """Base class of the project's errors: the message alone (one line) tells the user what is wrong."""


class CheckpointError(SbganError, RuntimeError):
    """A checkpoint cannot be used: unreadable, damaged (checksum), unsafe (it refers to code), or not a
    sbgan_fast checkpoint. The message names the file."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint file (or a run folder's checkpoint) does not exist."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint does not fit the run that loads it (classes, architecture, stage, optimizers); the
    message names the file, the key and both values."""


class RunFolderError(SbganError, RuntimeError):
    """The run folder (``--out``) cannot be used as asked: not writable, nothing to resume, ..."""


class RunExistsError(RunFolderError, FileExistsError):
    """Starting would overwrite a checkpoint of the run folder (``--resume`` continues it instead)."""


class RunLockedError(RunFolderError):
    """Another process (named by host and pid) holds the run folder's lock."""


class Interrupted(SbganError):
    """Training stopped on a signal (SIGTERM, SIGINT, SIGUSR1) after writing the latest checkpoint.

    Attributes:
        signum: the signal; the command line exits with ``128 + signum``.
        checkpoint: the checkpoint to resume from (None when no step had been completed).
    """

    def __init__(self, message: str, signum: int, checkpoint: Optional[str] = None):
        super().__init__(message)
        self.signum, self.checkpoint = int(signum), checkpoint

    def __reduce__(self):
        return (type(self), (str(self), self.signum, self.checkpoint))

    @property
    def signal_name(self) -> str:
        return signal_name(self.signum)


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line. An error re-raised by a ``DataLoader`` worker carries the worker's
    traceback in its message; its last line (the original message) is kept."""
    msg = str(exc)
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    if "Original Traceback" in msg:
        last = lines[-1]
        head, sep, tail = last.partition(": ")
        return tail if sep and head.rsplit(".", 1)[-1].endswith(("Error", "Exception")) else last
    return " ".join(lines)
