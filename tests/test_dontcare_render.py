"""Don't-care label values in sample grids and `sample` output: drawn in one fixed colour everywhere, never an
error (Cityscapes train ids with 255, folder datasets with data.dontcare=255 such as COCO-Stuff)."""
import pytest
import os

import numpy as np
import torch
from PIL import Image

from real_lookalike import make_cityscapes, smooth_image
from sbgan_fast.cli import main as cli_main
from sbgan_fast.data.palettes import DONTCARE_COLOR
from sbgan_fast.metrics.grids import make_grid_array, tile_scale
from tiny import tiny_cfg

PAD = 2   # the grids' padding


def _label_cells(grid, n, h, w):
    """The label cells (n, h, w, 3) of a pairs grid file (cells ``label | gap | image``, row-major, each tile
    enlarged by ``s = tile_scale(w)``, a legend below), each sampled back to h x w (one pixel of each block)."""
    s = tile_scale(w)
    cw = 2 * w * s + PAD
    ncol = (grid.shape[1] - PAD) // (cw + PAD)
    assert grid.shape[1] >= ncol * (cw + PAD) + PAD and grid.shape[0] > -(-n // ncol) * (h * s + PAD) + PAD
    cells = []
    for i in range(n):
        r, c = divmod(i, ncol)
        y, x = PAD + r * (h * s + PAD), PAD + c * (cw + PAD)
        cells.append(grid[y:y + h * s:s, x:x + w * s:s])
    return np.stack(cells)


def _check_run_grid(t, path):
    """The grid file of a spade run: don't-care pixels of the preview labels drawn in DONTCARE_COLOR."""
    dc = t.cfg.data.dontcare
    labels = t.preview_labels.cpu()
    assert (labels == dc).any(), "the preview must hold don't-care pixels for this test"
    n, h, w = labels.shape
    grid = np.asarray(Image.open(path).convert("RGB"))
    cells = _label_cells(grid, n, h, w)
    assert (cells[(labels == dc).numpy()] == DONTCARE_COLOR).all()
    # the same colour as the don't-care channel (K-1) of generated maps
    assert tuple(t.palette[t.num_classes - 1]) == DONTCARE_COLOR


def _spade_trainer(cfg):
    """A trainer of the spade stage that writes the stage's sample grid at step 1 and a checkpoint of its
    (untrained) G_spd, as a run does, without training steps."""
    from sbgan_fast.train.stages import STAGE_CLASSES
    from sbgan_fast.train.trainer import Trainer
    t = Trainer(cfg)
    try:
        t.save_grid(STAGE_CLASSES["spade"](t), 1)
        t.trained.update(("G_spd", "D_spd"))
        t.save("spade", 1, done=True, which="final")
    finally:
        t.close()
    return t


def test_cityscapes_train_ids_grid(tmp_path):
    root = make_cityscapes(tmp_path / "cs", n=4, h=32, w=64)
    over = ["data.dataset=cityscapes", f"data.root={root}", "data.num_classes=20", "data.dontcare=255",
            "data.height=32", "data.width=64", "spade.crop_size=64", "spade.aspect_ratio=2", "seg.max_dim=16",
            "seg.aspect_ratio=2", "e2e.seg_half_res=true", "stages=spade", "n_sample_grid=2"]
    t = _spade_trainer(tiny_cfg(tmp_path / "run", *over))
    _check_run_grid(t, tmp_path / "run" / "samples" / "spade-0000001.png")


def _coco_like(root, n=4, h=32, w=32, k=6):
    """A folder dataset with don't-care 255 (COCO-Stuff style): RGB JPEGs, mode-L labels 0..k-1 and 255."""
    os.makedirs(root / "img")
    os.makedirs(root / "lab")
    rng = np.random.default_rng(1)
    for i in range(n):
        Image.fromarray(smooth_image(h, w, i)).save(root / "img" / f"{i:012d}.jpg", quality=95)
        lab = rng.integers(0, k, (h, w)).astype(np.uint8)
        lab[: h // 4] = 255
        Image.fromarray(lab, mode="L").save(root / "lab" / f"{i:012d}.png")
    return ["data.dataset=folder", f"data.image_dir={root / 'img'}", f"data.label_dir={root / 'lab'}",
            f"data.num_classes={k + 1}", "data.dontcare=255"]


@pytest.mark.slow
def test_folder_dontcare_grid_and_sample_output(tmp_path):
    over = _coco_like(tmp_path / "coco")
    t = _spade_trainer(tiny_cfg(tmp_path / "run", *over, "stages=spade", "n_sample_grid=2"))
    _check_run_grid(t, tmp_path / "run" / "samples" / "spade-0000001.png")
    # TensorBoard's grid: the same pixels
    arr = make_grid_array(t.preview_labels.cpu(), None, t.palette, ncol=2, dontcare=255)
    assert (arr[PAD:PAD + 32, PAD:PAD + 32][:8] == DONTCARE_COLOR).all()
    # `sample --labels`: the colour map and the grid draw don't-care pixels in the same colour
    out = tmp_path / "s"
    assert cli_main(["sample", "--checkpoint", str(tmp_path / "run"), "--labels", str(tmp_path / "coco" / "lab"),
                     "--n", "2", "--out", str(out)]) == 0
    col = np.asarray(Image.open(out / "000000000000_label_color.png"))
    assert (col[:8] == DONTCARE_COLOR).all() and not (col[8:] == DONTCARE_COLOR).all(axis=-1).all()
    # the label file keeps the dataset's don't-care value (it reads back as the same map)
    lab = np.asarray(Image.open(out / "000000000000_label.png"))
    assert (lab[:8] == 255).all() and lab[8:].max() < 6
    grid = np.asarray(Image.open(out / "grid.png").convert("RGB"))
    s = tile_scale(32)                   # the file's tiles are enlarged
    assert (grid[PAD:PAD + 8 * s, PAD:PAD + 32 * s] == DONTCARE_COLOR).all()


def test_colorize_default_dontcare_colour():
    from sbgan_fast.data.palettes import colorize, get_palette
    lab = torch.tensor([[0, 255], [3, 255]])
    rgb = colorize(lab, get_palette(None, 4), dontcare=255)
    assert tuple(rgb[:, 0, 1].tolist()) == DONTCARE_COLOR and tuple(rgb[:, 1, 1].tolist()) == DONTCARE_COLOR
