"""The training driver: builds the networks and data of a run, runs its stages, writes the run
folder and checkpoints, and resumes exactly."""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import torch

from .. import ops
from . import checkpoint as ckpt_io
from .config import TrainConfig, validate
from .run import RunLogger, SampleStream, make_loader, resolve_device
from .stages import STAGE_CLASSES, Stage

NET_NAMES = ("G_seg", "D_seg", "G_spd", "D_spd", "D2")


def build_networks(cfg: TrainConfig, num_classes: int, names=NET_NAMES) -> Dict[str, torch.nn.Module]:
    """The five networks of SB-GAN for ``num_classes`` label channels, as the config describes."""
    from ..models.discriminator import MultiscaleDiscriminator
    from ..models.seg import SegDiscriminator, SegGenerator
    from ..models.spade_gen import SPADEGenerator

    s, p, e = cfg.seg, cfg.spade, cfg.e2e
    nets: Dict[str, torch.nn.Module] = {}
    if "G_seg" in names:
        nets["G_seg"] = SegGenerator(num_classes, max_dim=s.max_dim, aspect_ratio=s.aspect_ratio, z_dim=s.z_dim,
                                     pixel_norm=s.pixel_norm, width_mult=s.width_mult)
    if "D_seg" in names:
        nets["D_seg"] = SegDiscriminator(num_classes, max_dim=s.max_dim, aspect_ratio=s.aspect_ratio,
                                         width_mult=s.width_mult)
    if "G_spd" in names:
        nets["G_spd"] = SPADEGenerator(num_classes, contain_dontcare_label=p.contain_dontcare_label, ngf=p.ngf,
                                       num_upsampling_layers=p.num_upsampling_layers, crop_size=p.crop_size,
                                       aspect_ratio=p.aspect_ratio, norm_G=p.norm_G, detach_seg=e.detach_seg,
                                       impl=cfg.impl)
    if "D_spd" in names:
        nets["D_spd"] = MultiscaleDiscriminator(num_classes, conditional=True,
                                                contain_dontcare_label=p.contain_dontcare_label, ndf=p.ndf,
                                                n_layers_D=p.n_layers_D, num_D=p.num_D, norm_D=p.norm_D)
    if "D2" in names:
        nets["D2"] = MultiscaleDiscriminator(num_classes, conditional=False, ndf=p.ndf, n_layers_D=p.n_layers_D,
                                             num_D=p.num_D, norm_D=p.norm_D)
    return nets


class Trainer:
    """Runs ``cfg.stages`` in order in the run folder ``cfg.out``.

    With ``resume=True`` a stage with a final checkpoint is skipped (its networks are loaded), a
    stage with a latest checkpoint continues after its last completed step, and other stages start.
    Without it, a run folder that already holds checkpoints is refused (nothing is overwritten)."""

    def __init__(self, cfg: TrainConfig, *, resume: bool = False):
        validate(cfg)
        self.cfg = cfg
        self.resume = resume
        self.device = resolve_device(cfg.device)
        self.out = cfg.out
        ck_dir = os.path.join(self.out, "checkpoints")
        if not resume and os.path.isdir(ck_dir) and any(f.endswith(".pt") for f in os.listdir(ck_dir)):
            raise FileExistsError(f"run folder {self.out} already holds checkpoints; pass --resume to continue "
                                  "that run, or choose another --out")
        from ..data.factory import build_dataset
        self.dataset, info = build_dataset(cfg)
        self.dataset_size = len(self.dataset)
        self.num_classes = info["num_classes"]
        from ..data.factory import palette_for
        self.palette = palette_for(cfg, self.num_classes)
        self.stream = SampleStream(self.dataset_size, cfg.seed)
        torch.manual_seed(cfg.seed)
        self.nets = build_networks(cfg, self.num_classes)
        for net in self.nets.values():
            net.to(self.device).train()
        # Built up front so a missing weights file is reported before any training happens.
        self.vgg = self._vgg() if any(s in cfg.stages for s in ("spade", "e2e")) else None
        self.optims: Dict[str, torch.optim.Optimizer] = {}
        self.trained: set = set()   # networks trained or loaded so far: the ones checkpoints hold
        self.current_step = 0
        g = torch.Generator().manual_seed(cfg.seed + 12345)
        n = cfg.n_sample_grid
        self.preview_z = torch.randn(n, cfg.seg.z_dim, generator=g).to(self.device)
        self.preview_labels = torch.stack(
            [self.dataset[i]["label"] for i in range(min(n, self.dataset_size))]).long().to(self.device)
        self.logger = RunLogger(cfg, self.out)
        os.makedirs(self.out, exist_ok=True)
        with open(os.path.join(self.out, "config.json"), "w", encoding="utf-8") as f:
            f.write(cfg.to_json())

    # -- attribute access to the networks --------------------------------------------------
    def __getattr__(self, name):
        if name in NET_NAMES and "nets" in self.__dict__:
            return self.__dict__["nets"][name]
        raise AttributeError(name)

    def onehot(self, labels: torch.Tensor, size=None) -> torch.Tensor:
        """Int (N,H,W) labels -> float one-hot with ``num_classes`` channels (the don't-care value, if
        configured, maps to the last channel), optionally nearest-resized."""
        dc = self.cfg.data.dontcare
        k = self.num_classes - (1 if dc is not None else 0)
        return ops.one_hot(labels, k, dontcare=dc, size=size, impl=self.cfg.impl)

    def label_ids(self, labels: torch.Tensor) -> torch.Tensor:
        """Int (N,H,W) labels as channel indices in [0, num_classes): the don't-care value, if
        configured, becomes the last channel. The networks' integer-label (gather) paths take these."""
        dc = self.cfg.data.dontcare
        if dc is None:
            return labels
        return torch.where(labels == dc, torch.full_like(labels, self.num_classes - 1), labels)

    def _vgg(self):
        c = self.cfg.spade
        if not c.vgg_loss:
            return None
        from ..models.vgg import VGGLoss
        return VGGLoss(c.vgg_weights).to(self.device)

    # -- checkpoints -----------------------------------------------------------------------
    def save(self, stage: str, step: int, *, done: bool, which: str) -> str:
        state = {
            "format": ckpt_io.FORMAT, "stage": stage, "step": step, "done": done,
            "config": self.cfg.to_dict(), "num_classes": self.num_classes,
            "nets": {k: v.state_dict() for k, v in self.nets.items() if k in self.trained},
            "optims": {k: v.state_dict() for k, v in self.optims.items()},
            "rng": ckpt_io.rng_state(),
        }
        path = ckpt_io.stage_checkpoint_path(self.out, stage, which)
        ckpt_io.atomic_torch_save(state, path)
        return path

    def load_nets(self, ck: dict, names=None) -> None:
        for name, sd in ck["nets"].items():
            if names is not None and name not in names:
                continue
            if name in self.nets:
                self.nets[name].load_state_dict(sd)
                self.trained.add(name)

    # -- running ---------------------------------------------------------------------------
    def run(self) -> None:
        try:
            for stage_name in self.cfg.stages:
                self.run_stage(stage_name)
        finally:
            self.logger.close()

    def _init_stage(self, stage: Stage) -> int:
        """Load what the stage starts from; return its first step."""
        name = stage.name
        final = ckpt_io.stage_checkpoint_path(self.out, name, "final")
        latest = ckpt_io.stage_checkpoint_path(self.out, name, "latest")
        if self.resume and os.path.isfile(final):
            ck = ckpt_io.load_checkpoint(final, map_location=self.device)
            self.load_nets(ck)
            return -1
        if self.resume and os.path.isfile(latest):
            ck = ckpt_io.load_checkpoint(latest, map_location=self.device)
            if ck["stage"] != name:
                raise RuntimeError(f"{latest} holds stage {ck['stage']!r}, expected {name!r}")
            self.load_nets(ck)
            for k, opt in self.optims.items():
                if k not in ck.get("optims", {}):
                    raise RuntimeError(f"{latest} lacks the optimizer state of {k}")
                opt.load_state_dict(ck["optims"][k])
            ckpt_io.set_rng_state(ck["rng"])
            return int(ck["step"])
        if name == "e2e":
            # start from the trained seg and spade networks of this run folder
            for prev in ("seg", "spade"):
                if prev in self.cfg.stages:
                    continue  # trained in this process (or loaded when it was skipped)
                path = ckpt_io.find_checkpoint(self.out, prev)
                if path is None:
                    raise FileNotFoundError(
                        f"stage 'e2e' needs the trained {prev!r} networks: no {prev}-final.pt or {prev}-latest.pt in "
                        f"{os.path.join(self.out, 'checkpoints')}; run --stage {prev} first with the same --out")
                ck = ckpt_io.load_checkpoint(path, map_location=self.device)
                self.load_nets(ck, names=("G_seg", "D_seg") if prev == "seg" else ("G_spd", "D_spd"))
        return 0

    def run_stage(self, name: str) -> None:
        stage: Stage = STAGE_CLASSES[name](self)
        self.optims = stage.make_optimizers()
        start = self._init_stage(stage)
        self.trained.update(stage.trains)
        if start < 0:
            return
        total = stage.total_steps()
        end = min(total, self.cfg.max_steps) if self.cfg.max_steps > 0 else total
        self.logger.start_stage(name, start, end, stage.images_per_step())
        loader = make_loader(self.dataset, self.stream, stage.schedule, start, end, self.cfg.data.num_workers,
                             self.cfg.seed)
        acc: Dict[str, torch.Tensor] = {}
        count = 0
        step = start
        for step, batch in enumerate(loader, start=start):
            lrs = stage.set_lr(step)
            scalars = stage.step(step, batch)
            for k, v in scalars.items():
                acc[k] = acc.get(k, 0.0) + v.float()
            count += 1
            self.current_step = step + 1
            self.logger.advance()
            done = step + 1 == total
            if (step + 1) % self.cfg.log_every == 0 or step + 1 == end:
                rec = {k: (v / count).item() for k, v in acc.items()}
                rec.update(lrs)
                self.logger.log(name, step + 1, stage.images_done(step + 1), rec)
                acc, count = {}, 0
            if self.cfg.sample_every and ((step + 1) % self.cfg.sample_every == 0 or step + 1 == end):
                self.save_grid(stage, step + 1)
            if not done and step + 1 < end and self.cfg.ckpt_every and (step + 1) % self.cfg.ckpt_every == 0:
                self.save(name, step + 1, done=False, which="latest")
        self.current_step = end
        if end == total:
            self.save(name, total, done=True, which="final")
        elif end > start:
            self.save(name, end, done=False, which="latest")
        self.logger.end_stage()

    def save_grid(self, stage: Stage, step: int) -> Optional[str]:
        from ..metrics.grids import make_grid_array, save_pairs_grid
        labels, images = stage.preview()
        if labels is None:
            return None
        path = os.path.join(self.out, "samples", f"{stage.name}-{step:07d}.png")
        save_pairs_grid(labels.cpu(), None if images is None else images.cpu(), self.palette, path)
        self.logger.image(f"{stage.name}/samples", make_grid_array(
            labels.cpu(), None if images is None else images.cpu(), self.palette), step)
        return path


def train(cfg: TrainConfig, *, resume: bool = False) -> Trainer:
    trainer = Trainer(cfg, resume=resume)
    trainer.run()
    return trainer


def describe(cfg: TrainConfig) -> str:
    return json.dumps(cfg.to_dict(), indent=2)
