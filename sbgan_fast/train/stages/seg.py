"""The ``seg`` stage: progressive WGAN-GP on label maps (REFERENCE.md sections 1-4).

A step at the phase's resolution: G_seg's update (WGAN loss of D_seg on the semantic bottleneck's Gumbel ST
sample), then D_seg's (WGAN-GP on the real maps, resized with PIL's NEAREST rule, vs a sample of a fresh z).
With ``seg.cuda_graphs_max_res`` (compile=true, CUDA) the steps at heights up to it run G_seg and D_seg as CUDA
graphs (:class:`sbgan_fast.train.compiled.SegGraphs`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import torch

from ...models import bottleneck_sample
from .. import compiled
from .. import losses as L
from .base import Means, Stage, part


@dataclass
class Phase:
    res: int
    kind: str          # 'stabilize' | 'fade'
    start: int         # first step
    steps: int
    batch: int
    offset: int        # stream offset at its first step


class SegStage(Stage):
    name = "seg"
    trains = ("G_seg", "D_seg")
    NOISE = ("z_G", "gumbel_G", "z_D", "gumbel_D", "eps_D")

    def __init__(self, ctx):
        super().__init__(ctx)
        c = self.cfg.seg
        n = self.ctx.dataset_size
        resolutions = self.nets["G_seg"].resolutions
        self.phases: List[Phase] = []
        start = offset = 0
        for res in resolutions:
            for kind in (("stabilize",) if res == resolutions[0] else ("fade", "stabilize")):
                bs = c.batch_size if res <= 128 else c.batch_size_high
                steps = max(1, math.ceil(c.epochs_per_phase * n / bs))
                self.phases.append(Phase(res, kind, start, steps, bs, offset))
                start += steps
                offset += steps * bs
        self._total = start
        self.graphs = None
        if c.cuda_graphs_max_res:
            why = compiled.cuda_graphs_unavailable(self.cfg.compile, self.ctx.device)
            if why is None:
                self.graphs = compiled.SegGraphs(self.nets, c.cuda_graphs_max_res)
            else:
                self.ctx.log(f"seg.cuda_graphs_max_res={c.cuda_graphs_max_res}: {why}; the seg stage runs without them")

    def total_steps(self) -> int:
        return self._total

    def batch_sizes(self) -> List[int]:
        return sorted({ph.batch for ph in self.phases})

    def phase(self, step: int) -> Phase:
        for ph in self.phases:
            if step < ph.start + ph.steps:
                return ph
        return self.phases[-1]

    def schedule(self, step: int):
        ph = self.phase(step)
        return ph.offset + (step - ph.start) * ph.batch, ph.batch

    def alpha(self, step: int) -> float:
        ph = self.phase(step)
        if not self.cfg.seg.fade_in or ph.kind != "fade":
            return 1.0
        return min(1.0, (step - ph.start + 1) / ph.steps)

    def make_optimizers(self):
        c = self.cfg.seg
        return {name: self.adam(self.nets[name], c.lr, c.betas) for name in ("G_seg", "D_seg")}

    def step(self, step, batch, noise=None):
        if self.graphs is None:
            return self._step(step, batch, noise)
        res = self.phase(step).res
        with self.graphs.step(res):
            out = self._step(step, batch, noise)
        if self.graphs.active(res):
            note = self.graphs.skipped_note(res)
            if note:
                self.ctx.log(note)
        return out

    def _step(self, step, batch, noise=None):
        ctx, c, u = self.ctx, self.cfg.seg, self.ctx.updater
        noise = self.noise_of(noise)
        G, D = self.nets["G_seg"], self.nets["D_seg"]
        ph, alpha = self.phase(step), self.alpha(step)
        labels, _ = self.real_batch(step, batch, need_image=False)
        n = labels.shape[0]
        size = (ph.res, int(ph.res * c.aspect_ratio))
        # (code) each real map resized to the phase's resolution with PIL's NEAREST rule (the centre of each
        # source block), as the authors' progressive trainer resizes the label files
        real = ctx.fmt(ctx.onehot(labels, size=size, mode="nearest-exact"))
        parts = self.micro(n)
        means = Means(len(parts))

        def fake(z, gumbel):    # the semantic bottleneck at the phase's resolution
            return bottleneck_sample(G(z, res=ph.res, alpha=alpha), c.tau, gumbel, self.cfg.impl)

        z_g = noise.randn(n, c.z_dim, name="z_G")
        gumbel_g = noise.gumbel(n, ctx.num_classes, *size, name="gumbel_G")

        def g_micro(i, sl):
            with u.autocast():
                g_loss = L.wgan_g_loss(D(fake(z_g[sl], part(gumbel_g, sl)), alpha=alpha))
            return {"G_seg": g_loss}, {"loss_G": g_loss}

        self.accumulate({"G_seg": ("G_seg",)}, g_micro, parts, means, frozen=[D])

        z_d = noise.randn(n, c.z_dim, name="z_D")      # a fresh z
        gumbel_d = noise.gumbel(n, ctx.num_classes, *size, name="gumbel_D")
        eps = noise.rand(n, 1, 1, 1, name="eps_D")

        def d_micro(i, sl):
            with torch.no_grad(), u.autocast():
                f = fake(z_d[sl], part(gumbel_d, sl))
            with u.autocast():
                d_loss, parts_d = L.wgan_gp_d_loss(D, real[sl], f, c.lambda_gp, eps=part(eps, sl),
                                                   scale=u.scale_tensor("D_seg"), alpha=alpha)
            return {"D_seg": d_loss}, {"loss_D": d_loss, **parts_d}

        self.accumulate({"D_seg": ("D_seg",)}, d_micro, parts, means)
        out = means.result()
        out["res"] = torch.tensor(float(ph.res))
        return out

    def preview(self, step):
        ph = self.phase(max(0, step - 1))
        G = self.nets["G_seg"]
        with torch.no_grad():
            G.eval()
            p = G(self.ctx.preview_z, res=ph.res)
            G.train()
        return p.argmax(1), None
