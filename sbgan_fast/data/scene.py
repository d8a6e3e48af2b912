"""The synthetic street scene: one sample of the built-in dataset (:class:`.synthetic.SyntheticScenes`).

Each sample is a procedural street-like scene, drawn at once as an integer label map and an RGB image rendered
from it, so image and labels are aligned pixel for pixel:

* sky with a vertical colour gradient (clear, hazy, overcast or dusk) and optional clouds;
* a skyline of buildings (rectangles of varying heights standing on a variable horizon) with window grids;
* the ground in perspective: a road (trapezoid towards a vanishing point) with dashed lane and edge markings,
  sidewalks with paving seams, grass (terrain) beyond them;
* trees (trunk + round crowns), poles with lamp arms and traffic signs, people on the sidewalks and cars on the
  road (body, cabin, wheels, tail lights, a shadow), drawn far to near so nearer objects occlude farther ones;
* per-class texture (pixel noise, blocky leaf noise), soft shading, large-scale illumination noise and a
  per-sample colour jitter.

Geometry lives in scene units (the image height is 1, the width is ``width / height``), so a sample's layout
depends only on ``(seed, index)`` and the aspect ratio: rendering the same sample at 64x128 and 256x512 gives the
same scene at two resolutions. All drawing is vectorised numpy over each primitive's bounding box; a 64x128
sample takes a few milliseconds on one CPU core, so samples are generated on the fly.
"""
from __future__ import annotations

from typing import List, Tuple

import numpy as np

from .palettes import SYNTHETIC_CLASSES
from .render import Canvas, finish_image, jitter

__all__ = ["StreetScene", "render_sample", "SKY", "ROAD", "BUILDING", "VEGETATION", "SIDEWALK", "CAR", "TERRAIN",
           "PERSON", "POLE", "SIGN", "CLOUD"]

# the label values of the fine classes (rows of :data:`~.palettes.SYNTHETIC_CLASSES`)
SKY, ROAD, BUILDING, VEGETATION, SIDEWALK, CAR, TERRAIN, PERSON, POLE, SIGN, CLOUD = range(len(SYNTHETIC_CLASSES))

# Per-class amplitude of the per-pixel luminance noise, and of the blocky (2-4 px) texture noise.
_PIXEL_NOISE = np.array([0.006, 0.035, 0.02, 0.05, 0.03, 0.015, 0.04, 0.02, 0.015, 0.01, 0.01], np.float32)
_BLOCK_NOISE = np.array([0.0, 0.02, 0.015, 0.12, 0.02, 0.0, 0.04, 0.0, 0.0, 0.0, 0.02], np.float32)

_FACADES = np.array([[0.76, 0.69, 0.56], [0.62, 0.34, 0.26], [0.56, 0.56, 0.58], [0.86, 0.84, 0.79],
                     [0.46, 0.36, 0.29], [0.46, 0.51, 0.59], [0.80, 0.70, 0.46], [0.70, 0.58, 0.50]], np.float32)
_CAR_COLORS = np.array([[0.85, 0.85, 0.86], [0.12, 0.12, 0.13], [0.55, 0.56, 0.58], [0.65, 0.08, 0.08],
                        [0.10, 0.20, 0.55], [0.25, 0.25, 0.30], [0.80, 0.75, 0.30], [0.15, 0.40, 0.25],
                        [0.90, 0.90, 0.92]], np.float32)
_SKIES = (  # (top colour, horizon colour) per weather
    ((0.20, 0.42, 0.78), (0.68, 0.82, 0.95)),  # clear
    ((0.42, 0.58, 0.78), (0.82, 0.86, 0.90)),  # hazy
    ((0.58, 0.60, 0.64), (0.80, 0.81, 0.83)),  # overcast
    ((0.30, 0.30, 0.55), (0.96, 0.66, 0.40)),  # dusk
)


class StreetScene:
    """Draws one sample. ``lay`` drives the layout and colours, ``noise`` the resolution-dependent pixel noise."""

    def __init__(self, lay: np.random.Generator, noise: np.random.Generator, height: int, width: int,
                 detail: float = 1.0):
        self.detail = float(detail)
        self.r = lay
        self.noise = noise
        self.c = Canvas(height, width)
        self.aspect = width / height

    # ground perspective: a lateral world position X at depth parameter t in (0, 1] is at x = vx + X * t,
    # y = hz + t * (1 - hz); sizes scale with t.
    def ground_y(self, t: float) -> float:
        return self.hz + t * (1.0 - self.hz)

    def ground_x(self, t: float, x_world: float) -> float:
        return self.vx + x_world * t

    def draw(self) -> Tuple[np.ndarray, np.ndarray]:
        r, a = self.r, self.aspect
        self.hz = float(r.uniform(0.36, 0.52))
        self.vx = float(a * r.uniform(0.35, 0.65))
        self.light_dx = 1.0 if r.random() < 0.5 else -1.0
        self.road_l = float(r.uniform(0.45, 0.85)) * max(a, 1.0) * 0.6
        self.road_r = float(r.uniform(0.45, 0.85)) * max(a, 1.0) * 0.6
        self.walk_l = float(r.uniform(0.25, 0.55)) if r.random() < 0.85 else 0.0
        self.walk_r = float(r.uniform(0.25, 0.55)) if r.random() < 0.85 else 0.0

        self.draw_sky()
        self.draw_clouds()
        self.draw_skyline()
        self.draw_ground()
        self.draw_facades()
        self.draw_objects()
        d = self.detail
        pixel, block = (_PIXEL_NOISE, _BLOCK_NOISE) if d == 1.0 else (_PIXEL_NOISE * d, _BLOCK_NOISE * d)
        return finish_image(self.c, self.r, self.noise, self.aspect, pixel, block, illumination=0.07 * d), \
            self.c.label

    def _fine(self, plain: np.ndarray, fine: np.ndarray) -> np.ndarray:
        """``fine`` (windows, seams: the scene's fine detail) drawn at :attr:`detail` over ``plain``."""
        d = self.detail
        return fine if d == 1.0 else plain + np.float32(d) * (fine - plain)

    # -- background -------------------------------------------------------------------------------------------
    def draw_sky(self) -> None:
        r, c = self.r, self.c
        top, bottom = _SKIES[int(np.searchsorted([0.45, 0.7, 0.88], r.random()))]
        top, bottom = jitter(r, top, 0.06), jitter(r, bottom, 0.05)
        t = np.clip(c.ys / self.hz, 0.0, 1.0)[:, None] ** 1.3
        grad = top[None, :] * (1.0 - t) + bottom[None, :] * t  # (h, 3)
        c.label[:] = SKY
        c.img[:] = grad[:, None, :]
        self.sky_bottom = bottom

    def draw_clouds(self) -> None:
        r, c = self.r, self.c
        if r.random() < 0.3:
            return
        for _ in range(int(r.integers(1, 5))):
            cy = float(r.uniform(0.04, self.hz * 0.7))
            cx = float(r.uniform(0.0, self.aspect))
            size = float(r.uniform(0.04, 0.10))
            base = jitter(r, (0.93, 0.93, 0.95), 0.04)
            for _ in range(int(r.integers(3, 7))):
                rx = size * float(r.uniform(0.7, 1.6))
                ry = rx * float(r.uniform(0.35, 0.6))
                c.ellipse(CLOUD, cy + float(r.uniform(-0.5, 0.3)) * size, cx + float(r.uniform(-2.0, 2.0)) * size,
                          ry, rx, base, light=(-1.0, 0.0, 0.12))

    def draw_skyline(self) -> None:
        """A row of buildings standing on the horizon, painted in one vectorised pass (later buildings in front)."""
        r, c = self.r, self.c
        hz, a = self.hz, self.aspect
        base_y = hz + 0.01
        low = r.random() < 0.15  # an open, low skyline now and then
        n = 64  # candidates, enough to cover any aspect ratio up to 10:1 with the narrowest buildings
        width = r.uniform(0.08, 0.32, n)
        gap = r.random(n) < 0.12
        step = np.where(gap, 0.5, r.uniform(0.85, 1.0, n)) * width
        x0 = -r.uniform(0.0, 0.15) + np.concatenate([[0.0], np.cumsum(step)[:-1]])
        x1 = x0 + width
        keep = ~gap & (x0 < a + 0.05)
        side = np.abs((x0 + x1) / 2 - self.vx) / max(a, 1e-6)
        height = r.uniform(0.06, 0.22, n) + (0.08 if low else 0.35) * side * r.uniform(0.6, 1.4, n)
        if not low:
            height += (r.random(n) < 0.2) * r.uniform(0.1, 0.25, n)  # towers
        top = np.maximum(base_y - height, -0.05)
        color = _FACADES[r.integers(len(_FACADES), size=n)] + r.uniform(-0.05, 0.05, (n, 3))
        sy = r.uniform(0.025, 0.045, n)  # window grid pitch
        sx = sy * r.uniform(0.7, 1.3, n)
        fill_y, fill_x = r.uniform(0.45, 0.65, n), r.uniform(0.4, 0.7, n)
        glass = np.array([0.22, 0.26, 0.32]) + r.uniform(-0.05, 0.05, (n, 3))
        lit = np.array([0.95, 0.85, 0.55]) + r.uniform(-0.05, 0.05, (n, 3))
        lit_p = r.uniform(0.0, 0.3, n)
        margin = r.uniform(0.02, 0.05, n)
        salt = int(r.integers(1 << 20))
        idx = np.flatnonzero(keep)
        if idx.size == 0:
            return
        win = c.window(float(top[idx].min()), base_y, 0.0, a)
        if win is None:
            return
        sl, yy, xx = win
        cover = (xx >= x0[idx, None]) & (xx < x1[idx, None])  # (m, w): building m covers column
        has = cover.any(axis=0)[None, :]
        bid = idx[idx.size - 1 - np.argmax(cover[::-1], axis=0)][None, :]  # the front-most building per column
        f = lambda arr: arr[bid].astype(np.float32)  # noqa: E731  (per-column parameter, (1, w))
        y0, bx0, bx1 = f(top), f(x0), f(x1)
        mask = has & (yy >= y0)
        t = (yy - y0) / np.maximum(base_y - y0, 1e-6)
        across = (xx - bx0) / np.maximum(bx1 - bx0, 1e-6) - 0.5
        shade = (1.0 - 0.18 * t) * (1.0 + 0.08 * self.light_dx * across)
        img = color[bid].astype(np.float32) * shade[..., None]
        # window grid: cell (row, col) of each pixel, windows where the pixel is in the cell's lower-left part
        bm, bsy, bsx = f(margin), f(sy), f(sx)
        gy = (yy - y0 - bm) / bsy
        gx = (xx - bx0 - 0.3 * bsx) / bsx
        wmask = mask & ((gy % 1.0) < f(fill_y)) & ((gx % 1.0) < f(fill_x)) & (gy > 0) & (gx > 0)
        wmask &= (yy < base_y - 2 * bm - 0.02) & (xx < bx1 - 0.3 * bsx)
        if wmask.any():
            row, col = np.floor(gy).astype(np.int64), np.floor(gx).astype(np.int64)
            cell = (row * 73856093) ^ (col * 19349663) ^ (bid * 83492791) ^ salt
            is_lit = ((cell % 1009) / 1009.0) < f(lit_p)
            wcol = np.where(is_lit[..., None], lit[bid].astype(np.float32),
                            glass[bid].astype(np.float32) * (0.8 + 0.4 * t[..., None]))
            img = np.where(wmask[..., None], self._fine(img, wcol), img)
        c.paint(BUILDING, sl, mask, img)

    def draw_ground(self) -> None:
        r, c = self.r, self.c
        hz, vx = self.hz, self.vx
        grass = jitter(r, (0.36, 0.50, 0.22), 0.06)
        road = jitter(r, (0.33, 0.33, 0.35), 0.05) * float(r.uniform(0.8, 1.2))
        walk = jitter(r, (0.66, 0.64, 0.60), 0.06)
        mark = jitter(r, (0.92, 0.92, 0.88), 0.04) if r.random() < 0.8 else np.array([0.9, 0.75, 0.2], np.float32)
        centre = float(r.uniform(-0.15, 0.15)) * (self.road_l + self.road_r) + (self.road_r - self.road_l) / 2
        dash_phase = float(r.uniform(0.0, 1.0))
        win = c.window(hz, 1.0, 0.0, self.aspect)
        if win is None:
            return
        sl, yy, xx = win
        t = np.maximum((yy - hz) / (1.0 - hz), 1e-3)  # (h, 1) depth parameter, 0 at the horizon
        xw = (xx - vx) / t  # lateral world position of every ground pixel
        depth = 1.0 / t
        rl, rr, wl, wr = self.road_l, self.road_r, self.walk_l, self.walk_r
        is_road = (xw >= -rl) & (xw <= rr)
        is_walk = ((xw >= -rl - wl) & (xw < -rl)) | ((xw > rr) & (xw <= rr + wr))
        # colour index: 0 grass, 1 sidewalk, 2 road, 3 marking, 4 curb; label from the same map
        cidx = is_walk.astype(np.int8)
        cidx[is_road] = 2
        dashed = (np.abs(xw - centre) < 0.025) & (((depth * 0.9 + dash_phase) % 1.0) < 0.5)
        edges = (np.abs(xw + rl - 0.06) < 0.015) | (np.abs(xw - rr + 0.06) < 0.015)
        cidx[is_road & (dashed | edges)] = 3
        cidx[is_walk & ((np.abs(xw + rl) < 0.03) | (np.abs(xw - rr) < 0.03))] = 4
        c.label[sl] = np.array([TERRAIN, SIDEWALK, ROAD, ROAD, SIDEWALK], np.int8)[cidx]
        table = np.stack([grass, walk, road, mark, np.minimum(walk * 1.2, 1.0)]).astype(np.float32)
        # brightness: paving seams on sidewalks, darker far away; the far ground fades into the sky colour
        seam = (((depth * 1.6) % 1.0) < 0.09) | (((xw * 4.0) % 1.0) < 0.07)
        seam_dark = np.float32(1.0 - 0.18 * self.detail) if self.detail != 1.0 else np.float32(0.82)
        bright = np.where(seam & (cidx == 1), seam_dark, np.float32(1.0)) * (0.9 + 0.12 * t)
        haze = 0.6 * np.exp(-t / 0.12)  # (h, 1)
        img = table[cidx] * (bright * (1.0 - haze))[..., None]
        img += (haze[..., None] * self.sky_bottom[None, None, :]).astype(np.float32)
        c.img[sl] = img

    def draw_facades(self) -> None:
        """Rows of houses lining the outer sidewalk edge, in perspective (walls parallel to the road), on each
        side with probability 0.45. Columns are painted at once: each column sees the wall at one depth."""
        r, c = self.r, self.c
        hz, vx = self.hz, self.vx
        self.facade = {}
        for side in (-1.0, 1.0):
            walk = self.walk_l if side < 0 else self.walk_r
            dist = (self.road_l if side < 0 else self.road_r) + walk  # lateral world distance of the wall
            present = r.random() < 0.45 and walk > 0
            t_far = float(r.uniform(0.1, 0.3))
            nseg = 6
            seg_len = r.uniform(0.6, 2.5, nseg)  # segment lengths along the road, in depth units (z = 1 / t)
            bounds = 1.0 / t_far - np.cumsum(seg_len)  # z at the near end of each segment
            wall_h = r.uniform(0.8, 2.4, nseg)
            color = _FACADES[r.integers(len(_FACADES), size=nseg)] + r.uniform(-0.05, 0.05, (nseg, 3))
            floor_h = float(r.uniform(0.22, 0.32))
            win_pz = r.uniform(0.15, 0.35, nseg)
            glass = jitter(r, (0.2, 0.24, 0.3), 0.05)
            lit_side = 1.05 if (side < 0) == (self.light_dx > 0) else 0.8
            if not present:
                continue
            self.facade[side] = dist
            # columns between the far end and the image edge on this side
            x_far = vx + side * dist * t_far
            win = c.window(0.0, 1.0, 0.0, x_far) if side < 0 else c.window(0.0, 1.0, x_far, self.aspect)
            if win is None:
                continue
            sl, yy, xx = win
            t = np.maximum((xx - vx) * side / dist, 1e-3)  # (1, w) depth parameter of the wall in each column
            z = 1.0 / t
            seg = np.minimum(np.searchsorted(-bounds, -z), nseg - 1)  # segment index per column
            hgt = wall_h[seg].astype(np.float32)
            y_bot = hz + t * (1.0 - hz)
            y_top = y_bot - hgt * t
            mask = (yy >= y_top) & (yy <= y_bot)
            v = (y_bot - yy) / t  # world height above the ground
            pz = win_pz[seg].astype(np.float32)
            zstart = np.where(seg > 0, bounds[np.maximum(seg - 1, 0)], 1.0 / t_far).astype(np.float32)
            along = ((zstart - z) / pz) % 1.0
            up = (v / floor_h) % 1.0
            windows = (up > 0.3) & (up < 0.8) & (along > 0.25) & (along < 0.75) & (v > floor_h) & (v < hgt - 0.1)
            shop = (v < floor_h * 0.8) & (along > 0.1) & (along < 0.9)
            base = color[seg].astype(np.float32) * np.float32(lit_side)  # (1, w, 3)
            shade = (0.85 + 0.15 * np.minimum(v / np.maximum(hgt, 1e-3), 1.0))[..., None]
            wall = base * shade
            img = np.where((windows | shop)[..., None], self._fine(wall, glass * (0.9 + 0.2 * up[..., None])), wall)
            # a thin dark line between neighbouring houses
            edge = np.abs(((zstart - z) / np.maximum(seg_len[seg].astype(np.float32), 1e-3)) - 0.0) < 0.02
            img = np.where(edge[..., None], base * 0.6, img)
            c.paint(BUILDING, sl, mask, img.astype(np.float32))

    # -- objects ----------------------------------------------------------------------------------------------
    def draw_objects(self) -> None:
        r = self.r
        rl, rr, wl, wr = self.road_l, self.road_r, self.walk_l, self.walk_r
        objects: List[Tuple[float, int, tuple]] = []  # (depth t, draw order, (kind, args))
        # trees: on the far half of the sidewalk or on the grass beyond it
        for side in (-1.0, 1.0):
            road_edge = rl if side < 0 else rr
            walk = wl if side < 0 else wr
            for _ in range(int(r.integers(0, 6))):
                t = float(r.uniform(0.08, 1.0))
                beyond = float(r.uniform(0.0, 0.5))
                if side in self.facade:  # no room behind the sidewalk
                    beyond = -walk * 0.1
                xw = side * (road_edge + walk * float(r.uniform(0.55, 1.0)) + beyond)
                objects.append((t, len(objects), ("tree", (t, xw))))
            for _ in range(int(r.integers(0, 3))):
                t = float(r.uniform(0.1, 1.0))
                xw = side * (road_edge + min(0.08, walk * 0.3) + 0.02)
                objects.append((t, len(objects), ("pole", (t, xw, -side))))
            if walk > 0:
                for _ in range(int(r.integers(0, 4))):
                    t = float(r.uniform(0.15, 0.95))
                    xw = side * (road_edge + walk * float(r.uniform(0.2, 0.8)))
                    objects.append((t, len(objects), ("person", (t, xw))))
        cars: List[Tuple[float, float, float]] = []
        for _ in range(int(r.integers(0, 6))):
            t = float(r.uniform(0.08, 0.9))
            cw = float(r.uniform(0.38, 0.5))
            lo, hi = -rl + cw / 2 + 0.05, rr - cw / 2 - 0.05
            xw = float(r.uniform(lo, hi)) if hi > lo else (rr - rl) / 2
            # cars do not overlap in world space (about one car length apart in depth, or side by side)
            if any(abs(1.0 / t - 1.0 / t2) < 1.2 and abs(xw - x2) < (cw + w2) / 2 + 0.03 for t2, x2, w2 in cars):
                continue
            cars.append((t, xw, cw))
            objects.append((t, len(objects), ("car", (t, xw, cw))))
        objects.sort(key=lambda o: (o[0], o[1]))
        for _, _, (kind, args) in objects:
            getattr(self, kind)(*args)

    def tree(self, t: float, xw: float) -> None:
        r, c = self.r, self.c
        yb, xb = self.ground_y(t), self.ground_x(t, xw)
        height = float(r.uniform(0.7, 1.3)) * t
        crown = float(r.uniform(0.16, 0.3)) * t
        trunk_w = max(crown * float(r.uniform(0.16, 0.24)), c.px * 1.05)
        bark = jitter(r, (0.33, 0.24, 0.16), 0.05)
        leaf = jitter(r, (0.22, 0.42, 0.14), 0.07)
        cy = yb - height + crown
        c.rect(VEGETATION, cy, yb, xb - trunk_w / 2, xb + trunk_w / 2, bark, shade=-0.2)
        for k in range(int(r.integers(1, 4))):
            rad = crown * (float(r.uniform(0.65, 0.85)) if k else 1.0)
            dy, dx = (float(r.uniform(-0.6, 0.4)) * crown, float(r.uniform(-0.9, 0.9)) * crown) if k else (0.0, 0.0)
            c.ellipse(VEGETATION, cy + dy, xb + dx, rad, rad, leaf * float(r.uniform(0.9, 1.1)),
                      light=(-0.8, -0.4 * self.light_dx, 0.3))

    def pole(self, t: float, xw: float, towards_road: float) -> None:
        r, c = self.r, self.c
        yb, xb = self.ground_y(t), self.ground_x(t, xw)
        height = float(r.uniform(1.0, 1.5)) * t
        pw = max(0.022 * t, c.px * 1.05)
        metal = jitter(r, (0.45, 0.46, 0.48), 0.06)
        c.rect(POLE, yb - height, yb, xb - pw / 2, xb + pw / 2, metal, shade=-0.15)
        if r.random() < 0.6:  # lamp arm
            arm = float(r.uniform(0.12, 0.22)) * t
            x0, x1 = sorted((xb, xb + towards_road * arm))
            c.rect(POLE, yb - height, yb - height + max(pw * 0.8, c.px * 1.05), x0, x1, metal)
        if r.random() < 0.5:  # a sign
            size = float(r.uniform(0.08, 0.13)) * t
            sy = yb - height * float(r.uniform(0.55, 0.75))
            colour = jitter(r, ((0.85, 0.12, 0.10), (0.10, 0.30, 0.75), (0.95, 0.80, 0.10))[int(r.integers(3))],
                             0.05)
            if r.random() < 0.5:
                c.ellipse(SIGN, sy, xb, size / 2, size / 2, colour, light=(-1.0, 0.0, 0.15))
            else:
                c.rect(SIGN, sy - size / 2, sy + size / 2, xb - size / 2, xb + size / 2, colour, shade=0.15)

    def person(self, t: float, xw: float) -> None:
        r, c = self.r, self.c
        yb, xb = self.ground_y(t), self.ground_x(t, xw)
        height = float(r.uniform(0.38, 0.46)) * t
        width = height * float(r.uniform(0.24, 0.3))
        shirt = jitter(r, _CAR_COLORS[int(r.integers(len(_CAR_COLORS)))], 0.1)
        trousers = jitter(r, (0.18, 0.2, 0.28), 0.08)
        skin = jitter(r, (0.80, 0.62, 0.50), 0.12)
        head = height * 0.13
        legs_top = yb - height * 0.47
        gap = max(width * 0.12, c.px * 0.6)
        c.rect(PERSON, legs_top, yb, xb - width * 0.42, xb - gap / 2, trousers)
        c.rect(PERSON, legs_top, yb, xb + gap / 2, xb + width * 0.42, trousers)
        c.rect(PERSON, yb - height + 2 * head * 0.9, legs_top + c.px * 0.5, xb - width / 2, xb + width / 2, shirt,
               shade=0.2)
        c.ellipse(PERSON, yb - height + head, xb, head, head * 0.85, skin, light=(-0.5, -0.5 * self.light_dx, 0.2))

    def car(self, t: float, xw: float, cw: float) -> None:
        r, c = self.r, self.c
        yb, xb = self.ground_y(t), self.ground_x(t, xw)
        w = cw * t
        hc = w * float(r.uniform(0.7, 0.85))
        paint = jitter(r, _CAR_COLORS[int(r.integers(len(_CAR_COLORS)))], 0.05)
        glass = jitter(r, (0.16, 0.19, 0.24), 0.04)
        x0, x1 = xb - w / 2, xb + w / 2
        # shadow on the road (image only)
        c.trapezoid(None, yb - 0.08 * hc, yb + 0.03 * hc, x0 - 0.02 * w, x1 + 0.02 * w, x0 + 0.03 * w, x1 - 0.03 * w,
                    (0.08, 0.08, 0.09), only_on=ROAD)
        c.trapezoid(None, yb - 0.08 * hc, yb + 0.03 * hc, x0 - 0.02 * w, x1 + 0.02 * w, x0 + 0.03 * w, x1 - 0.03 * w,
                    (0.08, 0.08, 0.09), only_on=SIDEWALK)
        tyre = np.array([0.06, 0.06, 0.07], np.float32)
        ww = 0.2 * w
        c.rect(CAR, yb - 0.22 * hc, yb, x0 + 0.04 * w, x0 + 0.04 * w + ww, tyre)
        c.rect(CAR, yb - 0.22 * hc, yb, x1 - 0.04 * w - ww, x1 - 0.04 * w, tyre)
        body_top = yb - 0.62 * hc
        c.rect(CAR, body_top, yb - 0.12 * hc, x0, x1, paint, shade=0.35)
        inset = float(r.uniform(0.1, 0.18)) * w
        c.trapezoid(CAR, yb - hc, body_top + c.px * 0.5, x0 + inset, x1 - inset, x0 + 0.05 * w, x1 - 0.05 * w, paint)
        c.trapezoid(None, yb - hc * 0.93, body_top - 0.02 * hc, x0 + inset + 0.05 * w, x1 - inset - 0.05 * w,
                    x0 + 0.1 * w, x1 - 0.1 * w, glass, only_on=CAR)
        lamp = np.array([0.85, 0.12, 0.1], np.float32)
        ly0, ly1 = body_top + 0.06 * hc, body_top + 0.18 * hc
        c.rect(CAR, ly0, ly1, x0 + 0.03 * w, x0 + 0.17 * w, lamp)
        c.rect(CAR, ly0, ly1, x1 - 0.17 * w, x1 - 0.03 * w, lamp)

    # -- global texture, shading and colour jitter -------------------------------------------------------------


def render_sample(seed: int, index: int, height: int, width: int,
                  detail: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """Sample ``index`` of the scenes of ``seed`` at ``height x width``: (image uint8 (H, W, 3), label int8 (H, W)
    with the fine class values). The layout and colours come from one generator and the pixel noise from another,
    both seeded by ``(seed, index)``. ``detail`` in [0, 1] scales the fine detail of the image (texture noise,
    illumination noise, window grids, paving seams; 1 = the full scenes, 0 = flat-coloured regions with the same
    layout, objects and labels); the label map does not depend on it."""
    layout, noise = np.random.SeedSequence([seed, index]).spawn(2)
    return StreetScene(np.random.default_rng(layout), np.random.default_rng(noise), height, width,
                       detail).draw()
