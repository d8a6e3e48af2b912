"""Cityscapes, ADE20K and ADE-Indoor in their official layouts, with the authors' augmentation.

Layouts (``root`` is what ``--data-root`` names):

* **Cityscapes**: ``root/leftImg8bit/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png`` and
  ``root/gtFine/<split>/<city>/<city>_<seq>_<frame>_gtFine_<kind>.png`` with ``kind`` = ``labelIds`` (35 label
  channels: ids 0..33, and the value 255 of unlabelled license plates mapped to 34 "unknown") or
  ``labelTrainIds`` (19 train ids 0..18 plus the don't-care value 255: 20 channels with ``dontcare=255``).
  Cityscapes-25K adds extra images with their own label folder (train ids) and a list file naming the images used
  (one path per line, absolute or relative to the extra image folder; further columns are ignored); an extra
  image ``<dir>/<key>_leftImg8bit.<ext>`` pairs with ``<label dir>/<dir>/<key><suffix>.png`` where the suffix is
  one of ``_gtFine_labelTrainIds``, ``_labelTrainIds``, ``_gtFine_labelIds`` or none.
* **ADE20K** (scene parsing challenge, ``ADEChallengeData2016``): ``root/images/{training,validation}/*.jpg`` and
  ``root/annotations/{training,validation}/*.png`` (values 0..150, 0 = "other": 151 channels). ``root`` may also
  be the folder that holds ``ADEChallengeData2016``.
* **ADE-Indoor**: either the authors' preprocessed archive, with values 0..94 (95 channels), as
  ``root/<scene>/ADE_*.jpg`` next to ``ADE_*.png``, or as separate image and label trees
  ``root/ADE15c_indoor_img/<scene>/...jpg`` + ``root/ADE15c_indoor_lbl/<scene>/...png`` (validation:
  ``ADE15c_indoor_val_img`` / ``ADE15c_indoor_val_lbl``); or the ADE20K challenge layout plus a class-mapping file
  (ADE20K-150 value -> indoor value) and the split lists ``ade_indoor_{im,lbl}_info_{train,val}.txt`` that select
  the images. With the archive layout the lists are optional (they restrict the files to the listed ones).

* **Folder** (``data.dataset=folder``, :func:`folder`): ``image_dir/<path>/<stem><image suffix>.{jpg,jpeg,png}``
  paired with ``label_dir/<path>/<stem><label suffix>.png`` (any folder depth; e.g. COCO-Stuff's ``train2017``
  images with ``stuffthingmaps_trainval2017/train2017`` label maps). Label values must lie in ``[0, K)`` (K label
  channels, the don't-care channel not counted) or equal the don't-care value. No crop by default (images
  are resized to ``height x width``, whatever their aspect); ``crop="long_edge"`` takes the square crop below.

Class-mapping file (:func:`read_class_map`): text lines ``<ade150 value> <indoor value>`` (``#`` starts a
comment; values of ADE20K-150 not listed map to 0), or JSON: an object ``{"ade150 value": indoor value}`` or a list
of 151 indoor values.

Augmentation (what the authors' data code does): ADE datasets take a square crop of side ``min(H, W)`` along the
long edge at a random offset in ``[0, long - short)``, shared by image and label; then image and label are resized
to ``height x width`` (nearest for labels, bilinear or bicubic for images); images map to [-1, 1] in the training
step. The horizontal flip is the trainer's (per step, shared by image and label), so these datasets never flip.

Determinism: the crop offset of item ``index`` in epoch ``epoch`` is drawn from a generator seeded by
``(seed, index, epoch)``. Datasets with random crops accept ``dataset[(index, epoch)]`` (the training loader
passes the epoch of each position in its sample stream), so a resumed run sees exactly the crops of an
uninterrupted one; ``dataset[index]`` uses the epoch set with :meth:`set_epoch` (0 by default).

Bad data: a wrong layout or an empty split folder raises :class:`DataError` at construction; unpaired files are
reported together; :meth:`RealPairsDataset.scan` checks every file (``decode=False``: headers only, fast: missing
pairs, unreadable headers, size mismatches, label modes; ``decode=True``: also decodes every file and checks the
label values); ``skip_bad_files=True`` replaces an item that fails to load by the next loadable one (a
deterministic choice) and counts it in :attr:`RealPairsDataset.skipped`.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from .datasets import (DataError, _check_dir, _check_size, _FolderBase, _LABEL_MODES, _list_files,
                       _normalise_exts, _pair_files, _read_image, _read_label_raw)

__all__ = [
    "RealPairsDataset",
    "cityscapes",
    "ade20k",
    "ade_indoor",
    "folder",
    "read_class_map",
    "read_split_list",
    "crop_offset",
    "CITYSCAPES_IDS_LUT",
    "CITYSCAPES_TRAIN_LUT",
]

Pair = Tuple[Optional[str], str]   # (image path or None, label path)
IMAGE_EXTS = (".jpg", ".jpeg", ".png")
_INTERP = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC}


def _lut(valid: Sequence[int], extra: Optional[Dict[int, int]] = None, size: int = 256) -> np.ndarray:
    """int32 lookup table raw value -> label value; -1 marks values that are not allowed."""
    lut = np.full(size, -1, np.int32)
    lut[np.asarray(list(valid), dtype=np.int64)] = np.asarray(list(valid), dtype=np.int64)
    for k, v in (extra or {}).items():
        lut[k] = v
    return lut


#: Cityscapes ``labelIds``: ids 0..33 kept; 255 (license plate, id -1) -> 34 ("unknown").
CITYSCAPES_IDS_LUT = _lut(range(34), {255: 34})
#: Cityscapes ``labelTrainIds``: train ids 0..18 kept, 255 kept as the don't-care value.
CITYSCAPES_TRAIN_LUT = _lut(list(range(19)) + [255])


def crop_offset(seed: int, index: int, epoch: int, span: int) -> int:
    """Offset of the square crop along the long edge: uniform in ``[0, span)`` (0 when ``span <= 0``), drawn from a
    generator seeded by ``(seed, index, epoch)``."""
    if span <= 0:
        return 0
    return int(np.random.default_rng([int(seed), int(index), int(epoch), 0xC409]).integers(0, span))


def _apply_lut(arr: np.ndarray, lut: np.ndarray, path: str, allowed: str) -> np.ndarray:
    """Map raw label values through ``lut``; DataError naming the file for values the table does not allow."""
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= lut.size):
        bad_vals = np.unique(arr[(arr < 0) | (arr >= lut.size)])
    else:
        out = lut[arr]
        if not (out < 0).any():
            return out
        bad_vals = np.unique(arr[out < 0])
    shown = ", ".join(str(int(v)) for v in bad_vals[:8]) + (", ..." if bad_vals.size > 8 else "")
    raise DataError(f"label file {path} has values outside {allowed}: {shown}", path)


def _header(path: str, kind: str) -> Tuple[Tuple[int, int], str]:
    """((width, height), mode) from the file header alone; DataError when the header is unreadable."""
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"cannot read {kind} file {path}: {e}", path) from e


class RealPairsDataset(_FolderBase):
    """Image/label pairs given as explicit file lists, with a value table, crops and resizing.

    Args:
        pairs: ``[(image path, label path), ...]`` (image path None when the dataset is label-only by nature).
        num_classes: label channels K seen by the networks (including a don't-care channel, if any).
        lut: int32 table raw label value -> label value (-1 = not allowed); None: values must lie in
            ``[0, K)`` or equal ``dontcare``.
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
        super().__init__(False, seed)
        self.name = str(name)
        if not pairs:
            raise DataError(f"{self.name}: no image/label pairs")
        if crop not in ("none", "long_edge"):
            raise ValueError(f"{self.name}: crop must be 'none' or 'long_edge', got {crop!r}")
        if image_interp not in _INTERP:
            raise ValueError(f"{self.name}: image_interp must be one of {sorted(_INTERP)}, got {image_interp!r}")
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes <= 0:
            raise ValueError(f"{self.name}: num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = int(num_classes)
        self.dontcare = None if dontcare is None else int(dontcare)
        allowed_text = None
        if lut is None:
            valid = list(range(self.num_classes - (1 if self.dontcare is not None else 0)))
            top = max(valid + [self.dontcare or 0]) + 1
            lut = _lut(valid + ([self.dontcare] if self.dontcare is not None else []), size=max(256, top))
            allowed_text = f"[0, {len(valid)})" + (f" and the don't-care value {self.dontcare}"
                                                   if self.dontcare is not None else "")
        self.lut = np.asarray(lut, dtype=np.int32)
        self.height, self.width = _check_size(self.name, height, width)
        self.crop = crop
        self.labels_only = bool(labels_only)
        self.image_interp = image_interp
        self.skip_bad_files = bool(skip_bad_files)
        self.image_paths: List[Optional[str]] = [p[0] for p in pairs]
        self.label_paths: List[str] = [p[1] for p in pairs]
        self.skipped: List[str] = []     # files dropped up front (see drop) or passed over while loading
        self.unpaired: List[DataError] = []  # files without a partner, left out (builders' lenient mode)
        allowed = sorted(int(v) for v in np.flatnonzero(self.lut >= 0))
        self._allowed = allowed_text or f"the values this dataset allows ({_short(allowed)})"

    # -- views ------------------------------------------------------------------------------------
    @property
    def wants_epoch(self) -> bool:
        """True when items depend on the epoch (random crops): the loader then passes ``(index, epoch)``."""
        return self.crop != "none"

    def label_view(self) -> "RealPairsDataset":
        """The same dataset, label maps only (never decodes an image): for the label-map stage."""
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.labels_only = True
        return view

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
            return self._check_index(index[0]), int(index[1])
        return self._check_index(index), self.epoch

    def crop_window(self, index: int, epoch: int, h: int, w: int) -> Tuple[int, int, int, int]:
        """(top, left, crop height, crop width) of item ``index`` in ``epoch`` for a source of size h x w."""
        if self.crop == "none":
            return 0, 0, h, w
        s = min(h, w)
        off = crop_offset(self.seed, index, epoch, max(h, w) - s)
        return (off, 0, s, s) if h > w else (0, off, s, s)

    def out_size(self, ch: int, cw: int) -> Tuple[int, int]:
        return self.height or ch, self.width or cw

    def load_label(self, index: int, epoch: int = 0) -> np.ndarray:
        """Label map of item ``index`` in ``epoch``: decoded, mapped, cropped, nearest-resized; int64 (H, W)."""
        lab = self._label_full(index)
        return self._finish_label(lab, index, epoch)

    def _label_full(self, index: int) -> np.ndarray:
        lp = self.label_paths[index]
        return _apply_lut(_read_label_raw(lp), self.lut, lp, self._allowed)

    def _finish_label(self, lab: np.ndarray, index: int, epoch: int) -> np.ndarray:
        h, w = lab.shape
        t, l, ch, cw = self.crop_window(index, epoch, h, w)
        lab = lab[t:t + ch, l:l + cw]
        th, tw = self.out_size(ch, cw)
        if (th, tw) != (ch, cw):
            small = lab.astype(np.uint8 if lab.max(initial=0) < 256 else np.int32)
            lab = np.array(Image.fromarray(np.ascontiguousarray(small)).resize((tw, th), Image.NEAREST))
        return lab.astype(np.int64)

    def load(self, index: int, epoch: int = 0) -> Tuple[Optional[np.ndarray], np.ndarray]:
        """(image uint8 (H, W, 3) or None when label-only, label int64 (H, W)) of item ``index`` in ``epoch``."""
        lab = self._label_full(index)
        if self.labels_only or self.image_paths[index] is None:
            return None, self._finish_label(lab, index, epoch)
        ip, lp = self.image_paths[index], self.label_paths[index]
        image = _read_image(ip)
        if image.size != (lab.shape[1], lab.shape[0]):
            raise DataError(f"image {ip} is {image.size[0]}x{image.size[1]} but its label map {lp} is "
                            f"{lab.shape[1]}x{lab.shape[0]} (width x height)", ip)
        h, w = lab.shape
        t, l, ch, cw = self.crop_window(index, epoch, h, w)
        if (t, l, ch, cw) != (0, 0, h, w):
            image = image.crop((l, t, l + cw, t + ch))
        th, tw = self.out_size(ch, cw)
        if (tw, th) != image.size:
            image = image.resize((tw, th), _INTERP[self.image_interp])
        return np.asarray(image, dtype=np.uint8), self._finish_label(lab, index, epoch)

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
                    lab = self._label_full(i)
                    lsize = (lab.shape[1], lab.shape[0])
                else:
                    lsize, mode = _header(lp, "label")
                    if mode not in _LABEL_MODES:
                        raise DataError(f"label file {lp} has image mode {mode!r}; label maps must be "
                                        f"single-channel integer images, not colour-coded", lp)
                if ip is not None and not self.labels_only:
                    isize = _read_image(ip).size if decode else _header(ip, "image")[0]
                    if isize != lsize:
                        raise DataError(f"image {ip} is {isize[0]}x{isize[1]} but its label map {lp} is "
                                        f"{lsize[0]}x{lsize[1]} (width x height)", ip)
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
        (w, h), _ = _header(self.label_paths[index], "label")
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


def _short(values: List[int]) -> str:
    """Compact text of a sorted int list: '0..33, 255'."""
    runs, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            runs.append(f"{start}..{v}" if v > start else f"{v}")
            start = None
    return ", ".join(runs)


# ------------------------------------------------------------------------------------------------------------------
# layouts
# ------------------------------------------------------------------------------------------------------------------
def _need_dir(path: str, what: str, hint: str) -> str:
    if not os.path.isdir(path):
        raise DataError(f"wrong dataset layout: {what} {path} is not a folder ({hint})", path)
    return path


def cityscapes(root: str, *, split: str = "train", label_kind: str = "labelIds", height: Optional[int],
               width: Optional[int], extra_image_dir: Optional[str] = None, extra_label_dir: Optional[str] = None,
               extra_list: Optional[str] = None, **kw) -> RealPairsDataset:
    """Cityscapes (``leftImg8bit`` + ``gtFine``), optionally with Cityscapes-25K's extra images.

    ``label_kind="labelIds"``: 35 channels (ids 0..33, 255 -> 34); ``"labelTrainIds"``: 20 channels (0..18 and the
    don't-care value 255 as the last one). Extra images need all three of ``extra_image_dir``, ``extra_label_dir``
    (train-id label maps) and ``extra_list``. Other keyword arguments go to :class:`RealPairsDataset`."""
    if label_kind not in ("labelIds", "labelTrainIds"):
        raise ValueError(f"cityscapes: label_kind must be 'labelIds' or 'labelTrainIds', got {label_kind!r}")
    root = os.fspath(root)
    hint = "expected <root>/leftImg8bit/<split>/<city>/*_leftImg8bit.png and <root>/gtFine/<split>/<city>/..."
    img_dir = _need_dir(os.path.join(root, "leftImg8bit", split), "image folder", hint)
    lab_dir = _need_dir(os.path.join(root, "gtFine", split), "label folder", hint)
    images = _list_files(img_dir, (".png",), recursive=True, suffix="_leftImg8bit")
    labels = _list_files(lab_dir, (".png",), recursive=True, suffix=f"_gtFine_{label_kind}")
    unpaired = _unpaired_list(kw)
    pairs = _pair_files(images, labels, f"cityscapes {split}", img_dir, lab_dir, unpaired=unpaired,
                        image_pattern="*_leftImg8bit.png", label_pattern=f"*_gtFine_{label_kind}.png")
    extra = [extra_image_dir, extra_label_dir, extra_list]
    if any(extra):
        if not all(extra):
            raise ValueError("cityscapes: extra images need data.extra_image_dir, data.extra_label_dir and "
                             "data.extra_list together")
        if label_kind != "labelTrainIds":
            raise ValueError("cityscapes: extra images come with train-id label maps; use label_kind="
                             "'labelTrainIds' (20 channels, dontcare 255)")
        pairs += _cityscapes_extra(extra_image_dir, extra_label_dir, extra_list)
    if label_kind == "labelIds":
        ds = RealPairsDataset(pairs, 35, lut=CITYSCAPES_IDS_LUT, height=height, width=width,
                              name=f"cityscapes {split}", **kw)
    else:
        ds = RealPairsDataset(pairs, 20, lut=CITYSCAPES_TRAIN_LUT, dontcare=255, height=height, width=width,
                              name=f"cityscapes {split}", **kw)
    return _with_unpaired(ds, unpaired)


def _unpaired_list(kw: dict) -> Optional[List[DataError]]:
    """A list collecting unpaired files (builders' ``report_unpaired=True`` or ``skip_bad_files=True``), else
    None (unpaired files raise)."""
    report = kw.pop("report_unpaired", False)
    return [] if (report or kw.get("skip_bad_files")) else None


def _with_unpaired(ds: RealPairsDataset, unpaired: Optional[List[DataError]]) -> RealPairsDataset:
    ds.unpaired = list(unpaired or [])
    if ds.skip_bad_files:
        ds.skipped.extend(e.path for e in ds.unpaired)
    return ds


_EXTRA_LABEL_SUFFIXES = ("_gtFine_labelTrainIds", "_labelTrainIds", "_gtFine_labelIds", "")


def _cityscapes_extra(image_dir: str, label_dir: str, list_file: str) -> List[Pair]:
    image_dir = _need_dir(os.fspath(image_dir), "extra image folder", "data.extra_image_dir")
    label_dir = _need_dir(os.fspath(label_dir), "extra label folder", "data.extra_label_dir")
    if not os.path.isfile(list_file):
        raise DataError(f"extra image list {list_file} not found", list_file)
    pairs: List[Pair] = []
    missing: List[str] = []
    with open(list_file, "r", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            rel = line.split()[0]
            ip = rel if os.path.isabs(rel) else os.path.join(image_dir, rel)
            if not os.path.isfile(ip):
                missing.append(f"image {ip} (listed in {list_file})")
                continue
            relk = os.path.relpath(ip, image_dir)
            stem = os.path.splitext(relk)[0]
            if stem.endswith("_leftImg8bit"):
                stem = stem[: -len("_leftImg8bit")]
            lp = next((os.path.join(label_dir, stem + s + ".png") for s in _EXTRA_LABEL_SUFFIXES
                       if os.path.isfile(os.path.join(label_dir, stem + s + ".png"))), None)
            if lp is None:
                missing.append(f"label map for {ip} (looked for {os.path.join(label_dir, stem)}"
                               f"{{{','.join(_EXTRA_LABEL_SUFFIXES)}}}.png)")
                continue
            pairs.append((ip, lp))
    if missing:
        raise DataError(f"cityscapes extra images: missing pairs: {len(missing)} file(s): "
                        + "; ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""), list_file)
    if not pairs:
        raise DataError(f"extra image list {list_file} names no images", list_file)
    return pairs


def _ext_pattern(exts: Sequence[str], suffix: str = "") -> str:
    """The file names searched, for messages: ``*<suffix>{.jpg,.jpeg,.png}``."""
    return f"*{suffix}{{{','.join(exts)}}}" if len(exts) > 1 else f"*{suffix}{exts[0]}"


def _ade_challenge_root(root: str) -> Optional[str]:
    for cand in (root, os.path.join(root, "ADEChallengeData2016")):
        if os.path.isdir(os.path.join(cand, "images")) and os.path.isdir(os.path.join(cand, "annotations")):
            return cand
    return None


_ADE_SPLIT = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}


def _ade_challenge_pairs(root: str, split: str, unpaired=None) -> Tuple[List[Pair], str]:
    base = _ade_challenge_root(root)
    hint = "expected <root>/images/{training,validation}/*.jpg and <root>/annotations/{training,validation}/*.png"
    if base is None:
        raise DataError(f"wrong dataset layout: {root} has no images/ and annotations/ folders ({hint})", root)
    if split not in _ADE_SPLIT:
        raise ValueError(f"ade20k: split must be one of {sorted(_ADE_SPLIT)}, got {split!r}")
    s = _ADE_SPLIT[split]
    img_dir = _need_dir(os.path.join(base, "images", s), "image folder", hint)
    lab_dir = _need_dir(os.path.join(base, "annotations", s), "label folder", hint)
    images = _list_files(img_dir, IMAGE_EXTS, recursive=False)
    labels = _list_files(lab_dir, (".png",), recursive=False)
    return _pair_files(images, labels, f"ade20k {s}", img_dir, lab_dir, unpaired=unpaired,
                       image_pattern=_ext_pattern(IMAGE_EXTS), label_pattern="*.png"), base


def ade20k(root: str, *, split: str = "train", height: Optional[int], width: Optional[int],
           crop: str = "long_edge", **kw) -> RealPairsDataset:
    """ADE20K scene parsing (150 classes + 0 "other": 151 channels), square crops along the long edge."""
    unpaired = _unpaired_list(kw)
    pairs, _ = _ade_challenge_pairs(os.fspath(root), split, unpaired)
    return _with_unpaired(RealPairsDataset(pairs, 151, lut=_lut(range(151)), height=height, width=width,
                                           crop=crop, name=f"ade20k {split}", **kw), unpaired)


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


def read_split_list(path: str) -> List[Tuple[str, str]]:
    """``[(scene, file stem), ...]`` of an authors' list file (``<...>/<scene>/<stem>.<ext> <scene index>``)."""
    if not os.path.isfile(path):
        raise DataError(f"split list {path} not found", path)
    out = []
    with open(path, "r", encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            p = line.split()[0].replace("\\", "/")
            parts = p.split("/")
            if len(parts) < 2:
                raise DataError(f"split list {path} line {n}: expected '<folder>/<scene>/<file> <index>', "
                                f"got {line!r}", path)
            out.append((parts[-2], os.path.splitext(parts[-1])[0]))
    if not out:
        raise DataError(f"split list {path} is empty", path)
    return out


_INDOOR_TREES = {"train": ("ADE15c_indoor_img", "ADE15c_indoor_lbl"),
                 "val": ("ADE15c_indoor_val_img", "ADE15c_indoor_val_lbl")}


def ade_indoor(root: str, *, split: str = "train", height: Optional[int], width: Optional[int],
               list_dir: Optional[str] = None, class_map: Optional[str] = None, crop: str = "long_edge",
               **kw) -> RealPairsDataset:
    """ADE-Indoor (95 channels, values 0..94): the authors' archive layout, or the ADE20K challenge layout with
    a class-mapping file and the split lists (see the module docstring)."""
    root = os.fspath(root)
    unpaired = _unpaired_list(kw)
    split = {"training": "train", "validation": "val"}.get(split, split)
    if split not in ("train", "val"):
        raise ValueError(f"ade_indoor: split must be 'train' or 'val', got {split!r}")
    listed: Optional[set] = None
    if list_dir is not None:
        im_list = read_split_list(os.path.join(list_dir, f"ade_indoor_im_info_{split}.txt"))
        lb_list = read_split_list(os.path.join(list_dir, f"ade_indoor_lbl_info_{split}.txt"))
        if sorted(s for _, s in im_list) != sorted(s for _, s in lb_list):
            raise DataError(f"split lists in {list_dir}: the image and label lists name different files", list_dir)
        listed = {s for _, s in im_list}
    challenge = _ade_challenge_root(root)
    if challenge is not None:
        if class_map is None:
            raise DataError(f"ade_indoor: {root} has the ADE20K challenge layout; converting it to the 95 indoor "
                            "classes needs a class-mapping file (data.class_map); or point data.root at the "
                            "authors' ADE-Indoor archive", root)
        if listed is None:
            raise DataError("ade_indoor: selecting the indoor images of the ADE20K challenge layout needs the "
                            "split lists (data.list_dir with ade_indoor_{im,lbl}_info_{train,val}.txt)", root)
        pairs, _ = _ade_challenge_pairs(root, split, unpaired)
        by_stem = {os.path.splitext(os.path.basename(lp))[0]: (ip, lp) for ip, lp in pairs}
        missing = sorted(s for s in listed if s not in by_stem)
        if missing:
            raise DataError(f"ade_indoor: {len(missing)} listed file(s) missing from {challenge}: "
                            + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""), challenge)
        pairs = [by_stem[s] for s in sorted(listed)]
        lut = read_class_map(class_map)
        return _with_unpaired(RealPairsDataset(pairs, 95, lut=lut, height=height, width=width, crop=crop,
                                               name=f"ade_indoor {split}", **kw), unpaired)
    if class_map is not None:
        raise DataError(f"ade_indoor: data.class_map is given but {root} has no ADE20K challenge layout "
                        "(images/ and annotations/); the authors' archive is already in indoor classes", root)
    img_tree, lab_tree = (os.path.join(root, t) for t in _INDOOR_TREES[split])
    if os.path.isdir(img_tree) or os.path.isdir(lab_tree):
        hint = f"expected {img_tree}/<scene>/ADE_*.jpg and {lab_tree}/<scene>/ADE_*.png"
        img_dir = _need_dir(img_tree, "image folder", hint)
        lab_dir = _need_dir(lab_tree, "label folder", hint)
    else:
        img_dir = lab_dir = root
    images = _list_files(img_dir, (".jpg", ".jpeg"), recursive=True)
    labels = _list_files(lab_dir, (".png",), recursive=True)
    if not images and not labels:
        raise DataError(f"wrong dataset layout: no ADE-Indoor files under {root} (expected <root>/<scene>/ADE_*.jpg "
                        f"with ADE_*.png, or <root>/{_INDOOR_TREES[split][0]}/<scene>/..., or the ADE20K challenge "
                        "layout with data.class_map)", root)
    if listed is not None:
        images = {k: v for k, v in images.items() if (os.path.basename(k)) in listed}
        labels = {k: v for k, v in labels.items() if (os.path.basename(k)) in listed}
        found = {os.path.basename(k) for k in images}
        missing = sorted(listed - found)
        if missing:
            raise DataError(f"ade_indoor {split}: {len(missing)} listed image(s) missing under {img_dir}: "
                            + ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else ""), img_dir)
    pairs = _pair_files(images, labels, f"ade_indoor {split}", img_dir, lab_dir, unpaired=unpaired,
                        image_pattern=_ext_pattern((".jpg", ".jpeg")), label_pattern="*.png")
    return _with_unpaired(RealPairsDataset(pairs, 95, lut=_lut(range(95)), height=height, width=width,
                                           crop=crop, name=f"ade_indoor {split}", **kw), unpaired)


def folder(image_dir: str, label_dir: str, num_classes: int, *, height: Optional[int], width: Optional[int],
           dontcare: Optional[int] = None, image_suffix: str = "", label_suffix: str = "",
           image_exts: Sequence[str] = IMAGE_EXTS, crop: str = "none", **kw) -> RealPairsDataset:
    """Image/label pairs from two folders (``data.dataset=folder``; layout in the module docstring).

    ``num_classes``: label channels K seen by the networks, the don't-care channel included (values
    ``[0, K-1)`` and ``dontcare`` when it is set, else ``[0, K)``). Other keyword arguments go to
    :class:`RealPairsDataset` (``skip_bad_files``, ``image_interp``, ``report_unpaired``, ...)."""
    if dontcare is not None and (isinstance(dontcare, bool) or not isinstance(dontcare, (int, np.integer))
                                 or dontcare < 0):
        raise ValueError(f"folder dataset: dontcare must be a label value >= 0 or None, got {dontcare!r}")
    if dontcare is not None and num_classes < 2:
        raise ValueError(f"folder dataset: num_classes={num_classes} with a don't-care value leaves no class "
                         "(num_classes counts the don't-care channel)")
    img_dir = _check_dir("folder dataset", "data.image_dir", image_dir)
    lab_dir = _check_dir("folder dataset", "data.label_dir", label_dir)
    exts = _normalise_exts("image_exts", image_exts)
    images = _list_files(img_dir, exts, recursive=True, suffix=str(image_suffix))
    labels = _list_files(lab_dir, (".png",), recursive=True, suffix=str(label_suffix))
    unpaired = _unpaired_list(kw)
    pairs = _pair_files(images, labels, "folder dataset", img_dir, lab_dir, unpaired=unpaired,
                        image_pattern=_ext_pattern(exts, image_suffix), label_pattern=f"*{label_suffix}.png")
    return _with_unpaired(RealPairsDataset(pairs, num_classes, dontcare=dontcare, height=height, width=width,
                                           crop=crop, name="folder", **kw), unpaired)


def dataset_from_name(name: str, root: str, **kw) -> RealPairsDataset:
    """``name`` in {'cityscapes', 'ade20k', 'ade_indoor'} -> the matching builder above."""
    builders = {"cityscapes": cityscapes, "ade20k": ade20k, "ade_indoor": ade_indoor}
    if name not in builders:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(builders)}")
    return builders[name](root, **kw)


PathLike = Union[str, "os.PathLike[str]"]
