"""The sets an evaluation compares: the real evaluation set of a run config, batches of generated images
(unconditional: z -> G_seg -> argmax -> G_spd; conditional: G_spd on real label maps), their Inception
statistics, and the metrics of one generated set against the real one."""
from __future__ import annotations

import copy
import os
import sys
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch

from ..models import generated_images, generated_label_maps, label_ids
from .fid import FeatureStats, fid_from_stats
from .quality import DC_K, PR_K, quality_metrics

# the synthetic validation scenes use seed (run seed + this): disjoint from the training scenes
SYNTHETIC_VAL_SEED = 1_000_003
SYNTHETIC_VAL_SIZE = 500


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------------------
def build_eval_dataset(cfg, num_classes: int, *, split: str = "val", data_root: Optional[str] = None,
                       image_dir: Optional[str] = None, label_dir: Optional[str] = None,
                       size: Optional[int] = None, log: Callable[[str], None] = _log_stderr):
    """The real evaluation set of a run config: items ``{"image": uint8 (3,H,W), "label": int64 (H,W)}``
    at ``cfg.data.height x cfg.data.width``, no flips. Returns (dataset, describe) where ``describe``
    identifies the set for the statistics cache."""
    d = cfg.data
    desc: Dict[str, Any] = {"dataset": d.dataset, "split": split, "height": d.height, "width": d.width}
    if d.dataset == "synthetic":
        from ..data.synthetic import SyntheticScenes
        n = size or SYNTHETIC_VAL_SIZE
        seed = cfg.seed + (SYNTHETIC_VAL_SEED if split != "train" else 0)
        detail = float(getattr(d, "synthetic_detail", 1.0))
        ds = SyntheticScenes(n, height=d.height, width=d.width, seed=seed, num_classes=num_classes, detail=detail)
        desc.update(seed=seed, size=n, num_classes=num_classes)
        if detail != 1.0:   # the full scenes keep the cache key they always had
            desc.update(detail=detail)
        return ds, desc
    from ..data.factory import build_dataset
    if d.dataset == "folder":   # the training folders' preprocessing (crop, interpolation, value checks)
        img_dir, lab_dir = image_dir or d.image_dir, label_dir or d.label_dir
        if not (img_dir and lab_dir):
            raise FileNotFoundError("evaluating a folder dataset needs the validation images and labels: "
                                    "--image-dir DIR --label-dir DIR")
        if not (image_dir and label_dir):
            log(f"[fid] warning: no --image-dir/--label-dir given: the real statistics use the training folders "
                f"{img_dir} and {lab_dir}")
        c = copy.deepcopy(cfg)
        c.data.image_dir, c.data.label_dir, c.data.cache = img_dir, lab_dir, None
        ds, _ = build_dataset(c, images=True)
        desc.update(image_dir=os.path.abspath(img_dir), label_dir=os.path.abspath(lab_dir),
                    image_suffix=d.image_suffix, label_suffix=d.label_suffix, crop=d.crop,
                    image_interp=d.image_interp, size=len(ds))
        return ds, desc
    # official layouts (Cityscapes, ADE-Indoor): the dataset factory's val split
    c = copy.deepcopy(cfg)
    c.data.split = split
    c.data.hflip = False
    c.data.cache = None          # read the files; a training cache holds the training split
    if data_root:
        c.data.root = data_root
    if not c.data.root:
        raise FileNotFoundError(f"evaluating {d.dataset} needs the dataset root: --data-root DIR")
    try:
        ds, _ = build_dataset(c, images=True)
    except ValueError as e:
        raise FileNotFoundError(f"cannot load the {split} split of {d.dataset} at {c.data.root}: {e}") from None
    desc.update(root=os.path.abspath(c.data.root), crop=c.data.crop, image_interp=c.data.image_interp,
                label_kind=c.data.label_kind, list_dir=c.data.list_dir, class_map=c.data.class_map,
                num_classes=num_classes, size=len(ds))
    return ds, desc


def real_batches(ds, count: int, batch_size: int) -> Iterator[torch.Tensor]:
    for i in range(0, count, batch_size):
        yield torch.stack([ds[j]["image"] for j in range(i, min(count, i + batch_size))])


# ---------------------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------------------
@torch.no_grad()
def unconditional_batches(nets, cfg, n: int, seed: int, batch_size: int,
                           device: torch.device) -> Iterator[torch.Tensor]:
    """float (B, 3, H, W) images in [-1, 1]: z ~ N(0, I) from a generator seeded with ``seed`` (the global
    RNG is not touched), labels = argmax G_seg(z) (nearest x2 with e2e.seg_half_res), images = G_spd(labels);
    with a ProGAN generator (``nets`` holds ``G_img``) the same codes give images = G_img(z)."""
    if "G_img" in nets:
        yield from generated_images(nets["G_img"], n, seed, batch_size, device)
        return
    for labels in generated_label_maps(nets["G_seg"], n, seed, batch_size, device, upsample2=cfg.e2e.seg_half_res):
        yield nets["G_spd"](labels).float()


@torch.no_grad()
def conditional_batches(nets, cfg, num_classes: int, ds, indices: List[int], batch_size: int,
                         device: torch.device) -> Iterator[torch.Tensor]:
    """float (B, 3, H, W) images in [-1, 1]: G_spd on the label maps ``ds[i]["label"]`` for ``i`` in indices."""
    for i in range(0, len(indices), batch_size):
        lab = torch.stack([ds[j]["label"] for j in indices[i:i + batch_size]]).long().to(device)
        yield nets["G_spd"](label_ids(lab, cfg.data.dontcare, num_classes)).float()


def label_subset(count: int, n: int, seed: int) -> List[int]:
    """All of range(count) when n >= count, else n sorted indices drawn without replacement (seeded)."""
    if n >= count:
        return list(range(count))
    return sorted(np.random.default_rng(seed).choice(count, size=n, replace=False).tolist())


def set_metrics(fake: FeatureStats, real: FeatureStats, *, seed: int = 0) -> Dict[str, float]:
    """FID (from the statistics, as before) and the :func:`.quality.quality_metrics` of one generated set
    against the real set (both with kept features). Precision/recall (density/coverage) are left out when a
    set holds k = 3 (real: 5) vectors or fewer."""
    out = {"fid": fid_from_stats(fake, real)}
    nr, nf = real.n, fake.n
    q = quality_metrics(real.features, fake.features, fid=False, seed=seed,
                        pr_k=PR_K if min(nr, nf) > PR_K else None, dc_k=DC_K if nr > DC_K else None)
    out.update(q)
    return out
