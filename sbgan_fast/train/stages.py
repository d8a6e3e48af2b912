"""The three training stages: ``seg`` (progressive WGAN-GP on label maps), ``spade`` (label-to-image
pretraining on real pairs) and ``e2e`` (joint fine-tuning of all five networks with D2).

Each stage is a step function over a deterministic schedule: the batch, flips and learning rate of
step ``s`` depend only on the config and ``s``, and every other random draw comes from torch's RNG,
whose state is checkpointed, so a resumed run continues exactly as an uninterrupted one.

A step works on this process's share of the global batch (see :mod:`sbgan_fast.train.dist`), split into
``accum`` micro-batches; each optimizer update goes through the trainer's
:class:`~sbgan_fast.train.amp.Updater` (autocast, loss scaling, gradient averaging over the
processes, the non-finite guard) and every noise draw through its
:class:`~sbgan_fast.train.amp.StepNoise`, or through the ``noise`` given to :meth:`Stage.step`
(:class:`~sbgan_fast.train.amp.GivenNoise`: the draws named in the stage's ``NOISE``), so that a whole step
can be driven with chosen noise and compared with an independent computation. A step returns its loss terms
one by one (means over its micro-batches) beside their sums.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Tuple

import torch

from ..models import bottleneck_sample, render, upsample
from . import losses as L
from .dist import micro_slices
from .run import random_hflip, step_generator


def set_requires_grad(nets, flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def _part(t, sl):
    """``t[sl]`` or None."""
    return None if t is None else t[sl]


class _Means:
    """Means over the micro-batches of a step of detached scalar tensors."""

    def __init__(self, k: int):
        self.k = k
        self.sums: Dict[str, torch.Tensor] = {}

    def add(self, vals: Dict[str, torch.Tensor]) -> None:
        for name, v in vals.items():
            v = v.detach().float()
            self.sums[name] = self.sums[name] + v if name in self.sums else v

    def result(self) -> Dict[str, torch.Tensor]:
        return {name: v / self.k for name, v in self.sums.items()}


def decay_factor(epoch: float, epochs: float, epochs_decay: float) -> float:
    """SPADE's schedule: constant for ``epochs``, then linear decay to 0 over ``epochs_decay``,
    updated once per (whole) epoch."""
    e = math.floor(epoch)
    if epochs_decay <= 0 or e < epochs:
        return 1.0
    return max(0.0, 1.0 - (e - math.floor(epochs)) / epochs_decay)


class Stage:
    """Base class. Subclasses define networks, optimizers, the schedule and one training step."""

    name = ""
    trains: Tuple[str, ...] = ()     # networks whose parameters this stage updates
    NOISE: Tuple[str, ...] = ()      # the named noise draws of a step, in order (GivenNoise keys)

    def __init__(self, trainer):
        self.t = trainer
        self.cfg = trainer.cfg
        self.dev = trainer.device

    # -- schedule ---------------------------------------------------------------------------
    def total_steps(self) -> int:
        raise NotImplementedError

    def batch_sizes(self) -> List[int]:
        """Every global batch size the stage uses."""
        return [self.schedule(0)[1]]

    def schedule(self, step: int) -> Tuple[int, int]:
        """(offset into the sample stream, batch size) of ``step``."""
        raise NotImplementedError

    def images_per_step(self) -> float:
        return float(self.schedule(0)[1])

    def images_done(self, step: int) -> int:
        off, bs = self.schedule(step - 1) if step > 0 else (0, 0)
        return off + bs

    # -- optimizers -------------------------------------------------------------------------
    def make_optimizers(self) -> Dict[str, torch.optim.Optimizer]:
        raise NotImplementedError

    def adam(self, net, lr: float, betas) -> torch.optim.Optimizer:
        kwargs = {}
        if self.dev.type == "cuda":
            kwargs["fused"] = True
        return torch.optim.Adam(net.parameters(), lr=lr, betas=tuple(betas), **kwargs)

    def prepare(self) -> None:
        """Work before the first step of a (started or resumed) stage; every process calls it."""

    def set_lr(self, step: int) -> Dict[str, float]:
        return {}

    def step(self, step: int, batch: Dict[str, torch.Tensor], noise=None) -> Dict[str, torch.Tensor]:
        """One training step on ``batch`` (this process's share of the global batch); ``noise`` (a
        :class:`~sbgan_fast.train.amp.GivenNoise`, default the trainer's noise) answers its draws.
        Returns detached scalar tensors: each loss term and their sums."""
        raise NotImplementedError

    # -- helpers ----------------------------------------------------------------------------
    def real_batch(self, step: int, batch, *, need_image: bool):
        """Move to device, flip (shared image/label decision from the per-step generator, drawn for
        the global batch: this process uses its slice), channels-last images when configured."""
        labels = batch["label"].to(self.dev, non_blocking=True).long()
        image = batch["image"].to(self.dev, non_blocking=True) if need_image else None
        if self.cfg.data.hflip:
            gen = step_generator(self.cfg.seed, self.name, step, self.dev)
            info, n = self.t.dist, labels.shape[0]
            kw = {"total": n * info.world, "start": n * info.rank}
            if image is not None:
                image, labels = random_hflip(gen, image, labels, **kw)
            else:
                (labels,) = random_hflip(gen, labels, **kw)
        if image is not None and image.dtype == torch.uint8:
            image = image.float().div_(127.5).sub_(1.0)
        if image is not None:
            image = self.t.fmt(image)
        return labels, image

    def micro(self, n: int) -> List[slice]:
        """The ``accum`` micro-batches of this process's ``n`` samples."""
        return micro_slices(n, self.cfg.accum)

    def preview(self):
        """(labels (N,H,W) int, images (N,3,H,W) in [-1,1] or None) for the sample grid."""
        return None, None


# ======================================================================================= seg
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

    def __init__(self, trainer):
        super().__init__(trainer)
        c = self.cfg.seg
        n = trainer.dataset_size
        self.phases: List[Phase] = []
        start = offset = 0
        for res in trainer.G_seg.resolutions:
            for kind in (("stabilize",) if res == trainer.G_seg.resolutions[0] else ("fade", "stabilize")):
                bs = c.batch_size if res <= 128 else c.batch_size_high
                steps = max(1, math.ceil(c.epochs_per_phase * n / bs))
                self.phases.append(Phase(res, kind, start, steps, bs, offset))
                start += steps
                offset += steps * bs
        self._total = start

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
        return {"G_seg": self.adam(self.t.G_seg, c.lr, c.betas), "D_seg": self.adam(self.t.D_seg, c.lr, c.betas)}

    def step(self, step, batch, noise=None):
        t, c = self.t, self.cfg.seg
        u, noise = t.updater, noise if noise is not None else t.noise
        ph, alpha = self.phase(step), self.alpha(step)
        labels, _ = self.real_batch(step, batch, need_image=False)
        n = labels.shape[0]
        size = (ph.res, int(ph.res * c.aspect_ratio))
        # (code) each real map resized to the phase's resolution with PIL's NEAREST rule (the centre of each
        # source block), as the authors' progressive trainer resizes the label files
        real = t.fmt(t.onehot(labels, size=size, mode="nearest-exact"))
        G, D = t.G_seg, t.D_seg
        parts = self.micro(n)
        k = len(parts)
        means = _Means(k)
        # G step
        set_requires_grad([D], False)
        z = noise.randn(n, c.z_dim, name="z_G")
        g_noise = noise.gumbel(n, t.num_classes, *size, name="gumbel_G")
        with u.update({"G_seg": ("G_seg",)}) as upd:
            for sl in parts:
                with u.autocast():
                    p = G(z[sl], res=ph.res, alpha=alpha)
                    fake = bottleneck_sample(p, c.tau, _part(g_noise, sl), self.cfg.impl)
                    g_loss = L.wgan_g_loss(D(fake, alpha=alpha))
                upd.backward({"G_seg": g_loss / k})
                means.add({"loss_G": g_loss})
        set_requires_grad([D], True)
        # D step (fresh z)
        z = noise.randn(n, c.z_dim, name="z_D")
        g_noise = noise.gumbel(n, t.num_classes, *size, name="gumbel_D")
        eps = noise.rand(n, 1, 1, 1, name="eps_D")
        with u.update({"D_seg": ("D_seg",)}) as upd:
            for sl in parts:
                with torch.no_grad(), u.autocast():
                    p = G(z[sl], res=ph.res, alpha=alpha)
                    fake = bottleneck_sample(p, c.tau, _part(g_noise, sl), self.cfg.impl)
                with u.autocast():
                    d_loss, parts_d = L.wgan_gp_d_loss(D, real[sl], fake, c.lambda_gp, eps=_part(eps, sl),
                                                       scale=u.scale_tensor("D_seg"), alpha=alpha)
                upd.backward({"D_seg": d_loss / k})
                means.add({"loss_D": d_loss, **parts_d})
        out = means.result()
        out["res"] = torch.tensor(float(ph.res))
        return out

    def preview(self):
        ph = self.phase(max(0, self.t.current_step - 1))
        with torch.no_grad():
            self.t.G_seg.eval()
            p = self.t.G_seg(self.t.preview_z, res=ph.res)
            self.t.G_seg.train()
        return p.argmax(1), None


# ===================================================================================== spade
class SpadeStage(Stage):
    """Label-to-image pretraining on real pairs. With ``spade.synthetic_labels=N`` (the paper's augmentation
    experiment, see :mod:`.synthetic_labels`) each step also renders a batch of stored synthetic label maps,
    judged by D2, which this stage then trains too."""

    name = "spade"
    trains = ("G_spd", "D_spd")

    def __init__(self, trainer):
        super().__init__(trainer)
        self.synth = None    # the synthetic-map batches, once prepared
        self.uses_synthetic = self.name == "spade" and self.cfg.spade.synthetic_labels > 0
        if self.uses_synthetic:
            self.trains = ("G_spd", "D_spd", "D2")

    def synthetic_batch_size(self) -> int:
        c = self.cfg.spade
        return c.synthetic_batch or c.batch_size

    def batch_sizes(self):
        sizes = super().batch_sizes()
        return sizes + [self.synthetic_batch_size()] if self.uses_synthetic else sizes

    def prepare(self) -> None:
        """Draw (or read) the synthetic label maps before the first step."""
        if not self.uses_synthetic:
            return
        from .synthetic_labels import SyntheticBatches, prepare_bank
        t = self.t
        bank = prepare_bank(t, log=t.log_message)
        self.synth = SyntheticBatches(bank, self.synthetic_batch_size(), self.cfg.seed, t.dist.rank, t.dist.world)

    def _cfg(self):
        return self.cfg.spade

    def epochs(self) -> Tuple[float, float]:
        c = self.cfg.spade
        return c.epochs, c.epochs_decay

    def batch_size(self) -> int:
        return self.cfg.spade.batch_size

    def total_steps(self) -> int:
        e, d = self.epochs()
        return max(1, math.ceil((e + d) * self.t.dataset_size / self.batch_size()))

    def schedule(self, step):
        bs = self.batch_size()
        return step * bs, bs

    def make_optimizers(self):
        c = self.cfg.spade
        opts = {"G_spd": self.adam(self.t.G_spd, c.lr_G, c.betas), "D_spd": self.adam(self.t.D_spd, c.lr_D, c.betas)}
        if self.uses_synthetic:   # synthetic label maps: D2 as in the e2e stage (constant learning rate)
            opts["D2"] = self.adam(self.t.D2, self.cfg.e2e.lr_D2, self.cfg.e2e.d2_betas)
        return opts

    def decay_epoch(self, step: int) -> float:
        """The (fractional) epoch that the learning-rate decay reads at ``step``."""
        return self.schedule(step)[0] / self.t.dataset_size

    def base_lrs(self) -> Dict[str, float]:
        return {"G_spd": self.cfg.spade.lr_G, "D_spd": self.cfg.spade.lr_D}

    def set_lr(self, step):
        """G_spd / D_spd: constant for ``epochs``, then linear decay to 0 (other networks keep theirs)."""
        f = decay_factor(self.decay_epoch(step), *self.epochs())
        lrs = {name: lr * f for name, lr in self.base_lrs().items()}
        for name, lr in lrs.items():
            for g in self.t.optims[name].param_groups:
                g["lr"] = lr
        return {f"lr_{k}": v for k, v in lrs.items()}

    # shared with e2e. seg: float one-hot (N,K,H,W) for D; ids: the same map as int channel indices,
    # which G_spd embeds with the exact gather path (no gradient flows into a real label map).
    def spade_g_losses(self, seg, ids, real_img) -> Dict[str, torch.Tensor]:
        c, t = self.cfg.spade, self.t
        fake = t.G_spd(ids)
        n = fake.shape[0]
        out = t.D_spd(torch.cat([torch.cat([seg, fake], 1), torch.cat([seg, real_img], 1)], 0))
        fake_out, real_out = L.split_real_fake(out, n)
        res = {"G_gan": L.hinge_g_loss(fake_out),
               "G_feat": L.feature_matching_loss(fake_out, real_out, c.lambda_feat)}
        if t.vgg is not None:
            res["G_vgg"] = t.vgg(fake, real_img) * c.lambda_vgg
        return res

    def spade_d_losses(self, seg, ids, real_img) -> Dict[str, torch.Tensor]:
        t = self.t
        with torch.no_grad():
            fake = t.G_spd(ids)
        n = fake.shape[0]
        out = t.D_spd(torch.cat([torch.cat([seg, fake], 1), torch.cat([seg, real_img], 1)], 0))
        fake_out, real_out = L.split_real_fake(out, n)
        d_real, d_fake = L.hinge_d_parts(real_out, fake_out)
        return {"D_real": d_real, "D_fake": d_fake}

    def step(self, step, batch, noise=None):
        t = self.t
        u = t.updater
        labels, image = self.real_batch(step, batch, need_image=True)
        seg, ids = t.fmt(t.onehot(labels)), t.label_ids(labels)
        parts = self.micro(labels.shape[0])
        k = len(parts)
        means = _Means(k)
        synth = self.synth.at(step, self.dev) if self.synth is not None else None
        s_parts = self.micro(synth.shape[0]) if synth is not None else [None] * k
        w = self.cfg.spade.synthetic_weight
        d_nets = [t.D_spd] + ([t.D2] if synth is not None else [])
        set_requires_grad(d_nets, False)
        fakes_s = []
        with u.update({"G_spd": ("G_spd",)}) as upd:
            for sl, ssl in zip(parts, s_parts):
                with u.autocast():
                    g = self.spade_g_losses(seg[sl], ids[sl], image[sl])
                    if synth is not None:   # G_spd on synthetic maps, judged by D2 alone (no paired photo)
                        fake_s = t.G_spd(synth[ssl])
                        g["synth_G"] = w * L.hinge_g_loss(t.D2(fake_s))
                        fakes_s.append(fake_s.detach())
                    g_loss = sum(g.values())
                upd.backward({"G_spd": g_loss / k})
                means.add({"loss_G": g_loss, **g})
        set_requires_grad(d_nets, True)
        groups = {"D_spd": ("D_spd",), **({"D2": ("D2",)} if synth is not None else {})}
        with u.update(groups) as upd:
            for i, sl in enumerate(parts):
                with u.autocast():
                    d = self.spade_d_losses(seg[sl], ids[sl], image[sl])
                    d_loss = sum(d.values())
                    losses = {"D_spd": d_loss / k}
                    if synth is not None:
                        fake_s = fakes_s[i]
                        out2 = t.D2(torch.cat([fake_s, image[sl]], 0))
                        f2, r2 = L.split_real_fake(out2, fake_s.shape[0])
                        d2_real, d2_fake = L.hinge_d_parts(r2, f2)
                        d2_d = w * (d2_real + d2_fake)
                        losses["D2"] = d2_d / k
                        d = dict(d, D2_D=d2_d, D2_real=d2_real, D2_fake=d2_fake)
                upd.backward(losses)
                means.add({"loss_D": d_loss, **d})
        return means.result()

    def preview(self):
        t = self.t
        labels = t.preview_labels
        with torch.no_grad():
            t.G_spd.eval()
            img = t.G_spd(t.label_ids(labels))
            t.G_spd.train()
        return labels, img


# ======================================================================================= e2e
# e2e.finetune: which part of SB-GAN the e2e stage fine-tunes (the paper's fine-tuning ablation). D2 is trained
# in every setting: it is what the fine-tuned part learns from. A fixed network keeps its parameters; its
# normalization statistics still follow the batches it sees.
FINETUNE = {"all": ("G_seg", "D_seg", "G_spd", "D_spd", "D2"),
            "seg": ("G_seg", "D_seg", "D2"),        # the semantic bottleneck synthesis only (G_spd fixed)
            "spade": ("G_spd", "D_spd", "D2")}      # the conditional image synthesis only (G_seg fixed)


def e2e_decay(epoch: float, epochs: float, epochs_decay: float) -> Tuple[float, bool]:
    """The e2e stage's learning-rate factor at (fractional) joint epoch ``epoch`` and whether the decay has
    begun. (code) The e2e loop counts epochs from 0 and lowers the rate at the end of every epoch
    ``e > epochs``, so the first lowered epoch is ``epochs + 2`` (0-based): one epoch later than the spade
    stage's rule (:func:`decay_factor`), and 50 + 50 epochs end at 0.04 x the base rate."""
    e = math.floor(epoch)
    if e < 1:
        return 1.0, False
    f = decay_factor(e - 1, epochs, epochs_decay)
    return f, f < 1.0


class E2EStage(SpadeStage):
    """Joint fine-tuning (REFERENCE.md section 8), step for step as the authors' end-to-end trainer:

    * D2 pre-training (``e2e.d2_pretrain_epochs``): D2 alone, real images vs G_spd(argmax G_seg(z)); G_spd
      also renders the real label maps (output unused), which moves its batch-norm statistics and
      spectral-norm vectors as the authors' step does. When it ends D2's Adam is created afresh.
    * A joint step: the generator update (10 x WGAN G loss of D_seg on the Gumbel ST sample + 0.1 x hinge G
      loss of D2 on G_spd(ST sample) + the SPADE G losses on real maps), then the discriminator update with
      a **fresh z**: G_seg's map and its ST sample (new Gumbel noise) regenerated by the *updated* G_seg for
      D_seg's WGAN-GP, G_spd on the real maps for D_spd, and the updated G_spd on the ST sample for D2.
      ``e2e.reuse_fakes=true`` (a departure, off by default) feeds the discriminators the generator step's
      fakes instead, saving one G_seg and one G_spd forward.
    * Learning rates: G_seg/D_seg constant; G_spd/D_spd decay as :func:`e2e_decay`; D2 keeps ``e2e.lr_D2``
      until the decay begins, then (code, ``e2e.d2_lr=ttur``) follows D_spd's rate ``e2e.lr_D x factor``
      (``e2e.d2_lr=constant``: ``e2e.lr_D2`` throughout).
    """

    name = "e2e"
    trains = FINETUNE["all"]
    NOISE = ("z_G", "gumbel_G", "z_D", "gumbel_D", "eps_D")   # joint steps
    NOISE_PRETRAIN = ("z_D2",)                                 # D2 pre-training steps

    def __init__(self, trainer):
        super().__init__(trainer)
        self.trains = FINETUNE[self.cfg.e2e.finetune]

    def epochs(self):
        c = self.cfg.e2e
        return c.epochs, c.epochs_decay

    def batch_size(self):
        return self.cfg.e2e.batch_size

    def pretrain_steps(self) -> int:
        c = self.cfg.e2e
        return math.ceil(c.d2_pretrain_epochs * self.t.dataset_size / self.batch_size()) if c.d2_pretrain_epochs > 0 else 0

    def total_steps(self):
        return self.pretrain_steps() + super().total_steps()

    def schedule(self, step):
        bs = self.batch_size()
        return step * bs, bs

    def decay_epoch(self, step):
        """The joint epoch (counted after D2's pre-training) that the learning-rate decay reads."""
        return max(0, step - self.pretrain_steps()) * self.batch_size() / self.t.dataset_size

    def base_lrs(self):
        lrs = {"G_spd": self.cfg.e2e.lr_G, "D_spd": self.cfg.e2e.lr_D}
        return {k: v for k, v in lrs.items() if k in self.trains}

    def make_optimizers(self):
        c, cs = self.cfg.e2e, self.cfg.spade
        t = self.t
        settings = {"G_seg": (c.lr_seg, c.seg_betas), "D_seg": (c.lr_seg, c.seg_betas), "G_spd": (c.lr_G, cs.betas),
                    "D_spd": (c.lr_D, cs.betas), "D2": (c.lr_D2, c.d2_betas)}
        return {name: self.adam(t.nets[name], *settings[name]) for name in self.trains}

    def set_lr(self, step):
        """The rates of ``step`` (see the class docstring). At the first joint step after a D2 pre-training,
        D2's optimizer is replaced by a fresh Adam (its pre-training moments and step count dropped), as the
        authors' trainer builds a new one; a run resumed after that step restores the joint phase's state."""
        c = self.cfg.e2e
        p = self.pretrain_steps()
        if step == p and p > 0:
            self.t.optims["D2"] = self.adam(self.t.D2, c.lr_D2, c.d2_betas)   # the updater shares this dict
        f, decaying = e2e_decay(self.decay_epoch(step), *self.epochs())
        lrs = {name: lr * f for name, lr in self.base_lrs().items()}
        lrs["D2"] = c.lr_D * f if decaying and c.d2_lr == "ttur" else c.lr_D2
        for name, lr in lrs.items():
            for g in self.t.optims[name].param_groups:
                g["lr"] = lr
        return {f"lr_{k}": v for k, v in lrs.items()}

    def seg_to_image_size(self, seg):
        """Nearest x2 when G_seg runs at half the image resolution (float maps or int labels)."""
        return upsample(seg, 2 if self.cfg.e2e.seg_half_res else 1)

    def st_sample(self, z, gumbel):
        """G_seg(z) -> its Gumbel straight-through sample (N,K,h,w) (the semantic bottleneck)."""
        return bottleneck_sample(self.t.G_seg(z), self.cfg.seg.tau, gumbel, self.cfg.impl)

    def render(self, fake_seg):
        """G_spd on an ST sample, upsampled to the image size. The sample is an exact one-hot: its argmax
        lets G_spd's blocks use the gather path."""
        return render(self.t.G_spd, fake_seg, 2 if self.cfg.e2e.seg_half_res else 1)

    def step(self, step, batch, noise=None):
        if step < self.pretrain_steps():
            return self.d2_pretrain_step(step, batch, noise)
        return self.joint_step(step, batch, noise)

    def d2_pretrain_step(self, step, batch, noise=None):
        """D2 alone: real images vs G_spd(argmax G_seg(z)), hinge. G_spd then renders the real label maps too
        (output unused: the authors' step does, and it moves G_spd's normalization buffers)."""
        t, cs = self.t, self.cfg.seg
        u, noise = t.updater, noise if noise is not None else t.noise
        labels, image = self.real_batch(step, batch, need_image=True)
        ids = t.label_ids(labels)
        n = image.shape[0]
        parts = self.micro(n)
        k = len(parts)
        means = _Means(k)
        z = noise.randn(n, cs.z_dim, name="z_D2")
        with u.update({"D2": ("D2",)}) as upd:
            for sl in parts:
                with torch.no_grad(), u.autocast():
                    p = t.G_seg(z[sl])
                    fake = t.G_spd(self.seg_to_image_size(p.argmax(1)))
                    t.G_spd(ids[sl])
                with u.autocast():
                    out = t.D2(torch.cat([fake, image[sl]], 0))
                    fake_out, real_out = L.split_real_fake(out, sl.stop - sl.start)
                    d_real, d_fake = L.hinge_d_parts(real_out, fake_out)
                    loss = d_real + d_fake
                upd.backward({"D2": loss / k})
                means.add({"loss_D2": loss, "D2_real": d_real, "D2_fake": d_fake})
        return means.result()

    def joint_step(self, step, batch, noise=None):
        t, c, cs = self.t, self.cfg.e2e, self.cfg.seg
        u, noise = t.updater, noise if noise is not None else t.noise
        seg_on, spd_on = "G_seg" in self.trains, "G_spd" in self.trains   # e2e.finetune
        labels, image = self.real_batch(step, batch, need_image=True)
        n = labels.shape[0]
        seg_real_img, ids = t.fmt(t.onehot(labels)), t.label_ids(labels)
        seg_size = (cs.max_dim, int(cs.max_dim * cs.aspect_ratio))
        # D_seg's real maps: the image-size maps subsampled at every (image / seg)-th pixel, as the authors'
        # `[::scaling, ::scaling]` (torch's 'nearest' rule)
        seg_real_low = t.fmt(t.onehot(labels, size=seg_size)) if seg_on else None
        d_nets = [t.D_seg, t.D_spd, t.D2]
        fixed = [t.nets[name] for name in ("G_seg", "G_spd") if name not in self.trains]
        parts = self.micro(n)
        k = len(parts)
        means = _Means(k)
        # ---- generators (the same noise draws whatever e2e.finetune is)
        set_requires_grad(d_nets + fixed, False)
        z = noise.randn(n, cs.z_dim, name="z_G")
        g_noise = noise.gumbel(n, t.num_classes, *seg_size, name="gumbel_G")
        fakes = []
        gens = tuple(name for name in ("G_seg", "G_spd") if name in self.trains)
        with u.update({"G": gens}) as upd:
            for sl in parts:
                with u.autocast():
                    fake_seg = self.st_sample(z[sl], _part(g_noise, sl))
                    g: Dict[str, torch.Tensor] = {}
                    if seg_on:
                        g["seg_G"] = c.lambda_seg * L.wgan_g_loss(t.D_seg(fake_seg))
                    fake_img2 = self.render(fake_seg)
                    g["D2_G"] = c.lambda_d2 * L.hinge_g_loss(t.D2(fake_img2))
                    if spd_on:
                        g.update(self.spade_g_losses(seg_real_img[sl], ids[sl], image[sl]))
                    g_loss = sum(g.values())
                upd.backward({"G": g_loss / k})
                if c.reuse_fakes:
                    fakes.append((fake_seg.detach(), fake_img2.detach()))
                means.add({"loss_G": g_loss, **g})
        set_requires_grad(d_nets + fixed, True)
        # ---- discriminators (one loss group each: separate loss scales under fp16). A fresh z: the fakes are
        # made again by the updated generators (e2e.reuse_fakes: the generator step's fakes).
        if not c.reuse_fakes:
            z = noise.randn(n, cs.z_dim, name="z_D")
            g_noise = noise.gumbel(n, t.num_classes, *seg_size, name="gumbel_D")
        eps = noise.rand(n, 1, 1, 1, name="eps_D")
        groups = {name: (name,) for name in ("D_seg", "D_spd", "D2") if name in self.trains}
        with u.update(groups) as upd:
            for i, sl in enumerate(parts):
                m = sl.stop - sl.start
                if c.reuse_fakes:
                    fake_seg, fake_img2 = fakes[i]
                else:
                    with torch.no_grad(), u.autocast():
                        fake_seg = self.st_sample(z[sl], _part(g_noise, sl))
                losses, logs = {}, {}
                with u.autocast():
                    if seg_on:
                        seg_d, parts_d = L.wgan_gp_d_loss(t.D_seg, seg_real_low[sl], fake_seg, cs.lambda_gp,
                                                          eps=_part(eps, sl), scale=u.scale_tensor("D_seg"))
                        losses["D_seg"] = c.lambda_seg * seg_d
                        logs.update(seg_D=losses["D_seg"], **parts_d)
                    if spd_on:
                        d = self.spade_d_losses(seg_real_img[sl], ids[sl], image[sl])
                        losses["D_spd"] = sum(d.values())
                        logs.update(d)
                if not c.reuse_fakes:
                    with torch.no_grad(), u.autocast():
                        fake_img2 = self.render(fake_seg)
                with u.autocast():
                    out2 = t.D2(torch.cat([fake_img2, image[sl]], 0))
                    f2, r2 = L.split_real_fake(out2, m)
                    d2_real, d2_fake = L.hinge_d_parts(r2, f2)
                    losses["D2"] = c.lambda_d2 * (d2_real + d2_fake)
                    logs.update(D2_D=losses["D2"], D2_real=d2_real, D2_fake=d2_fake)
                upd.backward({name: loss / k for name, loss in losses.items()})
                means.add({"loss_D": sum(losses.values()), **logs})
        return means.result()

    def preview(self):
        t = self.t
        with torch.no_grad():
            t.G_seg.eval()
            t.G_spd.eval()
            labels = self.seg_to_image_size(t.G_seg(t.preview_z).argmax(1))
            img = t.G_spd(labels)
            t.G_seg.train()
            t.G_spd.train()
        return labels, img


STAGE_CLASSES = {"seg": SegStage, "spade": SpadeStage, "e2e": E2EStage}
