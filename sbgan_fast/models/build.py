"""Networks from a config and networks from a checkpoint: the one place that turns a :class:`TrainConfig` (and the
dataset's ``num_classes``) into the five networks of SB-GAN, and a checkpoint file or run folder into trained ones.
"""
from __future__ import annotations

import os
from typing import Dict, Tuple

import torch

from ..config import TrainConfig, from_dict
from ..errors import CheckpointMismatchError
from . import checkpoint as ckpt_io

NET_NAMES = ("G_seg", "D_seg", "G_spd", "D_spd", "D2")
# the networks of the ProGAN baseline (stage ``progan``, trained alone in its own run folder)
PROGAN_NETS = ("G_img", "D_img")
# Config keys that fix the shapes of each network's parameters (besides the number of label classes): a
# checkpoint written with other values cannot be loaded into this run's networks.
ARCH_KEYS = {
    "G_seg": ("seg.max_dim", "seg.aspect_ratio", "seg.z_dim", "seg.width_mult"),
    "D_seg": ("seg.max_dim", "seg.aspect_ratio", "seg.width_mult"),
    "G_spd": ("spade.ngf", "spade.num_upsampling_layers", "spade.crop_size", "spade.aspect_ratio",
              "spade.contain_dontcare_label"),
    "D_spd": ("spade.ndf", "spade.n_layers_D", "spade.num_D", "spade.contain_dontcare_label"),
    "D2": ("spade.ndf", "spade.n_layers_D", "spade.num_D"),
    "G_img": ("seg.max_dim", "seg.aspect_ratio", "seg.z_dim", "seg.width_mult"),
    "D_img": ("seg.max_dim", "seg.aspect_ratio", "seg.width_mult"),
}


def run_networks(cfg: TrainConfig) -> Tuple[str, ...]:
    """The networks a run of ``cfg`` builds: the ProGAN baseline's two for a ``progan`` run, else SB-GAN's five."""
    return PROGAN_NETS if "progan" in cfg.stages else NET_NAMES


def build_networks(cfg: TrainConfig, num_classes: int, names=NET_NAMES) -> Dict[str, torch.nn.Module]:
    """The networks ``names`` of SB-GAN for ``num_classes`` label channels (the don't-care channel included, see
    :mod:`sbgan_fast.models.labels`), as the config describes; ``G_img`` / ``D_img`` are the ProGAN baseline's
    (the seg networks' architecture and settings with RGB heads)."""
    from .discriminator import MultiscaleDiscriminator
    from .progan import ImageDiscriminator, ImageGenerator
    from .seg import SegDiscriminator, SegGenerator
    from .spade_gen import SPADEGenerator

    s, p, e = cfg.seg, cfg.spade, cfg.e2e
    # Every network sees num_classes label channels. With spade.contain_dontcare_label (the authors' option) the
    # last one is the don't-care channel (data.dontcare), which the SPADE networks count apart from their classes.
    spade_classes = num_classes - (1 if p.contain_dontcare_label else 0)
    nets: Dict[str, torch.nn.Module] = {}
    if "G_seg" in names:
        nets["G_seg"] = SegGenerator(num_classes, max_dim=s.max_dim, aspect_ratio=s.aspect_ratio, z_dim=s.z_dim,
                                     pixel_norm=s.pixel_norm, width_mult=s.width_mult)
    if "D_seg" in names:
        nets["D_seg"] = SegDiscriminator(num_classes, max_dim=s.max_dim, aspect_ratio=s.aspect_ratio,
                                         width_mult=s.width_mult)
    if "G_spd" in names:
        nets["G_spd"] = SPADEGenerator(spade_classes, contain_dontcare_label=p.contain_dontcare_label, ngf=p.ngf,
                                       num_upsampling_layers=p.num_upsampling_layers, crop_size=p.crop_size,
                                       aspect_ratio=p.aspect_ratio, norm_G=p.norm_G, detach_seg=e.detach_seg,
                                       impl=cfg.impl, nhidden=p.nhidden)
    if "D_spd" in names:
        nets["D_spd"] = MultiscaleDiscriminator(spade_classes, conditional=True,
                                                contain_dontcare_label=p.contain_dontcare_label, ndf=p.ndf,
                                                n_layers_D=p.n_layers_D, num_D=p.num_D, norm_D=p.norm_D)
    if "D2" in names:
        nets["D2"] = MultiscaleDiscriminator(num_classes, conditional=False, ndf=p.ndf, n_layers_D=p.n_layers_D,
                                             num_D=p.num_D, norm_D=p.norm_D)
    if "G_img" in names:
        nets["G_img"] = ImageGenerator(max_dim=s.max_dim, aspect_ratio=s.aspect_ratio, z_dim=s.z_dim,
                                       pixel_norm=s.pixel_norm, width_mult=s.width_mult)
    if "D_img" in names:
        nets["D_img"] = ImageDiscriminator(max_dim=s.max_dim, aspect_ratio=s.aspect_ratio, width_mult=s.width_mult)
    return nets


WEIGHTS = ("ema", "raw")


def load_generators(checkpoint: str, device: torch.device, *, need_seg: bool = True, weights=None):
    """Return (cfg, num_classes, {'G_seg'?, 'G_spd'}) in eval mode on ``device``, from a checkpoint file or a run
    folder (its e2e checkpoint, else its seg and spade checkpoints); from a ProGAN checkpoint (stage ``progan``:
    the file, or a run folder holding it and no e2e or seg checkpoint), {'G_img'}. ``weights``: 'ema' (the moving
    averages a run with ``ema.enabled`` stores; the averaged G_spd's batch-norm statistics were recomputed on real
    label maps when the checkpoint was written), 'raw' (the trained weights) or None (the averages where the checkpoint
    holds them, else the trained weights).

    Raises:
        FileNotFoundError: the folder or file holds no trained generator asked for, or no average with 'ema'.
        CheckpointMismatchError: ``need_seg=False`` (images from given label maps) with a ProGAN checkpoint.
    """
    if weights not in (None,) + WEIGHTS:
        raise ValueError(f"weights must be one of {WEIGHTS} or None, got {weights!r}")
    if os.path.isdir(checkpoint):
        paths = []
        e2e = ckpt_io.find_checkpoint(checkpoint, "e2e")
        progan = None if e2e or ckpt_io.find_checkpoint(checkpoint, "seg") else ckpt_io.find_checkpoint(
            checkpoint, "progan")
        if e2e or progan:
            paths = [e2e or progan]
        else:
            for stage in (("seg", "spade") if need_seg else ("spade",)):
                p = ckpt_io.find_checkpoint(checkpoint, stage)
                if p is None:
                    raise FileNotFoundError(f"{checkpoint}: no e2e checkpoint and no {stage} checkpoint in "
                                            f"{os.path.join(checkpoint, 'checkpoints')}; train that stage first")
                paths.append(p)
    else:
        paths = [checkpoint]
    states: Dict[str, dict] = {}
    cfg = k = None
    for p in paths:
        ck = ckpt_io.load_checkpoint(p, map_location="cpu")
        if cfg is None:
            cfg, k = from_dict(ck["config"]), ck["num_classes"]
        averaged = ck.get("ema", {}).get("nets", {}) if isinstance(ck.get("ema"), dict) else {}
        for name in ("G_seg", "G_spd", "G_img"):
            if name in ck["nets"]:
                if weights == "ema" and name not in averaged:
                    raise FileNotFoundError(f"{p} holds no moving average of {name} (trained without ema.enabled): "
                                            "use --weights raw")
                states[name] = averaged[name] if weights != "raw" and name in averaged else ck["nets"][name]
    names = ("G_seg", "G_spd") if need_seg else ("G_spd",)
    if "G_img" in states:
        if not need_seg:
            raise CheckpointMismatchError(
                f"{checkpoint} is a ProGAN checkpoint (stage progan): it makes images from z alone and holds no "
                "G_spd to make images of label maps; use a SB-GAN checkpoint (seg + spade, or e2e)")
        names = ("G_img",)
    missing = [name for name in names if name not in states]
    if missing:
        raise FileNotFoundError(
            f"{checkpoint} holds no trained {' or '.join(missing)}: pass the run folder or an e2e checkpoint"
            + (", or use --labels to synthesise images from label maps with G_spd alone" if need_seg else ""))
    nets = build_networks(cfg, k, names=names)
    for name, net in nets.items():
        net.load_state_dict(states[name])
        net.to(device).eval()
    return cfg, k, nets


def load_seg_generator(path: str, device: torch.device, num_classes: int) -> Tuple[torch.nn.Module, int]:
    """(G_seg in eval mode on ``device``, the checkpoint's step) from a checkpoint file whose G_seg makes
    ``num_classes``-class maps. Building it does not move the global RNG stream.

    Raises:
        CheckpointMismatchError: the file holds no G_seg, or one of another class count.
    """
    ck = ckpt_io.load_checkpoint(path, map_location="cpu")
    if "G_seg" not in ck.get("nets", {}):
        raise CheckpointMismatchError(f"{path} holds no G_seg (networks: {sorted(ck.get('nets', {}))}); pass a seg "
                                      "or e2e checkpoint as spade.seg_checkpoint")
    k = int(ck["num_classes"])
    if k != num_classes:
        raise CheckpointMismatchError(f"{path}: its G_seg makes {k}-class label maps, this run has "
                                      f"{num_classes} classes")
    with torch.random.fork_rng(devices=[]):   # initialisation draws must not move the training RNG stream
        net = build_networks(from_dict(ck["config"]), k, names=("G_seg",))["G_seg"]
    net.load_state_dict(ck["nets"]["G_seg"])
    return net.to(device).eval(), int(ck.get("step", -1))
