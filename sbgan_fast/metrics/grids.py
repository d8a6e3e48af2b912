"""Sample grids: (colourised label map | image) pairs as one picture, for files and TensorBoard.

Images may be float in [-1, 1] (the model's output range) or uint8, as torch tensors or numpy arrays, (N, 3, H, W).
Label maps are integer (N, H, W), colourised with a palette (:func:`sbgan_fast.data.palettes.get_palette`).
Files are written atomically (a temporary file in the same folder, then ``os.replace``), so a reader never sees a
half-written PNG.
"""
from __future__ import annotations

import math
import os
import tempfile
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..data.datasets import float_to_uint8
from ..data.palettes import colorize

__all__ = ["make_grid_array", "save_pairs_grid", "save_image"]

ArrayLike = Union[np.ndarray, torch.Tensor]


def _images_uint8(images: ArrayLike, where: str) -> np.ndarray:
    """(N, 3, H, W) float [-1, 1] or uint8 -> numpy uint8 (N, H, W, 3)."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(images)
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{where}: images must be a torch tensor or numpy array, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{where}: images must be (N, 3, H, W), got shape {tuple(images.shape)}")
    if images.dtype.is_floating_point:
        images = float_to_uint8(images)
    elif images.dtype != torch.uint8:
        raise TypeError(f"{where}: images must be uint8 or floating in [-1, 1], got {images.dtype}")
    return images.detach().cpu().permute(0, 2, 3, 1).numpy()


def _labels_rgb(labels: ArrayLike, palette, where: str, dontcare: Optional[int]) -> np.ndarray:
    """(N, H, W) int -> numpy uint8 (N, H, W, 3)."""
    if palette is None:
        raise ValueError(f"{where}: a palette is needed to colourise label maps")
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu()
        if labels.ndim == 4 and labels.shape[1] == 1:
            labels = labels[:, 0]
    elif isinstance(labels, np.ndarray) and labels.ndim == 4 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 3:
        raise ValueError(f"{where}: labels must be (N, H, W), got shape {tuple(labels.shape)}")
    rgb = colorize(labels, palette, dontcare=dontcare)
    rgb = rgb.numpy() if isinstance(rgb, torch.Tensor) else rgb
    return np.ascontiguousarray(rgb.transpose(0, 2, 3, 1))


def _nearest_to(x: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Nearest resize of (N, H, W, 3) to ``size`` (pixel-centre rule), e.g. a half-resolution label map."""
    n, h, w, _ = x.shape
    if (h, w) == tuple(size):
        return x
    ys = np.minimum(((np.arange(size[0]) + 0.5) * (h / size[0])).astype(np.int64), h - 1)
    xs = np.minimum(((np.arange(size[1]) + 0.5) * (w / size[1])).astype(np.int64), w - 1)
    return x[:, ys[:, None], xs[None, :]]


def _tile(cells: np.ndarray, ncol: Optional[int], padding: int, pad_value: int) -> np.ndarray:
    """(N, h, w, 3) cells -> one (rows*h + pads, ncol*w + pads, 3) uint8 grid, row-major."""
    n, h, w, _ = cells.shape
    if ncol is None:
        # about as many rows as columns in pixels
        ncol = max(1, min(n, int(round(math.sqrt(n * h / max(w, 1))))))
    if isinstance(ncol, bool) or not isinstance(ncol, (int, np.integer)) or ncol <= 0:
        raise ValueError(f"ncol must be a positive int or None, got {ncol!r}")
    ncol = min(int(ncol), n)
    nrow = -(-n // ncol)
    p = int(padding)
    if p < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    out = np.full((nrow * (h + p) + p, ncol * (w + p) + p, 3), pad_value, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, ncol)
        y, x = p + r * (h + p), p + c * (w + p)
        out[y:y + h, x:x + w] = cells[i]
    return out


def make_grid_array(labels: Optional[ArrayLike] = None, images: Optional[ArrayLike] = None,
                    palette: Optional[Union[np.ndarray, Sequence[Sequence[int]]]] = None, *,
                    ncol: Optional[int] = None, padding: int = 2, pad_value: int = 255,
                    dontcare: Optional[int] = None) -> np.ndarray:
    """Arrange samples as one uint8 HWC picture (for ``SummaryWriter.add_image(..., dataformats='HWC')``).

    Args:
        labels: int (N, H, W) label maps, or None. Colourised with ``palette``; resized (nearest) to the images'
            size when both are given and the sizes differ.
        images: (N, 3, H, W) float in [-1, 1] or uint8, or None.
        palette: (K, 3) colours, needed with ``labels``.
        ncol: samples per row (None: chosen so the grid is roughly square).
        padding, pad_value: gap in pixels between cells (and around), and its grey level.
        dontcare: the dataset's don't-care label value (e.g. 255), drawn in
            :data:`~sbgan_fast.data.palettes.DONTCARE_COLOR` instead of raising (see :func:`colorize`).

    Returns:
        uint8 (H_grid, W_grid, 3). With both inputs each cell is ``label | gap | image``.
    """
    where = "make_grid_array"
    if labels is None and images is None:
        raise ValueError(f"{where}: give labels, images or both")
    if not 0 <= int(pad_value) <= 255:
        raise ValueError(f"{where}: pad_value must lie in 0..255, got {pad_value}")
    img = _images_uint8(images, where) if images is not None else None
    lab = _labels_rgb(labels, palette, where, dontcare) if labels is not None else None
    if img is not None and lab is not None:
        if img.shape[0] != lab.shape[0]:
            raise ValueError(f"{where}: {lab.shape[0]} label maps but {img.shape[0]} images")
        lab = _nearest_to(lab, img.shape[1:3])
        gap = np.full(img.shape[:2] + (max(int(padding), 0),) + (3,), pad_value, np.uint8)
        cells = np.concatenate([lab, gap, img], axis=2)
    else:
        cells = img if img is not None else lab
    if cells.shape[0] == 0:
        raise ValueError(f"{where}: got zero samples")
    return _tile(cells, ncol, padding, int(pad_value))


def _atomic_save_png(array: np.ndarray, path: Union[str, "os.PathLike[str]"]) -> str:
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    ext = os.path.splitext(path)[1].lower()
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}.get(ext)
    if fmt is None:
        raise ValueError(f"cannot save {path}: use a .png, .jpg or .jpeg file name")
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            Image.fromarray(array).save(f, format=fmt)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def save_pairs_grid(labels: ArrayLike, images: ArrayLike, palette, path: Union[str, "os.PathLike[str]"], *,
                    ncol: Optional[int] = None, padding: int = 2, dontcare: Optional[int] = None) -> str:
    """Write a PNG (or JPEG, by extension) grid of (colourised label map | image) pairs, atomically.

    Args: as :func:`make_grid_array`; ``path`` is the output file (folders are created).
    Returns: the path written.
    """
    grid = make_grid_array(labels, images, palette, ncol=ncol, padding=padding, dontcare=dontcare)
    return _atomic_save_png(grid, path)


def save_image(image: ArrayLike, path: Union[str, "os.PathLike[str]"], *, ncol: Optional[int] = None) -> str:
    """Write one image or a grid of images, atomically.

    Args:
        image: (3, H, W) or (N, 3, H, W) float in [-1, 1] or uint8 (torch or numpy); or an HWC uint8 numpy array
            such as :func:`make_grid_array` returns.
        path: output file (.png, .jpg or .jpeg); folders are created.
    Returns: the path written.
    """
    if isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.uint8:
        return _atomic_save_png(np.ascontiguousarray(image), path)
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4:
        raise ValueError(f"save_image: expected (3, H, W), (N, 3, H, W) or (H, W, 3) uint8, got shape "
                         f"{tuple(image.shape)}")
    array = _images_uint8(image, "save_image")
    out = array[0] if array.shape[0] == 1 else _tile(array, ncol, 2, 255)
    return _atomic_save_png(np.ascontiguousarray(out), path)
