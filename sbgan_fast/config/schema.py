"""The typed training configuration: one :class:`TrainConfig` of sections ``data``, ``seg``, ``spade``, ``e2e``.

The label count has one name and one meaning everywhere: ``num_classes`` (``data.num_classes``, or the dataset's
count when 0) is the number of label channels the networks see, the don't-care channel included when there is
one (``data.dontcare``: the label value mapped to the last channel).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..errors import SbganError

STAGES = ("seg", "spade", "e2e")          # SB-GAN's stages, in order (the default run)
# every stage: SB-GAN's and ``progan``, the paper's ProGAN baseline on images (trained alone, in its own run folder)
ALL_STAGES = STAGES + ("progan",)
PROGAN_SCHEDULES = ("code", "seg")
DATASETS = ("synthetic", "folder", "cityscapes", "ade20k", "ade_indoor")
# the implementations of the custom ops (``impl``); the same tuple as ``sbgan_fast.ops.IMPLS`` (a test checks)
IMPLS = ("auto", "triton", "cuda", "cpp", "ref")


class ConfigError(SbganError, ValueError):
    """A configuration value is invalid; the message names the key and the accepted values."""


@dataclass
class DataConfig:
    dataset: str = "synthetic"           # one of DATASETS
    root: Optional[str] = None           # dataset root (not needed for 'synthetic')
    num_classes: int = 0                 # K label channels seen by the networks (0 = from the dataset)
    dontcare: Optional[int] = None       # label value mapped to the last channel (e.g. 255 -> K-1)
    height: int = 64                     # image/label height fed to the image stage
    width: int = 128                     # image/label width
    synthetic_size: int = 2000           # number of synthetic scenes (dataset size of 'synthetic')
    synthetic_detail: float = 1.0        # fine image detail of the synthetic scenes in [0, 1] (texture, windows)
    hflip: bool = True                   # shared random horizontal flip of image and label
    num_workers: int = 0                 # torch DataLoader workers
    image_dir: Optional[str] = None      # 'folder' dataset: images
    label_dir: Optional[str] = None      # 'folder' dataset: label PNGs with the same stems
    split: str = "train"
    # official layouts (see sbgan_fast/data/real.py), loaders, cache, bad data
    label_kind: str = "auto"             # cityscapes: labelIds (35) | labelTrainIds (20) | auto (from num_classes)
    crop: str = "auto"                   # none | long_edge (square crop along the long edge) | auto (ADE: long_edge)
    image_interp: str = "bilinear"       # bilinear | bicubic (images; labels always nearest)
    extra_image_dir: Optional[str] = None  # cityscapes25k: extra images
    extra_label_dir: Optional[str] = None  # ... their train-id label maps
    extra_list: Optional[str] = None     # ... list file of the extra images used
    list_dir: Optional[str] = None       # ade_indoor: folder of ade_indoor_{im,lbl}_info_{train,val}.txt
    class_map: Optional[str] = None      # ade_indoor from the ADE20K layout: ADE20K-150 -> indoor class file
    loader: str = "auto"                 # auto | torch | dali
    cache: Optional[str] = None          # folder of a preprocessed uint8 memory-mapped cache (None: no cache)
    cache_gpu: bool = True               # keep the cache on the GPU when it fits
    skip_bad_files: bool = False         # log and skip bad files instead of failing (counted in the stats)
    image_suffix: str = ""               # 'folder' dataset: image names end with it (dropped before pairing)
    label_suffix: str = ""               # 'folder' dataset: label names end with it (e.g. _labelTrainIds)


@dataclass
class SegConfig:
    """Progressive WGAN-GP on label maps (REFERENCE.md sections 1-4)."""
    max_dim: int = 256                   # final label-map height
    aspect_ratio: float = 1.0            # width / height
    z_dim: int = 512
    width_mult: float = 1.0              # scales every channel count (1.0 = the authors' networks)
    pixel_norm: str = "code"             # 'code' (x / mean(x^2)) or 'standard' (x / sqrt(mean(x^2)))
    lr: float = 1e-3
    betas: Tuple[float, float] = (0.0, 0.99)
    lambda_gp: float = 10.0
    tau: float = 1.0
    epochs_per_phase: float = 150.0      # each phase sees epochs_per_phase x dataset_size images
    batch_size: int = 16
    batch_size_high: int = 4             # batch size for resolutions above 128
    fade_in: bool = False                # (code) False: no fade-in during training; True: ProGAN alpha ramp
    cuda_graphs_max_res: int = 0         # with compile=true on a CUDA device: G_seg and D_seg as CUDA graphs at
                                         # heights up to this (train/compiled.py); 0: off


@dataclass
class SpadeConfig:
    """SPADE label-to-image pretraining (REFERENCE.md sections 5-7)."""
    ngf: int = 64
    ndf: int = 64
    nhidden: int = 128                   # width of each SPADE layer's shared label embedding (the authors' 128)
    num_upsampling_layers: str = "normal"
    crop_size: int = 256                 # image width
    aspect_ratio: float = 1.0
    contain_dontcare_label: bool = False  # (authors' option) the last label channel is the don't-care one: G_spd and
                                          # D_spd count num_classes - 1 classes + it (needs data.dontcare)
    norm_G: str = "spectralspadesyncbatch3x3"
    norm_D: str = "spectralinstance"
    n_layers_D: int = 3                  # 3: authors' fork (all strides 2); 4: NVIDIA's current SPADE
    num_D: int = 2
    lr_G: float = 1e-4
    lr_D: float = 4e-4
    betas: Tuple[float, float] = (0.0, 0.9)
    lambda_feat: float = 10.0
    lambda_vgg: float = 10.0
    vgg_loss: bool = True
    vgg_weights: Optional[str] = None    # path to torchvision's ImageNet vgg19-dcbb9e9d.pth
    epochs: float = 100.0                # constant learning rate
    epochs_decay: float = 100.0          # then linear decay to 0
    batch_size: int = 16
    # the paper's augmentation experiment: label maps drawn from a trained G_seg as extra training data. Each
    # step also renders a batch of them with G_spd, judged by the unconditional image discriminator D2
    # (hinge, weight synthetic_weight; D2 is optimised with e2e.lr_D2 / e2e.d2_betas).
    synthetic_labels: int = 0            # N synthetic label maps (0: off)
    synthetic_weight: float = 0.1        # weight of D2's hinge losses on the synthetic maps' images
    synthetic_batch: int = 0             # synthetic maps per step (0: spade.batch_size)
    seg_checkpoint: Optional[str] = None  # G_seg to draw them from (None: this run's seg stage / checkpoint)


@dataclass
class E2EConfig:
    """End-to-end fine-tuning of all five networks (REFERENCE.md section 8)."""
    lr_seg: float = 1e-5                 # G_seg and D_seg (1e-4 for ADE-Indoor); never decayed
    seg_betas: Tuple[float, float] = (0.0, 0.99)
    lr_G: float = 1e-4
    lr_D: float = 4e-4
    lr_D2: float = 2e-4
    d2_betas: Tuple[float, float] = (0.0, 0.99)
    lambda_seg: float = 10.0             # weight of the WGAN losses of D_seg
    lambda_d2: float = 0.1               # weight of the hinge losses of D2
    d2_pretrain_epochs: float = 1.0
    epochs: float = 50.0
    epochs_decay: float = 50.0
    batch_size: int = 8
    seg_half_res: bool = False           # G_seg at half the image resolution, map upsampled x2 (nearest)
    detach_seg: bool = True              # (code) SPADE blocks see seg.detach(); False: gradient through all
    finetune: str = "all"                # all | seg (G_seg, D_seg, D2; G_spd fixed) | spade (G_spd, D_spd, D2; G_seg
                                         # fixed): the paper's fine-tuning ablation
    reuse_fakes: bool = False            # departure: the discriminator update reuses the generator update's fakes
                                         # (saves a G_seg and a G_spd forward) instead of a fresh z and the
                                         # updated generators, as the authors' trainer does
    d2_lr: str = "ttur"                  # (code) ttur: D2 keeps lr_D2 until the decay begins, then follows D_spd's
                                         # decayed rate (lr_D x factor); constant: lr_D2 throughout


@dataclass
class ProGANConfig:
    """The ProGAN baseline (stage ``progan``): the seg stage's progressive networks with RGB heads, trained with
    WGAN-GP on the images (resized bilinearly to each resolution, flipped, in [-1, 1]). Architecture, optimizer,
    gradient penalty and fade-in are the seg stage's settings (``seg.*``); the schedule is chosen here."""
    schedule: str = "code"               # code: the authors' image trainer: batch progan.batch_size, halved above 64
                                         # and again above 128 px; progan.epochs_per_phase x dataset_size images per
                                         # phase, x2 at 64 and 128, x3 at 256, x4 at 512 px. seg: the seg stage's
                                         # phases exactly (seg.epochs_per_phase, seg.batch_size, seg.batch_size_high)
    batch_size: int = 32                 # schedule=code: the batch size up to 64 px
    epochs_per_phase: float = 400.0      # schedule=code: epochs per phase (before the per-resolution multiplier)


@dataclass
class EMAConfig:
    """Exponential moving averages of G_seg and G_spd (G_img in a ProGAN run; off by default: the authors keep none).
    After each optimizer update of a generator, with ``cur`` the images that generator was trained on before it and
    ``batch`` the update's global batch: ``ema_nimg = kimg * 1000``, ``min(ema_nimg, cur * rampup)`` when ``rampup >
    0``, ``beta = 0.5 ** (batch / max(ema_nimg, 1e-8))`` and ``ema = beta * ema + (1 - beta) * weights``
    (StyleGAN2-ADA's rule; buffers are copied). ``sample``, ``eval`` and periodic FID use the averages when a
    checkpoint holds them."""
    enabled: bool = False
    kimg: float = 10.0                   # half-life of the average, in thousands of images
    rampup: float = 0.05                 # half-life at most rampup x the images seen so far (0: no ramp-up)
    bn_maps: int = 64                    # real label maps whose batch-norm statistics the averaged G_spd takes
                                         # before use (0: keep the statistics copied from the trained G_spd)


@dataclass
class TrainConfig:
    preset: str = "demo"
    seed: int = 0
    device: str = "auto"                 # 'auto' | 'cpu' | 'cuda' | 'cuda:N'
    out: str = "runs/demo"
    stages: List[str] = field(default_factory=lambda: list(STAGES))
    max_steps: int = 0                   # >0: stop each stage after this many steps (short runs)
    log_every: int = 10
    sample_every: int = 200
    ckpt_every: int = 200
    n_sample_grid: int = 8
    tensorboard: bool = True
    progress: bool = True
    impl: str = "auto"                   # default impl of the custom ops
    lr_decay: str = "epoch"              # spade/e2e linear decay: epoch (the authors': lowered once per whole epoch,
                                         # so a stage under two epochs long never decays) | step (every step)
    # precision, memory layout and scale (train/amp.py, train/dist.py, train/monitor.py)
    precision: str = "fp32"              # fp32 | bf16 (autocast) | fp16 (autocast + a GradScaler per loss group)
    channels_last: Optional[bool] = None  # channels-last networks and inputs (None: on for CUDA, off on CPU)
    compile: bool = False                # torch.compile the five networks and the VGG loss (train/compiled.py)
    cudnn_benchmark: bool = True         # torch.backends.cudnn.benchmark on CUDA (fixed shapes per phase)
    accum: int = 1                       # micro-batches per update on each process (same global batch, less memory)
    nonfinite_limit: int = 20            # stop after this many steps in a row with a NaN/Inf loss or gradient (0: never)
    dist_noise: str = "rank"             # rank: noise seeded per process | global: slices of the global batch's noise
    dist_backend: str = "auto"           # auto (nccl on CUDA, gloo on CPU) | nccl | gloo
    monitor_every: int = 100             # steps between GPU monitor samples (NVML + allocator peak); 0: off
    # FID during training (sbgan_fast/metrics/evaluate.py: fid_callback), logged to stats.jsonl/TensorBoard
    fid_every: int = 0                   # images (of each stage's schedule) between FID evaluations; 0: off
    fid_n: int = 500                     # generated images per evaluation
    fid_n_real: int = 0                  # real validation images for the statistics (0: the whole split)
    fid_variant: str = "pytorch-fid"     # pytorch-fid | sbgan-code
    fid_weights: Optional[str] = None    # Inception weights file (None: the packaged pytorch-fid weights)
    fid_cache: Optional[str] = None      # folder of cached real statistics (None: the default cache folder)
    fid_batch: int = 16
    data: DataConfig = field(default_factory=DataConfig)
    seg: SegConfig = field(default_factory=SegConfig)
    spade: SpadeConfig = field(default_factory=SpadeConfig)
    e2e: E2EConfig = field(default_factory=E2EConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    progan: ProGANConfig = field(default_factory=ProGANConfig)
    dist_timeout: float = 600.0          # seconds a collective may wait for the other processes (a hung rank)

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
