"""Label value tables: which raw values a dataset's label files may hold, and the label value each one becomes.

A value table is an int32 array indexed by the raw file value; entry -1 marks a value that is not allowed (a
:class:`~.files.DataError` naming the file). The label values that come out are the channels the networks see,
except the don't-care value, which stays as it is (e.g. 255) and becomes the last channel in the training step.

``num_classes`` (K) always counts the channels the networks see, the don't-care channel included when there is
one; :func:`class_values` gives the label values of the classes among K such channels.

Class-mapping file (:func:`read_class_map`, ADE20K-150 -> ADE-Indoor): text lines ``<ade150 value> <indoor value>``
(``#`` starts a comment; values of ADE20K-150 not listed map to 0), or JSON: an object ``{"ade150 value": indoor
value}`` or a list of 151 indoor values.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .files import DataError

__all__ = ["CITYSCAPES_IDS_LUT", "CITYSCAPES_TRAIN_LUT", "apply_value_table", "class_values", "describe_values",
           "read_class_map", "value_table"]


def value_table(valid: Sequence[int], extra: Optional[Dict[int, int]] = None, size: int = 256) -> np.ndarray:
    """int32 table raw value -> label value of ``size`` entries: the ``valid`` values map to themselves, ``extra``
    maps further raw values, every other entry is -1 (not allowed)."""
    lut = np.full(size, -1, np.int32)
    lut[np.asarray(list(valid), dtype=np.int64)] = np.asarray(list(valid), dtype=np.int64)
    for k, v in (extra or {}).items():
        lut[k] = v
    return lut


#: Cityscapes ``labelIds``: ids 0..33 kept; 255 (license plate, id -1) -> 34 ("unknown").
CITYSCAPES_IDS_LUT = value_table(range(34), {255: 34})
#: Cityscapes ``labelTrainIds``: train ids 0..18 kept, 255 kept as the don't-care value.
CITYSCAPES_TRAIN_LUT = value_table(list(range(19)) + [255])


def class_values(num_classes: int, dontcare: Optional[int]) -> List[int]:
    """The label values of the classes of ``num_classes`` channels stored as themselves: every channel but the
    don't-care one. Without a don't-care value that is ``0 .. K-1``; with one, ``0 .. K-2`` (the last channel is
    the don't-care value's, which the files hold as that value)."""
    num_cared = num_classes - 1 if dontcare is not None else num_classes   # channels besides the don't-care one
    return list(range(num_cared))


def apply_value_table(arr: np.ndarray, lut: np.ndarray, path: str, allowed: str) -> np.ndarray:
    """Map raw label values through ``lut``; DataError naming the file (and the ``allowed`` values, as text) for
    values the table does not allow."""
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= lut.size):
        bad_vals = np.unique(arr[(arr < 0) | (arr >= lut.size)])
    else:
        out = lut[arr]
        if not (out < 0).any():
            return out
        bad_vals = np.unique(arr[out < 0])
    shown = ", ".join(str(int(v)) for v in bad_vals[:8]) + (", ..." if bad_vals.size > 8 else "")
    raise DataError(f"label file {path} has values outside {allowed}: {shown}", path)


def describe_values(values: List[int]) -> str:
    """Compact text of a sorted int list: '0..33, 255'."""
    runs, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            runs.append(f"{start}..{v}" if v > start else f"{v}")
            start = None
    return ", ".join(runs)


def read_class_map(path: str, num_src: int = 151, num_dst: int = 95) -> np.ndarray:
    """Read an ADE20K-150 -> ADE-Indoor class-mapping file (formats in the module docstring).

    Returns an int32 table of ``num_src`` entries with values in ``[0, num_dst)``; DataError naming the file and
    line for anything malformed or out of range."""
    if not os.path.isfile(path):
        raise DataError(f"class-mapping file {path} not found", path)
    table = np.zeros(num_src, np.int32)
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    entries: List[Tuple[int, int, str]] = []
    if text.lstrip().startswith(("{", "[")):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"class-mapping file {path} is not valid JSON: {e}", path) from None
        if isinstance(data, list):
            if len(data) != num_src:
                raise DataError(f"class-mapping file {path}: a list must have {num_src} entries, has {len(data)}",
                                path)
            entries = [(i, v, f"entry {i}") for i, v in enumerate(data)]
        elif isinstance(data, dict):
            entries = [(k, v, f"key {k!r}") for k, v in data.items()]
        else:
            raise DataError(f"class-mapping file {path}: JSON must be an object or a list", path)
    else:
        for n, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.replace(",", " ").split()
            if len(parts) != 2:
                raise DataError(f"class-mapping file {path} line {n}: expected '<ade150 value> <indoor value>', "
                                f"got {line!r}", path)
            entries.append((parts[0], parts[1], f"line {n}"))
    for src, dst, where in entries:
        try:
            s, d = int(src), int(dst)
        except (TypeError, ValueError):
            raise DataError(f"class-mapping file {path} {where}: values must be integers, got {src!r} {dst!r}",
                            path) from None
        if not 0 <= s < num_src or not 0 <= d < num_dst:
            raise DataError(f"class-mapping file {path} {where}: {s} -> {d} is outside [0, {num_src}) -> "
                            f"[0, {num_dst})", path)
        table[s] = d
    return table
