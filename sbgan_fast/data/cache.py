"""Preprocessed uint8 cache of a real dataset: decode and resize once, then read memory-mapped arrays.

A cache folder holds, per dataset fingerprint (file list with sizes and modification times, output size, crop
mode, value table, image interpolation), a subfolder with:

* ``images.u8``: every item's image, uint8 (h, w, 3) row-major, concatenated;
* ``labels.u8`` or ``labels.u16``: every item's label map (values after the dataset's value table);
* ``index.npy``: int64 (N, 5) rows ``(image offset, label offset, h, w, bad)``;
* ``meta.json``: the fingerprint, written last (a folder without it is an unfinished build and is rebuilt).

What is stored: for datasets without random crops, the final ``height x width`` item, so cached items equal
uncached ones exactly. For datasets with square crops along the long edge (ADE), the whole picture resized so
that its short side is ``max(height, width)``; the random square crop (same ``(seed, index, epoch)`` rule) is then
taken from it, so cached items are resize-then-crop rather than crop-then-resize: label maps and images differ from
the uncached path by resampling only, crop positions match up to rounding.

:meth:`CachedDataset.to_device` loads the arrays into tensors on a device (a GPU when it fits: Cityscapes at
256x512 is about 1.6 GB); :class:`ResidentLoader` then assembles batches there without worker processes.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .files import IMAGE_INTERP, DataError, check_same_size, read_image, resize_label
from .real import RealPairsDataset, crop_offset

__all__ = ["CachedDataset", "ResidentLoader", "build_cache", "fits_on_device"]

def _base_size(ds: RealPairsDataset, h: int, w: int) -> Tuple[int, int]:
    """Stored (h, w) of a source of size h x w."""
    if ds.crop == "none":
        return ds.out_size(h, w)
    side = max(ds.height or min(h, w), ds.width or min(h, w))
    s = min(h, w)
    return (side, max(side, round(w * side / s))) if w >= h else (max(side, round(h * side / s)), side)


def build_cache(ds: RealPairsDataset, cache_dir: str, *, log=None) -> "CachedDataset":
    """Open the cache of ``ds`` under ``cache_dir``, building it first when absent or stale.

    Files that fail to load raise :class:`DataError`, or, with ``ds.skip_bad_files``, are marked bad (their
    items are replaced by the next good item when read, and counted in ``skipped``)."""
    if not isinstance(ds, RealPairsDataset):
        raise TypeError(f"build_cache: expected a RealPairsDataset, got {type(ds).__name__}")
    log = log or (lambda msg: print(f"[sbgan_fast] {msg}", file=sys.stderr))
    fp = ds.fingerprint()
    key = hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()[:16]
    folder = os.path.join(os.fspath(cache_dir), f"{ds.name.replace(' ', '_')}-{key}")
    if os.path.isfile(os.path.join(folder, "meta.json")):
        return CachedDataset(folder, ds)
    if os.path.isdir(folder):
        shutil.rmtree(folder)            # an unfinished build
    os.makedirs(folder)
    n = len(ds)
    sizes = []
    for i in range(n):
        try:
            sizes.append(_base_size(ds, *ds.source_size(i)))
        except DataError:
            if not ds.skip_bad_files:
                raise
            sizes.append((0, 0))
    lab_dtype = np.uint8 if int(ds.lut.max()) < 256 else np.uint16
    n_img = sum(h * w * 3 for h, w in sizes)
    n_lab = sum(h * w for h, w in sizes)
    log(f"caching {n} items of {ds.name} in {folder} ({(n_img + n_lab * lab_dtype().itemsize) / 2**20:.0f} MiB)")
    lab_name = "labels.u8" if lab_dtype == np.uint8 else "labels.u16"
    images = np.memmap(os.path.join(folder, "images.u8"), np.uint8, "w+", shape=(max(1, n_img),))
    labels = np.memmap(os.path.join(folder, lab_name), lab_dtype, "w+", shape=(max(1, n_lab),))
    index = np.zeros((n, 5), np.int64)
    oi = ol = 0
    for i, (h, w) in enumerate(sizes):
        index[i, :4] = (oi, ol, h, w)
        try:
            if h == 0:
                raise DataError(f"unreadable label file {ds.label_paths[i]}", ds.label_paths[i])
            img, lab = _load_base(ds, i, h, w)
        except DataError as e:
            if not ds.skip_bad_files:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            log(f"skipping bad pair {i}: {e}")
            index[i, 4] = 1
            ds.skipped.append(e.path)
            oi += h * w * 3
            ol += h * w
            continue
        images[oi:oi + h * w * 3] = img.reshape(-1)
        labels[ol:ol + h * w] = lab.reshape(-1)
        oi += h * w * 3
        ol += h * w
    if index[:, 4].all():
        shutil.rmtree(folder, ignore_errors=True)
        raise DataError(f"{ds.name}: every pair is bad; nothing to cache")
    images.flush()
    labels.flush()
    del images, labels
    np.save(os.path.join(folder, "index.npy"), index)
    with open(os.path.join(folder, "meta.json.tmp"), "w", encoding="utf-8") as f:
        json.dump({"fingerprint": fp, "labels": lab_name}, f)
    os.replace(os.path.join(folder, "meta.json.tmp"), os.path.join(folder, "meta.json"))
    return CachedDataset(folder, ds)


def _load_base(ds: RealPairsDataset, i: int, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """(image uint8 (h, w, 3), label (h, w)) of pair ``i`` at its stored size."""
    if ds.crop == "none":
        image, label = ds.view(labels_only=False).load(i, 0)
        if image is None:
            image = np.zeros((h, w, 3), np.uint8)
        return image, label
    lab = ds.read_label(i)
    ip = ds.image_paths[i]
    if ip is None:
        image = np.zeros((h, w, 3), np.uint8)
    else:
        pil = read_image(ip)
        check_same_size(ip, pil.size, ds.label_paths[i], (lab.shape[1], lab.shape[0]))
        image = np.asarray(pil.resize((w, h), IMAGE_INTERP[ds.image_interp]), dtype=np.uint8)
    return image, resize_label(lab, h, w)


def fits_on_device(nbytes: int, device: torch.device, margin: float = 0.5) -> bool:
    """True when ``nbytes`` fit in the free memory of CUDA ``device`` leaving ``margin`` of it for training
    (always True for the CPU)."""
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"fits_on_device: margin must be in [0, 1), got {margin}")
    device = torch.device(device)
    if device.type != "cuda":
        return True
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= free * (1.0 - margin)


class CachedDataset(torch.utils.data.Dataset):
    """Items of a :class:`RealPairsDataset` read from its cache folder (same item contract, same crop rule).

    Args:
        folder: a finished cache folder (see :func:`build_cache`).
        source: the dataset it was built from (crop mode, sizes, seed, skip policy)."""

    def __init__(self, folder: str, source: RealPairsDataset):
        with open(os.path.join(folder, "meta.json"), "r", encoding="utf-8") as f:
            meta = json.load(f)
        self.folder = folder
        self.source = source
        self.index = np.load(os.path.join(folder, "index.npy"))
        if len(self.index) != len(source):
            raise DataError(f"cache {folder} holds {len(self.index)} items but the dataset has {len(source)}", folder)
        dtype = np.uint8 if meta["labels"].endswith(".u8") else np.uint16
        self.images = np.memmap(os.path.join(folder, "images.u8"), np.uint8, "r")
        self.labels = np.memmap(os.path.join(folder, meta["labels"]), dtype, "r")
        self.labels_only = source.labels_only
        self.num_classes = source.num_classes
        self.name = source.name
        self.skip_bad_files = source.skip_bad_files
        bad = np.flatnonzero(self.index[:, 4])
        self.skipped: List[str] = [source.label_paths[i] for i in bad]
        self.device: Optional[torch.device] = None
        self._timg: Optional[torch.Tensor] = None
        self._tlab: Optional[torch.Tensor] = None

    @property
    def wants_epoch(self) -> bool:
        return self.source.wants_epoch

    @property
    def nbytes(self) -> int:
        return int(self.images.size + self.labels.size * self.labels.itemsize)

    def __len__(self) -> int:
        return len(self.index)

    def label_view(self) -> "CachedDataset":
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.labels_only = True
        return view

    def to_device(self, device) -> "CachedDataset":
        """Hold the arrays as tensors on ``device``; items are then returned there."""
        device = torch.device(device)
        self._timg = _chunked_copy(np.asarray(self.images), device)
        labels = np.asarray(self.labels)
        self._tlab = _chunked_copy(labels.view(np.int16) if labels.dtype == np.uint16 else labels, device)
        self.device = device
        return self

    def _views(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        oi, ol, h, w, _ = (int(v) for v in self.index[i])
        if self._timg is not None:
            img, lab = self._timg[oi:oi + h * w * 3], self._tlab[ol:ol + h * w]
            if lab.dtype == torch.int16:    # uint16 label values held bit for bit in int16
                lab = lab.long() & 0xFFFF
        else:
            img = torch.from_numpy(np.array(self.images[oi:oi + h * w * 3]))
            lab = torch.from_numpy(np.array(self.labels[ol:ol + h * w]).astype(np.int64))
        return img.view(h, w, 3), lab.view(h, w)

    def item(self, i: int, epoch: int) -> Dict[str, object]:
        src = self.source
        img, lab = self._views(i)
        h, w = lab.shape
        if src.crop != "none":
            s = min(h, w)
            off = crop_offset(src.seed, i, epoch, max(h, w) - s)
            t, l = (off, 0) if h > w else (0, off)
            img, lab = img[t:t + s, l:l + s], lab[t:t + s, l:l + s]
            th, tw = src.out_size(s, s)
            if (th, tw) != (s, s):   # non-square outputs of a square crop: resize on the fly
                lab = _nearest(lab, th, tw)
                img = torch.nn.functional.interpolate(img.permute(2, 0, 1)[None].float(), size=(th, tw),
                                                      mode="bilinear", antialias=True, align_corners=False)[0]
                img = img.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)
        item: Dict[str, object] = {"label": lab.long().contiguous(), "index": i, "path": src.label_paths[i]}
        if not self.labels_only:
            item["image"] = img.permute(2, 0, 1).contiguous()
        return item

    def __getitem__(self, index) -> Dict[str, object]:
        if isinstance(index, tuple):
            i, epoch = int(index[0]), int(index[1])
        else:
            i, epoch = int(index), self.source.epoch
        if not 0 <= i < len(self):
            raise IndexError(f"CachedDataset: index {i} out of range for {len(self)} items")
        n = len(self)
        for k in range(n):
            j = (i + k) % n
            if not self.index[j, 4]:
                item = self.item(j, epoch)
                item["skipped"] = k
                return item
        raise DataError(f"{self.name}: no good item in the cache")

    def __repr__(self) -> str:
        return f"CachedDataset({self.folder!r}, {len(self)} items, device={self.device})"


def _chunked_copy(arr: np.ndarray, device: torch.device, chunk: int = 1 << 26) -> torch.Tensor:
    """A 1-D uint8 or int16 (memory-mapped) array as a tensor on ``device``, read in ``chunk``-element pieces
    (the host never holds a second full copy)."""
    dtype = {np.dtype(np.uint8): torch.uint8, np.dtype(np.int16): torch.int16}[arr.dtype]
    out = torch.empty(arr.shape, dtype=dtype, device=device)
    for a in range(0, arr.size, chunk):
        out[a:a + chunk].copy_(torch.from_numpy(np.array(arr[a:a + chunk])))
    return out


def _nearest(lab: torch.Tensor, th: int, tw: int) -> torch.Tensor:
    h, w = lab.shape
    ys = ((2 * torch.arange(th, device=lab.device) + 1) * h) // (2 * th)
    xs = ((2 * torch.arange(tw, device=lab.device) + 1) * w) // (2 * tw)
    return lab[ys][:, xs]


class ResidentLoader:
    """Batches straight from a device-resident :class:`CachedDataset` (no worker processes, no copies).

    Args:
        dataset: a CachedDataset after :meth:`CachedDataset.to_device`.
        batches: iterable of index lists (ints, or ``(index, epoch)`` pairs).

    Yields the batch contract of the torch loader: ``{"label": int64 (N, H, W), "image": uint8 (N, 3, H, W)
    (absent when label-only), "index": int64 (N,), "skipped": int64 (N,)}`` on the dataset's device."""

    def __init__(self, dataset: CachedDataset, batches: Iterable[Sequence]):
        self.dataset, self.batches = dataset, batches

    def __len__(self) -> int:
        return len(self.batches)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Dict[str, torch.Tensor]]:
        for idx in self.batches:
            items = [self.dataset[i] for i in idx]
            out = {"label": torch.stack([it["label"] for it in items]),
                   "index": torch.tensor([it["index"] for it in items]),
                   "skipped": torch.tensor([it["skipped"] for it in items])}
            if "image" in items[0]:
                out["image"] = torch.stack([it["image"] for it in items])
            yield out
