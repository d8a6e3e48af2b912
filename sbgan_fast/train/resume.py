"""The checkpoints of a run, as the trainer uses them: which ones its stages will load and whether they fit its
networks (checked before anything is written), writing them (every process takes part), and loading what a
stage starts from (its own checkpoint when resuming, else the earlier stages' networks), RNG states included.

:class:`RunCheckpoints` is a part of :class:`~sbgan_fast.train.trainer.Trainer`; it uses the trainer's ``cfg``,
``out``, ``resume``, ``dist``, ``device``, ``nets``, ``trained``, ``optims``, ``updater`` and ``num_classes``.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import torch

from ..errors import CheckpointMismatchError
from ..models.build import ARCH_KEYS
from . import checkpoint as ckpt_io
from . import dist
from .amp import NonFiniteError, all_finite
from .stages import Stage


class RunCheckpoints:
    """Saving, checking and loading the checkpoints of a run (a part of the trainer)."""

    def _checkpoints_to_load(self):
        """[(path, stage expected or None, networks loaded from it or None for all)] that the stages of this run
        will load (mirrors :meth:`_init_stage`), and the G_seg source of synthetic label maps (classes only)."""
        cfg, out = self.cfg, self.out
        plan, seg_sources = [], []
        for name in cfg.stages:
            if self.resume:
                path = ckpt_io.find_checkpoint(out, name)
                if path is not None:
                    plan.append((path, name, None))
                    continue
            if name == "e2e":
                for prev in ("seg", "spade"):
                    path = None if prev in cfg.stages else ckpt_io.find_checkpoint(out, prev)
                    if path is not None:
                        plan.append((path, None, ("G_seg", "D_seg") if prev == "seg" else ("G_spd", "D_spd", "D2")))
        if "spade" in cfg.stages and cfg.spade.synthetic_labels > 0 and (cfg.spade.seg_checkpoint or
                                                                           "seg" not in cfg.stages):
            from .synthetic_labels import seg_checkpoint
            try:
                seg_sources.append(seg_checkpoint(cfg, out))
            except FileNotFoundError:
                pass   # reported by the spade stage, which needs it
        return plan, seg_sources

    def _check_checkpoints(self) -> None:
        """(rank 0) Compare each checkpoint this run will load with the run's classes and architecture.

        Raises:
            CheckpointMismatchError: naming the file, the config key (or network entry) and both values.
        """
        plan, seg_sources = self._checkpoints_to_load()
        for path in seg_sources:
            if os.path.isfile(path):
                ck = ckpt_io.load_checkpoint(path, verify=False, mmap=True)
                if int(ck.get("num_classes", -1)) != self.num_classes:
                    raise CheckpointMismatchError(
                        f"{path}: its G_seg makes {ck.get('num_classes')}-class label maps (num_classes), this run "
                        f"has {self.num_classes} classes; pass the seg checkpoint of a run on the same dataset")
        for path, stage, names in plan:
            ck = ckpt_io.load_checkpoint(path, verify=False, mmap=True)
            if stage is not None and ck["stage"] != stage:
                raise CheckpointMismatchError(f"{path} holds stage {ck['stage']!r}, expected {stage!r}")
            k = int(ck.get("num_classes", -1))
            if k != self.num_classes:
                raise CheckpointMismatchError(
                    f"{path} was written for {k} label classes, this run has {self.num_classes} (num_classes: "
                    f"data.num_classes {ck['config'].get('data', {}).get('num_classes')!r} vs "
                    f"{self.cfg.data.num_classes!r}, dataset {ck['config'].get('data', {}).get('dataset')!r} vs "
                    f"{self.cfg.data.dataset!r}); resume with the data it was trained on, or choose another --out")
            nets = [n for n in ck["nets"] if n in self.nets and (names is None or n in names)]
            mine, theirs = self.cfg.to_dict(), ck["config"]
            for net in nets:
                for key in ARCH_KEYS.get(net, ()):
                    a, b = _dotted(theirs, key), _dotted(mine, key)
                    if a != b:
                        raise CheckpointMismatchError(
                            f"{path} was written with {key}={_show(a)}, this run has {key}={_show(b)} (the shapes of "
                            f"{net} differ); use the value it was trained with, or choose another --out")
            for net in nets:
                have = {k: tuple(v.shape) for k, v in self.nets[net].state_dict().items()}
                got = {k: tuple(v.shape) for k, v in ck["nets"][net].items()}
                for key in sorted(set(have) | set(got)):
                    if have.get(key) != got.get(key):
                        raise CheckpointMismatchError(
                            f"{path}: {net}.{key} is {_shape(got.get(key))} in the checkpoint but "
                            f"{_shape(have.get(key))} in this run's network; use the settings the checkpoint was "
                            "written with (its config is stored in it), or choose another --out")

    def save(self, stage: str, step: int, *, done: bool, which: str) -> str:
        """Write a checkpoint (rank 0; every process takes part: finiteness check, RNG states).

        Raises:
            NonFiniteError: a saved network holds a NaN/Inf parameter or buffer (nothing is written).
        """
        nets = [v for k, v in self.nets.items() if k in self.trained]
        bad = torch.tensor([0.0 if all_finite(nets) else 1.0], device=self.device)
        if float(dist.all_reduce_(bad, self.dist, "max").item()) > 0:
            raise NonFiniteError(f"stage {stage!r} step {step}: a network holds NaN/Inf parameters or buffers; "
                                 f"refusing to write the {which} checkpoint (the last good one: "
                                 f"{self._last_ckpt or 'none'})")
        rngs = dist.all_gather_object(ckpt_io.rng_state(), self.dist)
        self.recalibrate_ema()   # every process: their averages stay identical
        path = ckpt_io.stage_checkpoint_path(self.out, stage, which)
        if self.is_main:
            state = {
                "format": ckpt_io.FORMAT, "stage": stage, "step": step, "done": done,
                "config": self.cfg.to_dict(), "num_classes": self.num_classes,
                "nets": {k: v.state_dict() for k, v in self.nets.items() if k in self.trained},
                "optims": {k: v.state_dict() for k, v in self.optims.items()},
                "scalers": self.updater.scaler_states(),
                "rng": rngs[0], "world_size": self.dist.world,
            }
            if self.dist.enabled:
                state["rng_ranks"] = rngs
            if self.ema is not None:
                state["ema"] = self.ema.state_dict(n for n in self.ema.nets if n in self.trained)
            ckpt_io.save_checkpoint(state, path)
        dist.barrier(self.dist)   # the file is complete before any process goes on (and may read it)
        self._last_ckpt = path
        self._saved_step[stage] = step
        return path

    def _restore_rng(self, ck: dict, path: str) -> None:
        """This process's RNG state from a checkpoint (its own when the process count matches)."""
        info = self.dist
        ranks = ck.get("rng_ranks")
        if not info.enabled:
            ckpt_io.set_rng_state(ck["rng"])
            return
        if ranks is not None and len(ranks) == info.world:
            ckpt_io.set_rng_state(ranks[info.rank])
            return
        saved = len(ranks) if ranks is not None else 1
        dist.warn_main(info, f"{path} was written by {saved} process(es), resuming with {info.world}: the noise of the "
                          "resumed steps is reseeded per process (the run continues, but not bit for bit)")
        ckpt_io.set_rng_state(ck["rng"])
        if self.cfg.dist_noise == "rank" and info.rank > 0:
            torch.manual_seed(dist.rank_seed(self.cfg.seed + int(ck["step"]), info.rank))

    def load_nets(self, ck: dict, names=None) -> None:
        for name, sd in ck["nets"].items():
            if names is not None and name not in names:
                continue
            if name in self.nets:
                self.nets[name].load_state_dict(sd)
                self.trained.add(name)
                self._load_ema(ck, name)

    def _load_ema(self, ck: dict, name: str) -> None:
        """The average of ``name`` from the checkpoint, or (a checkpoint written without ``ema``) restarted from
        the loaded weights with a warning."""
        if self.ema is None or name not in self.ema.nets:
            return
        state = ck.get("ema")
        if isinstance(state, dict) and name in state.get("nets", {}) and name in state.get("nimg", {}):
            self.ema.load(name, state)
            return
        self.ema.reset(name)
        dist.warn_main(self.dist, f"the checkpoint of stage {ck.get('stage')!r} (step {ck.get('step')}) holds no "
                                  f"moving average of {name}: its average starts from the loaded weights "
                                  "(ramp-up restarted)")

    def recalibrate_ema(self) -> None:
        """The batch-norm statistics of the averaged G_spd from the first ``ema.bn_maps`` real label maps of the
        dataset (:func:`sbgan_fast.models.ema.recalibrate_batchnorm`), in batches of ``spade.batch_size``."""
        n = self.cfg.ema.bn_maps
        if self.ema is None or n <= 0 or "G_spd" not in self.ema.nets or "G_spd" not in self.trained:
            return
        from ..data.factory import preview_label_maps
        from ..models.ema import recalibrate_batchnorm
        ids = self.label_ids(preview_label_maps(self.dataset, n).to(self.device))
        bs = max(1, self.cfg.spade.batch_size)
        recalibrate_batchnorm(self.ema.nets["G_spd"], (ids[i:i + bs] for i in range(0, len(ids), bs)))

    def _exists_everywhere(self, path: str) -> bool:
        return dist.exists_everywhere(path, self.dist)

    def _own_nets(self, stage: Stage, ck: dict):
        """The networks to take from a stage's own checkpoint: those it trains, and those not yet
        trained or loaded in this process. A network an earlier stage of this process has trained
        further (a resumed seg stage) is not replaced by the older copy the checkpoint carries."""
        return set(stage.trains) | {n for n in ck["nets"] if n not in self.trained}

    def _init_stage(self, stage: Stage) -> int:
        """Load what the stage starts from; return its first step."""
        name = stage.name
        final = ckpt_io.stage_checkpoint_path(self.out, name, "final")
        latest = ckpt_io.stage_checkpoint_path(self.out, name, "latest")
        if self.resume and self._exists_everywhere(final):
            ck = ckpt_io.load_checkpoint(final, map_location=self.device)
            self.load_nets(ck, names=self._own_nets(stage, ck))
            self._last_ckpt = final
            self.log_message(f"[sbgan_fast] stage {name} is complete ({final}): its networks are loaded")
            return -1
        if self.resume and self._exists_everywhere(latest):
            ck = ckpt_io.load_checkpoint(latest, map_location=self.device)
            if ck["stage"] != name:
                raise CheckpointMismatchError(f"{latest} holds stage {ck['stage']!r}, expected {name!r}")
            self.log_message(f"[sbgan_fast] resuming stage {name} after step {int(ck['step'])} ({latest})")
            self.load_nets(ck, names=self._own_nets(stage, ck))
            for k, opt in self.optims.items():
                if k not in ck.get("optims", {}):
                    raise CheckpointMismatchError(f"{latest} lacks the optimizer state of {k}: that run trained "
                                                  f"{sorted(ck.get('optims', {}))}; resume with the settings it was "
                                                  "started with (e.g. the same spade.synthetic_labels)")
                opt.load_state_dict(ck["optims"][k])
            self.updater.load_scaler_states(ck.get("scalers", {}))
            self._restore_rng(ck, latest)
            self._last_ckpt = latest
            return int(ck["step"])
        if name == "e2e":
            # start from the trained seg and spade networks of this run folder
            for prev in ("seg", "spade"):
                if prev in self.cfg.stages:
                    continue  # trained in this process (or loaded when it was skipped)
                path = ckpt_io.find_checkpoint(self.out, prev)
                if path is not None and not self._exists_everywhere(path):
                    path = None
                if path is None:
                    raise FileNotFoundError(
                        f"stage 'e2e' needs the trained {prev!r} networks: no {prev}-final.pt or {prev}-latest.pt in "
                        f"{os.path.join(self.out, 'checkpoints')}; run --stage {prev} first with the same --out")
                ck = ckpt_io.load_checkpoint(path, map_location=self.device)
                # D2 too when the spade stage trained it (spade.synthetic_labels), as in a single process
                self.load_nets(ck, names=("G_seg", "D_seg") if prev == "seg" else ("G_spd", "D_spd", "D2"))
        return 0

    def _checkpoint_before_stopping(self, stage: Stage, step: int, start: int) -> Optional[str]:
        """The latest checkpoint of ``step`` completed steps (written unless there is one already); the path of
        the checkpoint to resume from, or None when there is none."""
        if step > start and self._saved_step.get(stage.name) != step:
            return self.save(stage.name, step, done=False, which="latest")
        return self._last_ckpt


def _dotted(d: dict, key: str):
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _shape(s) -> str:
    return "absent" if s is None else f"shape {s}"


def _show(v) -> str:
    return "(absent)" if v is None else json.dumps(v) if isinstance(v, (str, bool)) else repr(v)
