"""The training driver: builds the networks and data of a run, runs its stages, writes the run
folder and checkpoints, and resumes exactly.

Distributed runs (``torchrun``, one process per GPU) use the same driver: every process trains on its
slice of each global batch (see :mod:`sbgan_fast.train.dist` for how gradients are averaged), only
rank 0 writes logs, sample grids and checkpoints, and checkpoints carry every process's RNG state so
a resumed run with the same number of processes continues exactly.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, Optional

import torch

from ..config import TrainConfig, validate
from ..errors import Interrupted, RunExistsError, RunFolderError, signal_name
from ..models import build_networks, run_networks
from . import checkpoint as ckpt_io
from . import dist
from .amp import Updater
from .data_order import SampleStream, make_loader
from .logger import RunLogger
from .monitor import GPUMonitor, records, to_vector
from .noise import StepNoise
from .previews import RunPreviews
from .resume import RunCheckpoints
from .run import RunLock, StopSignals, check_writable
from .stages import STAGE_CLASSES, Stage, StageContext


class Trainer(RunCheckpoints, RunPreviews):
    """Runs ``cfg.stages`` in order in the run folder ``cfg.out``.

    With ``resume=True`` a stage with a final checkpoint is skipped (its networks are loaded), a
    stage with a latest checkpoint continues after its last completed step, and other stages start; a run
    folder without any checkpoint is an error (nothing to resume: a mistyped ``--out``). Without it, a stage
    whose own checkpoint is in the run folder is refused (nothing is overwritten); the checkpoints of other
    stages are fine (the next stage of a run starts from them).

    The stages see the run through :attr:`ctx` (a :class:`~sbgan_fast.train.stages.StageContext`: networks,
    optimizers, updater, noise, data sizes); checkpoints are :class:`~sbgan_fast.train.resume.RunCheckpoints`,
    sample grids and FID :class:`~sbgan_fast.train.previews.RunPreviews`."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False):
        validate(cfg)
        self.cfg = cfg
        self.resume = resume
        self.dist, self.device = dist.setup(cfg.device, cfg.dist_backend, cfg.dist_timeout)
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
        progan = "progan" in self.cfg.stages
        other = [os.path.basename(p) for s, paths in present.items() if (s == "progan") != progan for p in paths]
        if other:
            raise RunExistsError(f"run folder {self.out} holds {', '.join(other)} of "
                                 f"{'SB-GAN' if progan else 'the ProGAN baseline'}: ProGAN and SB-GAN runs go in "
                                 "separate run folders; choose another --out")
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
        dist.on_main(self._open_run_folder, self.dist)
        from ..data.factory import build_dataset
        self.dataset, info = build_dataset(cfg)
        self.dataset_size = len(self.dataset)
        self.num_classes = info["num_classes"]
        from ..data.factory import palette_for
        self.palette = palette_for(cfg, self.num_classes)
        self.stream = SampleStream(self.dataset_size, cfg.seed)
        torch.manual_seed(cfg.seed)
        self.nets = build_networks(cfg, self.num_classes, names=run_networks(cfg))
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        for net in self.nets.values():
            net.to(self.device, memory_format=fmt).train()
        # Built up front so a missing weights file is reported before any training happens.
        self.vgg = self._vgg() if any(s in cfg.stages for s in ("spade", "e2e")) else None
        if self.vgg is not None and self.channels_last:
            self.vgg.to(memory_format=torch.channels_last)
        if cfg.compile:     # in place: the modules, their state dicts and checkpoints stay the plain ones
            from .compiled import compile_networks
            compile_networks(self.nets, self.vgg)
        self.trained: set = set()   # networks trained or loaded so far: the ones checkpoints hold
        self.ema = None   # averaged generators (ema.enabled), built apart from the training RNG stream
        if cfg.ema.enabled:
            from ..models.ema import EMA_NETS, GeneratorEMA
            with torch.random.fork_rng(devices=[]):
                copies = build_networks(cfg, self.num_classes, names=[n for n in EMA_NETS if n in self.nets])
            for net in copies.values():
                net.to(self.device, memory_format=fmt).eval()
            self.ema = GeneratorEMA({n: self.nets[n] for n in copies}, copies, cfg.ema)
        self.current_step = 0
        g = torch.Generator().manual_seed(cfg.seed + 12345)
        n = cfg.n_sample_grid
        self.preview_z = torch.randn(n, cfg.seg.z_dim, generator=g).to(self.device)
        from ..data.factory import preview_label_maps   # label-only: the seg stage decodes no photo
        self.preview_labels = preview_label_maps(self.dataset, n).to(self.device)
        self.updater = Updater(cfg.precision, self.device, self.dist, cfg.nonfinite_limit)
        self.noise = StepNoise(cfg.dist_noise, self.dist, self.device)
        self.ctx = StageContext(cfg=cfg, device=self.device, dist=self.dist, nets=self.nets, updater=self.updater,
                                noise=self.noise, num_classes=self.num_classes, dataset_size=self.dataset_size,
                                channels_last=self.channels_last, vgg=self.vgg, preview_z=self.preview_z,
                                preview_labels=self.preview_labels, out=self.out, palette=self.palette,
                                log=self.log_message, ema=self.ema)
        self._last_ckpt: Optional[str] = None
        self._saved_step: Dict[str, int] = {}    # stage -> step of the checkpoint written last in this process
        # every checkpoint this run will load must fit its networks: checked before anything is written
        dist.on_main(self._check_checkpoints, self.dist)
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
                torch.manual_seed(dist.rank_seed(cfg.seed, self.dist.rank))
            dist.barrier(self.dist)

    def _describe_distributed(self) -> None:
        from ..models.discriminator import parse_norm_D
        from ..nn.spade import parse_norm_G
        cfg, info = self.cfg, self.dist
        import torch.distributed as tdist
        dist.warn_main(info, f"distributed: {info.world} processes ({tdist.get_backend()}), this one rank {info.rank} "
                          f"on {self.device}; precision {cfg.precision}, channels-last {self.channels_last}, "
                          f"accum {cfg.accum}, noise '{cfg.dist_noise}'")
        if parse_norm_G(cfg.spade.norm_G)[1] == "batch":
            dist.warn_main(info, f"spade.norm_G={cfg.spade.norm_G!r}: G_spd normalizes with each process's own batch "
                              "statistics; use a 'syncbatch' norm (e.g. spectralspadesyncbatch3x3) for statistics "
                              "over the global batch")
        if parse_norm_D(cfg.spade.norm_D)[1] == "batch":
            dist.warn_main(info, f"spade.norm_D={cfg.spade.norm_D!r}: per-process batch statistics in D_spd/D2; "
                              "'sync_batch' synchronizes them")

    def log_message(self, msg: str) -> None:
        """A line on stderr from rank 0 (kept clear of the progress bar)."""
        if not self.is_main:
            return
        if self.logger.bar is not None:
            self.logger.bar.write(msg, file=sys.stderr)
        else:
            print(msg, file=sys.stderr, flush=True)

    # -- the networks and their inputs (what the stages see through ``ctx``) --------------------------
    @property
    def optims(self) -> Dict[str, torch.optim.Optimizer]:
        """The optimizers of the current stage (the context's, shared with the updater)."""
        return self.ctx.optims

    @optims.setter
    def optims(self, optims: Dict[str, torch.optim.Optimizer]) -> None:
        self.ctx.optims = optims

    G_seg = property(lambda self: self.nets["G_seg"], doc="The segmentation generator.")
    D_seg = property(lambda self: self.nets["D_seg"], doc="The label-map discriminator.")
    G_spd = property(lambda self: self.nets["G_spd"], doc="The SPADE (label-to-image) generator.")
    D_spd = property(lambda self: self.nets["D_spd"], doc="The conditional image discriminator.")
    D2 = property(lambda self: self.nets["D2"], doc="The unconditional image discriminator of the e2e stage.")

    def fmt(self, x: torch.Tensor) -> torch.Tensor:
        """A 4-d float input in the networks' memory format (:meth:`StageContext.fmt`)."""
        return self.ctx.fmt(x)

    def onehot(self, labels: torch.Tensor, size=None, mode: str = "nearest") -> torch.Tensor:
        """Int (N,H,W) labels -> float one-hot with ``num_classes`` channels (:meth:`StageContext.onehot`)."""
        return self.ctx.onehot(labels, size=size, mode=mode)

    def label_ids(self, labels: torch.Tensor) -> torch.Tensor:
        """Int (N,H,W) labels as channel indices in [0, num_classes) (:meth:`StageContext.label_ids`)."""
        return self.ctx.label_ids(labels)

    def _vgg(self):
        c = self.cfg.spade
        if not c.vgg_loss:
            return None
        from ..models.vgg import VGGLoss
        return VGGLoss(c.vgg_weights).to(self.device)

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
        dist.teardown(self.dist)
        self._release_lock()

    def open_stage(self, name: str):
        """Build stage ``name`` with fresh optimizers and load what it starts from (its own checkpoint when
        resuming, else the earlier stages' networks); return ``(stage, first step)``, the step -1 when the
        stage is already done. With it a stage's step can be driven directly, e.g. with given noise::

            stage, _ = trainer.open_stage("e2e")
            stats = stage.step(step, {"label": labels, "image": images}, noise=GivenNoise({...}))

        (``labels`` int (N,H,W), ``images`` (N,3,H,W) uint8 or [-1, 1]; with ``data.hflip`` the step flips
        the batch as its schedule says.)"""
        cfg, info = self.cfg, self.dist
        stage: Stage = STAGE_CLASSES[name](self.ctx)
        dist.check_divisible(name, stage.batch_sizes(), info.world, cfg.accum)
        self.optims = stage.make_optimizers()
        self.updater.reset(self.optims, list(self.nets.values()))
        start = self._init_stage(stage)
        self.trained.update(stage.trains)
        if start >= 0:
            self.logger.truncate(name, start)   # steps after the checkpoint are logged again
        # every process starts the stage from rank 0's networks (identical by construction; cheap insurance)
        dist.broadcast_(dist.module_state_tensors(self.nets.values()), info)
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
        schedule = dist.shard_schedule(stage.schedule, info.rank, info.world)
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
        signum, failed_any = dist.all_reduce_(flags, self.dist, "max").tolist()
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

    def _stop_on_bad_data(self, stage: Stage, step: int, start: int, failure: Optional[BaseException]) -> None:
        """A batch could not be read (here or on another process): write the checkpoint of the last completed
        step, then stop with the failing file's message."""
        from ..data.datasets import DataError
        from ..errors import one_line
        path = self._checkpoint_before_stopping(stage, step, start)
        mine = None if failure is None else (isinstance(failure, DataError), one_line(failure),
                                             type(failure).__name__)
        seen = [(r, m) for r, m in enumerate(dist.all_gather_object(mine, self.dist)) if m is not None]
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
            dist.all_reduce_(vals, self.dist, "sum").div_(self.dist.world)
        return dict(zip(keys, vals.tolist()))

    def _monitor_sample(self) -> Dict[str, float]:
        """This process's GPU sample, gathered on every process, as flat log entries."""
        vecs = dist.all_gather_object(to_vector(self.monitor.sample()), self.dist)
        return records(vecs)


def train(cfg: TrainConfig, *, resume: bool = False) -> Trainer:
    """Build a :class:`Trainer` and run its stages (joins torchrun's process group when started by
    torchrun; see the README, 'Multi-GPU and multi-node')."""
    trainer = Trainer(cfg, resume=resume)
    trainer.run()
    return trainer
