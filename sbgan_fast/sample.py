"""Sampling from trained checkpoints: unconditional (label map, image) pairs, or images from given
label maps with the SPADE generator alone."""
from __future__ import annotations

import os
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch

from .train import checkpoint as ckpt_io
from .train.config import ConfigError, from_dict
from .train.run import resolve_device


def load_generators(checkpoint: str, device: torch.device, *, need_seg: bool = True):
    """Return (cfg, num_classes, {'G_seg'?, 'G_spd'}) from a checkpoint file or a run folder."""
    from .train.trainer import build_networks
    if os.path.isdir(checkpoint):
        paths = []
        e2e = ckpt_io.find_checkpoint(checkpoint, "e2e")
        if e2e:
            paths = [e2e]
        else:
            for stage in (("seg", "spade") if need_seg else ("spade",)):
                p = ckpt_io.find_checkpoint(checkpoint, stage)
                if p is None:
                    raise FileNotFoundError(f"{checkpoint}: no e2e checkpoint and no {stage} checkpoint in "
                                            f"{os.path.join(checkpoint, 'checkpoints')}; train that stage first")
                paths.append(p)
    else:
        paths = [checkpoint]
    states: Dict[str, dict] = {}
    cfg = k = None
    for p in paths:
        ck = ckpt_io.load_checkpoint(p, map_location="cpu")
        if cfg is None:
            cfg, k = from_dict(ck["config"]), ck["num_classes"]
        for name in ("G_seg", "G_spd"):
            if name in ck["nets"]:
                states[name] = ck["nets"][name]
    names = ("G_seg", "G_spd") if need_seg else ("G_spd",)
    missing = [name for name in names if name not in states]
    if missing:
        raise FileNotFoundError(
            f"{checkpoint} holds no trained {' or '.join(missing)}: pass the run folder or an e2e checkpoint"
            + (", or use --labels to synthesise images from label maps with G_spd alone" if need_seg else ""))
    nets = build_networks(cfg, k, names=names)
    for name, net in nets.items():
        net.load_state_dict(states[name])
        net.to(device).eval()
    return cfg, k, nets


def _write_png(array: np.ndarray, path: str) -> None:
    from PIL import Image
    Image.fromarray(array).save(path)


@torch.no_grad()
def generated_label_maps(G_seg, n: int, seed: int, batch_size: int, device, *,
                         upsample2: bool = False) -> Iterator[torch.Tensor]:
    """int64 (B, H, W) label maps ``argmax G_seg(z)`` for ``n`` latent codes z ~ N(0, I), drawn at once from a
    generator seeded with ``seed`` (the global RNG is not touched), in batches of ``batch_size``;
    ``upsample2``: nearest x2 (a G_seg at half the image resolution, e2e.seg_half_res). The one definition of a
    generated label map: sampling, FID and the synthetic training maps use it."""
    g = torch.Generator().manual_seed(int(seed))
    z_all = torch.randn(n, G_seg.z_dim, generator=g)
    for i in range(0, n, batch_size):
        lab = G_seg(z_all[i:i + batch_size].to(device)).argmax(1)
        if upsample2:
            lab = lab.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)
        yield lab


@torch.no_grad()
def sample_main(*, checkpoint: str, n: int, out: str, labels: Optional[str] = None, seed: int = 0,
                batch_size: int = 8, device: str = "auto") -> List[str]:
    from .data.factory import palette_for
    from .data.palettes import colorize
    from .metrics.grids import save_pairs_grid
    if n <= 0:
        raise ConfigError(f"--n must be positive, got {n}")
    dev = resolve_device(device)
    cfg, k, nets = load_generators(checkpoint, dev, need_seg=labels is None)
    palette = palette_for(cfg, k)
    os.makedirs(out, exist_ok=True)
    written: List[str] = []
    dc = cfg.data.dontcare
    k_real = k - (1 if dc is not None else 0)
    all_labels, all_images = [], []
    if labels is None:
        for lab in generated_label_maps(nets["G_seg"], n, seed, batch_size, dev, upsample2=cfg.e2e.seg_half_res):
            all_images.append(nets["G_spd"](lab).cpu())
            all_labels.append(lab.cpu())
        names = [f"{i:05d}" for i in range(n)]
    else:
        from .data.datasets import LabelFolderDataset
        ds = LabelFolderDataset(labels, k_real, height=cfg.data.height, width=cfg.data.width, dontcare=dc)
        count = min(n, len(ds))
        names = []
        for i in range(0, count, batch_size):
            items = [ds[j] for j in range(i, min(count, i + batch_size))]
            lab = torch.stack([it["label"] for it in items]).long().to(dev)
            names += [os.path.splitext(os.path.basename(it["path"]))[0] for it in items]
            if dc is not None:
                lab = torch.where(lab == dc, torch.full_like(lab, k - 1), lab)
            all_images.append(nets["G_spd"](lab).cpu())
            all_labels.append(lab.cpu())
    lab = torch.cat(all_labels)
    img = torch.cat(all_images)
    img_u8 = ((img.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    col = colorize(lab, palette)
    for i, name in enumerate(names):
        paths = (os.path.join(out, f"{name}_label.png"), os.path.join(out, f"{name}_label_color.png"),
                 os.path.join(out, f"{name}_image.png"))
        if k <= 256:
            _write_png(lab[i].numpy().astype(np.uint8), paths[0])
        else:
            _write_png(lab[i].numpy().astype(np.uint16), paths[0])
        _write_png(np.ascontiguousarray(np.asarray(col[i]).transpose(1, 2, 0)), paths[1])
        _write_png(np.ascontiguousarray(img_u8[i].permute(1, 2, 0).numpy()), paths[2])
        written.extend(paths)
    grid = os.path.join(out, "grid.png")
    save_pairs_grid(lab, img, palette, grid)
    written.append(grid)
    return written


