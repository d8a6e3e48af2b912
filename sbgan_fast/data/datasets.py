"""Folder datasets and the batch contract shared by every loader.

Item contract (one sample, what ``__getitem__`` returns):
    ``{"image": uint8 (3, H, W), "label": int64 (H, W), "index": int, "path": str}``
    (label-only datasets leave out ``"image"``).

Batch contract (:func:`to_batch`, what the training loop consumes):
    ``{"image": float32 (N, 3, H, W) in [-1, 1] or None, "label": int64 (N, H, W)}`` on the target device.

Preprocessing of :class:`PairedFolderDataset`: resize to (height, width) with Pillow (bicubic for images,
nearest for labels), then a horizontal flip shared by image and label, decided by
``(seed, index, epoch)`` so that runs are reproducible and every epoch flips differently.

Bad data raises :class:`DataError` naming the file: empty folders, images without labels (or labels without
images), unreadable or truncated images, label values outside ``[0, num_classes)`` (other than ``dontcare``),
image/label size mismatches. :meth:`PairedFolderDataset.validate` checks a whole dataset up front.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from ..errors import SbganError

__all__ = [
    "DataError",
    "PairedFolderDataset",
    "LabelFolderDataset",
    "to_batch",
    "image_to_float",
    "float_to_uint8",
    "flip_decision",
]

PathLike = Union[str, "os.PathLike[str]"]

_LABEL_MODES = ("L", "P", "I;16", "I;16L", "I;16B", "I")


class DataError(SbganError, ValueError):
    """Bad input data; ``path`` names the offending file or folder."""

    def __init__(self, message: str, path: Optional[str] = None):
        super().__init__(message)
        self.path = path


# --------------------------------------------------------------------------------------------------------------
# batch contract
# --------------------------------------------------------------------------------------------------------------
def image_to_float(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 image(s) (..., 3, H, W) in 0..255 -> floating ``dtype`` in [-1, 1] (``x / 127.5 - 1``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"image_to_float: expected a torch tensor, got {type(x).__name__}")
    if x.dtype != torch.uint8:
        raise TypeError(f"image_to_float: expected a uint8 tensor, got {x.dtype}")
    if not dtype.is_floating_point:
        raise TypeError(f"image_to_float: dtype must be floating point, got {dtype}")
    return x.to(dtype).div_(127.5).sub_(1.0)


def float_to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Floating image(s) in [-1, 1] -> uint8 0..255: ``round((x + 1) * 127.5)`` clamped to [0, 255].
    Exactly inverts :func:`image_to_float`; values outside [-1, 1] saturate; NaN maps to 0."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"float_to_uint8: expected a torch tensor, got {type(x).__name__}")
    if not x.dtype.is_floating_point:
        raise TypeError(f"float_to_uint8: expected a floating tensor, got {x.dtype}")
    y = (x.detach().float() + 1.0).mul_(127.5).round_().clamp_(0.0, 255.0)
    return torch.nan_to_num(y, nan=0.0).to(torch.uint8)


def to_batch(items: Union[Sequence[Mapping], Mapping], device: Union[str, torch.device, None] = None, *,
             non_blocking: bool = False) -> Dict[str, Optional[torch.Tensor]]:
    """Make a training batch from dataset items.

    Args:
        items: a sequence of item dicts (``{"image": uint8 (3,H,W), "label": int (H,W), ...}``), or one dict of
            already stacked tensors (what ``torch.utils.data.default_collate`` makes of such items).
        device: target device (None keeps the items' device). uint8 images are moved first and converted on the
            device (a quarter of the transfer of float32).
        non_blocking: passed to ``Tensor.to`` (useful with pinned memory).

    Returns:
        ``{"image": float32 (N, 3, H, W) in [-1, 1] or None (no images in the items),
        "label": int64 (N, H, W)}``.
    """
    if isinstance(items, Mapping):
        labels = items.get("label")
        images = items.get("image")
        if not isinstance(labels, torch.Tensor):
            raise TypeError("to_batch: a collated batch needs a 'label' tensor")
    else:
        items = list(items)
        if not items:
            raise ValueError("to_batch: got no items")
        for i, it in enumerate(items):
            if not isinstance(it, Mapping) or "label" not in it:
                raise TypeError(f"to_batch: item {i} is not a dict with a 'label' entry")
        shapes = {tuple(it["label"].shape) for it in items}
        if len(shapes) > 1:
            raise ValueError(f"to_batch: items have different label sizes {sorted(shapes)}; resize them first")
        labels = torch.stack([torch.as_tensor(it["label"]) for it in items])
        has_image = ["image" in it and it["image"] is not None for it in items]
        if any(has_image) and not all(has_image):
            raise ValueError("to_batch: some items have an 'image' and some do not")
        images = torch.stack([torch.as_tensor(it["image"]) for it in items]) if all(has_image) else None
    if labels.ndim == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 3:
        raise ValueError(f"to_batch: labels must stack to (N, H, W), got shape {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"to_batch: labels must be integers, got {labels.dtype}")
    labels = labels.to(device=device, dtype=torch.int64, non_blocking=non_blocking)
    if images is not None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"to_batch: images must stack to (N, 3, H, W), got shape {tuple(images.shape)}")
        if images.shape[0] != labels.shape[0] or images.shape[2:] != labels.shape[1:]:
            raise ValueError(f"to_batch: images {tuple(images.shape)} do not match labels {tuple(labels.shape)}")
        images = images.to(device=device, non_blocking=non_blocking)
        if images.dtype == torch.uint8:
            images = image_to_float(images)
        elif images.dtype.is_floating_point:
            images = images.float()
        else:
            raise TypeError(f"to_batch: images must be uint8 or floating, got {images.dtype}")
    return {"image": images, "label": labels}


def flip_decision(seed: int, index: int, epoch: int) -> bool:
    """The shared horizontal-flip choice of item ``index`` in ``epoch`` (probability 1/2, deterministic)."""
    return bool(np.random.default_rng([int(seed), int(index), int(epoch), 0xF11B]).random() < 0.5)


# --------------------------------------------------------------------------------------------------------------
# file helpers
# --------------------------------------------------------------------------------------------------------------
def _check_dir(where: str, name: str, path: PathLike) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise DataError(f"{where}: {name} {path!r} is not a folder", path)
    return path


def _list_files(root: str, exts: Tuple[str, ...], recursive: bool, suffix: str = "") -> Dict[str, str]:
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


def _pair_files(images: Dict[str, str], labels: Dict[str, str], where: str, image_dir: str, label_dir: str, *,
                image_pattern: str = "", label_pattern: str = "",
                unpaired: Optional[List[DataError]] = None) -> List[Tuple[str, str]]:
    """``[(image path, label path), ...]`` of the keys in both ``images`` and ``labels`` (as :func:`_list_files`
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


def _normalise_exts(name: str, exts: Sequence[str]) -> Tuple[str, ...]:
    if isinstance(exts, str):
        exts = (exts,)
    out = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in exts)
    if not out:
        raise ValueError(f"{name} must list at least one file extension")
    return out


def _read_image(path: str) -> Image.Image:
    """Decode an image fully as RGB; DataError naming the file when it is unreadable or truncated."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later in a worker
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read image file {path}: {e}", path) from e


def _read_label_raw(path: str) -> np.ndarray:
    """Decode a single-channel label PNG to an integer (H, W) array (P mode: the palette indices); DataError
    naming the file when it is unreadable, truncated, colour-coded or not 2-D."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode not in _LABEL_MODES:
                raise DataError(f"label file {path} has image mode {im.mode!r}; label maps must be single-channel "
                                f"integer images (modes {', '.join(_LABEL_MODES)}), not colour-coded", path)
            arr = np.array(im)
    except DataError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read label file {path}: {e}", path) from e
    if arr.ndim != 2:
        raise DataError(f"label file {path} decodes to shape {arr.shape}; expected (H, W)", path)
    return arr


def _read_label(path: str, num_classes: int, dontcare: Optional[int]) -> np.ndarray:
    """Decode a single-channel label PNG into an integer (H, W) array and check its value range."""
    arr = _read_label_raw(path)
    bad = (arr < 0) | (arr >= num_classes)
    if dontcare is not None:
        bad &= arr != dontcare
    if bad.any():
        values = np.unique(arr[bad])
        shown = ", ".join(str(int(v)) for v in values[:8]) + (", ..." if values.size > 8 else "")
        raise DataError(f"label file {path} has values outside [0, {num_classes}): {shown} "
                        f"({int(bad.sum())} pixels)"
                        + (f"; only the don't-care value {dontcare} may lie outside" if dontcare is not None
                           else "; pass dontcare= if one of them marks unlabelled pixels, or check num_classes"),
                        path)
    return arr


def _resize_label(arr: np.ndarray, height: Optional[int], width: Optional[int]) -> np.ndarray:
    """Nearest resize of an integer (H, W) map with Pillow (the preprocessing the reference code applies)."""
    h, w = arr.shape
    th, tw = height or h, width or w
    if (th, tw) == (h, w):
        return arr
    if arr.dtype not in (np.uint8, np.uint16, np.int32):
        arr = arr.astype(np.int32)
    return np.array(Image.fromarray(arr).resize((tw, th), Image.NEAREST))


def _check_size(where: str, height, width) -> Tuple[Optional[int], Optional[int]]:
    for name, v in (("height", height), ("width", width)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0):
            raise ValueError(f"{where}: {name} must be a positive int or None, got {v!r}")
    return (None if height is None else int(height)), (None if width is None else int(width))


def _check_classes(where: str, num_classes, dontcare) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes <= 0:
        raise ValueError(f"{where}: num_classes must be a positive int, got {num_classes!r}")
    if dontcare is not None and (isinstance(dontcare, bool) or not isinstance(dontcare, (int, np.integer))):
        raise ValueError(f"{where}: dontcare must be an int label value or None, got {dontcare!r}")


class _FolderBase(Dataset):
    def __init__(self, hflip: bool, seed: int):
        self.hflip = bool(hflip)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with the seed and index, decides the random flips."""
        self.epoch = int(epoch)

    def flipped(self, index: int) -> bool:
        """Whether item ``index`` is flipped in the current epoch."""
        return self.hflip and flip_decision(self.seed, index, self.epoch)

    def _check_index(self, index) -> int:
        if isinstance(index, torch.Tensor) and index.numel() == 1:
            index = int(index)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"{type(self).__name__}: index must be an int, got {type(index).__name__}")
        if not 0 <= index < len(self):
            raise IndexError(f"{type(self).__name__}: index {index} out of range for {len(self)} items")
        return int(index)


class PairedFolderDataset(_FolderBase):
    """Image + label-map pairs from two folders, paired by relative path without extension and suffix.

    (Training's ``data.dataset=folder`` reads the same pairs through :func:`sbgan_fast.data.real.folder`, with
    the header scan, crop, cache, DALI and bad-file policy of the official layouts.)

    ``image_dir/a/b.jpg`` pairs with ``label_dir/a/b.png``; with ``image_suffix="_leftImg8bit"`` and
    ``label_suffix="_gtFine_labelIds"``, ``city/x_leftImg8bit.png`` pairs with ``city/x_gtFine_labelIds.png`` and
    the folder's other PNGs are ignored.

    Args:
        image_dir, label_dir: the two folders (searched recursively; hidden entries skipped).
        num_classes: K; label values must lie in [0, K) or equal ``dontcare``.
        height, width: output size (None keeps the file's size along that axis).
        hflip: random horizontal flip shared by image and label, decided by ``(seed, index, epoch)``.
        seed: flip seed.
        image_exts: image file extensions (case-insensitive).
        dontcare: a label value allowed outside [0, K) (e.g. 255), passed through unchanged.
        image_suffix, label_suffix: only files whose name (without extension) ends with the suffix are used, and
            the suffix is dropped before pairing.

    Items: ``{"image": uint8 (3, H, W), "label": int64 (H, W), "index": int, "path": image path}``.

    Raises:
        DataError (naming the file or folder) for an empty folder or an unpaired file at construction, and for
        an unreadable or truncated file, a label value out of range or an image/label size mismatch on loading.
    """

    def __init__(self, image_dir: PathLike, label_dir: PathLike, num_classes: int, *,
                 height: Optional[int], width: Optional[int], hflip: bool = True, seed: int = 0,
                 image_exts: Sequence[str] = (".jpg", ".jpeg", ".png"), dontcare: Optional[int] = None,
                 image_suffix: str = "", label_suffix: str = ""):
        super().__init__(hflip, seed)
        where = "PairedFolderDataset"
        _check_classes(where, num_classes, dontcare)
        self.num_classes = int(num_classes)
        self.dontcare = None if dontcare is None else int(dontcare)
        self.height, self.width = _check_size(where, height, width)
        self.image_dir = _check_dir(where, "image_dir", image_dir)
        self.label_dir = _check_dir(where, "label_dir", label_dir)
        exts = _normalise_exts("image_exts", image_exts)
        images = _list_files(self.image_dir, exts, recursive=True, suffix=str(image_suffix))
        labels = _list_files(self.label_dir, (".png",), recursive=True, suffix=str(label_suffix))
        pairs = _pair_files(images, labels, where, self.image_dir, self.label_dir,
                            image_pattern=f"*{image_suffix}{{{','.join(exts)}}}",
                            label_pattern=f"*{label_suffix}.png")
        self.keys: List[str] = sorted(images)   # every image is paired (unpaired files raised above)
        self.image_paths: List[str] = [ip for ip, _ in pairs]
        self.label_paths: List[str] = [lp for _, lp in pairs]

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Decode, check and resize pair ``index`` (no flip): (image uint8 (H, W, 3), label int64 (H, W))."""
        index = self._check_index(index)
        ip, lp = self.image_paths[index], self.label_paths[index]
        image = _read_image(ip)
        label = _read_label(lp, self.num_classes, self.dontcare)
        if (label.shape[1], label.shape[0]) != image.size:
            raise DataError(f"image {ip} is {image.size[0]}x{image.size[1]} but its label map {lp} is "
                            f"{label.shape[1]}x{label.shape[0]} (width x height)", ip)
        tw, th = self.width or image.size[0], self.height or image.size[1]
        if (tw, th) != image.size:
            image = image.resize((tw, th), Image.BICUBIC)
        return np.asarray(image, dtype=np.uint8), _resize_label(label, th, tw).astype(np.int64)

    def __getitem__(self, index: int) -> Dict[str, object]:
        index = self._check_index(index)
        image, label = self.load(index)
        if self.flipped(index):
            image, label = image[:, ::-1], label[:, ::-1]
        return {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                "label": torch.from_numpy(np.ascontiguousarray(label)),
                "index": index, "path": self.image_paths[index]}

    def validate(self, max_errors: int = 20) -> None:
        """Decode every pair and check it; raise one DataError listing up to ``max_errors`` problems (the first
        bad file is ``error.path``). Use before long runs: a bad file then fails in seconds, not hours in."""
        errors: List[DataError] = []
        for i in range(len(self)):
            try:
                self.load(i)
            except DataError as e:
                errors.append(e)
                if len(errors) >= max_errors:
                    break
        if errors:
            more = " (stopped early)" if len(errors) >= max_errors else ""
            raise DataError(f"{len(errors)} bad pair(s){more}:\n" + "\n".join(f"  {e}" for e in errors),
                            errors[0].path)

    def __repr__(self) -> str:
        return (f"PairedFolderDataset({self.image_dir!r}, {self.label_dir!r}, num_classes={self.num_classes}, "
                f"{len(self)} pairs, height={self.height}, width={self.width}, hflip={self.hflip})")


class LabelFolderDataset(_FolderBase):
    """Label maps only (e.g. to sample images from given label maps).

    Args:
        label_dir: folder of single-channel label PNGs (searched recursively).
        num_classes, height, width, dontcare: as for :class:`PairedFolderDataset`.
        hflip: random flip decided by ``(seed, index, epoch)`` (off by default).
        exts: label file extensions.
        suffix: only files whose name (without extension) ends with it are used (e.g. ``"_gtFine_labelIds"``).

    Items: ``{"label": int64 (H, W), "path": str, "index": int}``.
    """

    def __init__(self, label_dir: PathLike, num_classes: int, *, height: Optional[int], width: Optional[int],
                 hflip: bool = False, seed: int = 0, dontcare: Optional[int] = None,
                 exts: Sequence[str] = (".png",), suffix: str = ""):
        super().__init__(hflip, seed)
        where = "LabelFolderDataset"
        _check_classes(where, num_classes, dontcare)
        self.num_classes = int(num_classes)
        self.dontcare = None if dontcare is None else int(dontcare)
        self.height, self.width = _check_size(where, height, width)
        self.label_dir = _check_dir(where, "label_dir", label_dir)
        exts = _normalise_exts("exts", exts)
        labels = _list_files(self.label_dir, exts, recursive=True, suffix=str(suffix))
        if not labels:
            raise DataError(f"{where}: no label maps (*{suffix}{{{','.join(exts)}}}) found in {self.label_dir}",
                            self.label_dir)
        self.label_paths: List[str] = [labels[k] for k in sorted(labels)]

    def __len__(self) -> int:
        return len(self.label_paths)

    def __getitem__(self, index: int) -> Dict[str, object]:
        index = self._check_index(index)
        path = self.label_paths[index]
        label = _resize_label(_read_label(path, self.num_classes, self.dontcare), self.height, self.width)
        if self.flipped(index):
            label = label[:, ::-1]
        return {"label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)), "path": path,
                "index": index}

    def __repr__(self) -> str:
        return (f"LabelFolderDataset({self.label_dir!r}, num_classes={self.num_classes}, {len(self)} maps, "
                f"height={self.height}, width={self.width})")
