"""Checkpoints: every network, optimizer, RNG state, stage, step and the config, written atomically.

Layout of a checkpoint (a dict saved with ``torch.save``)::

    {"format": "sbgan_fast/1", "stage": str, "step": int, "done": bool, "config": dict,
     "nets": {name: state_dict}, "optims": {name: state_dict}, "rng": {...}, "extra": {...}}

Files are written to a temporary file in the same folder, flushed and fsync'ed, then renamed over
the target (``os.replace`` is atomic on POSIX), so a crash never leaves a broken checkpoint.
"""
from __future__ import annotations

import os
import random
import tempfile
from typing import Any, Dict, Optional

import numpy as np
import torch

from ..errors import CheckpointError, CheckpointNotFoundError

FORMAT = "sbgan_fast/1"


def atomic_torch_save(obj: Any, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def rng_state() -> Dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str, map_location="cpu") -> Dict[str, Any]:
    """Load and sanity-check a checkpoint; errors name the file and what is wrong."""
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged file
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); "
                           "it may be truncated or not a sbgan_fast checkpoint") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a sbgan_fast checkpoint (format "
                           f"{ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r}, "
                           f"expected {FORMAT!r})")
    for key in ("stage", "step", "config", "nets"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} lacks the {key!r} entry")
    return ckpt


def stage_checkpoint_path(out_dir: str, stage: str, which: str = "latest") -> str:
    return os.path.join(out_dir, "checkpoints", f"{stage}-{which}.pt")


def find_checkpoint(out_dir: str, stage: str) -> Optional[str]:
    """The newest checkpoint of ``stage`` in a run folder: final, else latest, else None."""
    for which in ("final", "latest"):
        p = stage_checkpoint_path(out_dir, stage, which)
        if os.path.isfile(p):
            return p
    return None
