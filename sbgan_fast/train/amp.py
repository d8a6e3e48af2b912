"""Mixed precision, gradient accumulation, cross-process gradient averaging (:mod:`.dist`) and the non-finite-step
guard of the training updates. (The noise of a step is :mod:`.noise`; its classes are re-exported here.)

One optimizer update (for instance "the discriminators' step of the e2e stage") goes through
:meth:`Updater.update`::

    with updater.update({"D_seg": ("D_seg",), "D_spd": ("D_spd",)}) as u:
        for part in micro_batches:
            with updater.autocast():
                losses = ...                       # {"D_seg": loss_a, "D_spd": loss_b}, scalars
            u.backward({k: v / len(micro_batches) for k, v in losses.items()})
    # leaving the block: gradients averaged over the processes, checked, optimizers stepped

The keys are *loss groups*: each is one loss and the optimizers it trains. Under ``fp16`` every group
has its own ``torch.amp.GradScaler`` (the GAN losses are scaled independently: a generator overflow
never lowers the discriminators' scale); the losses of the groups that one backward pass carries are
scaled separately and summed, which is exact because a group's loss only reaches its own networks'
parameters. Groups whose losses share networks (the e2e generators G_seg and G_spd through one
loss) form one group with one scaler.

Non-finite guard: after the gradients are averaged, each group's (averaged) loss and the L1 norm of
its gradients are checked for NaN/Inf in one device-to-host copy. A non-finite group's update is
skipped (its optimizers and parameters untouched; under fp16 the group's scaler backs off, as
``GradScaler`` does for an overflow). A training step with any skipped update leaves every network
buffer (batch-norm running statistics, spectral-norm vectors) as it was at the start of the step, is
counted in the stats (``skipped`` per log record), and ``nonfinite_limit`` such steps in a row stop the
run with :class:`NonFiniteError` before any checkpoint is written.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import torch

from ..errors import SbganError
from . import dist
from .noise import GivenNoise, StepNoise

PRECISIONS = ("fp32", "bf16", "fp16")


class NonFiniteError(SbganError, RuntimeError):
    """Too many training steps in a row had a NaN/Inf loss or gradient; the run stopped."""


class _Update:
    """One optimizer update in progress (see :meth:`Updater.update`)."""

    def __init__(self, updater: "Updater", groups: Dict[str, Sequence[str]]):
        self.u, self.groups = updater, {g: tuple(names) for g, names in groups.items()}
        self.loss_sum: Dict[str, torch.Tensor] = {}
        for g, names in self.groups.items():
            for name in names:
                if name not in updater.optims:
                    raise KeyError(f"update group {g!r}: no optimizer {name!r} in this stage "
                                   f"(have {sorted(updater.optims)})")

    def backward(self, losses: Dict[str, torch.Tensor]) -> None:
        """One backward pass of ``sum(scale_g * losses[g])`` (scale 1 unless fp16). Call once per
        micro-batch with the micro-batch's loss divided by the number of micro-batches."""
        total = None
        for g, loss in losses.items():
            if g not in self.groups:
                raise KeyError(f"loss group {g!r} is not part of this update (groups: {sorted(self.groups)})")
            lf = loss.detach().float()
            self.loss_sum[g] = self.loss_sum[g] + lf if g in self.loss_sum else lf
            scaler = self.u.scaler(g)
            term = scaler.scale(loss) if scaler is not None else loss
            total = term if total is None else total + term
        if total is not None:
            total.backward()

    def finish(self) -> Dict[str, bool]:
        u = self.u
        names = list(self.groups)
        opt_params = {g: [p for n in self.groups[g] for pg in u.optims[n].param_groups for p in pg["params"]
                          if p.grad is not None] for g in names}
        losses = torch.stack([self.loss_sum[g] if g in self.loss_sum else torch.zeros((), device=u.device)
                              for g in names])
        if u.info.enabled:
            grads = [p.grad for g in names for p in opt_params[g]]
            dist.all_reduce_mean_(grads + [losses], u.info)
        if u.on_gradients is not None:
            u.on_gradients({n: [p.grad if p.grad is not None else None for pg in u.optims[n].param_groups
                                for p in pg["params"]] for g in names for n in self.groups[g]},
                           {g: losses[i] for i, g in enumerate(names)})
        norms = []
        for g in names:
            gs = [p.grad for p in opt_params[g]]
            norms.append(torch.nn.utils.get_total_norm(gs, 1.0).float() if gs else losses.new_zeros(()))
        flags = torch.stack([torch.isfinite(losses), torch.isfinite(torch.stack(norms))]).tolist()
        applied: Dict[str, bool] = {}
        for i, g in enumerate(names):
            loss_ok, grads_ok = bool(flags[0][i]), bool(flags[1][i])
            opts = [u.optims[n] for n in self.groups[g]]
            has_grad = [any(p.grad is not None for pg in o.param_groups for p in pg["params"]) for o in opts]
            scaler = u.scaler(g)
            if scaler is not None and (loss_ok or not grads_ok):
                # the scaler unscales, finds any Inf/NaN itself, skips and backs off; else steps
                for o, h in zip(opts, has_grad):
                    if h:
                        scaler.step(o)
                if any(has_grad):
                    scaler.update()
            elif loss_ok and grads_ok:
                for o in opts:
                    o.step()
            ok = loss_ok and grads_ok
            applied[g] = ok
            if not ok:
                u._skipped_groups.append(g)
        return applied


class Updater:
    """Precision, scalers, the optimizers of the current stage and the non-finite-step guard."""

    def __init__(self, precision: str, device: torch.device, info: dist.DistInfo, nonfinite_limit: int = 20):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision, self.device, self.info = precision, device, info
        self.nonfinite_limit = int(nonfinite_limit)
        self.optims: Dict[str, torch.optim.Optimizer] = {}
        self.scalers: Dict[str, torch.amp.GradScaler] = {}
        self.consecutive = 0          # training steps in a row with a skipped update
        self.skipped_since_log = 0    # skipped updates since the last log record
        self.skipped_total = 0
        self._skipped_groups: List[str] = []
        self._snapshot: Optional[List[torch.Tensor]] = None
        self._buffers: List[torch.Tensor] = []
        # Observer of every update's averaged gradients, before the finite check and the optimizer
        # step: called with ({optimizer name: [grad or None per parameter]}, {group: averaged loss}).
        # For tests and debugging; it must not modify the tensors.
        self.on_gradients: Optional[Callable[[Dict[str, List[Optional[torch.Tensor]]],
                                              Dict[str, torch.Tensor]], None]] = None

    # -- stage lifetime ------------------------------------------------------------------------
    def reset(self, optims: Dict[str, torch.optim.Optimizer], nets: Sequence[torch.nn.Module]) -> None:
        """A new stage: its optimizers, fresh scalers, the buffers to protect."""
        self.optims = optims
        self.scalers = {}
        self.consecutive = 0
        self.skipped_since_log = 0
        self._buffers = [b for n in nets for b in n.buffers()]

    @property
    def dtype(self) -> Optional[torch.dtype]:
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    def autocast(self):
        """Context for forward passes and losses: autocast to bf16/fp16, or nothing in fp32."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def scaler(self, group: str) -> Optional[torch.amp.GradScaler]:
        """The GradScaler of a loss group under fp16 (created on first use), else None."""
        if self.precision != "fp16":
            return None
        if group not in self.scalers:
            self.scalers[group] = torch.amp.GradScaler(self.device.type)
        return self.scalers[group]

    def scale_tensor(self, group: str) -> Optional[torch.Tensor]:
        """The current loss scale of ``group`` as a 0-dim device tensor (no host sync), or None."""
        s = self.scaler(group)
        return None if s is None else s.scale(torch.ones((), device=self.device)).detach()

    def scaler_states(self) -> Dict[str, dict]:
        return {g: s.state_dict() for g, s in self.scalers.items()}

    def load_scaler_states(self, states: Dict[str, dict]) -> None:
        if self.precision != "fp16":
            return
        for g, sd in states.items():
            self.scaler(g).load_state_dict(sd)

    # -- updates -------------------------------------------------------------------------------
    @contextlib.contextmanager
    def update(self, groups: Dict[str, Sequence[str]]) -> Iterator[_Update]:
        """Zero the gradients of the groups' optimizers, collect backward passes, then (on a normal
        exit) average, check and step. See the module docstring."""
        upd = _Update(self, groups)
        for names in upd.groups.values():
            for n in names:
                self.optims[n].zero_grad(set_to_none=True)
        yield upd
        upd.applied = upd.finish()

    # -- steps ---------------------------------------------------------------------------------
    def begin_step(self) -> None:
        self._skipped_groups = []
        self._snapshot = [b.detach().clone() for b in self._buffers]

    def end_step(self, stage: str, step: int, last_checkpoint: Optional[str] = None) -> List[str]:
        """Book-keeping after a training step; returns the groups whose update was skipped.

        Raises:
            NonFiniteError: ``nonfinite_limit`` steps in a row had a skipped update.
        """
        skipped = list(self._skipped_groups)
        if skipped:
            if self._snapshot is not None:
                with torch.no_grad():
                    for b, s in zip(self._buffers, self._snapshot):
                        b.copy_(s)
            self.consecutive += 1
            self.skipped_since_log += len(skipped)
            self.skipped_total += len(skipped)
        else:
            self.consecutive = 0
        self._snapshot = None
        if self.nonfinite_limit > 0 and self.consecutive >= self.nonfinite_limit:
            where = last_checkpoint or "none written yet"
            hint = (" Under fp16, try --precision bf16 (same range as fp32) or fp32." if self.precision == "fp16"
                    else "")
            raise NonFiniteError(
                f"stage {stage!r}: {self.consecutive} training steps in a row (the last at step {step + 1}) had a "
                f"NaN/Inf loss or gradient (updates skipped: {', '.join(skipped)}), reaching nonfinite_limit="
                f"{self.nonfinite_limit}. Stopping without writing a checkpoint; the last good checkpoint is "
                f"{where}. Common causes: a learning rate too high, diverged training, or bad input data.{hint}")
        return skipped

    def log_scalars(self) -> Dict[str, float]:
        """``skipped`` (updates skipped since the last call) and, under fp16, ``scale_<group>``."""
        rec = {"skipped": float(self.skipped_since_log)}
        self.skipped_since_log = 0
        for g, s in self.scalers.items():
            rec[f"scale_{g}"] = float(s.get_scale())
        return rec


def all_finite(modules: Sequence[torch.nn.Module]) -> bool:
    """Whether every floating-point parameter and buffer of ``modules`` is finite."""
    with torch.no_grad():
        for m in modules:
            for t in list(m.parameters()) + list(m.buffers()):
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    return False
    return True


__all__ = ["PRECISIONS", "GivenNoise", "NonFiniteError", "StepNoise", "Updater", "all_finite"]
