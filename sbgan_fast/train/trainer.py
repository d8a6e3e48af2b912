"""The training driver: builds the networks and data of a run, runs its stages, writes the run
folder and checkpoints, and resumes exactly.

Distributed runs (``torchrun``, one process per GPU) use the same driver: every process trains on its
slice of each global batch (see :mod:`sbgan_fast.train.dist` for how gradients are averaged), only
rank 0 writes logs, sample grids and checkpoints, and checkpoints carry every process's RNG state so
a resumed run with the same number of processes continues exactly.
"""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Dict, Optional

import torch

from ..errors import CheckpointMismatchError, Interrupted, RunExistsError, RunFolderError, signal_name
from . import checkpoint as ckpt_io
from . import dist as D
from .amp import NonFiniteError, StepNoise, Updater, all_finite
from ..config import TrainConfig, validate
from ..models import NET_NAMES, build_networks, label_ids, one_hot_labels
from ..models.build import ARCH_KEYS
from .monitor import GPUMonitor, records, to_vector
from .run import RunLock, RunLogger, SampleStream, StopSignals, check_writable, make_loader
from .stages import STAGE_CLASSES, Stage

class Trainer:
    """Runs ``cfg.stages`` in order in the run folder ``cfg.out``.

    With ``resume=True`` a stage with a final checkpoint is skipped (its networks are loaded), a
    stage with a latest checkpoint continues after its last completed step, and other stages start; a run
    folder without any checkpoint is an error (nothing to resume: a mistyped ``--out``). Without it, a stage
    whose own checkpoint is in the run folder is refused (nothing is overwritten); the checkpoints of other
    stages are fine (the next stage of a run starts from them)."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False):
        validate(cfg)
        self.cfg = cfg
        self.resume = resume
        self.dist, self.device = D.setup(cfg.device, cfg.dist_backend, cfg.dist_timeout)
        self.is_main = self.dist.is_main
        self.out = cfg.out
        self._lock: Optional[RunLock] = None
        self.logger: Optional[RunLogger] = None
        self.monitor: Optional[GPUMonitor] = None
        try:
            self._setup()
        except BaseException:
            if self.logger is not None:
                self.logger.close()
            self._release_lock()
            raise

    def _open_run_folder(self) -> None:
        """(rank 0) Check what the run folder holds against ``resume``, take its lock, remove the temporary files
        of killed checkpoint writes, check that it is writable."""
        ck_dir = os.path.join(self.out, "checkpoints")
        present = {s: [p for p in (ckpt_io.stage_checkpoint_path(self.out, s, w) for w in ("final", "latest"))
                       if os.path.isfile(p)] for s in STAGE_CLASSES}
        if self.resume and not any(present.values()):
            raise RunFolderError(f"--resume: {ck_dir} holds no checkpoint, so there is nothing to resume (is --out "
                                 f"right?); leave out --resume to start a new run in {self.out}")
        self._lock = RunLock.acquire(self.out, log=lambda m: print(m, file=sys.stderr, flush=True))
        removed = ckpt_io.remove_temporary_files(ck_dir)
        if removed:
            print(f"[sbgan_fast] removed {len(removed)} temporary file(s) of interrupted checkpoint writes from "
                  f"{ck_dir}", file=sys.stderr, flush=True)
        if not self.resume:
            clash = [os.path.basename(p) for s in self.cfg.stages for p in present[s]]
            if clash:
                raise RunExistsError(f"run folder {self.out} already holds {', '.join(clash)}: running that stage "
                                     "again would overwrite it; pass --resume to continue that run, or choose "
                                     "another --out")
        check_writable(self.out)   # before any training, not at the first save

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _setup(self) -> None:
        cfg = self.cfg
        self.channels_last = cfg.channels_last if cfg.channels_last is not None else self.device.type == "cuda"
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = bool(cfg.cudnn_benchmark)
        D.on_main(self._open_run_folder, self.dist)
        from ..data.factory import build_dataset
        self.dataset, info = build_dataset(cfg)
        self.dataset_size = len(self.dataset)
        self.num_classes = info["num_classes"]
        from ..data.factory import palette_for
        self.palette = palette_for(cfg, self.num_classes)
        self.stream = SampleStream(self.dataset_size, cfg.seed)
        torch.manual_seed(cfg.seed)
        self.nets = build_networks(cfg, self.num_classes)
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        for net in self.nets.values():
            net.to(self.device, memory_format=fmt).train()
        # Built up front so a missing weights file is reported before any training happens.
        self.vgg = self._vgg() if any(s in cfg.stages for s in ("spade", "e2e")) else None
        if self.vgg is not None and self.channels_last:
            self.vgg.to(memory_format=torch.channels_last)
        self.optims: Dict[str, torch.optim.Optimizer] = {}
        self.trained: set = set()   # networks trained or loaded so far: the ones checkpoints hold
        self.current_step = 0
        g = torch.Generator().manual_seed(cfg.seed + 12345)
        n = cfg.n_sample_grid
        self.preview_z = torch.randn(n, cfg.seg.z_dim, generator=g).to(self.device)
        from ..data.factory import preview_label_maps   # label-only: the seg stage decodes no photo
        self.preview_labels = preview_label_maps(self.dataset, n).to(self.device)
        self.updater = Updater(cfg.precision, self.device, self.dist, cfg.nonfinite_limit)
        self.noise = StepNoise(cfg.dist_noise, self.dist, self.device)
        self._last_ckpt: Optional[str] = None
        self._saved_step: Dict[str, int] = {}    # stage -> step of the checkpoint written last in this process
        # every checkpoint this run will load must fit its networks: checked before anything is written
        D.on_main(self._check_checkpoints, self.dist)
        self.logger = RunLogger(cfg, self.out, enabled=self.is_main)
        if self.is_main:
            os.makedirs(self.out, exist_ok=True)
            with open(os.path.join(self.out, "config.json"), "w", encoding="utf-8") as f:
                f.write(cfg.to_json())
        self.monitor = GPUMonitor(self.device, quiet=not self.is_main) if cfg.monitor_every > 0 else None
        self.fid_extractor = self._fid_extractor() if cfg.fid_every > 0 and self.is_main else None
        self._fid_skipped: set = set()
        self._grid_failures: Dict[str, list] = {}   # stage -> steps whose sample grid could not be written
        self.signals = StopSignals(say=self.is_main)
        if self.dist.enabled:
            self._describe_distributed()
            if cfg.dist_noise == "rank" and self.dist.rank > 0:
                # Each process draws its own noise (z, Gumbel, GP weights); rank 0 keeps the stream of a
                # single-process run. The networks were initialised above from the common seed.
                torch.manual_seed(D.rank_seed(cfg.seed, self.dist.rank))
            D.barrier(self.dist)

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

    def _describe_distributed(self) -> None:
        from ..models.discriminator import parse_norm_D
        from ..nn.spade import parse_norm_G
        cfg, info = self.cfg, self.dist
        import torch.distributed as dist
        D.warn_main(info, f"distributed: {info.world} processes ({dist.get_backend()}), this one rank {info.rank} "
                          f"on {self.device}; precision {cfg.precision}, channels-last {self.channels_last}, "
                          f"accum {cfg.accum}, noise '{cfg.dist_noise}'")
        if parse_norm_G(cfg.spade.norm_G)[1] == "batch":
            D.warn_main(info, f"spade.norm_G={cfg.spade.norm_G!r}: G_spd normalizes with each process's own batch "
                              "statistics; use a 'syncbatch' norm (e.g. spectralspadesyncbatch3x3) for statistics "
                              "over the global batch")
        if parse_norm_D(cfg.spade.norm_D)[1] == "batch":
            D.warn_main(info, f"spade.norm_D={cfg.spade.norm_D!r}: per-process batch statistics in D_spd/D2; "
                              "'sync_batch' synchronizes them")

    def log_message(self, msg: str) -> None:
        """A line on stderr from rank 0 (kept clear of the progress bar)."""
        if not self.is_main:
            return
        if self.logger.bar is not None:
            self.logger.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    def _fid_extractor(self):
        """The Inception network of periodic FID, built up front so that a missing weights file or validation
        split is reported before any training happens."""
        from ..metrics.evaluate import callback_eval_dataset
        from ..metrics.fid import FIDExtractor
        cfg = self.cfg
        ext = FIDExtractor(cfg.fid_variant, cfg.fid_weights, device=self.device, batch_size=cfg.fid_batch)
        callback_eval_dataset(cfg, self.num_classes, cfg.fid_n_real or None, self.log_message)  # reused by log_fid
        return ext

    def log_fid(self, stage: "Stage", step: int) -> Dict[str, float]:
        """FID of the current generators (rank 0; the others wait), logged with the stage's image count.
        Its time is left out of the images/s figure."""
        t0 = time.perf_counter()
        rec: Dict[str, float] = {}
        if self.is_main:
            from ..metrics.evaluate import fid_callback
            cfg = self.cfg
            rec = fid_callback(self, cfg.fid_n, variant=cfg.fid_variant, inception_weights=cfg.fid_weights,
                               cache_dir=cfg.fid_cache, batch_size=cfg.fid_batch, seed=cfg.seed,
                               n_real=cfg.fid_n_real or None, extractor=self.fid_extractor, log=self.log_message)
        D.barrier(self.dist)
        seconds = time.perf_counter() - t0
        self.logger.pause(seconds)
        if rec:
            rec["fid_time_s"] = seconds
            self.logger.log(stage.name, step, stage.images_done(step), rec)
            self.log_message(f"[fid] {stage.name} step {step}: " + ", ".join(
                f"{k} {v:.3f}" for k, v in rec.items() if k in ("fid", "fid_cond")))
        elif stage.name not in self._fid_skipped:
            self._fid_skipped.add(stage.name)
            self.log_message(f"[fid] no FID during the {stage.name} stage: G_spd has not been trained yet (FID needs "
                             "images; it starts with the spade stage)")
        return rec

    def fid_due(self, stage: "Stage", step: int) -> bool:
        """Whether step ``step`` (just completed, 1-based) crossed a multiple of ``fid_every`` images."""
        k = self.cfg.fid_every
        return k > 0 and stage.images_done(step) // k > stage.images_done(step - 1) // k

    def fmt(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-d float input in the networks' memory format (channels-last when configured)."""
        if self.channels_last and x.dim() == 4 and x.is_floating_point():
            return x.contiguous(memory_format=torch.channels_last)
        return x

    # -- attribute access to the networks --------------------------------------------------
    def __getattr__(self, name):
        if name in NET_NAMES and "nets" in self.__dict__:
            return self.__dict__["nets"][name]
        raise AttributeError(name)

    def onehot(self, labels: torch.Tensor, size=None, mode: str = "nearest") -> torch.Tensor:
        """Int (N,H,W) labels -> float one-hot with ``num_classes`` channels (the don't-care value, if
        configured, maps to the last channel), optionally resized to ``size`` with the rule ``mode``
        ('nearest': torch's, the corner of each source block; 'nearest-exact': its centre, as PIL's NEAREST)."""
        return one_hot_labels(labels, self.cfg.data.dontcare, self.num_classes, size=size, mode=mode,
                              impl=self.cfg.impl)

    def label_ids(self, labels: torch.Tensor) -> torch.Tensor:
        """Int (N,H,W) labels as channel indices in [0, num_classes): the don't-care value, if
        configured, becomes the last channel. The networks' integer-label (gather) paths take these."""
        return label_ids(labels, self.cfg.data.dontcare, self.num_classes)

    def _vgg(self):
        c = self.cfg.spade
        if not c.vgg_loss:
            return None
        from ..models.vgg import VGGLoss
        return VGGLoss(c.vgg_weights).to(self.device)

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, stage: str, step: int, *, done: bool, which: str) -> str:
        """Write a checkpoint (rank 0; every process takes part: finiteness check, RNG states).

        Raises:
            NonFiniteError: a saved network holds a NaN/Inf parameter or buffer (nothing is written).
        """
        nets = [v for k, v in self.nets.items() if k in self.trained]
        bad = torch.tensor([0.0 if all_finite(nets) else 1.0], device=self.device)
        if float(D.all_reduce_(bad, self.dist, "max").item()) > 0:
            raise NonFiniteError(f"stage {stage!r} step {step}: a network holds NaN/Inf parameters or buffers; "
                                 f"refusing to write the {which} checkpoint (the last good one: "
                                 f"{self._last_ckpt or 'none'})")
        rngs = D.all_gather_object(ckpt_io.rng_state(), self.dist)
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
            ckpt_io.save_checkpoint(state, path)
        D.barrier(self.dist)   # the file is complete before any process goes on (and may read it)
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
        D.warn_main(info, f"{path} was written by {saved} process(es), resuming with {info.world}: the noise of the "
                          "resumed steps is reseeded per process (the run continues, but not bit for bit)")
        ckpt_io.set_rng_state(ck["rng"])
        if self.cfg.dist_noise == "rank" and info.rank > 0:
            torch.manual_seed(D.rank_seed(self.cfg.seed + int(ck["step"]), info.rank))

    def load_nets(self, ck: dict, names=None) -> None:
        for name, sd in ck["nets"].items():
            if names is not None and name not in names:
                continue
            if name in self.nets:
                self.nets[name].load_state_dict(sd)
                self.trained.add(name)

    # -- running ---------------------------------------------------------------------------
    def run(self) -> None:
        """Run the stages. SIGTERM, SIGINT and SIGUSR1 stop the run after the current step and a checkpoint
        (:class:`~sbgan_fast.errors.Interrupted`; see :class:`~sbgan_fast.train.run.StopSignals`)."""
        self.signals.install()
        try:
            stages = list(self.cfg.stages)
            for i, stage_name in enumerate(stages):
                self.run_stage(stage_name)
                if i + 1 < len(stages):
                    signum, _ = self._stop_flags(False)
                    if signum:
                        raise Interrupted(f"stopped by {signal_name(signum)} after stage {stage_name} (complete: "
                                          f"{self._last_ckpt})", signum, self._last_ckpt)
        finally:
            self.signals.restore()
            self.close()

    def close(self) -> None:
        """Close the logs and the monitor; leave the process group if this trainer created it; release the
        run folder's lock."""
        if self.logger is not None:
            self.logger.close()
        if self.monitor is not None:
            self.monitor.close()
        D.teardown(self.dist)
        self._release_lock()

    def _exists_everywhere(self, path: str) -> bool:
        return D.exists_everywhere(path, self.dist)

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

    def open_stage(self, name: str):
        """Build stage ``name`` with fresh optimizers and load what it starts from (its own checkpoint when
        resuming, else the earlier stages' networks); return ``(stage, first step)``, the step -1 when the
        stage is already done. With it a stage's step can be driven directly, e.g. with given noise::

            stage, _ = trainer.open_stage("e2e")
            stats = stage.step(step, {"label": labels, "image": images}, noise=GivenNoise({...}))

        (``labels`` int (N,H,W), ``images`` (N,3,H,W) uint8 or [-1, 1]; with ``data.hflip`` the step flips
        the batch as its schedule says.)"""
        cfg, info = self.cfg, self.dist
        stage: Stage = STAGE_CLASSES[name](self)
        D.check_divisible(name, stage.batch_sizes(), info.world, cfg.accum)
        self.optims = stage.make_optimizers()
        self.updater.reset(self.optims, list(self.nets.values()))
        start = self._init_stage(stage)
        self.trained.update(stage.trains)
        if start >= 0:
            self.logger.truncate(name, start)   # steps after the checkpoint are logged again
        # every process starts the stage from rank 0's networks (identical by construction; cheap insurance)
        D.broadcast_(D.module_state_tensors(self.nets.values()), info)
        return stage, start

    def run_stage(self, name: str) -> None:
        cfg, info = self.cfg, self.dist
        stage, start = self.open_stage(name)
        if start < 0:
            return
        stage.prepare()
        if name == "seg" and cfg.data.dataset != "synthetic" and not cfg.data.cache:
            self.log_message("[sbgan_fast] hint: the seg stage decodes a full label map for every sample, and its "
                             "low-resolution steps can consume them faster than that (bench/RESULTS.md); "
                             "data.cache=DIR decodes the dataset once into a uint8 store")
        total = stage.total_steps()
        end = min(total, cfg.max_steps) if cfg.max_steps > 0 else total
        self.logger.start_stage(name, start, end, stage.images_per_step())
        if self.monitor is not None:
            self.monitor.reset_peak()
        last_monitor = start
        schedule = D.shard_schedule(stage.schedule, info.rank, info.world)
        loader = make_loader(self.dataset, self.stream, schedule, start, end, cfg.data.num_workers, cfg.seed,
                             device=self.device, need_image=name != "seg")
        acc: Dict[str, torch.Tensor] = {}
        count = 0
        batches = iter(loader)
        self.signals.guard_loader_workers()
        for step in range(start, end):
            batch, failure = self._next_batch(batches, name, step)
            signum, failed = self._stop_flags(failure is not None)
            if signum:
                self._stop_on_signal(stage, step, start, signum)
            if failed:
                self._stop_on_bad_data(stage, step, start, failure)
            lrs = stage.set_lr(step)
            self.updater.begin_step()
            scalars = stage.step(step, batch)
            skipped_files = batch.get("skipped_files") if isinstance(batch, dict) else None
            skipped = self.updater.end_step(name, step, self._last_ckpt)
            if not skipped:   # a skipped step's losses are NaN/Inf: kept out of the means
                for k, v in scalars.items():
                    acc[k] = acc.get(k, 0.0) + v.detach().float()
                count += 1
            self.current_step = step + 1
            self.logger.advance()
            done = step + 1 == total
            if (step + 1) % cfg.log_every == 0 or step + 1 == end:
                rec = self._mean_over_processes({k: v / count for k, v in acc.items()} if count else {})
                rec.update(lrs)
                rec.update(self.updater.log_scalars())
                if skipped_files is not None:  # bad data files skipped so far (data.skip_bad_files)
                    rec["skipped_files"] = float(skipped_files)
                if self.monitor is not None and self.monitor.enabled and (
                        step + 1 - last_monitor >= cfg.monitor_every or step + 1 == end):
                    rec.update(self._monitor_sample())
                    last_monitor = step + 1
                self.logger.log(name, step + 1, stage.images_done(step + 1), rec)
                acc, count = {}, 0
            # the checkpoint of a step comes first: nothing after it (a preview, FID) can cost it
            if step + 1 == end:
                self.save(name, end, done=done, which="final" if done else "latest")
            elif cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0:
                self.save(name, step + 1, done=False, which="latest")
            if self.is_main and cfg.sample_every and ((step + 1) % cfg.sample_every == 0 or step + 1 == end):
                self._save_grid_or_say_why(stage, step + 1)
            if self.fid_due(stage, step + 1):
                self.log_fid(stage, step + 1)
        self.current_step = end
        self._report_grid_failures(stage)
        self.logger.end_stage()

    @staticmethod
    def _next_batch(batches, stage: str, step: int):
        """(batch, None), or (None, the exception) when reading it failed (a file that does not decode)."""
        try:
            return next(batches), None
        except StopIteration:
            raise RuntimeError(f"stage {stage!r}: the loader ended before step {step + 1}") from None
        except Exception as e:  # noqa: BLE001 - handled by the caller, after every process has said
            return None, e

    def _stop_flags(self, failed: bool):
        """(a stop signal received by any process (0: none), whether any process failed to read its batch),
        agreed by every process: one 2-element all-reduce per step under torchrun, so that all of them stop
        at the same step."""
        if not self.dist.enabled:
            return self.signals.received, failed
        flags = torch.tensor([float(self.signals.received), 1.0 if failed else 0.0], device=self.device)
        signum, failed_any = D.all_reduce_(flags, self.dist, "max").tolist()
        return int(signum), failed_any > 0

    def _stop_on_signal(self, stage: Stage, step: int, start: int, signum: int) -> None:
        path = self._checkpoint_before_stopping(stage, step, start)
        if path and step > start:
            what = f"the checkpoint of step {step} is {path}"
        elif path:
            what = f"no step was completed since {path}"
        else:
            what = "no step was completed, no checkpoint written"
        raise Interrupted(f"stopped by {signal_name(signum)} after step {step} of stage {stage.name}; {what}",
                          signum, path)

    def _checkpoint_before_stopping(self, stage: Stage, step: int, start: int) -> Optional[str]:
        """The latest checkpoint of ``step`` completed steps (written unless there is one already); the path of
        the checkpoint to resume from, or None when there is none."""
        if step > start and self._saved_step.get(stage.name) != step:
            return self.save(stage.name, step, done=False, which="latest")
        return self._last_ckpt

    def _stop_on_bad_data(self, stage: Stage, step: int, start: int, failure: Optional[BaseException]) -> None:
        """A batch could not be read (here or on another process): write the checkpoint of the last completed
        step, then stop with the failing file's message."""
        from ..data.datasets import DataError
        from ..errors import one_line
        path = self._checkpoint_before_stopping(stage, step, start)
        mine = None if failure is None else (isinstance(failure, DataError), one_line(failure),
                                             type(failure).__name__)
        seen = [(r, m) for r, m in enumerate(D.all_gather_object(mine, self.dist)) if m is not None]
        rank, (is_data, msg, kind) = seen[0]
        where = f" (rank {rank})" if self.dist.enabled else ""
        saved = (f"the checkpoint of step {step} is {path}" if path and step > start else
                 f"no step was completed since {path}" if path else "no checkpoint has been written")
        text = (f"{msg}{where}: stopped before step {step + 1} of stage {stage.name}; {saved}. Fix or remove that "
                f"file (or set data.skip_bad_files=true), then continue with --resume")
        if not is_data:   # not a data error: kept as it is (its traceback), after the checkpoint
            if failure is not None:
                self.log_message(f"[sbgan_fast] reading the batch of step {step + 1} failed ({kind}); {saved}")
                raise failure
            raise RuntimeError(f"rank {rank} could not read its batch of step {step + 1} ({kind}: {msg}); {saved}")
        raise DataError(text, getattr(failure, "path", None)) from failure

    def _mean_over_processes(self, scalars: Dict[str, torch.Tensor]) -> Dict[str, float]:
        """Scalar tensors -> floats, averaged over the processes (the global batch's values)."""
        if not scalars:
            return {}
        keys = list(scalars)
        vals = torch.stack([torch.as_tensor(scalars[k], dtype=torch.float32).to(self.device) for k in keys])
        if self.dist.enabled:
            D.all_reduce_(vals, self.dist, "sum").div_(self.dist.world)
        return dict(zip(keys, vals.tolist()))

    def _monitor_sample(self) -> Dict[str, float]:
        """This process's GPU sample, gathered on every process, as flat log entries."""
        vecs = D.all_gather_object(to_vector(self.monitor.sample()), self.dist)
        return records(vecs)

    def _save_grid_or_say_why(self, stage: Stage, step: int) -> None:
        """:meth:`save_grid`; a failure is reported (its first time in a stage, as one line) and training goes
        on: a preview is never worth a run."""
        try:
            self.save_grid(stage, step)
        except Exception as e:  # noqa: BLE001 - any failure of a preview
            from ..errors import one_line
            failed = self._grid_failures.setdefault(stage.name, [])
            failed.append(step)
            if len(failed) == 1:
                self.log_message(f"[sbgan_fast] sample grid of stage {stage.name} step {step} not written "
                                 f"({type(e).__name__}: {one_line(e)}); training goes on")

    def _report_grid_failures(self, stage: Stage) -> None:
        failed = self._grid_failures.pop(stage.name, [])
        if len(failed) > 1:
            self.log_message(f"[sbgan_fast] {len(failed)} sample grids of stage {stage.name} were not written "
                             f"(steps {failed[0]}..{failed[-1]}); the first failure is reported above")

    def save_grid(self, stage: Stage, step: int) -> Optional[str]:
        from ..metrics.grids import make_grid_array, save_pairs_grid
        labels, images = stage.preview()
        if labels is None:
            return None
        path = os.path.join(self.out, "samples", f"{stage.name}-{step:07d}.png")
        dc = self.cfg.data.dontcare   # real maps hold the value itself, generated ones its channel (same colour)
        save_pairs_grid(labels.cpu(), None if images is None else images.cpu(), self.palette, path, dontcare=dc)
        self.logger.image(f"{stage.name}/samples", make_grid_array(
            labels.cpu(), None if images is None else images.cpu(), self.palette, dontcare=dc), step)
        return path


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


def train(cfg: TrainConfig, *, resume: bool = False) -> Trainer:
    """Build a :class:`Trainer` and run its stages (joins torchrun's process group when started by
    torchrun; see the README, 'Multi-GPU and multi-node')."""
    trainer = Trainer(cfg, resume=resume)
    trainer.run()
    return trainer


def describe(cfg: TrainConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2)
