"""Built-in synthetic street scenes: the project's embedded default data (no download needed).

Each sample is a procedural street-like scene (:mod:`.scene`, painted with :mod:`.render`), drawn at once as an
integer label map and an RGB image rendered from it, so image and labels are aligned pixel for pixel. A sample
depends only on ``(seed, index)`` and the aspect ratio (the same sample at 64x128 and 256x512 is the same scene at
two resolutions); a 64x128 sample takes a few milliseconds on one CPU core, so samples are generated on the fly.
The horizontal flip is the trainer's (per step, shared by image and label), so this dataset never flips.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from .files import check_index
from .palettes import SYNTHETIC_CLASSES, get_palette
from .scene import (BUILDING, CAR, CLOUD, PERSON, POLE, ROAD, SIDEWALK, SIGN, SKY, TERRAIN, VEGETATION,
                    render_sample)

__all__ = ["SyntheticScenes"]

# With num_classes < 11 every class >= num_classes is merged into its parent (repeatedly) in the label map.
_PARENT = {BUILDING: SKY, VEGETATION: BUILDING, SIDEWALK: ROAD, CAR: ROAD, TERRAIN: SIDEWALK, PERSON: SIDEWALK,
           POLE: BUILDING, SIGN: POLE, CLOUD: SKY}


class SyntheticScenes(Dataset):
    """Procedural street scenes: the embedded default dataset.

    Args:
        size: number of samples (indices 0..size-1).
        height, width: output resolution in pixels (any size >= 8; the layout scales with it).
        seed: dataset seed (int >= 0). Sample ``i`` depends only on ``(seed, i)`` and the aspect ratio.
        num_classes: label count K (the scenes have no don't-care value). ``None`` = the 11 built-in classes
            (:attr:`CLASS_NAMES`). A smaller K (>= 2) merges the classes >= K into coarser parents (e.g. car ->
            road, cloud -> sky) in the label map (the image is unchanged); a larger K keeps the labels and leaves
            the extra classes unused.
        with_images: False skips converting the image to a tensor and returns labels only.
        detail: fine image detail in [0, 1]: texture and illumination noise, window grids and paving seams are
            drawn at this strength (1 = the full scenes; 0 = flat-coloured regions). Layout, objects, colours and
            label maps do not depend on it.

    Items (``__getitem__``): ``{"image": uint8 (3, H, W), "label": int64 (H, W) in [0, K), "index": int}``.
    """

    CLASS_NAMES: Tuple[str, ...] = tuple(name for name, _ in SYNTHETIC_CLASSES)
    PALETTE: np.ndarray = np.array([col for _, col in SYNTHETIC_CLASSES], dtype=np.uint8)
    PALETTE.setflags(write=False)

    def __init__(self, size: int = 1000, *, height: int = 64, width: int = 128, seed: int = 0,
                 num_classes: Optional[int] = None, with_images: bool = True, detail: float = 1.0):
        for name, value, lo in (("size", size, 1), ("height", height, 8), ("width", width, 8), ("seed", seed, 0)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
                raise ValueError(f"SyntheticScenes: {name} must be an int >= {lo}, got {value!r}")
        if isinstance(detail, bool) or not isinstance(detail, (int, float, np.floating, np.integer)) \
                or not 0.0 <= float(detail) <= 1.0:
            raise ValueError(f"SyntheticScenes: detail must be a number in [0, 1], got {detail!r}")
        self.detail = float(detail)
        base = len(SYNTHETIC_CLASSES)
        if num_classes is None:
            num_classes = base
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
            raise ValueError(f"SyntheticScenes: num_classes must be an int >= 2 (or None for {base}), "
                             f"got {num_classes!r}")
        self.size = int(size)
        self.height, self.width = int(height), int(width)
        self.seed = int(seed)
        self.num_classes = int(num_classes)
        self.with_images = bool(with_images)
        lut = np.arange(base, dtype=np.int64)
        for k in range(base):
            while lut[k] >= self.num_classes:
                lut[k] = _PARENT[int(lut[k])]
        self._lut = lut

    @property
    def palette(self) -> np.ndarray:
        """uint8 (num_classes, 3): :attr:`PALETTE`, cut or extended (fallback colours) to ``num_classes``."""
        return get_palette("synthetic", self.num_classes)

    def __len__(self) -> int:
        return self.size

    def generate(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Draw sample ``index``: (image uint8 (H, W, 3), label int64 (H, W)) as numpy arrays."""
        index = check_index("SyntheticScenes", index, self.size)
        img, lab = render_sample(self.seed, index, self.height, self.width, self.detail)
        return img, self._lut[lab]

    def __getitem__(self, index: int) -> Dict[str, object]:
        index = check_index("SyntheticScenes", index, self.size)
        img, lab = self.generate(index)
        item: Dict[str, object] = {"label": torch.from_numpy(np.ascontiguousarray(lab)), "index": index}
        if self.with_images:
            item["image"] = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return item

    def __repr__(self) -> str:
        return (f"SyntheticScenes(size={self.size}, height={self.height}, width={self.width}, seed={self.seed}, "
                f"num_classes={self.num_classes}" + (f", detail={self.detail}" if self.detail != 1.0 else "") + ")")
