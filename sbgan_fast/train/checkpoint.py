"""Writing checkpoints: atomically, with their checksum, and the RNG states a resumed run continues from. The
file format and loading are :mod:`sbgan_fast.models.checkpoint` (re-exported here).
"""
from __future__ import annotations

import os
import random
import tempfile
from typing import Any, Dict, List

import numpy as np
import torch

from ..models.checkpoint import (FORMAT, FORMATS_READ, find_checkpoint, load_checkpoint, payload_digest,
                                 stage_checkpoint_path, torch_load_safe)

__all__ = ["FORMAT", "FORMATS_READ", "atomic_torch_save", "find_checkpoint", "load_checkpoint", "payload_digest",
           "remove_temporary_files", "rng_state", "save_checkpoint", "set_rng_state", "stage_checkpoint_path",
           "torch_load_safe"]


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


def save_checkpoint(state: Dict[str, Any], path: str) -> None:
    """Write ``state`` (format :data:`FORMAT`) with its checksum, atomically."""
    state = dict(state)
    state["sha256"] = payload_digest(state)
    atomic_torch_save(state, path)


def rng_state() -> Dict[str, Any]:
    """The RNG states of torch (CPU and, when initialised, CUDA), NumPy and Python as tensors and plain
    types, so that a checkpoint loads with ``torch.load(weights_only=True)``."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                       "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore :func:`rng_state` (also the NumPy arrays of checkpoints of format ``sbgan_fast/1``)."""
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    if isinstance(npst, dict):
        npst = (npst["kind"], npst["keys"].cpu().numpy().astype(np.uint32), int(npst["pos"]),
                int(npst["has_gauss"]), float(npst["cached_gaussian"]))
    np.random.set_state(npst)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def remove_temporary_files(folder: str) -> List[str]:
    """Remove the temporary files (``.tmp-*.pt``) that a write killed before its rename left in ``folder``;
    they are never checkpoints. Call it only while holding the run folder's lock. Returns the removed paths."""
    removed = []
    if os.path.isdir(folder):
        for name in sorted(os.listdir(folder)):
            if name.startswith(".tmp-") and name.endswith(".pt"):
                try:
                    os.unlink(os.path.join(folder, name))
                    removed.append(os.path.join(folder, name))
                except OSError:
                    pass
    return removed


