"""Distributed training plumbing: the process group from torchrun's environment, per-rank batch
slices, explicit gradient averaging and rank-0 helpers.

Design (why the networks are not wrapped in ``DistributedDataParallel``)
-----------------------------------------------------------------------
Every process keeps plain, unwrapped networks. After the backward pass of an update (after the last
micro-batch when accumulating gradients), :func:`average_gradients` all-reduces the gradients of the
parameters that update trains, flattened into buckets, and divides by the world size; only then are
the gradients checked for NaN/Inf and the optimizers stepped. This is exactly the gradient of the
mean loss over the global batch, for every loss of the three stages:

* every loss is a mean over samples (or over equal-sized per-sample patches) of the process's equal
  share of the global batch, so the average of the per-process gradients is the gradient of the
  global mean;
* the WGAN-GP penalty's inner gradient ``d D(x_hat) / d x_hat`` is per sample (D_seg has no
  batch-coupled layer), so it is computed locally and its second-order gradient is averaged like any
  other term. ``DistributedDataParallel``'s reducer does not support gradients taken with
  ``torch.autograd.grad(create_graph=True)``; not wrapping the networks keeps that graph out of it;
* synchronized batch norm (``norm='sync_batch'``) all-reduces its sums with a differentiable
  all-reduce, so each process's backward already carries the other processes' terms of the shared
  statistics; averaging then gives the gradient of the global mean (the same arithmetic as torch's
  ``SyncBatchNorm`` under DDP).

Gradient accumulation needs no ``no_sync``: the micro-batches accumulate into ``.grad`` locally and
one all-reduce runs per optimizer update. What this gives up is DDP's overlap of communication with
the backward pass; at these model sizes (at most ~93 M parameters per network) the bucketed
all-reduce after the backward pass costs a few milliseconds per update on NVLink/InfiniBand.

All processes run the same code path, so every collective is entered by every process in the same
order; a parameter has a gradient on one process exactly when it has one on all.
"""
from __future__ import annotations

import datetime
import os
import pickle
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterable, List, Sequence, Tuple

import torch

BUCKET_BYTES = 25 * 1024 * 1024


@dataclass
class DistInfo:
    """Rank, world size and local rank of this process (all 0/1/0 without torch.distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False      # this module created the process group (and destroys it)

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer (set by torchrun)") from None


DEFAULT_TIMEOUT_S = 600.0


def setup(device: str = "auto", backend: str = "auto",
          timeout_s: float = DEFAULT_TIMEOUT_S) -> Tuple[DistInfo, torch.device]:
    """Join the process group and pick this process's device.

    * A process group that already exists (user code, tests) is used as it is.
    * Otherwise, when ``WORLD_SIZE`` > 1 (``torchrun``), one is created with ``init_method='env://'``:
      NCCL when training on CUDA, gloo on CPU (``backend`` overrides).
    * Otherwise: a single process.

    Args:
        device: 'auto' | 'cpu' | 'cuda' | 'cuda:N'. With several processes 'auto' and 'cuda' mean
            ``cuda:LOCAL_RANK`` (one process per GPU).
        timeout_s: how long a collective waits for the other processes (``dist_timeout``; 10 minutes by
            default: a training step takes seconds, the longest rank-0-only work (an FID evaluation, a
            checkpoint) a few minutes). When it fires, NCCL's watchdog aborts the process and gloo raises in
            the waiting process; torchrun then stops the others. Not applied to a group that already exists.
    Returns:
        (DistInfo, torch.device).
    """
    import torch.distributed as dist

    from ..config import ConfigError
    from ..config import resolve_device

    if backend not in ("auto", "nccl", "gloo"):
        raise ValueError(f"dist_backend must be auto|nccl|gloo, got {backend!r}")
    initialised = dist.is_available() and dist.is_initialized()
    world_env = _env_int("WORLD_SIZE", 1)
    if not initialised and world_env <= 1:
        return DistInfo(), resolve_device(device)
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world_env} asks for distributed training, but this torch build has no "
                           "torch.distributed")
    local_rank = _env_int("LOCAL_RANK", 0)
    if device in ("auto", "cuda"):
        dev = torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else resolve_device(device)
    else:
        dev = resolve_device(device)
    if dev.type == "cuda":
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
        if dev.index >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank}: device {dev} does not exist ({torch.cuda.device_count()} "
                               "GPUs visible); start one process per GPU (torchrun --nproc_per_node=<GPUs>)")
        torch.cuda.set_device(dev)
    owns = False
    if not initialised:
        be = backend if backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
        for var in ("MASTER_ADDR", "MASTER_PORT", "RANK"):
            if var not in os.environ:
                raise ConfigError(f"WORLD_SIZE={world_env} but {var} is not set: start distributed runs with torchrun "
                                   "(see the README, 'Multi-GPU and multi-node')")
        kwargs = {"device_id": dev} if be == "nccl" else {}
        dist.init_process_group(be, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
        owns = True
    info = DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, owns_group=owns)
    return info, dev


def teardown(info: DistInfo) -> None:
    """Destroy the process group if :func:`setup` created it."""
    import torch.distributed as dist
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()
        info.owns_group = False


def barrier(info: DistInfo) -> None:
    if info.enabled:
        import torch.distributed as dist
        dist.barrier()


# ---------------------------------------------------------------------- batches
def shard_schedule(schedule: Callable[[int], Tuple[int, int]], rank: int, world: int):
    """This process's part of a global schedule: step -> (stream offset, batch size).

    Process ``r`` of ``W`` takes stream items ``[offset + r*b, offset + (r+1)*b)`` with ``b = bs / W``,
    so the union over the processes, in rank order, is the single-process batch of the step."""
    if world == 1:
        return schedule

    def sharded(step: int) -> Tuple[int, int]:
        offset, bs = schedule(step)
        if bs % world:
            raise ValueError(f"batch size {bs} (step {step}) is not divisible by the {world} processes")
        b = bs // world
        return offset + rank * b, b

    return sharded


def check_divisible(stage: str, batch_sizes: Iterable[int], world: int, accum: int) -> None:
    """Every global batch size of a stage must split into ``world`` processes x ``accum`` micro-batches.

    Raises:
        ConfigError (a ValueError) naming the stage, the batch size and the divisor.
    """
    from ..config import ConfigError
    for bs in sorted(set(batch_sizes)):
        if bs % (world * accum):
            raise ConfigError(
                f"stage {stage!r}: batch size {bs} does not split into {world} process(es) x accum {accum} equal "
                f"micro-batches; choose a batch size divisible by {world * accum} (the batch size is the global one, "
                f"summed over the processes)")


def micro_slices(n: int, accum: int) -> List[slice]:
    """``accum`` equal consecutive slices of ``n`` samples (n divisible by accum)."""
    if accum < 1 or n % accum:
        raise ValueError(f"{n} samples do not split into accum={accum} equal micro-batches")
    m = n // accum
    return [slice(i * m, (i + 1) * m) for i in range(accum)]


# ---------------------------------------------------------------------- collectives on tensor lists
def _buckets(tensors: Sequence[torch.Tensor], bucket_bytes: int) -> List[List[torch.Tensor]]:
    """Consecutive groups of same-dtype, same-device tensors of at most ``bucket_bytes`` (a bigger
    tensor gets a bucket of its own)."""
    out: List[List[torch.Tensor]] = []
    cur: List[torch.Tensor] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        if cur and (t.dtype != cur[0].dtype or t.device != cur[0].device or size + nbytes > bucket_bytes):
            out.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += nbytes
    if cur:
        out.append(cur)
    return out


def _flatten(ts: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _unflatten_into(flat: torch.Tensor, ts: Sequence[torch.Tensor]) -> None:
    """Copy consecutive parts of ``flat`` back into ``ts`` (any memory format: ``reshape`` of a
    channels-last tensor flattens in logical order, and ``copy_`` into a view_as respects it)."""
    pos = 0
    for t in ts:
        n = t.numel()
        t.copy_(flat[pos:pos + n].view(t.shape))
        pos += n


def all_reduce_mean_(tensors: Sequence[torch.Tensor], info: DistInfo, bucket_bytes: int = BUCKET_BYTES) -> None:
    """In place: each tensor becomes the mean of that tensor over the processes (bucketed, async)."""
    if not info.enabled or not tensors:
        return
    import torch.distributed as dist
    pending = []
    for bucket in _buckets(tensors, bucket_bytes):
        flat = _flatten(bucket)
        pending.append((dist.all_reduce(flat, async_op=True), flat, bucket))
    for work, flat, bucket in pending:
        work.wait()
        flat.div_(info.world)
        _unflatten_into(flat, bucket)


def broadcast_(tensors: Sequence[torch.Tensor], info: DistInfo, src: int = 0,
               bucket_bytes: int = BUCKET_BYTES) -> None:
    """In place: every process gets rank ``src``'s values (bucketed)."""
    if not info.enabled or not tensors:
        return
    import torch.distributed as dist
    for bucket in _buckets(tensors, bucket_bytes):
        flat = _flatten(bucket)
        dist.broadcast(flat, src)
        _unflatten_into(flat, bucket)


def average_gradients(params: Iterable[torch.nn.Parameter], info: DistInfo) -> None:
    """Average ``.grad`` of ``params`` over the processes (parameters without a gradient are skipped;
    every process has gradients for the same parameters since all run the same code)."""
    grads = [p.grad for p in params if p.grad is not None]
    all_reduce_mean_(grads, info)


def all_reduce_(t: torch.Tensor, info: DistInfo, op: str = "sum") -> torch.Tensor:
    """In-place all-reduce of one tensor ('sum' | 'max' | 'min'); returns it."""
    if info.enabled:
        import torch.distributed as dist
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}[op])
    return t


def all_gather_object(obj: Any, info: DistInfo) -> List[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not info.enabled:
        return [obj]
    import torch.distributed as dist
    out: List[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    if not info.enabled:
        return obj
    import torch.distributed as dist
    box = [obj]
    dist.broadcast_object_list(box, src)
    return box[0]


def on_main(fn: Callable[[], Any], info: DistInfo) -> Any:
    """``fn()`` on rank 0; its result, or the exception it raised, reaches every process (an error found by
    rank 0 alone must not leave the others waiting in the next collective)."""
    if not info.enabled:
        return fn()
    box: Any = None
    if info.is_main:
        try:
            box = ("ok", fn())
        except Exception as e:  # noqa: BLE001 - re-raised below, on every process
            box = ("err", e)
        try:
            pickle.dumps(box)
        except Exception:  # noqa: BLE001 - sent as text when it cannot be pickled
            box = ("err", RuntimeError(f"rank 0: {type(box[1]).__name__}: {box[1]}")) if box[0] == "err" else box
    box = broadcast_object(box, info)
    if box[0] == "err":
        raise box[1]
    return box[1]


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank``'s noise generator in 'rank' noise mode (rank 0 keeps ``seed``)."""
    return seed if rank == 0 else (seed * 1_000_003 + 7_919 * rank) % (2 ** 63)


def warn_main(info: DistInfo, msg: str) -> None:
    if info.is_main:
        print(f"[sbgan_fast] {msg}", file=sys.stderr)


def module_state_tensors(modules: Iterable[torch.nn.Module]) -> List[torch.Tensor]:
    """All parameters and buffers of ``modules`` (for the start-of-stage broadcast)."""
    out: List[torch.Tensor] = []
    for m in modules:
        out.extend(p.data for p in m.parameters())
        out.extend(b for b in m.buffers())
    return out


__all__ = ["DistInfo", "setup", "teardown", "barrier", "shard_schedule", "check_divisible", "micro_slices",
           "all_reduce_mean_", "broadcast_", "average_gradients", "all_reduce_", "all_gather_object",
           "broadcast_object", "on_main", "rank_seed", "warn_main", "module_state_tensors"]



def exists_everywhere(path: str, info: DistInfo) -> bool:
    """Whether ``path`` exists, checked by every process: a file that some processes cannot see (a run folder
    not on a shared filesystem) is an error rather than a silent divergence.

    Raises:
        RunFolderError: naming the ranks that do not see it.
    """
    from ..errors import RunFolderError
    seen = all_gather_object(os.path.isfile(path), info)
    if any(seen) and not all(seen):
        missing = [r for r, s in enumerate(seen) if not s]
        raise RunFolderError(f"{path} exists for some processes but not for rank(s) {missing}: in multi-node "
                             "runs the run folder (--out) must be on a filesystem shared by every node")
    return seen[0]
