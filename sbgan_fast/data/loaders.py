"""Choosing and building the batch loader of a training stage: torch ``DataLoader``, DALI, or a device-resident
cache, all with one batch contract.

Every loader consumes the same sequence of index batches (the trainer's deterministic sample stream; for datasets
with random crops each index comes with the epoch of its stream position, ``(index, epoch)``) and yields
``{"label": int64 (N, H, W), "image": uint8 (N, 3, H, W) (absent for label-only stages), "index": int64 (N,),
"skipped": int64 (N,), "skipped_files": int}``, where ``skipped_files`` is the number of distinct bad files
passed over so far (found up front or while loading; see ``data.skip_bad_files``).

``loader="auto"`` picks DALI for image stages of the file datasets (official layouts, folders) on a GPU, and the
torch loader otherwise (one message says why); label-only stages always use the torch loader (no image decoding to
speed up).
"""
from __future__ import annotations

import sys
from typing import Dict, Iterator, List, Optional, Sequence

import torch

__all__ = ["LOADERS", "EpochTaggedBatches", "SkipCounting", "build_loader", "choose_loader"]

LOADERS = ("auto", "torch", "dali")
_said: set = set()


def _say(msg: str) -> None:
    if msg not in _said:
        _said.add(msg)
        print(f"[sbgan_fast] {msg}", file=sys.stderr)


class EpochTaggedBatches:
    """Like the trainer's ``ScheduledBatches``, but each index comes as ``(index, epoch)``: the epoch of its
    position in the sample stream, so random crops depend on ``(seed, index, epoch)`` only (exact resume)."""

    def __init__(self, stream, schedule, start: int, end: int):
        self.stream, self.schedule, self.start, self.end = stream, schedule, start, end

    def __iter__(self):
        n = self.stream.n
        for step in range(self.start, self.end):
            offset, bs = self.schedule(step)
            idx = self.stream.indices(offset, bs)
            yield [(i, (offset + k) // n) for k, i in enumerate(idx)]

    def __len__(self) -> int:
        return max(0, self.end - self.start)


class SkipCounting:
    """Wraps a loader: adds ``skipped_files`` (distinct bad files so far, up front included) to each batch.

    ``in_process``: the items are loaded in this process (no worker processes), so the datasets' own
    lists of skipped files are exact; with workers those lists live in the workers and substitutions
    seen in the batches are counted instead (an upper bound: a bad file met twice counts twice)."""

    def __init__(self, loader, dataset, extra_sources: Sequence = (), *, in_process: bool = True):
        self.loader, self.dataset, self.extra = loader, dataset, list(extra_sources)
        self.in_process = in_process
        self._seen: set = set(getattr(dataset, "skipped", []) or [])
        self._count_in_batches = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Dict]:
        for batch in self.loader:
            for src in [self.dataset] + self.extra:
                self._seen.update(getattr(src, "skipped", []) or [])
            if "skipped" in batch and not self.in_process:
                self._count_in_batches += int(torch.as_tensor(batch["skipped"]).gt(0).sum())
            batch["skipped_files"] = max(len(self._seen), self._count_in_batches)
            yield batch


def choose_loader(requested: str, dataset, device: torch.device, need_image: bool) -> str:
    """'torch', 'dali' or 'resident' for this stage; raises for an explicit 'dali' that cannot run."""
    from .cache import CachedDataset
    from .dali import dali_status
    from .real import RealPairsDataset
    if requested not in LOADERS:
        raise ValueError(f"data.loader must be one of {LOADERS}, got {requested!r}")
    device = torch.device(device)
    if isinstance(dataset, CachedDataset):
        if requested == "dali":
            raise ValueError("data.loader=dali: a preprocessed cache (data.cache) is read directly; DALI decodes "
                             "files. Use data.loader=torch or auto with a cache, or drop data.cache")
        return "resident" if dataset.device is not None else "torch"
    if not need_image:
        if requested == "dali":
            _say("label-only stage: label maps are read by the torch loader (DALI speeds up image decoding)")
        return "torch"
    if requested == "torch":
        return "torch"
    ok, why = dali_status()
    if not isinstance(dataset, RealPairsDataset):
        if requested == "dali":
            raise ValueError("data.loader=dali needs an official-layout or folder dataset (cityscapes, ade20k, "
                             f"ade_indoor, folder); this one is {type(dataset).__name__}")
        return "torch"
    if requested == "dali":
        if not ok:
            raise RuntimeError(f"data.loader=dali: {why}")
        return "dali"
    if not ok:
        _say(f"loader auto -> torch: {why}")
        return "torch"
    if device.type != "cuda":
        _say("loader auto -> torch: no GPU (DALI's GPU decoding and resizing need one; on the CPU the torch "
             "loader is as fast; data.loader=dali forces the CPU DALI pipeline)")
        return "torch"
    return "dali"


def build_loader(dataset, batches, *, loader: str = "auto", device="cpu", num_workers: int = 0, seed: int = 0,
                 need_image: bool = True, num_threads: Optional[int] = None):
    """The loader of one stage over ``batches`` (index lists, or ``(index, epoch)`` lists).

    Args:
        dataset: any dataset of the project (items as in :mod:`sbgan_fast.data.datasets`).
        batches: a batch sampler (iterable of index lists with ``len``).
        loader: 'auto' | 'torch' | 'dali'.
        device: the training device (DALI decodes on it when it is a GPU).
        num_workers: torch DataLoader worker processes.
        seed: seed of the DataLoader's own generator (keeps torch's global RNG untouched).
        need_image: False for label-only stages (no image is decoded).
        num_threads: DALI threads (default: ``max(2, num_workers)``).
    """
    device = torch.device(device)
    if not need_image and hasattr(dataset, "label_view"):
        dataset = dataset.label_view()
    kind = choose_loader(loader, dataset, device, need_image)
    if kind == "dali":
        from .dali import DaliLoader
        dev_id = device.index if device.index is not None else torch.cuda.current_device() \
            if device.type == "cuda" else None
        inner = DaliLoader(dataset, batches, device_id=dev_id, num_threads=num_threads or max(2, num_workers))
    elif kind == "resident":
        from .cache import ResidentLoader
        inner = ResidentLoader(dataset, batches)
    else:
        inner = torch.utils.data.DataLoader(
            dataset, batch_sampler=batches, num_workers=num_workers, collate_fn=collate,
            pin_memory=torch.cuda.is_available(), persistent_workers=False,
            generator=torch.Generator().manual_seed(seed))
    return SkipCounting(inner, dataset, in_process=kind != "torch" or num_workers == 0)


def collate(items: List[Dict]) -> Dict[str, object]:
    """Stack item dicts into the batch contract (strings become lists)."""
    out: Dict[str, object] = {}
    for key in items[0]:
        vals = [it[key] for it in items]
        if isinstance(vals[0], torch.Tensor):
            out[key] = torch.stack(vals)
        elif isinstance(vals[0], (int, float)):
            out[key] = torch.tensor(vals)
        else:
            out[key] = vals
    return out
