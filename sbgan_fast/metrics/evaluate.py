"""FID, KID, precision/recall and density/coverage of trained SB-GAN generators: ``sbgan-fast eval`` and a
callback for periodic FID during training.

Two settings, as in the paper:

* **unconditional** (SB-GAN): z -> G_seg -> argmax label map -> G_spd -> image. The paper's protocol is the
  mean and spread over 5 sets of 500 (Cityscapes) or 433 (ADE-Indoor) generated images, each set compared with
  the statistics of the real validation images; set ``i`` uses the latent codes of seed ``seed + i``.
* **unconditional, ProGAN** (the paper's baseline, a checkpoint of stage ``progan``): z -> G_img -> image, the
  same protocol (sets, seeds, latent codes, real statistics) as SB-GAN's images.
* **conditional** (labels-to-image, the SPADE generator alone): G_spd on real validation label maps, compared
  with the same real statistics. Set ``i`` takes ``n`` label maps drawn without replacement with seed
  ``seed + i``; the generator is deterministic, so when ``n`` covers the whole split there is one set.

Every set is passed through the Inception network once; its features give the FID and the other numbers of
:mod:`.quality` (KID: 100 subsets of min(1000, n) vectors; precision/recall k = 3; density/coverage k = 5).
Real-set statistics and features are cached (see :func:`.fid.real_statistics`), keyed by the dataset, its
root/folders, split, resolution, image count, FID variant and the Inception weights' sha256.

The validation images: the ``val`` split of the run's dataset at the run's resolution. For the built-in
synthetic scenes that is a set of scenes rendered with another seed than the training scenes; for folder
datasets the ``--image-dir``/``--label-dir`` given (else the training folders, with a warning).
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch

from ..config import resolve_device
from ..errors import CheckpointMismatchError
from ..models import load_generators
from .eval_sets import (SYNTHETIC_VAL_SEED, build_eval_dataset, conditional_batches, label_subset, real_batches,
                        set_metrics, unconditional_batches)
from .fid import FIDExtractor, real_statistics
from .quality import DC_K, KID_SUBSETS, PR_K

__all__ = ["evaluate_checkpoint", "fid_callback", "set_metrics", "build_eval_dataset", "keep_freed_memory",
           "PAPER_SET_SIZE", "SYNTHETIC_VAL_SEED"]

# images per generated set in the paper's protocol (the sizes of the validation sets)
PAPER_SET_SIZE = {"cityscapes": 500, "ade_indoor": 433}
PAPER_SETS = 5


def _log_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory in the process for the rest of its life: no ``mmap`` for large
    blocks (``M_MMAP_MAX = 0``) and no returning of free heap memory below 2 GiB (``M_TRIM_THRESHOLD``).

    Without it every large tensor (the Inception network's activations: tens of MB per batch) is a fresh
    ``mmap`` whose pages fault in zeroed, batch after batch; with it they reuse the same pages (measured on
    the 2-core development CPU: 6.4 -> 7.7 images/s through the network, see ``bench/bench_inception.py``).
    The price: the process keeps its peak memory until it exits. For processes that evaluate (``sbgan-fast
    eval`` calls it); returns False where it does not apply (not Linux, or no ``mallopt``)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2 ** 31 - 1))


_EXTRA = ("kid", "precision", "recall", "density", "coverage")


def _collect(per_set: List[Dict[str, float]]) -> Dict[str, Any]:
    """The result entries of a list of :func:`set_metrics` dicts: FID summary (top level, as before) plus one
    summary per other metric."""
    fids = [m["fid"] for m in per_set]
    res: Dict[str, Any] = dict(_summary(fids), sets=fids)
    for name in _EXTRA:
        if all(name in m for m in per_set):
            vals = [m[name] for m in per_set]
            res[name] = dict(_summary(vals), sets=vals)
    k = res["kid"]
    k.update(subset_std=[m["kid_std"] for m in per_set], subsets=KID_SUBSETS,
             subset_size=int(per_set[0]["kid_subset_size"]))
    for name, kk in (("precision", PR_K), ("recall", PR_K), ("density", DC_K), ("coverage", DC_K)):
        if name in res:
            res[name]["k"] = kk
    return res


def _fmt(m: Dict[str, float]) -> str:
    parts = [f"FID {m['fid']:.4f}", f"KID {m['kid']:.5f}"]
    if "precision" in m:
        parts.append(f"precision {m['precision']:.3f} recall {m['recall']:.3f}")
    if "density" in m:
        parts.append(f"density {m['density']:.3f} coverage {m['coverage']:.3f}")
    return ", ".join(parts)


def _summary(values: List[float]) -> Dict[str, Any]:
    v = np.asarray(values, dtype=np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0, "std_ddof": 1,
            "min": float(v.min()), "max": float(v.max())}


# ---------------------------------------------------------------------------------------------------------
# sbgan-fast eval
# ---------------------------------------------------------------------------------------------------------
def evaluate_checkpoint(checkpoint: str, *, n: Optional[int] = None, sets: int = PAPER_SETS,
                        unconditional: bool = True, conditional: bool = False, n_real: Optional[int] = None,
                        split: str = "val", data_root: Optional[str] = None, image_dir: Optional[str] = None,
                        label_dir: Optional[str] = None, variant: str = "pytorch-fid",
                        inception_weights: Optional[str] = None, cache_dir: Optional[str] = None,
                        batch_size: int = 16, device: str = "auto", seed: int = 0, out: Optional[str] = None,
                        extractor: Optional[FIDExtractor] = None, progress: Optional[bool] = None,
                        weights: Optional[str] = None,
                        log: Callable[[str], None] = _log_stderr) -> Dict[str, Any]:
    """FID, KID, precision/recall and density/coverage of a checkpoint (file or run folder); returns the result
    dict (also written to ``out`` as JSON).

    Args:
        n: generated images per set (default: the paper's 500 / 433, else the number of real images).
        sets: number of sets (unconditional: each with its own latent codes; conditional: each with its own
            draw of label maps, one set when ``n`` covers the split).
        unconditional / conditional: which FIDs to compute (at least one).
        n_real: real images for the statistics (default: the whole evaluation split).
        variant: 'pytorch-fid' (standard) or 'sbgan-code' (the authors' definition; needs inception_weights).
        extractor: a ready :class:`FIDExtractor` (else one is built from variant / inception_weights).
        progress: a progress bar on stderr over every image of the run (images/s, ETA); None: only when stderr
            is a terminal.
        weights: 'ema' | 'raw' | None (the moving averages when the checkpoint holds them), see
            :func:`sbgan_fast.models.build.load_generators`.

    The ``unconditional`` / ``conditional`` entries hold the FID's mean, std (ddof 1), min, max and per-set
    values at the top level, and one such summary per other metric under ``kid`` (with the per-set subset std
    ``subset_std``, ``subsets``, ``subset_size``), ``precision``, ``recall``, ``density``, ``coverage`` (with
    their ``k``).
    """
    if not (unconditional or conditional):
        raise ValueError("nothing to evaluate: enable the unconditional and/or the conditional FID")
    for name, value in (("n", n), ("n_real", n_real)):
        if value is not None and value < 2:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 2 (a covariance needs 2 images), "
                             f"got {value}")
    if sets < 1:
        raise ValueError(f"--sets must be >= 1, got {sets}")
    t0 = time.perf_counter()
    dev = resolve_device(device)
    if extractor is None:   # first: a missing weights file is reported before anything else is loaded
        extractor = FIDExtractor(variant, inception_weights, device=dev, batch_size=max(1, batch_size))
    try:
        cfg, k, nets = load_generators(checkpoint, dev, need_seg=unconditional, weights=weights)
    except FileNotFoundError as e:
        if unconditional and "G_seg" in str(e):
            raise FileNotFoundError(f"{checkpoint} holds no trained G_seg, so there is no unconditional FID: "
                                    "pass the run folder or an e2e checkpoint, or evaluate G_spd alone with "
                                    "--no-unconditional --conditional") from None
        raise
    if conditional and "G_img" in nets:
        raise CheckpointMismatchError(f"{checkpoint} is a ProGAN checkpoint (stage progan): it has no G_spd, so "
                                      "there is no conditional FID; evaluate it without --conditional")
    log(f"[fid] variant {extractor.variant}; Inception weights {extractor.info.get('source')} "
        f"sha256 {extractor.info.get('sha256') or '-'}")
    ds, desc = build_eval_dataset(cfg, k, split=split, data_root=data_root, image_dir=image_dir,
                                  label_dir=label_dir, size=n_real, log=log)
    count = len(ds) if n_real is None else min(n_real, len(ds))
    if count < 2:
        raise ValueError(f"the evaluation set holds {len(ds)} image(s); FID needs at least 2")
    if n_real is not None and n_real > len(ds):
        log(f"[fid] warning: --n-real {n_real} but the evaluation set holds {len(ds)} images; using {count}")
    desc["count"] = count
    n_gen = n or PAPER_SET_SIZE.get(cfg.data.dataset, count)
    n_cond = min(n_gen, count)
    c_sets = sets if n_cond < count else 1
    bar = _progress_bar((sets * n_gen if unconditional else 0) + (c_sets * n_cond if conditional else 0), progress)
    if not bar.disable and log is _log_stderr:   # messages above the bar, not through it
        log = (lambda m: bar.write(m, file=sys.stderr))
    real_pass = []

    def real_batch(b: int) -> None:
        if not real_pass:               # a cache miss: the real images go through the network too
            real_pass.append(True)
            bar.total += count
            bar.refresh()
        bar.update(b)

    try:
        real, real_meta = real_statistics(real_batches(ds, count, batch_size), extractor, describe=desc,
                                          cache_dir=cache_dir, log=log, on_batch=real_batch)
        result: Dict[str, Any] = {
            "checkpoint": os.path.abspath(checkpoint), "model": "progan" if "G_img" in nets else "sbgan",
            "preset": cfg.preset, "dataset": cfg.data.dataset,
            "resolution": [cfg.data.height, cfg.data.width], "num_classes": k, "fid_variant": extractor.variant,
            "inception": {k2: v for k2, v in extractor.info.items() if k2 != "fid_variant"},
            "real": {"count": real.n, "split": split, "cache": real_meta.get("path") or None,
                     "cached": bool(real_meta.get("cached"))},
            "device": str(dev),
        }
        if unconditional:
            per_set, seeds = [], []
            for s in range(sets):
                t = time.perf_counter()
                st = extractor.statistics(unconditional_batches(nets, cfg, n_gen, seed + s, batch_size, dev),
                               bar.update)
                per_set.append(set_metrics(st, real, seed=seed + s))
                seeds.append(seed + s)
                log(f"[fid] unconditional set {s + 1}/{sets} ({n_gen} images, seed {seed + s}): "
                    f"{_fmt(per_set[-1])} ({time.perf_counter() - t:.1f} s)")
            result["unconditional"] = dict(_collect(per_set), seeds=seeds, n_per_set=n_gen)
        if conditional:
            per_set, seeds = [], []
            for s in range(c_sets):
                t = time.perf_counter()
                idx = label_subset(count, n_cond, seed + s)
                st = extractor.statistics(conditional_batches(nets, cfg, k, ds, idx, batch_size, dev), bar.update)
                per_set.append(set_metrics(st, real, seed=seed + s))
                seeds.append(seed + s)
                log(f"[fid] conditional set {s + 1}/{c_sets} ({n_cond} of {count} real label maps): "
                    f"{_fmt(per_set[-1])} ({time.perf_counter() - t:.1f} s)")
            res = _collect(per_set)
            result["conditional"] = dict(
                res, fid=res["mean"], seeds=seeds, n_per_set=n_cond,
                labels=(f"all {count} label maps of the {split} split" if n_cond == count else
                        f"{n_cond} of the {count} label maps of the {split} split per set, drawn with the set's "
                        "seed"))
    finally:
        bar.close()
    result["time_s"] = round(time.perf_counter() - t0, 3)
    if out:
        d = os.path.dirname(os.path.abspath(out))
        os.makedirs(d, exist_ok=True)
        tmp = f"{out}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        os.replace(tmp, out)
    return result


def _progress_bar(total: int, progress: Optional[bool]):
    """A tqdm bar over images on stderr (rate in img/s, ETA); progress None: shown only on a terminal."""
    from tqdm import tqdm
    return tqdm(total=total, unit="img", desc="eval", file=sys.stderr, dynamic_ncols=True, smoothing=0.1,
                disable=None if progress is None else not progress)


def _record(m: Dict[str, float], suffix: str) -> Dict[str, float]:
    """The periodic-record keys of one :func:`set_metrics` dict: ``fid``, ``kid``, ``kid_std``, ``precision``,
    ``recall``, ``density``, ``coverage`` with ``suffix`` appended."""
    keep = ("fid", "kid", "kid_std", "precision", "recall", "density", "coverage")
    return {f"{name}{suffix}": float(m[name]) for name in keep if name in m}


# ---------------------------------------------------------------------------------------------------------
# periodic FID during training
# ---------------------------------------------------------------------------------------------------------
_CALLBACK_STATE: Dict[Any, Any] = {}


def callback_eval_dataset(cfg, num_classes: int, n_real: Optional[int] = None,
                          log: Callable[[str], None] = _log_stderr):
    """(dataset, describe) of :func:`build_eval_dataset` for periodic FID, built (file lists, header scan) once
    per process and data configuration, then reused by every call."""
    import dataclasses
    key = ("data", json.dumps(dataclasses.asdict(cfg.data), sort_keys=True, default=str), cfg.seed, num_classes,
           n_real)
    if key not in _CALLBACK_STATE:
        _CALLBACK_STATE[key] = build_eval_dataset(cfg, num_classes, size=n_real, log=log)
    return _CALLBACK_STATE[key]


@torch.no_grad()
def fid_callback(trainer, n_images: int, *, variant: str = "pytorch-fid", inception_weights: Optional[str] = None,
                 cache_dir: Optional[str] = None, batch_size: int = 16, seed: int = 0, n_real: Optional[int] = None,
                 extractor: Optional[FIDExtractor] = None,
                 log: Callable[[str], None] = _log_stderr) -> Dict[str, float]:
    """FID of a training run's current generators, for logging every K images.

    Computes ``fid`` (unconditional, when G_seg and G_spd, or the ProGAN baseline's G_img, have been trained or
    loaded) and ``fid_cond``
    (G_spd on the real validation label maps, when G_spd has been) from ``n_images`` generated images against
    the real statistics of the validation split (computed once, cached on disk and in memory). The latent
    codes come from a private generator seeded with ``seed`` (the same codes at every call), so the training
    RNG streams are untouched and resumed runs stay exact. The networks' train/eval modes are restored.

    The same features give KID (``kid``, ``kid_std``: mean and std over 100 subsets), improved precision and
    recall (k = 3) and density and coverage (k = 5), with the suffix ``_cond`` for the conditional set
    (precision/recall need more than 3 images per set, density/coverage more than 5 real ones).

    Returns e.g. ``{"fid": 81.2, "kid": 0.071, "kid_std": 0.002, "precision": 0.41, ..., "fid_cond": 64.0,
    "kid_cond": 0.052, ..., "fid_n": 500}`` (empty when no generator is trained yet); the caller logs it (e.g.
    ``trainer.logger.log(stage, step, images, scalars)``)."""
    if n_images < 2:
        raise ValueError(f"fid_callback: n_images must be at least 2, got {n_images}")
    trained = getattr(trainer, "trained", None)
    nets = trainer.nets
    ema = getattr(trainer, "ema", None)
    if ema is not None:   # the moving averages (ema.enabled), G_spd's batch-norm statistics recomputed
        trainer.recalibrate_ema()
        nets = dict(nets, **ema.nets)
    has = (lambda name: name in nets and (trained is None or name in trained))
    do_uncond, do_cond = (has("G_seg") and has("G_spd")) or has("G_img"), has("G_spd")
    if not (do_uncond or do_cond):
        return {}
    cfg, dev, k = trainer.cfg, trainer.device, trainer.num_classes
    ekey = ("extractor", variant, inception_weights, str(dev))
    if extractor is None:
        extractor = _CALLBACK_STATE.get(ekey)
        if extractor is None:
            extractor = FIDExtractor(variant, inception_weights, device=dev, batch_size=batch_size)
            _CALLBACK_STATE[ekey] = extractor
    ds, desc = callback_eval_dataset(cfg, k, n_real, log)
    count = len(ds) if n_real is None else min(n_real, len(ds))
    desc = dict(desc, count=count)
    rkey = ("real", extractor.variant, extractor.weights_id, json.dumps(desc, sort_keys=True, default=str))
    real = _CALLBACK_STATE.get(rkey)
    if real is None:
        real, _ = real_statistics(real_batches(ds, count, batch_size), extractor, describe=desc,
                                  cache_dir=cache_dir, log=log)
        _CALLBACK_STATE[rkey] = real
    modes = {name: net.training for name, net in nets.items()}
    out: Dict[str, float] = {"fid_n": float(n_images)}
    try:
        for name in ("G_seg", "G_spd", "G_img"):
            if name in nets:
                nets[name].eval()
        if do_uncond:
            st = extractor.statistics(unconditional_batches(nets, cfg, n_images, seed, batch_size, dev))
            out.update(_record(set_metrics(st, real, seed=seed), ""))
        if do_cond:
            idx = list(range(min(n_images, count)))   # the same label maps at every call
            st = extractor.statistics(conditional_batches(nets, cfg, k, ds, idx, batch_size, dev))
            out.update(_record(set_metrics(st, real, seed=seed), "_cond"))
    finally:
        for name, training in modes.items():
            nets[name].train(training)
    return out
