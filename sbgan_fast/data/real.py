"""Image/label pairs given as explicit file lists (:class:`RealPairsDataset`), with the authors' augmentation.

Every file dataset becomes one: the official layouts and paired folders (:mod:`.layouts`), label maps read for
sampling (:func:`.factory.build_label_dataset`). Raw label values go through a value table (:mod:`.values`).

Augmentation (what the authors' data code does): ADE datasets take a square crop of side ``min(H, W)`` along the
long edge at a random offset in ``[0, long - short)``, shared by image and label; then image and label are resized
to ``height x width`` (nearest for labels, bilinear or bicubic for images); images map to [-1, 1] in the training
step. The horizontal flip is the trainer's (per step, shared by image and label), so these datasets never flip.

Determinism: the crop offset of item ``index`` in epoch ``epoch`` is drawn from a generator seeded by
``(seed, index, epoch)``. Datasets with random crops accept ``dataset[(index, epoch)]`` (the training loader
passes the epoch of each position in its sample stream), so a resumed run sees exactly the crops of an
uninterrupted one; ``dataset[index]`` uses the epoch set with :meth:`set_epoch` (0 by default).

Bad data: :meth:`RealPairsDataset.scan` checks every file (``decode=False``: headers only, fast: missing
pairs, unreadable headers, size mismatches, label modes; ``decode=True``: also decodes every file and checks the
label values); ``skip_bad_files=True`` replaces an item that fails to load by the next loadable one (a
deterministic choice) and counts it in :attr:`RealPairsDataset.skipped`.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .files import (IMAGE_INTERP, LABEL_MODES, DataError, check_index, check_same_size, check_size, read_header,
                    read_image, read_label_file, resize_label)
from .values import apply_value_table, class_values, describe_values, value_table

__all__ = ["Pair", "RealPairsDataset", "crop_offset"]

Pair = Tuple[Optional[str], str]   # (image path or None, label path)


def crop_offset(seed: int, index: int, epoch: int, span: int) -> int:
    """Offset of the square crop along the long edge: uniform in ``[0, span)`` (0 when ``span <= 0``), drawn from a
    generator seeded by ``(seed, index, epoch)``."""
    if span <= 0:
        return 0
    return int(np.random.default_rng([int(seed), int(index), int(epoch), 0xC409]).integers(0, span))



class RealPairsDataset(torch.utils.data.Dataset):
    """Image/label pairs given as explicit file lists, with a value table, crops and resizing.

    Args:
        pairs: ``[(image path, label path), ...]`` (image path None when the dataset is label-only by nature).
        num_classes: label channels K seen by the networks (including a don't-care channel, if any).
        lut: int32 table raw label value -> label value (-1 = not allowed); None: the classes' values
            (:func:`.values.class_values`: ``[0, K)``, or ``[0, K-1)`` with a don't-care value) and ``dontcare``.
        dontcare: label value passed through for the last channel (e.g. 255), or None.
        height, width: output size (None keeps the (cropped) size).
        crop: ``"none"`` or ``"long_edge"`` (square crop of side min(H, W) at a random offset along the long edge).
        labels_only: never open the images (items have no ``"image"``).
        seed: seed of the crop offsets.
        image_interp: ``"bilinear"`` or ``"bicubic"`` (labels are always resized with nearest).
        skip_bad_files: replace items that fail to load by the next loadable item (counted in :attr:`skipped`).
        name: dataset name used in messages.

    Items: ``{"image": uint8 (3, H, W), "label": int64 (H, W), "index": int, "path": str, "skipped": int}``
    (``"skipped"``: how many bad items were passed over to produce this one).
    """

    def __init__(self, pairs: Sequence[Pair], num_classes: int, *, lut: Optional[np.ndarray] = None,
                 dontcare: Optional[int] = None, height: Optional[int], width: Optional[int], crop: str = "none",
                 labels_only: bool = False, seed: int = 0, image_interp: str = "bilinear",
                 skip_bad_files: bool = False, name: str = "dataset"):
        self.name = str(name)
        self.seed = int(seed)
        self.epoch = 0
        if not pairs:
            raise DataError(f"{self.name}: no image/label pairs")
        if crop not in ("none", "long_edge"):
            raise ValueError(f"{self.name}: crop must be 'none' or 'long_edge', got {crop!r}")
        if image_interp not in IMAGE_INTERP:
            raise ValueError(f"{self.name}: image_interp must be one of {sorted(IMAGE_INTERP)}, got "
                             f"{image_interp!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes <= 0:
            raise ValueError(f"{self.name}: num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.dontcare = None if dontcare is None else int(dontcare)
        allowed_text = None
        if lut is None:
            valid = class_values(self.num_classes, self.dontcare)
            top = max(valid + [self.dontcare or 0]) + 1
            lut = value_table(valid + ([self.dontcare] if self.dontcare is not None else []), size=max(256, top))
            allowed_text = f"[0, {len(valid)})" + (f" and the don't-care value {self.dontcare}"
                                                   if self.dontcare is not None else "")
        self.lut = np.asarray(lut, dtype=np.int32)
        self.height, self.width = check_size(self.name, height, width)
        self.crop = crop
        self.labels_only = bool(labels_only)
        self.image_interp = image_interp
        self.skip_bad_files = bool(skip_bad_files)
        self.image_paths: List[Optional[str]] = [p[0] for p in pairs]
        self.label_paths: List[str] = [p[1] for p in pairs]
        self.skipped: List[str] = []     # files dropped up front (see drop) or passed over while loading
        self.unpaired: List[DataError] = []  # files without a partner, left out (builders' lenient mode)
        allowed = sorted(int(v) for v in np.flatnonzero(self.lut >= 0))
        self._allowed = allowed_text or f"the values this dataset allows ({describe_values(allowed)})"

    # -- views ------------------------------------------------------------------------------------
    @property
    def wants_epoch(self) -> bool:
        """True when items depend on the epoch (random crops): the loader then passes ``(index, epoch)``."""
        return self.crop != "none"

    def view(self, labels_only: bool) -> "RealPairsDataset":
        """The same dataset (the same files, lists and settings, shared), reading label maps only or not."""
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.labels_only = bool(labels_only)
        return view

    def label_view(self) -> "RealPairsDataset":
        """The same dataset, label maps only (never decodes an image): for the label-map stage."""
        return self.view(labels_only=True)

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that, with the seed and index, decides the crops of ``dataset[index]``."""
        self.epoch = int(epoch)

    def drop(self, indices: Sequence[int], reason: str = "") -> None:
        """Remove pairs (e.g. found bad by :meth:`scan`); their label paths are added to :attr:`skipped`."""
        bad = set(int(i) for i in indices)
        self.skipped.extend(self.label_paths[i] for i in sorted(bad))
        keep = [i for i in range(len(self.label_paths)) if i not in bad]
        if not keep:
            raise DataError(f"{self.name}: every pair is bad{': ' + reason if reason else ''}")
        self.image_paths = [self.image_paths[i] for i in keep]
        self.label_paths = [self.label_paths[i] for i in keep]

    def __len__(self) -> int:
        return len(self.label_paths)

    # -- loading ----------------------------------------------------------------------------------
    def _split_index(self, index) -> Tuple[int, int]:
        if isinstance(index, tuple):
            if len(index) != 2:
                raise TypeError(f"{self.name}: index must be an int or (index, epoch), got {index!r}")
            return check_index(type(self).__name__, index[0], len(self)), int(index[1])
        return check_index(type(self).__name__, index, len(self)), self.epoch

    def crop_window(self, index: int, epoch: int, h: int, w: int) -> Tuple[int, int, int, int]:
        """(top, left, crop height, crop width) of item ``index`` in ``epoch`` for a source of size h x w."""
        if self.crop == "none":
            return 0, 0, h, w
        s = min(h, w)
        off = crop_offset(self.seed, index, epoch, max(h, w) - s)
        return (off, 0, s, s) if h > w else (0, off, s, s)

    def out_size(self, ch: int, cw: int) -> Tuple[int, int]:
        return self.height or ch, self.width or cw

    def read_label(self, index: int) -> np.ndarray:
        """Label map of pair ``index`` at its file's size: decoded and mapped through the value table."""
        lp = self.label_paths[index]
        return apply_value_table(read_label_file(lp), self.lut, lp, self._allowed)

    def finish_label(self, lab: np.ndarray, index: int, epoch: int) -> np.ndarray:
        """A label map from :meth:`read_label` cropped (item ``index`` in ``epoch``) and nearest-resized to the
        output size: int64 (H, W)."""
        h, w = lab.shape
        t, l, ch, cw = self.crop_window(index, epoch, h, w)
        lab = lab[t:t + ch, l:l + cw]
        th, tw = self.out_size(ch, cw)
        return resize_label(lab, th, tw).astype(np.int64)

    def load(self, index: int, epoch: int = 0) -> Tuple[Optional[np.ndarray], np.ndarray]:
        """(image uint8 (H, W, 3) or None when label-only, label int64 (H, W)) of item ``index`` in ``epoch``."""
        lab = self.read_label(index)
        if self.labels_only or self.image_paths[index] is None:
            return None, self.finish_label(lab, index, epoch)
        ip, lp = self.image_paths[index], self.label_paths[index]
        image = read_image(ip)
        check_same_size(ip, image.size, lp, (lab.shape[1], lab.shape[0]))
        h, w = lab.shape
        t, l, ch, cw = self.crop_window(index, epoch, h, w)
        if (t, l, ch, cw) != (0, 0, h, w):
            image = image.crop((l, t, l + cw, t + ch))
        th, tw = self.out_size(ch, cw)
        if (tw, th) != image.size:
            image = image.resize((tw, th), IMAGE_INTERP[self.image_interp])
        return np.asarray(image, dtype=np.uint8), self.finish_label(lab, index, epoch)

    def __getitem__(self, index) -> Dict[str, object]:
        i, epoch = self._split_index(index)
        n = len(self)
        for k in range(n if self.skip_bad_files else 1):
            j = (i + k) % n
            try:
                image, label = self.load(j, epoch)
            except DataError as e:
                if not self.skip_bad_files:
                    raise
                if e.path not in self.skipped:
                    self.skipped.append(e.path)
                continue
            item: Dict[str, object] = {"label": torch.from_numpy(np.ascontiguousarray(label)), "index": j,
                                       "path": self.label_paths[j], "skipped": k}
            if image is not None:
                item["image"] = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
            return item
        raise DataError(f"{self.name}: no loadable item found (every file failed; see the log)")

    # -- checking ---------------------------------------------------------------------------------
    def scan(self, decode: bool = False, progress=None, sizes: Optional[list] = None) -> List[DataError]:
        """Check every pair; return the problems found (one DataError per bad file, ``error.index`` set).

        ``decode=False`` reads headers only (missing files, unreadable headers, image/label size mismatch, label
        image modes): seconds for Cityscapes. ``decode=True`` also decodes every file (truncated data) and checks
        the label values against the dataset's value table. ``sizes``: a list that receives each good pair's
        ``(index, (width, height))``."""
        problems: List[DataError] = []
        for i in range(len(self)):
            ip, lp = self.image_paths[i], self.label_paths[i]
            lsize = None
            try:
                if decode:
                    lab = self.read_label(i)
                    lsize = (lab.shape[1], lab.shape[0])
                else:
                    lsize, mode = read_header(lp, "label")
                    if mode not in LABEL_MODES:
                        raise DataError(f"label file {lp} has image mode {mode!r}; label maps must be "
                                        f"single-channel integer images, not colour-coded", lp)
                if ip is not None and not self.labels_only:
                    isize = read_image(ip).size if decode else read_header(ip, "image")[0]
                    check_same_size(ip, isize, lp, lsize)
            except DataError as e:
                e.index = i
                problems.append(e)
            else:
                if sizes is not None:
                    sizes.append((i, lsize))
            if progress is not None:
                progress(i + 1, len(self))
        return problems

    def source_size(self, index: int) -> Tuple[int, int]:
        """(height, width) of pair ``index``'s label file, from its header."""
        (w, h), _ = read_header(self.label_paths[index], "label")
        return h, w

    def fingerprint(self) -> Dict[str, object]:
        """What determines the cached contents (see :mod:`sbgan_fast.data.cache`)."""
        files = []
        for ip, lp in zip(self.image_paths, self.label_paths):
            for p in (ip, lp):
                if p is not None:
                    st = os.stat(p)
                    files.append([os.path.abspath(p), st.st_size, int(st.st_mtime)])
        return {"name": self.name, "height": self.height, "width": self.width, "crop": self.crop,
                "interp": self.image_interp, "lut": self.lut.tolist(), "files": files}

    def __repr__(self) -> str:
        return (f"RealPairsDataset({self.name}, {len(self)} pairs, num_classes={self.num_classes}, "
                f"height={self.height}, width={self.width}, crop={self.crop!r}, labels_only={self.labels_only})")
