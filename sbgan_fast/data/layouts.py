"""Cityscapes, ADE20K, ADE-Indoor and paired folders in their official layouts, as :class:`.real.RealPairsDataset`.

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
  images with ``stuffthingmaps_trainval2017/train2017`` label maps). With K label channels (``num_classes``, the
  don't-care channel included when there is one) label values must lie in ``[0, K)``, or, with a don't-care
  value, in ``[0, K-1)`` or equal that value (:func:`.values.class_values`). No crop by default (images are
  resized to ``height x width``, whatever their aspect); ``crop="long_edge"`` takes the authors' square crop.

The class-mapping file is read by :func:`.values.read_class_map`. Crops, resizing, determinism and the handling of
bad files are :class:`.real.RealPairsDataset`'s. Each builder checks the layout and pairs the files: a wrong layout
or an empty split folder raises :class:`~.files.DataError` at construction; unpaired files are reported together
(or, with ``report_unpaired=True`` or ``skip_bad_files=True``, left out and listed in ``dataset.unpaired``).
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .files import (IMAGE_EXTS, DataError, check_dir, ext_pattern, list_files, normalise_exts, pair_files)
from .real import Pair, RealPairsDataset
from .values import CITYSCAPES_IDS_LUT, CITYSCAPES_TRAIN_LUT, read_class_map, value_table

__all__ = ["ade20k", "ade_indoor", "cityscapes", "dataset_from_name", "folder", "read_split_list"]


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
    images = list_files(img_dir, (".png",), recursive=True, suffix="_leftImg8bit")
    labels = list_files(lab_dir, (".png",), recursive=True, suffix=f"_gtFine_{label_kind}")
    unpaired = _unpaired_list(kw)
    pairs = pair_files(images, labels, f"cityscapes {split}", img_dir, lab_dir, unpaired=unpaired,
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
    images = list_files(img_dir, IMAGE_EXTS, recursive=False)
    labels = list_files(lab_dir, (".png",), recursive=False)
    return pair_files(images, labels, f"ade20k {s}", img_dir, lab_dir, unpaired=unpaired,
                       image_pattern=ext_pattern(IMAGE_EXTS), label_pattern="*.png"), base


def ade20k(root: str, *, split: str = "train", height: Optional[int], width: Optional[int],
           crop: str = "long_edge", **kw) -> RealPairsDataset:
    """ADE20K scene parsing (150 classes + 0 "other": 151 channels), square crops along the long edge."""
    unpaired = _unpaired_list(kw)
    pairs, _ = _ade_challenge_pairs(os.fspath(root), split, unpaired)
    return _with_unpaired(RealPairsDataset(pairs, 151, lut=value_table(range(151)), height=height, width=width,
                                           crop=crop, name=f"ade20k {split}", **kw), unpaired)




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
    images = list_files(img_dir, (".jpg", ".jpeg"), recursive=True)
    labels = list_files(lab_dir, (".png",), recursive=True)
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
    pairs = pair_files(images, labels, f"ade_indoor {split}", img_dir, lab_dir, unpaired=unpaired,
                        image_pattern=ext_pattern((".jpg", ".jpeg")), label_pattern="*.png")
    return _with_unpaired(RealPairsDataset(pairs, 95, lut=value_table(range(95)), height=height, width=width,
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
    img_dir = check_dir("folder dataset", "data.image_dir", image_dir)
    lab_dir = check_dir("folder dataset", "data.label_dir", label_dir)
    exts = normalise_exts("image_exts", image_exts)
    images = list_files(img_dir, exts, recursive=True, suffix=str(image_suffix))
    labels = list_files(lab_dir, (".png",), recursive=True, suffix=str(label_suffix))
    unpaired = _unpaired_list(kw)
    pairs = pair_files(images, labels, "folder dataset", img_dir, lab_dir, unpaired=unpaired,
                        image_pattern=ext_pattern(exts, image_suffix), label_pattern=f"*{label_suffix}.png")
    return _with_unpaired(RealPairsDataset(pairs, num_classes, dontcare=dontcare, height=height, width=width,
                                           crop=crop, name="folder", **kw), unpaired)


def dataset_from_name(name: str, root: str, **kw) -> RealPairsDataset:
    """``name`` in {'cityscapes', 'ade20k', 'ade_indoor'} -> the matching builder above."""
    builders = {"cityscapes": cityscapes, "ade20k": ade20k, "ade_indoor": ade_indoor}
    if name not in builders:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(builders)}")
    return builders[name](root, **kw)
