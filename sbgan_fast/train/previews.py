"""What a run shows while it trains: sample grids (a failure is reported and training goes on; drawn with the
moving averages of the generators when ``ema.enabled``, as ``sample`` and ``eval`` do) and periodic FID.

:class:`RunPreviews` is a part of :class:`~sbgan_fast.train.trainer.Trainer`; it uses the trainer's ``cfg``,
``out``, ``dist``, ``device``, ``is_main``, ``num_classes``, ``palette``, ``logger`` and ``log_message``.
"""
from __future__ import annotations

import contextlib
import os
import time
from typing import Dict, Optional

from . import dist
from .stages import Stage


class RunPreviews:
    """Sample grids and periodic FID of a run (a part of the trainer)."""

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
        dist.barrier(self.dist)
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

    @contextlib.contextmanager
    def _preview_generators(self, stage: Stage):
        """With ``ema.enabled``, the stage draws its grid with the moving averages of its generators, as ``sample``
        and ``eval`` do: they take the trained networks' places in ``stage.nets`` meanwhile, the averaged G_spd
        with its batch-norm statistics recomputed on real maps (in place, as the periodic FID and every
        checkpoint do). Without averages the trained generators draw it."""
        ema = self.ema
        if ema is None:
            yield
            return
        self.recalibrate_ema()
        swap = {n: net for n, net in ema.nets.items() if n in stage.nets}
        trained = {n: stage.nets[n] for n in swap}
        try:
            stage.nets.update(swap)
            yield
        finally:
            stage.nets.update(trained)

    def save_grid(self, stage: Stage, step: int) -> Optional[str]:
        from ..metrics.grids import make_grid_array, save_pairs_grid
        with self._preview_generators(stage):
            labels, images = stage.preview(step)
        if labels is None and images is None:
            return None
        path = os.path.join(self.out, "samples", f"{stage.name}-{step:07d}.png")
        dc = self.cfg.data.dontcare   # real maps hold the value itself, generated ones its channel (same colour)
        labels, images = (None if t is None else t.cpu() for t in (labels, images))
        save_pairs_grid(labels, images, self.palette, path, dontcare=dc)
        self.logger.image(f"{stage.name}/samples", make_grid_array(labels, images, self.palette, dontcare=dc), step)
        return path
