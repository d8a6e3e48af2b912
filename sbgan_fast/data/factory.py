"""Build the dataset a training config names, with its class count and palette."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import numpy as np


def build_dataset(cfg) -> Tuple[Any, Dict[str, Any]]:
    """Return (dataset, {"num_classes": K label channels seen by the networks}).

    Items are dicts with ``label`` int64 (H,W) and ``image`` uint8 (3,H,W), at the config's
    ``data.height x data.width``. The don't-care value (``data.dontcare``), when set, is the last of the
    K channels."""
    d = cfg.data
    if d.dataset == "synthetic":
        from .synthetic import SyntheticScenes
        k = d.num_classes or len(SyntheticScenes.CLASS_NAMES)
        ds = SyntheticScenes(d.synthetic_size, height=d.height, width=d.width, seed=cfg.seed, num_classes=k)
        return ds, {"num_classes": k}
    if d.dataset == "folder":
        from .datasets import PairedFolderDataset
        if not (d.image_dir and d.label_dir):
            raise ValueError("dataset 'folder' needs data.image_dir and data.label_dir (images and label PNGs "
                             "with the same file stems)")
        if d.num_classes <= 0:
            raise ValueError("dataset 'folder' needs data.num_classes (the number of label channels)")
        k_real = d.num_classes - (1 if d.dontcare is not None else 0)
        ds = PairedFolderDataset(d.image_dir, d.label_dir, k_real, height=d.height, width=d.width, hflip=False,
                                 seed=cfg.seed, dontcare=d.dontcare)
        return ds, {"num_classes": d.num_classes}
    raise ValueError(f"data.dataset={d.dataset!r}: loading the official {d.dataset} layout is not available in "
                     "this version; convert it to paired folders (data.dataset=folder, data.image_dir, "
                     "data.label_dir, data.num_classes)")


def palette_for(cfg, num_classes: int) -> np.ndarray:
    """uint8 (num_classes, 3) palette of the config's dataset (fallback colours for other datasets)."""
    from .palettes import get_palette
    name = {"synthetic": "synthetic", "ade20k": "ade150", "ade_indoor": "ade_indoor95"}.get(cfg.data.dataset)
    if cfg.data.dataset == "cityscapes":
        name = "cityscapes20" if num_classes == 20 else "cityscapes35"
    return get_palette(name, num_classes)
