"""The ``spade`` stage: label-to-image pretraining of G_spd and D_spd on real pairs (REFERENCE.md sections 5-7).

A step: G_spd's update (hinge G loss of D_spd + feature matching + VGG on the real maps), then D_spd's (hinge on
real pairs vs G_spd's images). With ``spade.synthetic_labels=N`` (the paper's augmentation experiment, see
:mod:`sbgan_fast.train.synthetic_labels`) G_spd also renders a batch of stored synthetic label maps, judged by D2
(hinge, weight ``spade.synthetic_weight``), which this stage then trains too.
"""
from __future__ import annotations

import math
from typing import Dict

import torch

from .. import losses as L
from .base import Means, Stage, StageContext, decay_factor


def spade_g_losses(ctx: StageContext, seg, ids, real_img) -> Dict[str, torch.Tensor]:
    """G_spd's losses on real maps (shared with the e2e stage). seg: float one-hot (N,K,H,W) for D_spd; ids: the
    same map as channel indices, which G_spd embeds with the exact gather path."""
    c = ctx.cfg.spade
    fake = ctx.nets["G_spd"](ids)
    n = fake.shape[0]
    out = ctx.nets["D_spd"](torch.cat([torch.cat([seg, fake], 1), torch.cat([seg, real_img], 1)], 0))
    fake_out, real_out = L.split_real_fake(out, n)
    res = {"G_gan": L.hinge_g_loss(fake_out),
           "G_feat": L.feature_matching_loss(fake_out, real_out, c.lambda_feat)}
    if ctx.vgg is not None:
        res["G_vgg"] = ctx.vgg(fake, real_img) * c.lambda_vgg
    return res


def spade_d_losses(ctx: StageContext, seg, ids, real_img) -> Dict[str, torch.Tensor]:
    """D_spd's hinge losses: real pairs vs G_spd's images of the same maps (shared with the e2e stage)."""
    with torch.no_grad():
        fake = ctx.nets["G_spd"](ids)
    d_real, d_fake = L.hinge_d_on(ctx.nets["D_spd"], torch.cat([seg, fake], 1), torch.cat([seg, real_img], 1))
    return {"D_real": d_real, "D_fake": d_fake}


class SpadeStage(Stage):
    name = "spade"

    def __init__(self, ctx):
        super().__init__(ctx)
        self.synth = None    # the synthetic-map batches, once prepared
        self.uses_synthetic = self.cfg.spade.synthetic_labels > 0
        self.trains = ("G_spd", "D_spd", "D2") if self.uses_synthetic else ("G_spd", "D_spd")

    def synthetic_batch_size(self) -> int:
        c = self.cfg.spade
        return c.synthetic_batch or c.batch_size

    def batch_size(self) -> int:
        return self.cfg.spade.batch_size

    def batch_sizes(self):
        sizes = super().batch_sizes()
        return sizes + [self.synthetic_batch_size()] if self.uses_synthetic else sizes

    def total_steps(self) -> int:
        c = self.cfg.spade
        return max(1, math.ceil((c.epochs + c.epochs_decay) * self.ctx.dataset_size / self.batch_size()))

    def prepare(self) -> None:
        """Draw (or read) the synthetic label maps before the first step."""
        if not self.uses_synthetic:
            return
        from ..synthetic_labels import SyntheticBatches, prepare_bank
        ctx = self.ctx
        bank = prepare_bank(ctx, log=ctx.log)
        self.synth = SyntheticBatches(bank, self.synthetic_batch_size(), self.cfg.seed, ctx.dist.rank, ctx.dist.world)

    def make_optimizers(self):
        c, e = self.cfg.spade, self.cfg.e2e
        opts = {"G_spd": self.adam(self.nets["G_spd"], c.lr_G, c.betas),
                "D_spd": self.adam(self.nets["D_spd"], c.lr_D, c.betas)}
        if self.uses_synthetic:   # synthetic label maps: D2 as in the e2e stage (constant learning rate)
            opts["D2"] = self.adam(self.nets["D2"], e.lr_D2, e.d2_betas)
        return opts

    def set_lr(self, step):
        """G_spd / D_spd: constant for ``spade.epochs``, then linear decay to 0 (D2 keeps its rate)."""
        c = self.cfg.spade
        f = decay_factor(self.schedule(step)[0] / self.ctx.dataset_size, c.epochs, c.epochs_decay,
                         per_step=self.cfg.lr_decay == "step")
        return self.apply_lrs({"G_spd": c.lr_G * f, "D_spd": c.lr_D * f})

    def step(self, step, batch, noise=None):
        ctx, u = self.ctx, self.ctx.updater
        G, D2 = self.nets["G_spd"], self.nets["D2"]
        labels, image = self.real_batch(step, batch, need_image=True)
        seg, ids = ctx.fmt(ctx.onehot(labels)), ctx.label_ids(labels)
        parts = self.micro(labels.shape[0])
        means = Means(len(parts))
        synth = self.synth.at(step, self.dev) if self.synth is not None else None
        s_parts = self.micro(synth.shape[0]) if synth is not None else [None] * len(parts)
        w = self.cfg.spade.synthetic_weight
        fakes_s = []

        def g_micro(i, sl):
            with u.autocast():
                g = spade_g_losses(ctx, seg[sl], ids[sl], image[sl])
                if synth is not None:   # G_spd on synthetic maps, judged by D2 alone (no paired photo)
                    fake_s = G(synth[s_parts[i]])
                    g["synth_G"] = w * L.hinge_g_loss(D2(fake_s))
                    fakes_s.append(fake_s.detach())
                g_loss = sum(g.values())
            return {"G_spd": g_loss}, {"loss_G": g_loss, **g}

        d_nets = [self.nets["D_spd"]] + ([D2] if synth is not None else [])
        self.accumulate({"G_spd": ("G_spd",)}, g_micro, parts, means, frozen=d_nets)

        def d_micro(i, sl):
            with u.autocast():
                d = spade_d_losses(ctx, seg[sl], ids[sl], image[sl])
                d_loss = sum(d.values())
                losses = {"D_spd": d_loss}
                if synth is not None:
                    d2_real, d2_fake = L.hinge_d_on(D2, fakes_s[i], image[sl])
                    losses["D2"] = d2_d = w * (d2_real + d2_fake)
                    d = dict(d, D2_D=d2_d, D2_real=d2_real, D2_fake=d2_fake)
            return losses, {"loss_D": d_loss, **d}

        self.accumulate({"D_spd": ("D_spd",), **({"D2": ("D2",)} if synth is not None else {})}, d_micro, parts,
                        means)
        return means.result()

    def preview(self, step):
        ctx, G = self.ctx, self.nets["G_spd"]
        labels = ctx.preview_labels
        with torch.no_grad():
            G.eval()
            img = G(ctx.label_ids(labels))
            G.train()
        return labels, img
