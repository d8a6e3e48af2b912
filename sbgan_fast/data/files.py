"""The files of the file datasets: finding and pairing them, decoding and checking them, resizing label maps.

Shared by the folder datasets (:mod:`.datasets`), the official layouts (:mod:`.layouts`), the pair-list dataset
(:mod:`.real`), its cache (:mod:`.cache`) and the DALI loader (:mod:`.dali`). Everything that goes wrong with a
file raises :class:`DataError` naming it.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

from ..errors import SbganError

__all__ = [
    "DataError", "IMAGE_EXTS", "IMAGE_INTERP", "LABEL_MODES", "PathLike", "check_dir", "check_index",
    "check_same_size", "check_size", "ext_pattern", "list_files", "normalise_exts", "pair_files", "read_header",
    "read_image", "read_label_file", "resize_label",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Image file extensions the datasets read (case-insensitive).
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
#: Pillow modes of single-channel integer label images (``P``: the palette indices are the labels).
LABEL_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I")
#: ``data.image_interp`` -> the Pillow filter that resizes images (label maps are always resized with nearest).
IMAGE_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


class DataError(SbganError, ValueError):
    """Bad input data; ``path`` names the offending file or folder."""

    def __init__(self, message: str, path: Optional[str] = None):
        super().__init__(message)
        self.path = path


# --------------------------------------------------------------------------------------------------------------
# arguments
# --------------------------------------------------------------------------------------------------------------
def check_dir(where: str, name: str, path: PathLike) -> str:
    """``path`` as a str; DataError naming argument ``name`` when it is not a folder."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise DataError(f"{where}: {name} {path!r} is not a folder", path)
    return path


def check_size(where: str, height, width) -> Tuple[Optional[int], Optional[int]]:
    """(height, width) as ints or None; ValueError naming the argument that is not a positive int or None."""
    for name, v in (("height", height), ("width", width)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0):
            raise ValueError(f"{where}: {name} must be a positive int or None, got {v!r}")
    return (None if height is None else int(height)), (None if width is None else int(width))


def check_index(where: str, index, size: int) -> int:
    """An item index as an int (a one-element tensor too); TypeError or IndexError naming ``where``."""
    if hasattr(index, "numel") and index.numel() == 1:     # a torch tensor
        index = int(index)
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"{where}: index must be an int, got {type(index).__name__}")
    if not 0 <= index < size:
        raise IndexError(f"{where}: index {index} out of range for {size} items")
    return int(index)


def normalise_exts(name: str, exts: Sequence[str]) -> Tuple[str, ...]:
    """File extensions as lower-case ``.ext`` strings; ValueError naming argument ``name`` when there are none."""
    if isinstance(exts, str):
        exts = (exts,)
    out = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in exts)
    if not out:
        raise ValueError(f"{name} must list at least one file extension")
    return out


def ext_pattern(exts: Sequence[str], suffix: str = "") -> str:
    """The file names searched, for messages: ``*<suffix>{.jpg,.jpeg,.png}``."""
    return f"*{suffix}{{{','.join(exts)}}}" if len(exts) > 1 else f"*{suffix}{exts[0]}"


# --------------------------------------------------------------------------------------------------------------
# finding and pairing files
# --------------------------------------------------------------------------------------------------------------
def list_files(root: str, exts: Tuple[str, ...], recursive: bool, suffix: str = "") -> Dict[str, str]:
    """{relative path without extension and ``suffix``: full path} of the files under ``root`` whose extension
    is in ``exts`` (case-insensitive) and whose name (without extension) ends with ``suffix``; hidden files and
    folders are skipped. Two files with the same key raise DataError."""
    found: Dict[str, str] = {}
    walker: Iterable = os.walk(root) if recursive else [(root, [], sorted(os.listdir(root)))]
    for dirpath, dirnames, filenames in walker:
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            stem, ext = os.path.splitext(fn)
            if fn.startswith(".") or ext.lower() not in exts or not stem.endswith(suffix):
                continue
            stem = stem[: len(stem) - len(suffix)]
            full = os.path.join(dirpath, fn)
            if not os.path.isfile(full):
                continue
            key = os.path.relpath(os.path.join(dirpath, stem), root)
            if key in found:
                raise DataError(f"two files share the name {key!r}: {found[key]} and {full}", full)
            found[key] = full
    return found


def pair_files(images: Dict[str, str], labels: Dict[str, str], where: str, image_dir: str, label_dir: str, *,
               image_pattern: str = "", label_pattern: str = "",
               unpaired: Optional[List[DataError]] = None) -> List[Tuple[str, str]]:
    """``[(image path, label path), ...]`` of the keys in both ``images`` and ``labels`` (as :func:`list_files`
    makes them), in key order.

    An empty side raises DataError naming its folder (``image_pattern`` / ``label_pattern``, e.g. ``"*.png"``, are
    shown in that message). Unpaired files raise one DataError listing them (the first one is ``error.path``), or,
    when an ``unpaired`` list is given, are appended to it (one DataError per file) and left out; then it raises
    only when no image has a label map."""
    if not images:
        shown = f" ({image_pattern})" if image_pattern else ""
        raise DataError(f"{where}: no images{shown} found in {image_dir}", image_dir)
    if not labels:
        shown = f" ({label_pattern})" if label_pattern else ""
        raise DataError(f"{where}: no label maps{shown} found in {label_dir}", label_dir)
    no_label = sorted(k for k in images if k not in labels)
    no_image = sorted(k for k in labels if k not in images)
    if no_label or no_image:
        parts = []
        if no_label:
            parts.append(f"{len(no_label)} image(s) without a label map in {label_dir}: "
                         + ", ".join(images[k] for k in no_label[:5]) + (" ..." if len(no_label) > 5 else ""))
        if no_image:
            parts.append(f"{len(no_image)} label map(s) without an image in {image_dir}: "
                         + ", ".join(labels[k] for k in no_image[:5]) + (" ..." if len(no_image) > 5 else ""))
        first = images[no_label[0]] if no_label else labels[no_image[0]]
        if unpaired is None:
            raise DataError(f"{where}: missing pairs: " + "; ".join(parts), first)
        unpaired.extend(DataError(f"{where}: image {images[k]} has no label map in {label_dir}", images[k])
                        for k in no_label)
        unpaired.extend(DataError(f"{where}: label map {labels[k]} has no image in {image_dir}", labels[k])
                        for k in no_image)
        if not any(k in labels for k in images):
            raise DataError(f"{where}: no image has a label map: " + "; ".join(parts), first)
    return [(images[k], labels[k]) for k in sorted(images) if k in labels]


# --------------------------------------------------------------------------------------------------------------
# decoding and checking
# --------------------------------------------------------------------------------------------------------------
def read_header(path: str, kind: str) -> Tuple[Tuple[int, int], str]:
    """((width, height), mode) from the file header alone; DataError naming the ``kind`` ("image", "label") of
    file when the header is unreadable."""
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read {kind} file {path}: {e}", path) from e


def read_image(path: str) -> Image.Image:
    """Decode an image fully as RGB; DataError naming the file when it is unreadable or truncated."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later in a worker
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image file {path}: {e}", path) from e


def read_label_file(path: str) -> np.ndarray:
    """Decode a single-channel label PNG to an integer (H, W) array of its raw values (P mode: the palette
    indices); DataError naming the file when it is unreadable, truncated, colour-coded or not 2-D."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in LABEL_MODES:
                raise DataError(f"label file {path} has image mode {im.mode!r}; label maps must be single-channel "
                                f"integer images (modes {', '.join(LABEL_MODES)}), not colour-coded", path)
            arr = np.array(im)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read label file {path}: {e}", path) from e
    if arr.ndim != 2:
        raise DataError(f"label file {path} decodes to shape {arr.shape}; expected (H, W)", path)
    return arr


def check_same_size(image_path: str, image_size: Tuple[int, int], label_path: str,
                    label_size: Tuple[int, int]) -> None:
    """DataError naming the image when its (width, height) differs from its label map's."""
    if tuple(image_size) != tuple(label_size):
        raise DataError(f"image {image_path} is {image_size[0]}x{image_size[1]} but its label map {label_path} is "
                        f"{label_size[0]}x{label_size[1]} (width x height)", image_path)


def resize_label(arr: np.ndarray, height: Optional[int], width: Optional[int]) -> np.ndarray:
    """Nearest resize of an integer (H, W) label map with Pillow (the preprocessing the reference code applies);
    None keeps that axis. Returns the map itself when the size does not change, else a new (height, width)
    array (uint8 when every value lies in 0..255, else int32)."""
    h, w = arr.shape
    th, tw = height or h, width or w
    if (th, tw) == (h, w):
        return arr
    small = arr.astype(np.uint8 if arr.min(initial=0) >= 0 and arr.max(initial=0) < 256 else np.int32)
    return np.array(Image.fromarray(np.ascontiguousarray(small)).resize((tw, th), Image.NEAREST))
