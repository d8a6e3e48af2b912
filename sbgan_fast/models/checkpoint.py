"""The checkpoint file: its format, its checksum, safe loading, and where a run folder keeps it. Writing one
(with the optimizer and RNG states of a training run) is :mod:`sbgan_fast.train.checkpoint`.

A checkpoint holds every network, optimizer, RNG state, stage, step and the config, written atomically.

Layout of a checkpoint (a dict saved with ``torch.save``)::

    {"format": "sbgan_fast/2", "stage": str, "step": int, "done": bool, "config": dict, "num_classes": int,
     "nets": {name: state_dict}, "optims": {name: state_dict}, "scalers": {...}, "rng": {...},
     "world_size": int, ["rng_ranks": [...]], "sha256": str}

``sha256`` is a checksum of everything else in the file (:func:`payload_digest`: every key, value and tensor
byte, in order); loading recomputes it, so a damaged file (a flipped byte in a tensor or in the config) is
reported, naming the file, instead of training on silently changed values.

The file holds tensors and plain Python values only, and every load uses ``torch.load(weights_only=True)``:
a checkpoint from someone else cannot run code (one that refers to other Python objects is refused before it
is loaded). RNG states are stored as tensors and numbers.

Files are written to a temporary file in the same folder, flushed and fsync'ed, then renamed over
the target (``os.replace`` is atomic on POSIX), so a crash never leaves a broken checkpoint.
"""
from __future__ import annotations

import hashlib
import os
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..errors import CheckpointError, CheckpointNotFoundError

FORMAT = "sbgan_fast/2"
FORMATS_READ = ("sbgan_fast/1", FORMAT)   # 1: NumPy RNG state as an array


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        if t.numel():
            h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{'L' if isinstance(obj, list) else 'U'}{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    elif isinstance(obj, str):
        b = obj.encode("utf-8", "surrogatepass")
        h.update(f"S{len(b)}:".encode())
        h.update(b)
    elif isinstance(obj, bytes):
        h.update(f"B{len(obj)}:".encode())
        h.update(obj)
    elif obj is None or isinstance(obj, (bool, int, float)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    elif isinstance(obj, (torch.dtype, torch.device, torch.Size)):
        h.update(f"{type(obj).__name__}:{obj!r};".encode())
    else:
        raise TypeError(f"a checkpoint holds tensors and plain Python values only, not {type(obj).__name__}")


def payload_digest(payload: Dict[str, Any]) -> str:
    """sha256 (hex) of a checkpoint's contents other than its ``sha256`` entry: keys, values and the bytes of
    every tensor, in order (tensors on any device)."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != "sha256"})
    return h.hexdigest()


def _legacy_globals() -> List[Any]:
    """What a checkpoint of format ``sbgan_fast/1`` needs beyond weights-only loading: the NumPy array of its
    NumPy RNG state. Array reconstruction from NumPy's own types only (the array's items are unpickled by the
    same restricted loader): no other callable is reachable."""
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # NumPy 1.x
        from numpy.core.multiarray import _reconstruct
    return [(_reconstruct, "numpy._core.multiarray._reconstruct"),
            (_reconstruct, "numpy.core.multiarray._reconstruct"),
            np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def _legacy_names() -> set:
    out = set()
    for g in _legacy_globals():
        if isinstance(g, tuple):
            out.add(g[1])
        else:
            out.add(f"{g.__module__}.{g.__qualname__}")
    return out


def _unsafe_globals(path: str) -> Optional[List[str]]:
    """The globals (functions, classes) that ``path`` refers to beyond what weights-only loading allows, read
    without running anything; None when the file cannot be parsed."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - not a zip checkpoint, damaged, ...
        return None


def torch_load_safe(path: str, map_location="cpu", *, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain Python values only, never code.

    Files of format ``sbgan_fast/1`` (their NumPy RNG state is a NumPy array) load with NumPy's array types
    allowed as well. Anything else a file refers to is refused before it is loaded.

    Raises:
        CheckpointError: the file is unreadable, damaged, or refers to other Python objects (named).
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a damaged or foreign file
        first = e
    unsafe = _unsafe_globals(path)
    if unsafe and set(unsafe) <= _legacy_names():
        try:
            with torch.serialization.safe_globals(_legacy_globals()):
                return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
        except Exception as e:  # noqa: BLE001
            first = e
    elif unsafe:
        shown = ", ".join(sorted(unsafe)[:4]) + (", ..." if len(unsafe) > 4 else "")
        raise CheckpointError(f"checkpoint {path} refers to Python objects that a sbgan_fast checkpoint never holds "
                              f"({shown}); it was not loaded, since loading it could run code") from None
    detail = str(first).strip().splitlines()[0] if str(first).strip() else ""
    raise CheckpointError(f"checkpoint {path} cannot be read ({type(first).__name__}: {detail}); it may be truncated "
                          "or not a sbgan_fast checkpoint") from first


def load_checkpoint(path: str, map_location="cpu", *, verify: bool = True, mmap: bool = False) -> Dict[str, Any]:
    """Load and sanity-check a checkpoint (weights only: loading never runs code); errors name the file and what
    is wrong.

    Args:
        verify: recompute the checksum (format 2). ``verify=False, mmap=True`` reads the configuration and the
            tensors' shapes without reading the tensor data (start-up checks).
    Raises:
        CheckpointNotFoundError: no such file.
        CheckpointError: unreadable, damaged (checksum), unsafe, or not a sbgan_fast checkpoint.
    """
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch_load_safe(path, map_location, mmap=mmap)
    if not isinstance(ckpt, dict) or ckpt.get("format") not in FORMATS_READ:
        raise CheckpointError(f"checkpoint {path} is not a sbgan_fast checkpoint (format "
                              f"{ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r}, "
                              f"expected one of {FORMATS_READ})")
    for key in ("stage", "step", "config", "nets"):
        if key not in ckpt:
            raise CheckpointError(f"checkpoint {path} lacks the {key!r} entry")
    if ckpt["format"] != "sbgan_fast/1":
        if not isinstance(ckpt.get("sha256"), str):
            raise CheckpointError(f"checkpoint {path} lacks its checksum (sha256 entry): it was not written by "
                                  "sbgan_fast or has been altered")
        if verify:
            try:
                got = payload_digest(ckpt)
            except TypeError as e:
                raise CheckpointError(f"checkpoint {path}: {e}") from None
            if got != ckpt["sha256"]:
                raise CheckpointError(f"checkpoint {path} is damaged: the checksum of its contents is {got[:16]}..., "
                                      f"the file says {ckpt['sha256'][:16]}...; use an earlier checkpoint or a copy")
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
