"""Label palettes and colourised label maps.

A palette is a uint8 numpy array of shape (K, 3): row ``k`` is the RGB colour of label ``k``.

Named palettes (``get_palette(name)``):

==================  ====  =====================================================================
name                K     contents
==================  ====  =====================================================================
``synthetic``       11    the built-in synthetic scenes (:data:`SYNTHETIC_CLASSES`)
``cityscapes35``    35    Cityscapes label ids 0..33 with the official colours, then index 34 = the table's
                          id -1 entry (license plate, (0, 0, 142)) used as the "unknown" channel
``cityscapes20``    20    the 19 Cityscapes train ids with the official colours, then index 19 = don't-care
                          (black)
``ade150``          151   ADE20K scene parsing: 0 = "other" (black), 1..150 = the official ``color150`` palette
``ade_indoor95``    95    ADE-Indoor label values 0..94 (the SB-GAN authors' ``color_indoor`` palette)
==================  ====  =====================================================================

The ADE palettes are package data (``palettes/*.json``), extracted once from the MATLAB files of the ADE20K
devkit and of the SB-GAN authors; reading them needs neither scipy nor those files. The Cityscapes colours are
the official label table (:data:`CITYSCAPES_LABELS`). The SB-GAN authors' ``cityscapes_color35`` file equals
``cityscapes35``; their ``cityscapes_color20`` file departs from the official train-id colours at indices 2, 3,
4, 8 and 10 (shifted building/wall/fence colours, vegetation (107, 142, 135), sky drawn as rail track), so
``cityscapes20`` follows the official table instead.

Any other class count gets a deterministic fallback palette (:func:`fallback_palette`).
"""
from __future__ import annotations

import colorsys
import functools
import json
import os
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

__all__ = [
    "CITYSCAPES_LABELS",
    "DONTCARE_COLOR",
    "PALETTE_NAMES",
    "SYNTHETIC_CLASSES",
    "get_palette",
    "get_class_names",
    "fallback_palette",
    "colorize",
]

# The official Cityscapes label table: (name, id, train_id, (r, g, b)); train_id 255 = not a training class,
# id -1 = not stored in the label-id images.
CITYSCAPES_LABELS: Tuple[Tuple[str, int, int, Tuple[int, int, int]], ...] = (
    ("unlabeled", 0, 255, (0, 0, 0)),
    ("ego vehicle", 1, 255, (0, 0, 0)),
    ("rectification border", 2, 255, (0, 0, 0)),
    ("out of roi", 3, 255, (0, 0, 0)),
    ("static", 4, 255, (0, 0, 0)),
    ("dynamic", 5, 255, (111, 74, 0)),
    ("ground", 6, 255, (81, 0, 81)),
    ("road", 7, 0, (128, 64, 128)),
    ("sidewalk", 8, 1, (244, 35, 232)),
    ("parking", 9, 255, (250, 170, 160)),
    ("rail track", 10, 255, (230, 150, 140)),
    ("building", 11, 2, (70, 70, 70)),
    ("wall", 12, 3, (102, 102, 156)),
    ("fence", 13, 4, (190, 153, 153)),
    ("guard rail", 14, 255, (180, 165, 180)),
    ("bridge", 15, 255, (150, 100, 100)),
    ("tunnel", 16, 255, (150, 120, 90)),
    ("pole", 17, 5, (153, 153, 153)),
    ("polegroup", 18, 255, (153, 153, 153)),
    ("traffic light", 19, 6, (250, 170, 30)),
    ("traffic sign", 20, 7, (220, 220, 0)),
    ("vegetation", 21, 8, (107, 142, 35)),
    ("terrain", 22, 9, (152, 251, 152)),
    ("sky", 23, 10, (70, 130, 180)),
    ("person", 24, 11, (220, 20, 60)),
    ("rider", 25, 12, (255, 0, 0)),
    ("car", 26, 13, (0, 0, 142)),
    ("truck", 27, 14, (0, 0, 70)),
    ("bus", 28, 15, (0, 60, 100)),
    ("caravan", 29, 255, (0, 0, 90)),
    ("trailer", 30, 255, (0, 0, 110)),
    ("train", 31, 16, (0, 80, 100)),
    ("motorcycle", 32, 17, (0, 0, 230)),
    ("bicycle", 33, 18, (119, 11, 32)),
    ("license plate", -1, -1, (0, 0, 142)),
)

#: The fine classes of the built-in synthetic scenes (:class:`~.synthetic.SyntheticScenes`): (name, (r, g, b)) per
#: label value. Colours follow the Cityscapes conventions where a class exists there.
SYNTHETIC_CLASSES: Tuple[Tuple[str, Tuple[int, int, int]], ...] = (
    ("sky", (70, 130, 180)),
    ("road", (128, 64, 128)),
    ("building", (70, 70, 70)),
    ("vegetation", (107, 142, 35)),
    ("sidewalk", (244, 35, 232)),
    ("car", (0, 0, 142)),
    ("terrain", (152, 251, 152)),
    ("person", (220, 20, 60)),
    ("pole", (153, 153, 153)),
    ("traffic sign", (220, 220, 0)),
    ("cloud", (230, 230, 250)),
)

#: The colour of don't-care pixels in every colourised label map (grids, ``sample`` output): black, as the
#: Cityscapes void classes and the don't-care row of ``cityscapes20``.
DONTCARE_COLOR: Tuple[int, int, int] = (0, 0, 0)

PALETTE_NAMES: Tuple[str, ...] = ("synthetic", "cityscapes35", "cityscapes20", "ade150", "ade_indoor95")

_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "palettes")


@functools.lru_cache(maxsize=None)
def _load_json(name: str) -> dict:
    path = os.path.join(_DATA_DIR, name + ".json")
    try:
        with open(path, "r", encoding="utf-8") as f:
            data = json.load(f)
    except OSError as e:
        raise FileNotFoundError(f"palette data file {path} is missing from the installed package "
                                f"(reinstall sbgan_fast): {e}") from e
    colors = np.asarray(data["colors"], dtype=np.int64)
    if colors.ndim != 2 or colors.shape[1] != 3 or colors.min() < 0 or colors.max() > 255:
        raise ValueError(f"palette data file {path} is corrupt: colors must be a (K, 3) list of 0..255 values")
    return data


def _cityscapes35() -> Tuple[np.ndarray, List[str]]:
    by_id = {lab[1]: lab for lab in CITYSCAPES_LABELS if lab[1] >= 0}
    rows = [by_id[i] for i in range(34)] + [CITYSCAPES_LABELS[-1]]
    return np.array([r[3] for r in rows], dtype=np.uint8), [r[0] for r in rows]


def _cityscapes20() -> Tuple[np.ndarray, List[str]]:
    by_train = {lab[2]: lab for lab in CITYSCAPES_LABELS if 0 <= lab[2] < 255}
    rows = [by_train[i] for i in range(19)]
    colors = [r[3] for r in rows] + [(0, 0, 0)]
    return np.array(colors, dtype=np.uint8), [r[0] for r in rows] + ["don't care"]


def _named(name: str) -> Tuple[np.ndarray, List[str]]:
    if name == "synthetic":
        return np.array([c for _, c in SYNTHETIC_CLASSES], dtype=np.uint8), [n for n, _ in SYNTHETIC_CLASSES]
    if name == "cityscapes35":
        return _cityscapes35()
    if name == "cityscapes20":
        return _cityscapes20()
    if name in ("ade150", "ade_indoor95"):
        data = _load_json(name)
        colors = np.asarray(data["colors"], dtype=np.uint8)
        names = data.get("class_names") or [f"class_{i}" for i in range(len(colors))]
        return colors, list(names)
    raise ValueError(f"unknown palette name {name!r}; known names: {', '.join(PALETTE_NAMES)} "
                     f"(or pass name=None with num_classes for the fallback palette)")


def fallback_palette(num_classes: int) -> np.ndarray:
    """A deterministic palette for any class count.

    Colours are spread over the hue circle by the golden angle, with saturation and value cycling through a few
    levels, so neighbouring labels get clearly different colours. Label 0 is black.

    Returns:
        uint8 (num_classes, 3).
    """
    k = _check_count("fallback_palette", num_classes)
    out = np.zeros((k, 3), dtype=np.uint8)
    golden = 0.618033988749895
    for i in range(1, k):
        hue = (i * golden) % 1.0
        sat = (0.95, 0.65, 0.8)[i % 3]
        val = (0.95, 0.75, 0.55, 0.85)[(i // 3) % 4]
        r, g, b = colorsys.hsv_to_rgb(hue, sat, val)
        out[i] = (round(r * 255), round(g * 255), round(b * 255))
    return out


def _check_count(where: str, num_classes) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or int(num_classes) <= 0:
        raise ValueError(f"{where}: num_classes must be a positive int, got {num_classes!r}")
    return int(num_classes)


def get_palette(name: Optional[str], num_classes: Optional[int] = None) -> np.ndarray:
    """Return a palette as a uint8 (K, 3) numpy array (a new array each call).

    Args:
        name: one of :data:`PALETTE_NAMES`, or ``None``/``"fallback"`` for :func:`fallback_palette`.
        num_classes: wanted K. ``None`` keeps the named palette's own size. A smaller K keeps the first K
            colours; a larger K appends fallback colours for the extra labels. Required for the fallback palette.

    Raises:
        ValueError for an unknown name or a bad ``num_classes``.
    """
    if name is None or name == "fallback":
        if num_classes is None:
            raise ValueError("get_palette: the fallback palette needs num_classes")
        return fallback_palette(num_classes)
    if not isinstance(name, str):
        raise ValueError(f"get_palette: name must be a str or None, got {type(name).__name__}")
    colors, _ = _named(name)
    if num_classes is None:
        return colors
    k = _check_count("get_palette", num_classes)
    if k <= len(colors):
        return colors[:k].copy()
    extra = fallback_palette(k)[len(colors):]
    return np.concatenate([colors, extra], axis=0)


def get_class_names(name: str) -> List[str]:
    """Class names of a named palette, one per label (ADE-Indoor has no published names: ``class_<i>``)."""
    return _named(name)[1]


LabelArray = Union[np.ndarray, torch.Tensor]


def colorize(labels: LabelArray, palette: Union[np.ndarray, Sequence[Sequence[int]], torch.Tensor], *,
             dontcare: Optional[int] = None,
             dontcare_color: Tuple[int, int, int] = DONTCARE_COLOR) -> LabelArray:
    """Colourise integer label maps.

    Args:
        labels: integer (H, W) or (N, H, W) numpy array or torch tensor (any device).
        palette: (K, 3) colours in 0..255 (e.g. from :func:`get_palette`).
        dontcare: a label value outside [0, K) (e.g. 255) drawn in ``dontcare_color`` (default
            :data:`DONTCARE_COLOR`) instead of raising.

    Returns:
        uint8 channels-first colour images: (3, H, W) for an (H, W) input, (N, 3, H, W) for (N, H, W); the same
        container type as ``labels`` (a torch tensor stays on its device).

    Raises:
        ValueError naming the first label value outside [0, K) that is not ``dontcare``; TypeError for a
        non-integer label map.
    """
    is_torch = isinstance(labels, torch.Tensor)
    if not is_torch and not isinstance(labels, np.ndarray):
        raise TypeError(f"colorize: labels must be a numpy array or torch tensor, got {type(labels).__name__}")
    if labels.ndim not in (2, 3):
        raise ValueError(f"colorize: labels must be (H, W) or (N, H, W), got shape {tuple(labels.shape)}")
    if is_torch:
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"colorize: labels must be an integer tensor, got {labels.dtype}")
    elif not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"colorize: labels must be an integer array, got {labels.dtype}")
    pal = np.asarray(palette.cpu() if isinstance(palette, torch.Tensor) else palette)
    if pal.ndim != 2 or pal.shape[1] != 3 or pal.shape[0] == 0:
        raise ValueError(f"colorize: palette must be (K, 3), got shape {pal.shape}")
    if pal.min() < 0 or pal.max() > 255:
        raise ValueError("colorize: palette values must lie in 0..255")
    k = pal.shape[0]
    table = np.concatenate([pal.astype(np.uint8), np.asarray([dontcare_color], dtype=np.uint8)], axis=0)

    lab = labels.long() if is_torch else labels.astype(np.int64, copy=False)
    bad = (lab < 0) | (lab >= k)
    if dontcare is not None:
        bad = bad & (lab != dontcare)
    if bool(bad.any()):
        first = int(lab[bad].flatten()[0])
        raise ValueError(f"colorize: label value {first} is outside the palette's range [0, {k})"
                         + (f" and is not the don't-care value {dontcare}" if dontcare is not None else "")
                         + "; use a palette with more colours or pass dontcare=")
    if dontcare is not None:
        if is_torch:
            lab = torch.where(lab == dontcare, torch.full_like(lab, k), lab)
        else:
            lab = np.where(lab == dontcare, k, lab)
    if is_torch:
        out = torch.as_tensor(table, device=labels.device)[lab]  # (..., H, W, 3)
        return out.movedim(-1, -3).contiguous()
    return np.ascontiguousarray(np.moveaxis(table[lab], -1, -3))
