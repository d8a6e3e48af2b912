"""Build the dataset a training config names, with its class count and palette."""
from __future__ import annotations

import fnmatch
import os
import sys
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch


def build_dataset(cfg, *, images: Optional[bool] = None) -> Tuple[Any, Dict[str, Any]]:
    """Return (dataset, {"num_classes": K label channels seen by the networks}).

    Items are dicts with ``label`` int64 (H,W) and ``image`` uint8 (3,H,W), at the config's
    ``data.height x data.width``. The don't-care value (``data.dontcare``), when set, is the last of the
    K channels. File datasets (official layouts and folders) are header-scanned first
    (:func:`build_real_dataset`); ``images``: whether the scan includes the images (default: when one of the
    config's stages reads them; the label-map stage alone does not)."""
    d = cfg.data
    if d.dataset == "synthetic":
        from .synthetic import SyntheticScenes
        k = d.num_classes or len(SyntheticScenes.CLASS_NAMES)
        ds = SyntheticScenes(d.synthetic_size, height=d.height, width=d.width, seed=cfg.seed, num_classes=k,
                             detail=d.synthetic_detail)
        return ds, {"num_classes": k}
    if d.dataset == "folder":
        ds = build_real_dataset(cfg, images=images)
        return _finish(ds, cfg), {"num_classes": d.num_classes}
    if d.dataset in ("cityscapes", "ade20k", "ade_indoor"):
        ds = build_real_dataset(cfg, images=images)
        if d.num_classes and d.num_classes != ds.num_classes:
            raise ValueError(f"data.num_classes={d.num_classes} but {ds.name} has {ds.num_classes} label channels"
                             + (" (Cityscapes: 35 for labelIds, 20 for labelTrainIds; see data.label_kind)"
                                if d.dataset == "cityscapes" else ""))
        if ds.dontcare != d.dontcare:
            raise ValueError(f"data.dontcare={d.dontcare} but {ds.name} uses dontcare={ds.dontcare}")
        k = ds.num_classes
        ds = _finish(ds, cfg)
        return ds, {"num_classes": k}
    raise ValueError(f"data.dataset={d.dataset!r} is not one of synthetic, folder, cityscapes, ade20k, ade_indoor")


def reads_images(cfg) -> bool:
    """Whether a run of ``cfg`` reads images (its spade, e2e or progan stage); the seg stage reads label maps
    only."""
    return any(s in ("spade", "e2e", "progan") for s in cfg.stages)


def build_real_dataset(cfg, *, check: bool = True, log=None, report_unpaired: bool = False,
                       images: Optional[bool] = None):
    """The file dataset of ``cfg``, official layout or folder (a :class:`~sbgan_fast.data.real.RealPairsDataset`,
    no cache).

    With ``check`` the cheap up-front scan runs (file headers: missing or unreadable files, size mismatches,
    label image modes): problems raise one DataError listing them, or with ``data.skip_bad_files`` the bad pairs
    are dropped (logged, counted in ``dataset.skipped``); ``images=False`` scans the label maps only (default:
    :func:`reads_images`), so a bad photo cannot stop a label-only run. ``report_unpaired``: files without a
    partner are left out and listed in ``dataset.unpaired`` instead of raising (what ``check-data`` reports)."""
    from .layouts import dataset_from_name, folder
    d = cfg.data
    log = log or (lambda msg: print(f"[sbgan_fast] {msg}", file=sys.stderr))
    kw = dict(height=d.height, width=d.width, seed=cfg.seed, image_interp=d.image_interp,
              skip_bad_files=d.skip_bad_files, report_unpaired=report_unpaired)
    if d.crop != "auto":
        kw["crop"] = d.crop
    if d.dataset == "folder":
        if not (d.image_dir and d.label_dir):
            raise ValueError("dataset 'folder' needs data.image_dir and data.label_dir (images and label PNGs "
                             "with the same file stems)")
        if d.num_classes <= 0:
            raise ValueError("dataset 'folder' needs data.num_classes (the number of label channels)")
        ds = folder(d.image_dir, d.label_dir, d.num_classes, dontcare=d.dontcare, image_suffix=d.image_suffix,
                    label_suffix=d.label_suffix, **kw)
        return _checked(ds, cfg, check, log, images)
    if not d.root:
        raise ValueError(f"dataset {d.dataset!r} needs data.root (--data-root)")
    kw["split"] = d.split
    if d.dataset == "cityscapes":
        kw.update(label_kind=_cityscapes_kind(d, d.num_classes))
        if d.split == "train":   # Cityscapes-25K's extra images are training images
            kw.update(extra_image_dir=d.extra_image_dir, extra_label_dir=d.extra_label_dir, extra_list=d.extra_list)
    elif d.dataset == "ade_indoor":
        kw.update(list_dir=d.list_dir, class_map=d.class_map)
    ds = dataset_from_name(d.dataset, d.root, **kw)
    return _checked(ds, cfg, check, log, images)


def _checked(ds, cfg, check: bool, log, images: Optional[bool]):
    """``ds`` after the header scan of :func:`build_real_dataset` (unpaired files logged when skipped)."""
    from .files import DataError
    d = cfg.data
    if d.skip_bad_files:
        for e in ds.unpaired:
            log(f"skipping: {e}")
    if check:
        images = reads_images(cfg) if images is None else images
        sizes: list = []
        problems = (ds if images else ds.label_view()).scan(decode=False, sizes=sizes)
        if d.dataset == "folder" and ds.crop == "none":
            _note_aspect(ds, sizes, log)
        if problems and not d.skip_bad_files:
            raise DataError(f"{ds.name}: {len(problems)} bad file(s) (run `sbgan-fast check-data` for a full "
                            "report, or set data.skip_bad_files=true to skip them):\n"
                            + "\n".join(f"  {e}" for e in problems[:20])
                            + ("\n  ..." if len(problems) > 20 else ""), problems[0].path)
        if problems:
            for e in problems:
                log(f"skipping bad pair: {e}")
            ds.drop([e.index for e in problems], reason="see the messages above")
    return ds


def _finish(ds, cfg):
    """Cache (data.cache) and the loader options the trainer's loader reads."""
    d = cfg.data
    if d.cache:
        from .cache import build_cache, fits_on_device
        ds = build_cache(ds, d.cache)
        if d.cache_gpu and cfg.device != "cpu" and torch.cuda.is_available():
            dev = torch.device("cuda" if cfg.device == "auto" else cfg.device)
            if dev.index is None:   # this process's GPU (set per process before the data is built)
                dev = torch.device("cuda", torch.cuda.current_device())
            if fits_on_device(ds.nbytes, dev):
                ds.to_device(dev)
            else:
                print(f"[sbgan_fast] the cache ({ds.nbytes / 2**30:.2f} GiB) does not fit in half of the free GPU "
                      "memory: it stays memory-mapped on the host", file=sys.stderr)
    ds.loader_options = {"loader": d.loader}
    return ds


def palette_for(cfg, num_classes: int) -> np.ndarray:
    """uint8 (num_classes, 3) palette of the config's dataset (fallback colours for other datasets). With a
    don't-care value (``data.dontcare``) its channel, the last, is :data:`~.palettes.DONTCARE_COLOR`: the colour
    :func:`~.palettes.colorize` gives the don't-care value itself, so a map drawn before or after the value
    becomes channel K-1 looks the same."""
    from .palettes import DONTCARE_COLOR, get_palette
    name = {"synthetic": "synthetic", "ade20k": "ade150", "ade_indoor": "ade_indoor95"}.get(cfg.data.dataset)
    if cfg.data.dataset == "cityscapes":
        name = "cityscapes20" if num_classes == 20 else "cityscapes35"
    palette = get_palette(name, num_classes)
    if cfg.data.dontcare is not None:
        palette[num_classes - 1] = DONTCARE_COLOR
    return palette


def _cityscapes_kind(d, num_classes: int) -> str:
    """``labelIds`` or ``labelTrainIds``: ``data.label_kind``, or from the class count when it is ``auto``."""
    if d.label_kind != "auto":
        return d.label_kind
    return "labelTrainIds" if num_classes == 20 else "labelIds"


def label_decoding(cfg, num_classes: int) -> Tuple[Optional[np.ndarray], Optional[int], str, str]:
    """How training reads the label files of the config's dataset: ``(value table or None, don't-care value,
    file-name pattern, crop)``. The value table maps raw file values to label values (-1: not allowed; None: the
    classes' values, :func:`~.values.class_values`, and the don't-care value); the pattern is a glob on file names
    that selects the dataset's label files (Cityscapes: ``*_labelIds.png`` or ``*_labelTrainIds.png``, not the
    instance or colour PNGs beside them)."""
    from .values import CITYSCAPES_IDS_LUT, CITYSCAPES_TRAIN_LUT, read_class_map, value_table
    d = cfg.data
    if d.dataset == "cityscapes":
        crop = "none" if d.crop == "auto" else d.crop
        if _cityscapes_kind(d, num_classes) == "labelIds":
            return CITYSCAPES_IDS_LUT, None, "*_labelIds.png", crop
        return CITYSCAPES_TRAIN_LUT, 255, "*_labelTrainIds.png", crop
    if d.dataset in ("ade20k", "ade_indoor"):
        crop = "long_edge" if d.crop == "auto" else d.crop
        if d.dataset == "ade20k":
            return value_table(range(151)), None, "*.png", crop
        return (read_class_map(d.class_map) if d.class_map else value_table(range(95))), None, "*.png", crop
    crop = "none" if d.crop == "auto" else d.crop
    return None, d.dontcare, f"*{d.label_suffix if d.dataset == 'folder' else ''}.png", crop


def label_file_values(cfg, num_classes: int) -> Optional[np.ndarray]:
    """int64 (K,) value of each label channel in the dataset's label files (Cityscapes ids: channel 34 -> 255;
    train ids and folders with ``data.dontcare``: the last channel -> the don't-care value; identity
    elsewhere), so that written maps read back as the same channels; None where the files' values do not
    map one-to-one onto the channels (ADE-Indoor read through a class-mapping file)."""
    if cfg.data.dataset == "ade_indoor" and cfg.data.class_map:
        return None
    from .values import class_values
    lut, dc, _, _ = label_decoding(cfg, num_classes)
    k = num_classes
    if lut is None:
        valid = class_values(k, dc)
        raw = np.arange(max(valid + [dc or 0]) + 1)
        lut = np.where(np.isin(raw, valid + ([dc] if dc is not None else [])), raw, -1)
    dontcare_channel = k - 1                 # the don't-care value, when there is one, is the last channel
    channel = np.where(lut == dc, dontcare_channel, lut) if dc is not None else lut
    out = np.full(k, -1, np.int64)
    for c in range(k):
        raws = np.flatnonzero(channel == c)
        if raws.size != 1:
            return None
        out[c] = raws[0]
    return out


def build_label_dataset(cfg, num_classes: int, label_dir: str, *,
                        pattern: Optional[str] = None) -> Tuple[Any, List[str]]:
    """The label maps in ``label_dir`` (searched recursively), read as training reads the config's dataset
    (:func:`label_decoding`: its file pattern, value table, crop of epoch 0 and nearest resize to
    ``data.height x data.width``). ``pattern`` replaces the dataset's file pattern.

    Returns ``(dataset, ignored)``: a label-only :class:`~sbgan_fast.data.real.RealPairsDataset` of the
    matching files in path order (``dataset.load(i)`` raises DataError naming a bad file), and the paths of
    the other files. DataError when no file matches."""
    from .files import DataError, check_dir
    from .real import RealPairsDataset
    d = cfg.data
    lut, dc, default, crop = label_decoding(cfg, num_classes)
    pattern = pattern or default
    root = check_dir("label maps", "folder", label_dir)
    matched: List[str] = []
    ignored: List[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(x for x in dirnames if not x.startswith("."))
        for fn in sorted(filenames):
            if not fn.startswith("."):
                (matched if fnmatch.fnmatchcase(fn, pattern) else ignored).append(os.path.join(dirpath, fn))
    if not matched:
        raise DataError(f"no label maps matching {pattern!r} found in {root}"
                        + (f" ({len(ignored)} other file(s), e.g. {os.path.basename(ignored[0])}; "
                           "--label-pattern GLOB reads other files)" if ignored else ""), root)
    ds = RealPairsDataset([(None, p) for p in matched], num_classes, lut=lut, dontcare=dc, height=d.height,
                          width=d.width, crop=crop, labels_only=True, seed=cfg.seed,
                          name=f"{d.dataset} label maps")
    return ds, ignored


def _note_aspect(ds, sizes, log) -> None:
    """Say when pairs of a folder dataset without a crop are not of the output aspect (they are resized to it)."""
    if ds.height is None or ds.width is None:
        return
    want = ds.width / ds.height
    off = [(i, wh) for i, wh in sizes if abs(wh[0] / wh[1] - want) > 0.01 * want]
    if off:
        i, (w, h) = off[0]
        log(f"{len(off)} of {len(ds)} pair(s) are not of the output aspect {ds.width}x{ds.height} (e.g. "
            f"{ds.label_paths[i]} is {w}x{h}): they are resized to it, not cropped; data.crop=long_edge takes a "
            "random square crop along the long edge first")


def preview_label_maps(dataset, n: int) -> "torch.Tensor":
    """int64 (min(n, len), H, W): the first label maps of ``dataset`` (items 0, 1, ...), read label-only (no
    image is decoded) where the dataset has a label view."""
    view = dataset.label_view() if hasattr(dataset, "label_view") else dataset
    return torch.stack([torch.as_tensor(view[i]["label"]) for i in range(min(n, len(view)))]).long()
