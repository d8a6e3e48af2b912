"""Synthetic label maps as extra training data for the image stage (the paper's augmentation experiment).

``spade.synthetic_labels=N`` (``sbgan-fast train --synthetic-labels N``) draws N label maps from a trained
segmentation generator once, before the spade stage, and stores them in the run folder::

    <out>/synthetic_labels/labels.npy    uint8 (N, H, W) channel indices (the don't-care class, if any, is the
                                         last channel, as in the networks' integer-label inputs)
    <out>/synthetic_labels/meta.json     n, seed, size, classes, the G_seg they came from and its hash
    <out>/samples/synthetic-labels.png   the first maps, colourised

Each spade step then also renders a batch of these maps with G_spd; the unconditional image discriminator D2
judges those images against the real batch (hinge losses weighted by ``spade.synthetic_weight``), so G_spd learns
from label maps that have no paired photo, as it does in the e2e stage. Comparing the conditional FID
(``sbgan-fast eval --conditional``) of runs with and without ``--synthetic-labels`` is the experiment.

The maps are drawn in eval mode from latent codes of a private generator seeded with ``seed + BANK_SEED``, so
the training RNG streams are untouched; the stored file makes a resumed run use the same maps.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Dict, Tuple

import numpy as np
import torch

from ..config import ConfigError
from ..models import generated_label_maps, load_seg_generator
from ..models import checkpoint as ckpt_io
from . import dist

BANK_SEED = 7_919
BANK_DIR = "synthetic_labels"
FORMAT = 1


def bank_paths(out: str) -> Tuple[str, str]:
    d = os.path.join(out, BANK_DIR)
    return os.path.join(d, "labels.npy"), os.path.join(d, "meta.json")


def state_hash(module: torch.nn.Module) -> str:
    """sha256 of a module's parameters and buffers (names, shapes and fp32 values)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def seg_checkpoint(cfg, out: str) -> str:
    """The checkpoint file holding the G_seg to draw the maps from: ``spade.seg_checkpoint`` (a file, or a run
    folder's seg or e2e checkpoint), else the seg checkpoint of the run folder ``out``."""
    src = cfg.spade.seg_checkpoint
    if src:
        if os.path.isdir(src):
            path = ckpt_io.find_checkpoint(src, "seg") or ckpt_io.find_checkpoint(src, "e2e")
            if path is None:
                raise FileNotFoundError(f"spade.seg_checkpoint: {src} holds no seg or e2e checkpoint in "
                                        f"{os.path.join(src, 'checkpoints')}")
            return path
        return src
    path = ckpt_io.find_checkpoint(out, "seg")
    if path is None:
        raise FileNotFoundError(
            f"spade.synthetic_labels={cfg.spade.synthetic_labels} needs a trained segmentation generator: "
            f"no seg-final.pt or seg-latest.pt in {os.path.join(out, 'checkpoints')}. Run --stage seg first "
            "with the same --out, or pass --seg-checkpoint PATH (a checkpoint file or run folder)")
    return path


@torch.no_grad()
def draw_label_maps(G_seg, n: int, seed: int, size: Tuple[int, int], device: torch.device, out: np.ndarray,
                    batch_size: int = 32) -> np.ndarray:
    """Fill ``out`` (uint8 (n, H, W)) with :func:`sbgan_fast.models.generated_label_maps` of ``seed``; a G_seg
    at half the size is nearest-upsampled x2. Returns the pixel count of each class (int64 (num_classes,))."""
    h, w = size
    own = (G_seg.max_dim, int(G_seg.max_dim * G_seg.aspect_ratio))
    if own not in ((h, w), (h // 2, w // 2)):
        raise ConfigError(f"the segmentation generator makes {own[0]}x{own[1]} label maps; this run's images are "
                          f"{h}x{w} (equal or half size expected)")
    i = 0
    counts = torch.zeros(G_seg.num_classes, dtype=torch.int64, device=device)
    for lab in generated_label_maps(G_seg, n, seed, batch_size, device, upsample2=own != (h, w)):
        counts += torch.bincount(lab.flatten(), minlength=G_seg.num_classes)
        out[i:i + lab.shape[0]] = lab.to("cpu", torch.uint8).numpy()
        i += lab.shape[0]
    return counts.cpu().numpy()


def _check_meta(meta: Dict, want: Dict, path: str) -> None:
    for key in ("format", "n", "seed", "height", "width", "num_classes"):
        if meta.get(key) != want[key]:
            raise ConfigError(f"{path} was drawn with {key}={meta.get(key)!r}, this run asks for {want[key]!r}: "
                              f"remove {os.path.dirname(path)} to draw new maps, or use another --out")


def prepare_bank(ctx, log=print) -> np.ndarray:
    """The run's synthetic label maps, drawn on rank 0 when absent (every process then reads the file). ``ctx``:
    the run's ``cfg``, ``out`` (run folder), ``num_classes``, ``device``, ``dist`` and ``palette`` (a
    :class:`~sbgan_fast.train.stages.StageContext`).

    Stored maps drawn for other settings (count, seed, size, classes) are an error; maps drawn from an earlier
    state of the same G_seg checkpoint are kept, with a warning (a resumed stage keeps its data).

    Raises:
        FileNotFoundError: no trained G_seg to draw from.
        ValueError: the stored maps were drawn for other settings.
    """
    cfg = ctx.cfg
    n = cfg.spade.synthetic_labels
    npy, meta_path = bank_paths(ctx.out)
    want = {"format": FORMAT, "n": n, "seed": cfg.seed + BANK_SEED, "height": cfg.data.height,
            "width": cfg.data.width, "num_classes": ctx.num_classes}
    if ctx.num_classes > 256:
        raise ConfigError(f"synthetic label maps are stored as uint8: at most 256 classes, got {ctx.num_classes}")
    dist.on_main(lambda: _prepare_on_main(ctx, npy, meta_path, want, log), ctx.dist)
    for path in (npy, meta_path):   # written by rank 0: every process must see them (shared run folder)
        dist.exists_everywhere(path, ctx.dist)
    with open(meta_path, "r", encoding="utf-8") as f:
        _check_meta(json.load(f), want, meta_path)
    bank = np.load(npy, mmap_mode="r")
    if bank.shape != (n, cfg.data.height, cfg.data.width) or bank.dtype != np.uint8:
        raise ConfigError(f"{npy}: expected uint8 {(n, cfg.data.height, cfg.data.width)}, found {bank.dtype} "
                          f"{bank.shape}; remove {os.path.dirname(npy)} to draw new maps")
    return bank


def _prepare_on_main(ctx, npy: str, meta_path: str, want: Dict, log) -> None:
    src = None
    try:
        src = seg_checkpoint(ctx.cfg, ctx.out)
    except FileNotFoundError:
        if not os.path.isfile(meta_path):
            raise
    if os.path.isfile(meta_path) and os.path.isfile(npy):
        with open(meta_path, "r", encoding="utf-8") as f:
            meta = json.load(f)
        _check_meta(meta, want, meta_path)
        if src is not None and os.path.abspath(src) == meta.get("source"):
            G, step = load_seg_generator(src, ctx.device, ctx.num_classes)
            if state_hash(G) != meta.get("g_seg_sha256"):
                # the stored maps stay: a resumed spade stage continues on the data it started with
                log(f"[synthetic labels] warning: {npy} was drawn from the G_seg of {src} at step "
                    f"{meta.get('source_step')}; that checkpoint now holds step {step}. Keeping the stored maps; "
                    f"remove {os.path.dirname(npy)} (and the spade checkpoints) to draw new ones")
        log(f"[synthetic labels] {want['n']} maps from {npy}")
        return
    G, step = load_seg_generator(src, ctx.device, ctx.num_classes)
    os.makedirs(os.path.dirname(npy), exist_ok=True)
    tmp = f"{npy}.tmp{os.getpid()}.npy"
    shape = (want["n"], want["height"], want["width"])
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    counts = draw_label_maps(G, want["n"], want["seed"], shape[1:], ctx.device, arr)
    arr.flush()
    del arr
    os.replace(tmp, npy)
    meta = dict(want, source=os.path.abspath(src), source_step=step, g_seg_sha256=state_hash(G),
                class_pixels=counts.tolist())
    tmp_meta = f"{meta_path}.tmp{os.getpid()}"
    with open(tmp_meta, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp_meta, meta_path)
    used = int((counts > 0).sum())
    log(f"[synthetic labels] drew {want['n']} maps from {src} (step {step}): {used} of {ctx.num_classes} "
        f"classes present; stored in {npy}")
    try:
        from ..metrics.grids import save_pairs_grid
        first = torch.from_numpy(np.load(npy, mmap_mode="r")[:min(8, want["n"])].astype(np.int64))
        save_pairs_grid(first, None, ctx.palette, os.path.join(ctx.out, "samples", "synthetic-labels.png"))
    except Exception as e:  # noqa: BLE001 - a preview is not worth failing the run
        log(f"[synthetic labels] no preview grid ({type(e).__name__}: {e})")


class SyntheticBatches:
    """Batches of the stored maps: step ``s`` takes stream items [s*B, (s+1)*B) of an endless sequence of
    seeded permutations (a pure function of the step, so resumed runs are exact); each process its slice."""

    def __init__(self, bank: np.ndarray, batch: int, seed: int, rank: int = 0, world: int = 1):
        from .data_order import SampleStream
        self.bank, self.batch = bank, batch
        self.stream = SampleStream(len(bank), seed + BANK_SEED)
        self.rank, self.world = rank, world

    def at(self, step: int, device: torch.device) -> torch.Tensor:
        idx = self.stream.indices(step * self.batch, self.batch)
        share = self.batch // self.world
        maps = np.asarray(self.bank[idx[self.rank * share:(self.rank + 1) * share]])
        return torch.from_numpy(maps.astype(np.int64)).to(device, non_blocking=True)
