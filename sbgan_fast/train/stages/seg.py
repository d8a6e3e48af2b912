"""The ``seg`` stage: progressive WGAN-GP on label maps (REFERENCE.md sections 1-4).

A step at the phase's resolution: G_seg's update (WGAN loss of D_seg on the semantic bottleneck's Gumbel ST
sample), then D_seg's (WGAN-GP on the real maps, resized with PIL's NEAREST rule, vs a sample of a fresh z).

The schedule and the step are written once for any progressive WGAN-GP pair (the networks ``trains`` names):
what a stage feeds its critic is three methods, :meth:`SegStage.real_input`, :meth:`SegStage.fake_noise` and
:meth:`SegStage.fake_input`; the ProGAN baseline on images (:mod:`.progan`) overrides them.

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
    trains = ("G_seg", "D_seg")    # (generator, critic)
    NOISE = ("z_G", "gumbel_G", "z_D", "gumbel_D", "eps_D")

    def __init__(self, ctx):
        super().__init__(ctx)
        n = self.ctx.dataset_size
        resolutions = self.nets[self.trains[0]].resolutions
        self.phases: List[Phase] = []
        start = offset = 0
        for res in resolutions:
            for kind in (("stabilize",) if res == resolutions[0] else ("fade", "stabilize")):
                bs, steps = self.phase_plan(res, n)
                self.phases.append(Phase(res, kind, start, steps, bs, offset))
                start += steps
                offset += steps * bs
        self._total = start
        self.graphs = None
        c = self.cfg.seg
        if c.cuda_graphs_max_res:
            why = compiled.cuda_graphs_unavailable(self.cfg.compile, self.ctx.device)
            if why is None:
                self.graphs = compiled.SegGraphs(self.nets, c.cuda_graphs_max_res, names=self.trains)
            else:
                self.ctx.log(f"seg.cuda_graphs_max_res={c.cuda_graphs_max_res}: {why}; the seg stage runs without them")

    def phase_plan(self, res: int, n: int):
        """(batch size, steps) of each phase at height ``res`` for a dataset of ``n`` samples: ``seg.batch_size``
        up to 128 px, ``seg.batch_size_high`` above; ``seg.epochs_per_phase`` epochs."""
        c = self.cfg.seg
        bs = c.batch_size if res <= 128 else c.batch_size_high
        return bs, max(1, math.ceil(c.epochs_per_phase * n / bs))

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
        return {name: self.adam(self.nets[name], c.lr, c.betas) for name in self.trains}

    # -- what the critic sees (the seg stage: label maps) --------------------------------------------------------
    def real_input(self, step: int, batch, size) -> torch.Tensor:
        """The real batch at the phase's ``size`` (h, w): float (N, K, h, w) one-hot maps."""
        labels, _ = self.real_batch(step, batch, need_image=False)
        # (code) each real map resized to the phase's resolution with PIL's NEAREST rule (the centre of each
        # source block), as the authors' progressive trainer resizes the label files
        return self.ctx.fmt(self.ctx.onehot(labels, size=size, mode="nearest-exact"))

    def fake_noise(self, noise, n: int, size, player: str):
        """The noise a fake needs besides z (``player``: 'G' or 'D'): the Gumbel draw of the bottleneck."""
        return noise.gumbel(n, self.ctx.num_classes, *size, name=f"gumbel_{player}")

    def fake_input(self, G, z: torch.Tensor, extra, res: int, alpha: float) -> torch.Tensor:
        """A fake at height ``res``: the semantic bottleneck (Gumbel ST sample of G_seg's probabilities)."""
        return bottleneck_sample(G(z, res=res, alpha=alpha), self.cfg.seg.tau, extra, self.cfg.impl)

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
        c, u = self.cfg.seg, self.ctx.updater
        noise = self.noise_of(noise)
        g_name, d_name = self.trains
        G, D = self.nets[g_name], self.nets[d_name]
        ph, alpha = self.phase(step), self.alpha(step)
        size = (ph.res, int(ph.res * c.aspect_ratio))
        real = self.real_input(step, batch, size)
        n = real.shape[0]
        parts = self.micro(n)
        means = Means(len(parts))

        def fake(z, extra):    # at the phase's resolution
            return self.fake_input(G, z, extra, ph.res, alpha)

        z_g = noise.randn(n, c.z_dim, name="z_G")
        extra_g = self.fake_noise(noise, n, size, "G")

        def g_micro(i, sl):
            with u.autocast():
                g_loss = L.wgan_g_loss(D(fake(z_g[sl], part(extra_g, sl)), alpha=alpha))
            return {g_name: g_loss}, {"loss_G": g_loss}

        self.accumulate({g_name: (g_name,)}, g_micro, parts, means, frozen=[D])

        z_d = noise.randn(n, c.z_dim, name="z_D")      # a fresh z
        extra_d = self.fake_noise(noise, n, size, "D")
        eps = noise.rand(n, 1, 1, 1, name="eps_D")

        def d_micro(i, sl):
            with torch.no_grad(), u.autocast():
                f = fake(z_d[sl], part(extra_d, sl))
            with u.autocast():
                d_loss, parts_d = L.wgan_gp_d_loss(D, real[sl], f, c.lambda_gp, eps=part(eps, sl),
                                                   scale=u.scale_tensor(d_name), alpha=alpha)
            return {d_name: d_loss}, {"loss_D": d_loss, **parts_d}

        self.accumulate({d_name: (d_name,)}, d_micro, parts, means)
        out = means.result()
        out["res"] = torch.tensor(float(ph.res))
        return out

    def generate_preview(self, step: int) -> torch.Tensor:
        """The generator's output for the preview codes at the resolution of step ``step`` (eval mode)."""
        ph = self.phase(max(0, step - 1))
        G = self.nets[self.trains[0]]
        with torch.no_grad():
            G.eval()
            out = G(self.ctx.preview_z, res=ph.res)
            G.train()
        return out

    def preview(self, step):
        return self.generate_preview(step).argmax(1), None
