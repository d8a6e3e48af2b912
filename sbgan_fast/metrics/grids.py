"""Sample grids: (colourised label map | image) pairs as one picture, for files and TensorBoard.

Images may be float in [-1, 1] (the model's output range) or uint8, as torch tensors or numpy arrays, (N, 3, H, W).
Label maps are integer (N, H, W), colourised with a palette (:func:`sbgan_fast.data.palettes.get_palette`).

Grid files (:func:`save_pairs_grid`: the trainer's ``samples/<stage>-<step>.png``, ``sample``'s ``grid.png``) are
made to be looked at: every tile is enlarged by an integer factor (nearest neighbour, so each pixel becomes an
exact block and no colour is invented) until it is at least ``min_tile_width`` (256) pixels wide, and a legend
below the grid names each class present in the label maps beside its colour swatch (the dataset's class names,
found from its palette; ``class <i>`` where the palette has no names). :func:`make_grid_array` (TensorBoard)
keeps the samples' own size unless asked (``scale``, ``legend``). Files are written atomically (a temporary file
in the same folder, then ``os.replace``), so a reader never sees a half-written PNG.
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

__all__ = ["make_grid_array", "save_pairs_grid", "save_image", "legend_entries", "palette_class_names",
           "tile_scale", "MIN_TILE_WIDTH"]

#: the smallest tile width (pixels) of grid files: tiles narrower than this are enlarged by an integer factor
MIN_TILE_WIDTH = 256
_LEGEND_FONT_PX = 16

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


def _upscale(x: np.ndarray, factor: int) -> np.ndarray:
    """(N, H, W, 3) -> (N, H*f, W*f, 3): each pixel an exact f x f block (nearest neighbour)."""
    if factor == 1:
        return x
    return np.repeat(np.repeat(x, factor, axis=1), factor, axis=2)


def palette_class_names(palette) -> list:
    """Class names for the rows of ``palette`` (K, 3): the names of the named palette it is taken from
    (:data:`~sbgan_fast.data.palettes.PALETTE_NAMES`; its first rows, the last row allowed to be the don't-care
    colour a dataset with ``data.dontcare`` puts there), ``class <i>`` for rows beyond it or for any other palette."""
    from ..data.palettes import PALETTE_NAMES, get_class_names, get_palette
    pal = np.asarray(palette.cpu() if isinstance(palette, torch.Tensor) else palette)
    k = int(pal.shape[0])
    for name in PALETTE_NAMES:
        colors = get_palette(name)
        m = min(k, len(colors))
        checked = m - 1 if k <= len(colors) else m      # a cut palette's last row may be the don't-care colour
        if checked >= 2 and np.array_equal(pal[:checked].astype(np.int64), colors[:checked].astype(np.int64)):
            names = list(get_class_names(name)[:m])
            return names + [f"class {i}" for i in range(m, k)]
    return [f"class {i}" for i in range(k)]


def legend_entries(labels: ArrayLike, palette, *, class_names: Optional[Sequence[str]] = None,
                   dontcare: Optional[int] = None) -> list:
    """The legend of label maps: ``[(value, name, (r, g, b))]`` for each label value present in ``labels``, in
    increasing order, with its palette colour; the don't-care value (``dontcare``) last, as ``"don't care"`` in
    :data:`~sbgan_fast.data.palettes.DONTCARE_COLOR`. Names: ``class_names`` (one per palette row) or
    :func:`palette_class_names`."""
    from ..data.palettes import DONTCARE_COLOR
    pal = np.asarray(palette.cpu() if isinstance(palette, torch.Tensor) else palette)
    lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    names = list(class_names) if class_names is not None else palette_class_names(pal)
    if len(names) < len(pal):
        raise ValueError(f"legend: {len(names)} class names for a palette of {len(pal)} colours")
    out = []
    for v in np.unique(lab).tolist():
        if dontcare is not None and v == dontcare:
            continue
        if not 0 <= v < len(pal):
            raise ValueError(f"legend: label value {v} is outside the palette's range [0, {len(pal)})")
        out.append((int(v), str(names[v]), tuple(int(c) for c in pal[v])))
    if dontcare is not None and (lab == dontcare).any():
        out.append((int(dontcare), "don't care", tuple(DONTCARE_COLOR)))
    return out


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):   # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _legend_strip(entries: list, width: int, pad_value: int, font_px: int = _LEGEND_FONT_PX) -> np.ndarray:
    """uint8 (h, >= width, 3): the entries as swatch + name, left to right, wrapped at ``width``. Each swatch is a
    ``font_px`` square of exactly its colour inside a 1-pixel grey frame."""
    from PIL import Image, ImageDraw
    font = _font(font_px)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    margin, gap, sw = 8, 16, font_px
    row_h = sw + 8
    placed, x, y = [], margin, margin
    for _, name, color in entries:
        tw = int(math.ceil(probe.textlength(name, font=font)))
        w = sw + 2 + 6 + tw
        if x > margin and x + w > width - margin:
            x, y = margin, y + row_h
        placed.append((x, y, name, color))
        x += w + gap
    right = max([px + sw + 8 + int(math.ceil(probe.textlength(n, font=font))) for px, _, n, _ in placed] + [0])
    img = Image.new("RGB", (max(width, right + margin), y + row_h + margin - 4), (pad_value,) * 3)
    draw = ImageDraw.Draw(img)
    text = (0, 0, 0) if pad_value >= 128 else (255, 255, 255)
    for px, py, name, color in placed:
        draw.rectangle([px, py, px + sw + 1, py + sw + 1], outline=(128, 128, 128))
        draw.rectangle([px + 1, py + 1, px + sw, py + sw], fill=tuple(color))
        top, bottom = draw.textbbox((0, 0), name, font=font)[1::2]      # centred on the swatch
        draw.text((px + sw + 8, py + 1 + (sw - (bottom - top)) // 2 - top), name, fill=text, font=font)
    return np.asarray(img, dtype=np.uint8)


def make_grid_array(labels: Optional[ArrayLike] = None, images: Optional[ArrayLike] = None,
                    palette: Optional[Union[np.ndarray, Sequence[Sequence[int]]]] = None, *,
                    ncol: Optional[int] = None, padding: int = 2, pad_value: int = 255,
                    dontcare: Optional[int] = None, scale: int = 1, legend: bool = False,
                    class_names: Optional[Sequence[str]] = None) -> np.ndarray:
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
        scale: integer enlargement of every label map and image (nearest neighbour: each pixel an exact
            ``scale x scale`` block); the padding stays ``padding`` pixels.
        legend: with ``labels``, a legend below the grid: a swatch and the name of each class present
            (:func:`legend_entries`); the picture is widened (``pad_value``) if the legend is wider.
        class_names: names of the palette's rows for the legend (default: :func:`palette_class_names`).

    Returns:
        uint8 (H_grid, W_grid, 3). With both inputs each cell is ``label | gap | image``.
    """
    where = "make_grid_array"
    if labels is None and images is None:
        raise ValueError(f"{where}: give labels, images or both")
    if not 0 <= int(pad_value) <= 255:
        raise ValueError(f"{where}: pad_value must lie in 0..255, got {pad_value}")
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ValueError(f"{where}: scale must be a positive int, got {scale!r}")
    img = _images_uint8(images, where) if images is not None else None
    lab = _labels_rgb(labels, palette, where, dontcare) if labels is not None else None
    if img is not None and lab is not None:
        if img.shape[0] != lab.shape[0]:
            raise ValueError(f"{where}: {lab.shape[0]} label maps but {img.shape[0]} images")
        lab = _upscale(_nearest_to(lab, img.shape[1:3]), int(scale))
        img = _upscale(img, int(scale))
        gap = np.full(img.shape[:2] + (max(int(padding), 0),) + (3,), pad_value, np.uint8)
        cells = np.concatenate([lab, gap, img], axis=2)
    else:
        cells = _upscale(img if img is not None else lab, int(scale))
    if cells.shape[0] == 0:
        raise ValueError(f"{where}: got zero samples")
    grid = _tile(cells, ncol, padding, int(pad_value))
    if legend and labels is not None:
        strip = _legend_strip(legend_entries(labels, palette, class_names=class_names, dontcare=dontcare),
                              grid.shape[1], int(pad_value))
        if strip.shape[1] > grid.shape[1]:
            grid = np.pad(grid, ((0, 0), (0, strip.shape[1] - grid.shape[1]), (0, 0)), constant_values=pad_value)
        grid = np.concatenate([grid, strip], axis=0)
    return grid


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


def tile_scale(width: int, min_tile_width: int = MIN_TILE_WIDTH) -> int:
    """The integer enlargement that makes a tile ``width`` pixels wide at least ``min_tile_width`` wide."""
    return max(1, -(-int(min_tile_width) // max(1, int(width))))


def save_pairs_grid(labels: ArrayLike, images: ArrayLike, palette, path: Union[str, "os.PathLike[str]"], *,
                    ncol: Optional[int] = None, padding: int = 2, dontcare: Optional[int] = None,
                    min_tile_width: int = MIN_TILE_WIDTH, legend: bool = True,
                    class_names: Optional[Sequence[str]] = None) -> str:
    """Write a PNG (or JPEG, by extension) grid of (colourised label map | image) pairs, atomically, at a size a
    person can see: tiles enlarged (nearest neighbour, by :func:`tile_scale`) to at least ``min_tile_width``
    pixels (1: the samples' own size), and with ``legend`` the classes present named below the grid.

    Args: as :func:`make_grid_array`; ``path`` is the output file (folders are created).
    Returns: the path written.
    """
    width = (images.shape[-1] if images is not None else labels.shape[-1])
    grid = make_grid_array(labels, images, palette, ncol=ncol, padding=padding, dontcare=dontcare,
                           scale=tile_scale(width, min_tile_width), legend=legend and labels is not None,
                           class_names=class_names)
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
