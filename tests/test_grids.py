"""Grid files a person can see (sbgan_fast/metrics/grids.py): tiles enlarged by nearest neighbour to at least 256
pixels, the label map beside its image, a legend naming every class present beside its colour."""
import numpy as np
import pytest
import torch
from PIL import Image

from sbgan_fast.data import SyntheticScenes
from sbgan_fast.data.datasets import image_to_float
from sbgan_fast.data.palettes import DONTCARE_COLOR, colorize, get_palette
from sbgan_fast.metrics.grids import (MIN_TILE_WIDTH, legend_entries, make_grid_array, palette_class_names,
                                      save_pairs_grid, tile_scale)

PAD = 2
NAMES = ("sky", "road", "building", "vegetation", "sidewalk", "car", "terrain", "person", "pole", "traffic sign",
         "cloud")


def _scenes(n=3, h=16, w=32):
    ds = SyntheticScenes(n, height=h, width=w, seed=3)
    items = [ds[i] for i in range(n)]
    return ds, torch.stack([it["label"] for it in items]), torch.stack([it["image"] for it in items])


def _swatch(picture, color, size):
    """(y, x) of the first size x size block of exactly ``color`` in ``picture`` (AssertionError if none)."""
    hit = np.all(picture == np.array(color, np.uint8), axis=-1).astype(np.int64)
    c = np.pad(hit.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    full = c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size] == size * size
    ys, xs = np.nonzero(full)
    assert ys.size, f"no {size}x{size} swatch of {color}"
    return int(ys[0]), int(xs[0])


def test_tile_scale():
    assert tile_scale(64) == 4 and tile_scale(32) == 8 and tile_scale(100) == 3 and tile_scale(512) == 1
    assert tile_scale(64, 1) == 1 and tile_scale(256) == 1 and tile_scale(255) == 2


def test_grid_file_tiles_are_exact_nearest_blocks(tmp_path):
    ds, labels, images = _scenes()
    labels[0, :3, :5] = 255                  # don't-care pixels keep their colour when enlarged
    path = save_pairs_grid(labels, image_to_float(images), ds.palette, tmp_path / "g.png", ncol=1, dontcare=255)
    grid = np.asarray(Image.open(path))
    s = 256 // 32
    assert s == tile_scale(32) and 32 * s >= MIN_TILE_WIDTH
    for i in range(3):
        y = PAD + i * (16 * s + PAD)
        lab = colorize(labels[i].numpy(), ds.palette, dontcare=255).transpose(1, 2, 0)
        want_lab = np.kron(lab, np.ones((s, s, 1), np.uint8))              # each pixel an s x s block
        want_img = np.kron(images[i].permute(1, 2, 0).numpy(), np.ones((s, s, 1), np.uint8))
        np.testing.assert_array_equal(grid[y:y + 16 * s, PAD:PAD + 32 * s], want_lab)
        x = PAD + 32 * s + PAD                                             # the image beside its label map
        np.testing.assert_array_equal(grid[y:y + 16 * s, x:x + 32 * s], want_img)
    assert (grid[PAD:PAD + 3 * s, PAD:PAD + 5 * s] == DONTCARE_COLOR).all()
    # the legend lies below the tiles
    assert grid.shape[0] > PAD + 3 * (16 * s + PAD) and grid.shape[1] == PAD + 2 * 32 * s + PAD + PAD
    # the samples' own size, no legend: the TensorBoard grid
    raw = make_grid_array(labels, image_to_float(images), ds.palette, ncol=1, dontcare=255)
    assert raw.shape == (3 * (16 + PAD) + PAD, 2 * 32 + 3 * PAD, 3)
    np.testing.assert_array_equal(grid[PAD:PAD + 16 * s:s, PAD:PAD + 32 * s:s], raw[PAD:PAD + 16, PAD:PAD + 32])


def test_legend_names_every_class_present_with_its_colour(tmp_path):
    ds, labels, images = _scenes()
    labels[1, 0, 0] = 255
    present = sorted(set(np.unique(labels.numpy()).tolist()) - {255})
    entries = legend_entries(labels, ds.palette, dontcare=255)
    assert [e[1] for e in entries] == [NAMES[v] for v in present] + ["don't care"]
    assert [e[0] for e in entries] == present + [255]
    assert [e[2] for e in entries] == [tuple(int(c) for c in ds.palette[v]) for v in present] + [DONTCARE_COLOR]
    only = legend_entries(torch.tensor([[5, 1], [1, 5]]), ds.palette)        # only what is present, in order
    assert only == [(1, "road", (128, 64, 128)), (5, "car", (0, 0, 142))]
    # the rendered legend: below the tiles, a swatch of exactly each colour (a font_px square) and text beside it
    path = save_pairs_grid(labels, image_to_float(images), ds.palette, tmp_path / "g.png", ncol=1, dontcare=255)
    grid = np.asarray(Image.open(path))
    s = tile_scale(32)
    strip = grid[PAD + 3 * (16 * s + PAD):]
    for _, name, color in entries:
        y0, x0 = _swatch(strip, color, 16)
        # the text to the right of the swatch (frame, a gap, then the name): dark pixels on the white background
        beside = strip[y0:y0 + 16, x0 + 16 + 4:x0 + 16 + 40]
        assert (beside.max(axis=-1) < 128).any(), name
    # other names give another legend (the text is drawn from the names)
    kw = dict(dontcare=255, legend=True, scale=8, ncol=3)
    other = make_grid_array(labels, None, ds.palette, class_names=[f"x{i}" for i in range(11)], **kw)
    mine = make_grid_array(labels, None, ds.palette, **kw)
    assert other.shape[1] == mine.shape[1] and not np.array_equal(other, mine)


def test_class_names_from_the_palette():
    assert palette_class_names(get_palette("synthetic")) == list(NAMES)
    assert palette_class_names(get_palette("synthetic", 4)) == list(NAMES[:4])     # merged classes: the first K
    assert palette_class_names(get_palette("synthetic", 13))[11:] == ["class 11", "class 12"]
    city = get_palette("cityscapes20")
    city[19] = DONTCARE_COLOR
    names = palette_class_names(city)
    assert names[0] == "road" and names[10] == "sky" and names[19] == "don't care"
    assert palette_class_names(get_palette("cityscapes35"))[:2] == ["unlabeled", "ego vehicle"]
    # a fallback palette is no named one, even where its first (black) row matches
    assert palette_class_names(get_palette(None, 6)) == [f"class {i}" for i in range(6)]
    assert palette_class_names(get_palette(None, 2)) == ["class 0", "class 1"]
    with pytest.raises(ValueError, match="2 class names for a palette of 11"):
        legend_entries(torch.zeros(1, 2, 2, dtype=torch.long), get_palette("synthetic"), class_names=["a", "b"])


def test_a_narrow_grid_is_widened_for_its_legend():
    pal = get_palette("synthetic")
    lab = torch.arange(11).reshape(1, 1, 11).repeat(1, 2, 1)        # every class in one tiny map
    g = make_grid_array(lab, None, pal, legend=True)
    assert g.shape[1] > 11 + 2 * PAD
    np.testing.assert_array_equal(g[PAD:PAD + 2, PAD:PAD + 11], colorize(lab[0].numpy(), pal).transpose(1, 2, 0))
    with pytest.raises(ValueError, match="scale must be a positive int"):
        make_grid_array(lab, None, pal, scale=0)
