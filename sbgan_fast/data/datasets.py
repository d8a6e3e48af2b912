"""The batch contract shared by every loader, and two simple folder datasets.

Item contract (one sample, what ``__getitem__`` returns):
    ``{"image": uint8 (3, H, W), "label": int64 (H, W), "index": int, "path": str}``
    (label-only datasets leave out ``"image"``).

Batch contract (:func:`to_batch`, what the training loop consumes):
    ``{"image": float32 (N, 3, H, W) in [-1, 1] or None, "label": int64 (N, H, W)}`` on the target device.

:class:`PairedFolderDataset` and :class:`LabelFolderDataset` read image/label pairs or label maps from folders as
they are: resized to (height, width) with Pillow (bicubic for images, nearest for labels), labels checked against
``[0, num_cared)`` and passed on as stored. (Training reads folders through :func:`.layouts.folder`, with the
header scan, crop, cache, DALI and bad-file policy of the official layouts; the horizontal flip is the trainer's.)

Bad data raises :class:`~.files.DataError` naming the file: empty folders, images without labels (or labels
without images), unreadable or truncated images, label values outside ``[0, num_cared)`` (other than
``dontcare``), image/label size mismatches. :meth:`PairedFolderDataset.validate` checks a whole dataset up front.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from .files import (DataError, PathLike, check_dir, check_index, check_same_size, check_size, list_files,
                    normalise_exts, pair_files, read_image, read_label_file, resize_label)

__all__ = [
    "DataError",
    "PairedFolderDataset",
    "LabelFolderDataset",
    "to_batch",
    "image_to_float",
    "float_to_uint8",
]


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




# --------------------------------------------------------------------------------------------------------------
# folder datasets
# --------------------------------------------------------------------------------------------------------------
def _check_labels_arg(where: str, num_cared, dontcare) -> None:
    if isinstance(num_cared, bool) or not isinstance(num_cared, (int, np.integer)) or num_cared <= 0:
        raise ValueError(f"{where}: num_cared (num_classes without the don't-care channel) must be a positive int, "
                         f"got {num_cared!r}")
    if dontcare is not None and (isinstance(dontcare, bool) or not isinstance(dontcare, (int, np.integer))):
        raise ValueError(f"{where}: dontcare must be an int label value or None, got {dontcare!r}")


def _read_label(path: str, num_cared: int, dontcare: Optional[int]) -> np.ndarray:
    """Decode a single-channel label PNG into an integer (H, W) array and check that its values lie in
    ``[0, num_cared)`` or equal ``dontcare``."""
    arr = read_label_file(path)
    bad = (arr < 0) | (arr >= num_cared)
    if dontcare is not None:
        bad &= arr != dontcare
    if bad.any():
        values = np.unique(arr[bad])
        shown = ", ".join(str(int(v)) for v in values[:8]) + (", ..." if values.size > 8 else "")
        raise DataError(f"label file {path} has values outside [0, {num_cared}): {shown} "
                        f"({int(bad.sum())} pixels)"
                        + (f"; only the don't-care value {dontcare} may lie outside" if dontcare is not None
                           else "; pass dontcare= if one of them marks unlabelled pixels, or check num_cared"),
                        path)
    return arr


class PairedFolderDataset(Dataset):
    """Image + label-map pairs from two folders, paired by relative path without extension and suffix.

    ``image_dir/a/b.jpg`` pairs with ``label_dir/a/b.png``; with ``image_suffix="_leftImg8bit"`` and
    ``label_suffix="_gtFine_labelIds"``, ``city/x_leftImg8bit.png`` pairs with ``city/x_gtFine_labelIds.png`` and
    the folder's other PNGs are ignored.

    Args:
        image_dir, label_dir: the two folders (searched recursively; hidden entries skipped).
        num_cared: the number of classes besides the don't-care value (``num_classes`` without the don't-care
            channel; ``num_classes`` itself when there is no don't-care value): label values must lie in
            ``[0, num_cared)`` or equal ``dontcare``.
        height, width: output size (None keeps the file's size along that axis).
        image_exts: image file extensions (case-insensitive).
        dontcare: a label value allowed outside ``[0, num_cared)`` (e.g. 255), passed through unchanged.
        image_suffix, label_suffix: only files whose name (without extension) ends with the suffix are used, and
            the suffix is dropped before pairing.

    Items: ``{"image": uint8 (3, H, W), "label": int64 (H, W), "index": int, "path": image path}``.

    Raises:
        DataError (naming the file or folder) for an empty folder or an unpaired file at construction, and for
        an unreadable or truncated file, a label value out of range or an image/label size mismatch on loading.
    """

    def __init__(self, image_dir: PathLike, label_dir: PathLike, num_cared: int, *,
                 height: Optional[int], width: Optional[int],
                 image_exts: Sequence[str] = (".jpg", ".jpeg", ".png"), dontcare: Optional[int] = None,
                 image_suffix: str = "", label_suffix: str = ""):
        where = "PairedFolderDataset"
        _check_labels_arg(where, num_cared, dontcare)
        self.num_cared = int(num_cared)
        self.dontcare = None if dontcare is None else int(dontcare)
        self.height, self.width = check_size(where, height, width)
        self.image_dir = check_dir(where, "image_dir", image_dir)
        self.label_dir = check_dir(where, "label_dir", label_dir)
        exts = normalise_exts("image_exts", image_exts)
        images = list_files(self.image_dir, exts, recursive=True, suffix=str(image_suffix))
        labels = list_files(self.label_dir, (".png",), recursive=True, suffix=str(label_suffix))
        pairs = pair_files(images, labels, where, self.image_dir, self.label_dir,
                           image_pattern=f"*{image_suffix}{{{','.join(exts)}}}",
                           label_pattern=f"*{label_suffix}.png")
        self.keys: List[str] = sorted(images)   # every image is paired (unpaired files raised above)
        self.image_paths: List[str] = [ip for ip, _ in pairs]
        self.label_paths: List[str] = [lp for _, lp in pairs]

    def __len__(self) -> int:
        return len(self.keys)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Decode, check and resize pair ``index``: (image uint8 (H, W, 3), label int64 (H, W))."""
        index = check_index(type(self).__name__, index, len(self))
        ip, lp = self.image_paths[index], self.label_paths[index]
        image = read_image(ip)
        label = _read_label(lp, self.num_cared, self.dontcare)
        check_same_size(ip, image.size, lp, (label.shape[1], label.shape[0]))
        tw, th = self.width or image.size[0], self.height or image.size[1]
        if (tw, th) != image.size:
            image = image.resize((tw, th), Image.BICUBIC)
        return np.asarray(image, dtype=np.uint8), resize_label(label, th, tw).astype(np.int64)

    def __getitem__(self, index: int) -> Dict[str, object]:
        index = check_index(type(self).__name__, index, len(self))
        image, label = self.load(index)
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
        return (f"PairedFolderDataset({self.image_dir!r}, {self.label_dir!r}, num_cared={self.num_cared}, "
                f"{len(self)} pairs, height={self.height}, width={self.width})")


class LabelFolderDataset(Dataset):
    """Label maps only (e.g. to sample images from given label maps).

    Args:
        label_dir: folder of single-channel label PNGs (searched recursively).
        num_cared, height, width, dontcare: as for :class:`PairedFolderDataset`.
        exts: label file extensions.
        suffix: only files whose name (without extension) ends with it are used (e.g. ``"_gtFine_labelIds"``).

    Items: ``{"label": int64 (H, W), "path": str, "index": int}``.
    """

    def __init__(self, label_dir: PathLike, num_cared: int, *, height: Optional[int], width: Optional[int],
                 dontcare: Optional[int] = None, exts: Sequence[str] = (".png",), suffix: str = ""):
        where = "LabelFolderDataset"
        _check_labels_arg(where, num_cared, dontcare)
        self.num_cared = int(num_cared)
        self.dontcare = None if dontcare is None else int(dontcare)
        self.height, self.width = check_size(where, height, width)
        self.label_dir = check_dir(where, "label_dir", label_dir)
        exts = normalise_exts("exts", exts)
        labels = list_files(self.label_dir, exts, recursive=True, suffix=str(suffix))
        if not labels:
            raise DataError(f"{where}: no label maps (*{suffix}{{{','.join(exts)}}}) found in {self.label_dir}",
                            self.label_dir)
        self.label_paths: List[str] = [labels[k] for k in sorted(labels)]

    def __len__(self) -> int:
        return len(self.label_paths)

    def __getitem__(self, index: int) -> Dict[str, object]:
        index = check_index(type(self).__name__, index, len(self))
        path = self.label_paths[index]
        label = resize_label(_read_label(path, self.num_cared, self.dontcare), self.height, self.width)
        return {"label": torch.from_numpy(np.ascontiguousarray(label, dtype=np.int64)), "path": path,
                "index": index}

    def __repr__(self) -> str:
        return (f"LabelFolderDataset({self.label_dir!r}, num_cared={self.num_cared}, {len(self)} maps, "
                f"height={self.height}, width={self.width})")
