"""Painting for the synthetic scenes (:mod:`.scene`): a label map and an RGB image drawn together, then finished.

:class:`Canvas` holds an integer label map and a float RGB image of one sample and paints primitives
(rectangles, ellipses, trapezoids) into both at once, in scene units (the image height is 1, the width is
``width / height``), so image and labels stay aligned pixel for pixel. :func:`finish_image` turns the painted
float image into the final uint8 picture: per-class texture noise, large-scale illumination, a per-sample colour
jitter and a slight blur.
"""
from __future__ import annotations

import functools
from typing import Optional, Tuple

import numpy as np

__all__ = ["Canvas", "finish_image", "jitter", "smooth_noise"]


@functools.lru_cache(maxsize=64)
def _interp_index(n_out: int, n_in: int) -> Tuple[np.ndarray, np.ndarray]:
    """Linear interpolation from n_in grid nodes (spanning the axis) to n_out pixel centres: the lower node index
    (int64 (n_out,)) and the weight of the upper node (float32 (n_out,))."""
    pos = (np.arange(n_out, dtype=np.float64) + 0.5) / n_out * (n_in - 1)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, max(n_in - 2, 0))
    frac = np.clip(pos - lo, 0.0, 1.0).astype(np.float32)
    if n_in == 1:
        frac[:] = 0.0
    return lo, frac


def smooth_noise(rng: np.random.Generator, h: int, w: int, cells_y: int, cells_x: int) -> np.ndarray:
    """(h, w) float32 noise: standard normal at cells_y x cells_x nodes, bilinearly interpolated in between.
    The random draw depends only on the node counts, not on (h, w)."""
    grid = np.pad(rng.standard_normal((cells_y, cells_x)).astype(np.float32), ((0, 1), (0, 1)), mode="edge")
    ly, fy = _interp_index(h, cells_y)
    lx, fx = _interp_index(w, cells_x)
    cols = grid[:, lx] * (1.0 - fx) + grid[:, lx + 1] * fx  # (cells_y + 1, w)
    return cols[ly] * (1.0 - fy)[:, None] + cols[ly + 1] * fy[:, None]


class Canvas:
    """A label map and an RGB float image painted together (painter's algorithm), in scene units."""

    def __init__(self, height: int, width: int):
        self.h, self.w = height, width
        self.label = np.zeros((height, width), np.int8)
        self.img = np.zeros((height, width, 3), np.float32)
        self.ys = (np.arange(height, dtype=np.float32) + 0.5) / height  # scene y of each pixel row centre
        self.xs = (np.arange(width, dtype=np.float32) + 0.5) / height  # scene x of each pixel column centre
        self.px = 1.0 / height  # one pixel in scene units

    def window(self, y0: float, y1: float, x0: float, x1: float):
        """Pixel slices whose centres lie in [y0, y1] x [x0, x1], with the centres' scene coordinates
        (yy (h, 1), xx (1, w)); None when no pixel centre is inside."""
        h = self.h
        i0 = max(0, int(np.ceil(y0 * h - 0.5)))
        i1 = min(self.h, int(np.floor(y1 * h - 0.5)) + 1)
        j0 = max(0, int(np.ceil(x0 * h - 0.5)))
        j1 = min(self.w, int(np.floor(x1 * h - 0.5)) + 1)
        if i1 <= i0 or j1 <= j0:
            return None
        return (slice(i0, i1), slice(j0, j1)), self.ys[i0:i1, None], self.xs[None, j0:j1]

    def paint(self, cls: Optional[int], sl, mask, color) -> None:
        """Set label ``cls`` (None: image only) and ``color`` ((3,) or (h, w, 3) over the window) where ``mask``
        (None = the whole window)."""
        color = np.asarray(color, np.float32)
        if mask is None:
            if cls is not None:
                self.label[sl] = cls
            self.img[sl] = color
            return
        if cls is not None:
            self.label[sl][mask] = cls
        self.img[sl][mask] = color[mask] if color.ndim == 3 else color

    # -- primitives -------------------------------------------------------------------------------------------
    def rect(self, cls, y0, y1, x0, x1, color, shade: float = 0.0) -> None:
        """Axis-aligned rectangle; ``shade`` darkens linearly from top (0) to bottom (shade)."""
        win = self.window(y0, y1, x0, x1)
        if win is None:
            return
        sl, yy, _ = win
        color = np.asarray(color, np.float32)
        if shade:
            t = (yy - y0) / max(y1 - y0, 1e-6)
            color = color * (1.0 - shade * t)[..., None] * np.ones((1, sl[1].stop - sl[1].start, 1), np.float32)
        self.paint(cls, sl, None, color)

    def ellipse(self, cls, cy, cx, ry, rx, color, light: Optional[Tuple[float, float, float]] = None) -> None:
        """Filled ellipse; ``light = (dy, dx, strength)`` brightens the side facing direction (dy, dx)."""
        win = self.window(cy - ry, cy + ry, cx - rx, cx + rx)
        if win is None:
            return
        sl, yy, xx = win
        u, v = (yy - cy) / ry, (xx - cx) / rx
        mask = u * u + v * v <= 1.0
        color = np.asarray(color, np.float32)
        if light is not None:
            dy, dx, k = light
            color = color * np.maximum(1.0 + k * (u * dy + v * dx), 0.2)[..., None]
        self.paint(cls, sl, mask, color)

    def trapezoid(self, cls, y0, y1, xl0, xr0, xl1, xr1, color, only_on: Optional[int] = None) -> None:
        """Region between y0 and y1 whose left/right edges go linearly from xl0/xr0 (at y0) to xl1/xr1 (at y1).
        ``only_on``: paint the image only where the label already equals that class (labels unchanged)."""
        win = self.window(y0, y1, min(xl0, xl1), max(xr0, xr1))
        if win is None:
            return
        sl, yy, xx = win
        t = (yy - y0) / max(y1 - y0, 1e-6)
        mask = (xx >= xl0 + t * (xl1 - xl0)) & (xx <= xr0 + t * (xr1 - xr0))
        if only_on is not None:
            mask &= self.label[sl] == only_on
            cls = None
        self.paint(cls, sl, mask, color)


def jitter(rng: np.random.Generator, color, amount: float) -> np.ndarray:
    """``color`` (3,) plus a uniform offset in [-amount, amount] per channel (float32 (3,))."""
    return np.asarray(color, np.float32) + rng.uniform(-amount, amount, 3).astype(np.float32)


def finish_image(c: Canvas, r: np.random.Generator, n: np.random.Generator, aspect: float,
                 pixel_noise: np.ndarray, block_noise: np.ndarray, illumination: float = 0.07) -> np.ndarray:
    """The canvas's float image made final: uint8 (H, W, 3). ``r`` (the layout generator) draws the
    resolution-independent illumination and colour jitter, ``n`` the per-pixel texture; ``pixel_noise`` and
    ``block_noise`` (float32 (classes,)) are each class's amplitudes of per-pixel and blocky texture noise,
    ``illumination`` the amplitude of the large-scale brightness noise. The canvas's image is modified in place."""
    h, w = c.h, c.w
    img, lab = c.img, c.label
    # per-pixel luminance noise and blocky texture (leaves, grass, asphalt), amplitudes per class
    tex = n.standard_normal((h, w), dtype=np.float32)
    tex *= pixel_noise[lab]
    block = max(1, round(h / 40))  # texture grain: about 1/40 of the image height
    if block > 1:  # bilinear between nodes (std about 0.6 there: scaled back up)
        coarse = smooth_noise(n, h, w, -(-h // block) + 1, -(-w // block) + 1) * np.float32(1.5)
    else:
        coarse = n.standard_normal((h, w), dtype=np.float32)
    tex += coarse * block_noise[lab]
    img += tex[..., None]
    # large-scale illumination (the node values come from the layout generator: resolution independent)
    illum = smooth_noise(r, h, w, 4, max(2, int(round(4 * aspect))))
    illum *= np.float32(illumination)
    illum += 1.0
    img *= illum[..., None]
    # per-sample colour jitter as one affine colour map (saturation, contrast, per-channel gain), scaled to
    # 0..255: out = img @ m + b
    gain = r.uniform(0.92, 1.08, 3) * r.uniform(0.85, 1.12)
    contrast = r.uniform(0.85, 1.15)
    sat = r.uniform(0.75, 1.25)
    m = (sat * np.eye(3) + (1.0 - sat) / 3.0) * (contrast * gain * 255.0)[None, :]
    b = (0.5 * (1.0 - contrast) * gain * 255.0 + 0.5).astype(np.float32)
    img = np.einsum("hwc,cd->hwd", img, m.astype(np.float32)) + b
    # soft edges: a separable [k, 1 - 2k, k] blur
    if min(h, w) >= 16:
        k = np.float32(0.12)
        img[1:-1] += k * (img[:-2] + img[2:] - 2.0 * img[1:-1])
        img[:, 1:-1] += k * (img[:, :-2] + img[:, 2:] - 2.0 * img[:, 1:-1])
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8)
