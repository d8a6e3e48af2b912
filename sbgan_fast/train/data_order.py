"""The order of the data: which samples each step reads (a resumable stream of seeded permutations and a
stage's schedule), the loader of a stage's steps, and the per-step flips, all pure functions of the seed and
the step so that a resumed or distributed run reads exactly what an uninterrupted single process would."""
from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional

import torch


class SampleStream:
    """An endless, resumable stream of dataset indices: epoch e is a permutation of range(n) drawn
    from a generator seeded by (seed, e). ``indices(offset, count)`` returns stream items
    [offset, offset+count), so any step's batch is a pure function of the schedule."""

    def __init__(self, n: int, seed: int):
        if n <= 0:
            raise ValueError("the dataset is empty")
        self.n, self.seed = n, seed
        self._cache: Dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._cache:
            if len(self._cache) > 4:
                self._cache.pop(min(self._cache))
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._cache[epoch] = torch.randperm(self.n, generator=g)
        return self._cache[epoch]

    def indices(self, offset: int, count: int) -> List[int]:
        out = []
        while count > 0:
            epoch, pos = divmod(offset, self.n)
            take = min(count, self.n - pos)
            out.extend(self._perm(epoch)[pos:pos + take].tolist())
            offset += take
            count -= take
        return out


class ScheduledBatches:
    """Batch sampler for torch's DataLoader: yields the index lists of steps [start, end) where
    ``schedule(step) -> (stream_offset, batch_size)``."""

    def __init__(self, stream: SampleStream, schedule: Callable[[int], tuple], start: int, end: int):
        self.stream, self.schedule, self.start, self.end = stream, schedule, start, end

    def __iter__(self) -> Iterator[List[int]]:
        for step in range(self.start, self.end):
            offset, bs = self.schedule(step)
            yield self.stream.indices(offset, bs)

    def __len__(self) -> int:
        return max(0, self.end - self.start)


def make_loader(dataset, stream: SampleStream, schedule, start: int, end: int, num_workers: int, seed: int, *,
                loader: Optional[str] = None, device=None, need_image: Optional[bool] = None):
    """Loader of steps [start, end). Official-layout datasets (built by ``data.factory``, which records
    ``data.loader`` on them) go through :func:`sbgan_fast.data.loaders.build_loader` (torch, DALI or a
    device-resident cache, same batch contract; label-only for the ``seg`` stage); others use a DataLoader.
    ``need_image`` None: False when ``schedule`` belongs to the seg stage."""
    opts = getattr(dataset, "loader_options", None)
    if opts is not None or loader is not None:
        from ..data.loaders import EpochTaggedBatches, build_loader
        stage = getattr(schedule, "__self__", None)     # the Stage whose bound schedule this is
        if need_image is None:
            need_image = getattr(stage, "name", None) != "seg"
        if device is None:
            device = getattr(stage, "dev", None) or "cpu"
        batches = (EpochTaggedBatches if getattr(dataset, "wants_epoch", False) else ScheduledBatches)(
            stream, schedule, start, end)
        return build_loader(dataset, batches, loader=loader or (opts or {}).get("loader", "auto"), device=device,
                            num_workers=num_workers, seed=seed + start, need_image=need_image)
    # The loader's own generator keeps it from drawing its worker base seed from torch's global RNG,
    # whose state is checkpointed: creating a loader on resume must not shift the training noise.
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=ScheduledBatches(stream, schedule, start, end), num_workers=num_workers,
        pin_memory=torch.cuda.is_available(), persistent_workers=False,
        generator=torch.Generator().manual_seed(seed + start))


def step_generator(seed: int, stage: str, step: int, device: torch.device) -> torch.Generator:
    """A generator for per-step random choices that must not depend on how the run was split
    (flips): seeded by (seed, stage, step)."""
    salt = {"seg": 1, "spade": 2, "e2e": 3, "d2": 4, "progan": 5}[stage]
    g = torch.Generator(device="cpu")
    g.manual_seed((seed * 7919 + salt) * 1_000_003 + step)
    return g


def random_hflip(gen: torch.Generator, *tensors: torch.Tensor, total: Optional[int] = None, start: int = 0):
    """Flip each sample of every tensor (same decision across tensors) with probability 1/2.

    ``total``/``start``: the decisions are drawn for ``total`` samples (the global batch of a
    distributed step) and samples ``[start, start + n)`` of them are used, so a process's flips are its
    slice of the single-process flips. Default: ``total = n``, ``start = 0``."""
    n = tensors[0].shape[0]
    total = n if total is None else int(total)
    if not 0 <= start <= total - n:
        raise ValueError(f"random_hflip: samples [{start}, {start + n}) are outside the batch of {total}")
    flip = (torch.rand(total, generator=gen)[start:start + n] < 0.5).to(tensors[0].device)
    out = []
    for t in tensors:
        shape = (n,) + (1,) * (t.dim() - 1)
        out.append(torch.where(flip.view(shape), t.flip(-1), t))
    return out
