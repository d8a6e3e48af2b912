"""Sampling from trained checkpoints: unconditional (label map, image) pairs, or images from given
label maps with the SPADE generator alone; images of the ProGAN baseline (a checkpoint of stage ``progan``)."""
from __future__ import annotations

import os
import sys
from typing import Callable, List, Optional, Tuple

import numpy as np
import torch

from .config import ConfigError, resolve_device
from .models import generated_images, generated_label_maps, label_ids, load_generators

__all__ = ["generated_label_maps", "load_generators", "read_label_maps", "sample_main"]


def _write_png(array: np.ndarray, path: str) -> None:
    from PIL import Image
    Image.fromarray(array).save(path)


def _log_stderr(msg: str) -> None:
    print(f"[sbgan_fast] {msg}", file=sys.stderr, flush=True)


def read_label_maps(cfg, num_classes: int, folder: str, n: int, *, pattern: Optional[str] = None,
                    log: Callable[[str], None] = _log_stderr) -> Tuple[torch.Tensor, List[str]]:
    """Up to ``n`` label maps of ``folder``, read as training reads the run's dataset (its file pattern, value
    table, crop and resize; :func:`sbgan_fast.data.factory.build_label_dataset`), as channel indices.

    Returns (int64 (N, H, W) in ``[0, K)``, the don't-care value as channel K-1; output names: the files'
    paths below ``folder`` without extension, ``/`` -> ``_``). Files that do not match the pattern, and files
    that fail to decode or hold values the dataset does not allow, are skipped and reported through ``log``;
    DataError when no map is left."""
    from .data.datasets import DataError
    from .data.factory import build_label_dataset, label_decoding
    pattern = pattern or label_decoding(cfg, num_classes)[2]
    ds, ignored = build_label_dataset(cfg, num_classes, folder, pattern=pattern)
    if ignored:
        log(f"sample: {len(ignored)} file(s) in {folder} do not match {pattern!r} (the {cfg.data.dataset} label "
            "files) and are not read: " + ", ".join(os.path.basename(p) for p in ignored[:5])
            + (" ..." if len(ignored) > 5 else ""))
    maps: List[np.ndarray] = []
    names: List[str] = []
    bad: List[DataError] = []
    for i in range(len(ds)):
        if len(maps) == n:
            break
        try:
            _, lab = ds.load(i, 0)
        except DataError as e:
            bad.append(e)
            log(f"sample: skipping {e}")
            continue
        maps.append(lab)
        rel = os.path.splitext(os.path.relpath(ds.label_paths[i], folder))[0]
        names.append(rel.replace(os.sep, "_"))
    if not maps:
        raise DataError(f"no readable label map in {folder}: {len(bad)} file(s) skipped (first: {bad[0]})",
                        bad[0].path)
    if bad:
        log(f"sample: skipped {len(bad)} label file(s) of {folder} (see above)")
    return label_ids(torch.from_numpy(np.stack(maps)), ds.dontcare, num_classes), names


def _write_images(batches, n: int, out: str) -> List[str]:
    """``<i>_image.png`` for each float (B, 3, H, W) image in [-1, 1] of ``batches``, and ``grid.png``."""
    from .metrics.grids import save_pairs_grid
    img = torch.cat([b.cpu() for b in batches])
    os.makedirs(out, exist_ok=True)
    written: List[str] = []
    img_u8 = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    for i in range(n):
        path = os.path.join(out, f"{i:05d}_image.png")
        _write_png(np.ascontiguousarray(img_u8[i].permute(1, 2, 0).numpy()), path)
        written.append(path)
    written.append(save_pairs_grid(None, img, None, os.path.join(out, "grid.png")))
    return written


@torch.no_grad()
def sample_main(*, checkpoint: str, n: int, out: str, labels: Optional[str] = None, seed: int = 0,
                batch_size: int = 8, device: str = "auto", label_pattern: Optional[str] = None,
                weights: Optional[str] = None, log: Callable[[str], None] = _log_stderr) -> List[str]:
    """Write ``n`` unconditional (label map, image) pairs, or images of the label maps in ``labels`` (read as
    training reads the run's dataset; ``label_pattern`` replaces its file pattern), to ``out``: per sample
    ``<name>_label.png`` (the map in the dataset's label-file values where they map one-to-one onto the
    channels, else channel indices), ``<name>_label_color.png``, ``<name>_image.png``; and ``grid.png``. A ProGAN
    checkpoint writes ``<name>_image.png`` and ``grid.png`` only (its images come from z with the codes SB-GAN's
    maps would take with ``seed``). ``weights``: 'ema' | 'raw' | None (the moving averages when the checkpoint holds
    them), see :func:`sbgan_fast.models.build.load_generators`."""
    from .data.factory import label_file_values, palette_for
    from .data.palettes import colorize
    from .metrics.grids import save_pairs_grid
    if n <= 0:
        raise ConfigError(f"--n must be positive, got {n}")
    dev = resolve_device(device)
    cfg, k, nets = load_generators(checkpoint, dev, need_seg=labels is None, weights=weights)
    if "G_img" in nets:
        return _write_images(generated_images(nets["G_img"], n, seed, batch_size, dev), n, out)
    palette = palette_for(cfg, k)
    values = label_file_values(cfg, k)
    all_labels, all_images = [], []
    if labels is None:
        for lab in generated_label_maps(nets["G_seg"], n, seed, batch_size, dev, upsample2=cfg.e2e.seg_half_res):
            all_images.append(nets["G_spd"](lab).cpu())
            all_labels.append(lab.cpu())
        names = [f"{i:05d}" for i in range(n)]
    else:
        ids, names = read_label_maps(cfg, k, labels, n, pattern=label_pattern, log=log)
        for i in range(0, len(ids), batch_size):
            lab = ids[i:i + batch_size].to(dev)
            all_images.append(nets["G_spd"](lab).cpu())
            all_labels.append(lab.cpu())
    os.makedirs(out, exist_ok=True)
    written: List[str] = []
    lab = torch.cat(all_labels)
    img = torch.cat(all_images)
    img_u8 = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    col = colorize(lab, palette)
    label_dtype = np.uint8 if (int(values.max()) if values is not None else k - 1) < 256 else np.uint16
    for i, name in enumerate(names):
        paths = (os.path.join(out, f"{name}_label.png"), os.path.join(out, f"{name}_label_color.png"),
                 os.path.join(out, f"{name}_image.png"))
        ids_i = lab[i].numpy()
        file_map = values[ids_i] if values is not None else ids_i
        _write_png(file_map.astype(label_dtype), paths[0])
        _write_png(np.ascontiguousarray(np.asarray(col[i]).transpose(1, 2, 0)), paths[1])
        _write_png(np.ascontiguousarray(img_u8[i].permute(1, 2, 0).numpy()), paths[2])
        written.extend(paths)
    grid = os.path.join(out, "grid.png")
    save_pairs_grid(lab, img, palette, grid)
    written.append(grid)
    return written
