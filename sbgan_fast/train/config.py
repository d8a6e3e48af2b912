"""Typed training configuration, presets, config files and command-line overrides.

A run is described by one :class:`TrainConfig`. It is built from a preset, then a YAML/JSON file,
then ``KEY=VALUE`` overrides (dotted keys such as ``spade.ngf=32``), and saved as JSON in the run
folder. Defaults of the ``cityscapes``, ``cityscapes25k`` and ``ade_indoor`` presets are the
authors' values (REFERENCE.md); ``demo`` is a small configuration that trains all three stages on the
built-in synthetic scenes on a laptop CPU.
"""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from ..errors import SbganError

STAGES = ("seg", "spade", "e2e")
DATASETS = ("synthetic", "folder", "cityscapes", "ade20k", "ade_indoor")


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


@dataclass
class SpadeConfig:
    """SPADE label-to-image pretraining (REFERENCE.md sections 5-7)."""
    ngf: int = 64
    ndf: int = 64
    num_upsampling_layers: str = "normal"
    crop_size: int = 256                 # image width
    aspect_ratio: float = 1.0
    contain_dontcare_label: bool = False
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
    # precision, memory layout and scale (train/amp.py, train/dist.py, train/monitor.py)
    precision: str = "fp32"              # fp32 | bf16 (autocast) | fp16 (autocast + a GradScaler per loss group)
    channels_last: Optional[bool] = None  # channels-last networks and inputs (None: on for CUDA, off on CPU)
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
    dist_timeout: float = 600.0          # seconds a collective may wait for the other processes (a hung rank)

    # ------------------------------------------------------------------ helpers
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _preset_cityscapes() -> TrainConfig:
    c = TrainConfig(preset="cityscapes", out="runs/cityscapes")
    c.data = DataConfig(dataset="cityscapes", num_classes=35, height=256, width=512)
    c.seg = SegConfig(max_dim=256, aspect_ratio=2.0, epochs_per_phase=150.0, batch_size=16, batch_size_high=4)
    c.spade = SpadeConfig(num_upsampling_layers="more", crop_size=512, aspect_ratio=2.0, epochs=100.0,
                          epochs_decay=100.0, batch_size=16)
    c.e2e = E2EConfig(lr_seg=1e-5, epochs=50.0, epochs_decay=50.0, batch_size=8)
    return c


def _preset_cityscapes25k() -> TrainConfig:
    c = _preset_cityscapes()
    c.preset, c.out = "cityscapes25k", "runs/cityscapes25k"
    c.data.num_classes = 20          # 19 train ids + don't-care
    c.data.dontcare = 255
    c.seg.epochs_per_phase = 20.0
    c.spade.epochs, c.spade.epochs_decay = 30.0, 30.0
    c.e2e.epochs, c.e2e.epochs_decay, c.e2e.batch_size = 30.0, 30.0, 8
    return c


def _preset_ade_indoor() -> TrainConfig:
    c = TrainConfig(preset="ade_indoor", out="runs/ade_indoor")
    c.data = DataConfig(dataset="ade_indoor", num_classes=95, height=256, width=256)
    c.seg = SegConfig(max_dim=256, aspect_ratio=1.0, epochs_per_phase=100.0, batch_size=36, batch_size_high=12)
    c.spade = SpadeConfig(num_upsampling_layers="normal", crop_size=256, aspect_ratio=1.0, epochs=150.0,
                          epochs_decay=150.0, batch_size=16)
    c.e2e = E2EConfig(lr_seg=1e-4, epochs=50.0, epochs_decay=50.0, batch_size=16)
    return c


def _preset_demo() -> TrainConfig:
    c = TrainConfig(preset="demo", out="runs/demo", log_every=10, sample_every=100, ckpt_every=100)
    c.data = DataConfig(dataset="synthetic", num_classes=0, height=32, width=64, synthetic_size=512)
    c.seg = SegConfig(max_dim=32, aspect_ratio=2.0, z_dim=64, width_mult=0.0625, epochs_per_phase=1.0,
                      batch_size=16, batch_size_high=16)
    c.spade = SpadeConfig(ngf=8, ndf=8, num_upsampling_layers="normal", crop_size=64, aspect_ratio=2.0,
                          norm_G="spectralspadebatch3x3", vgg_loss=False, epochs=1.0, epochs_decay=1.0,
                          batch_size=8)
    c.e2e = E2EConfig(lr_seg=1e-4, d2_pretrain_epochs=0.25, epochs=0.5, epochs_decay=0.5, batch_size=8)
    return c


PRESETS = {
    "cityscapes": _preset_cityscapes,
    "cityscapes25k": _preset_cityscapes25k,
    "ade_indoor": _preset_ade_indoor,
    "demo": _preset_demo,
}


def preset(name: str) -> TrainConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


# ---------------------------------------------------------------------- updates from files / CLI
def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` (a string from the command line, or a JSON/YAML value) to the field type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", "")):
            return None
        return _convert(value, next(a for a in args if a is not type(None)), key)
    if origin in (tuple, list):
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                try:
                    value = json.loads(text)
                except json.JSONDecodeError:
                    raise ConfigError(f"{key}: expected a list like [0.0, 0.99] or 0.0,0.99, got {value!r}") from None
            else:
                value = [v.strip() for v in text.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if origin is tuple and len(args) != len(value):
            raise ConfigError(f"{key}: expected {len(args)} values, got {list(value)!r}")
        items = [_convert(v, args[i] if origin is tuple else args[0], key) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
            return False
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected a boolean (true/false), got {value!r}")
    if tp in (int, float):
        if isinstance(value, str):
            try:
                return tp(value.strip())
            except ValueError:
                pass
        elif not isinstance(value, bool) and isinstance(value, (int, float)):
            if tp is float or float(value).is_integer():
                return tp(value)
        raise ConfigError(f"{key}: expected {'an integer' if tp is int else 'a number'}, got {value!r}")
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    return value


def _field_types(obj) -> Dict[str, Any]:
    hints = typing.get_type_hints(type(obj))
    return {f.name: hints[f.name] for f in dataclasses.fields(obj)}


def set_key(cfg: TrainConfig, key: str, value: Any) -> None:
    """Set a dotted key (``spade.ngf``) with type conversion; unknown keys raise naming the key."""
    parts = key.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        types = _field_types(obj)
        if part not in types:
            where = ".".join(parts[:i]) or "top level"
            raise ConfigError(f"unknown config key {key!r} ({part!r} is not a field of {where}; "
                              f"fields: {sorted(types)})")
        if i == len(parts) - 1:
            cur = getattr(obj, part)
            if dataclasses.is_dataclass(cur):
                if not isinstance(value, dict):
                    raise ConfigError(f"{key}: expected a mapping of sub-keys, got {value!r}")
                for k, v in value.items():
                    set_key(cfg, f"{key}.{k}", v)
            else:
                setattr(obj, part, _convert(value, types[part], key))
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise ConfigError(f"unknown config key {key!r}: {'.'.join(parts[:i + 1])} is not a section")


def load_file(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, "r", encoding="utf-8") as f:
        text = f.read()
    if path.endswith((".yaml", ".yml")):
        try:
            import yaml
        except ImportError:
            raise ConfigError(f"{path}: reading YAML needs PyYAML (pip install pyyaml), or use JSON") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of config keys")
    return data


def build_config(preset_name: str = "demo", config_file: Optional[str] = None,
                 overrides: Optional[List[str]] = None, **direct: Any) -> TrainConfig:
    """preset -> file -> KEY=VALUE overrides -> direct keyword values (from CLI flags); validated."""
    data = load_file(config_file) if config_file else {}
    name = data.pop("preset", None) or preset_name
    cfg = preset(name)
    for k, v in data.items():
        set_key(cfg, k, v)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like KEY=VALUE (e.g. spade.ngf=32)")
        k, v = item.split("=", 1)
        set_key(cfg, k.strip(), v)
    for k, v in direct.items():
        if v is not None:
            set_key(cfg, k, v)
    validate(cfg)
    return cfg


def from_dict(data: Dict[str, Any]) -> TrainConfig:
    cfg = TrainConfig()
    for k, v in data.items():
        set_key(cfg, k, v)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Check values that would otherwise fail deep inside training."""
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise ConfigError(msg)

    need(cfg.data.dataset in DATASETS, f"data.dataset: {cfg.data.dataset!r} is not one of {DATASETS}")
    bad = [s for s in cfg.stages if s not in STAGES]
    need(not bad and len(cfg.stages) > 0, f"stages: {bad or cfg.stages} invalid; choose from {STAGES}")
    need(cfg.data.loader in ("auto", "torch", "dali"), f"data.loader must be auto|torch|dali, got {cfg.data.loader!r}")
    need(cfg.data.num_classes >= 0, f"data.num_classes must be >= 0 (0 = from the dataset), got {cfg.data.num_classes}")
    need(cfg.data.dataset == "synthetic" or cfg.data.root or cfg.data.image_dir or cfg.data.label_dir,
         f"data.root (--data-root) is required for dataset {cfg.data.dataset!r}")
    md = cfg.seg.max_dim
    need(md >= 4 and (md & (md - 1)) == 0, f"seg.max_dim must be a power of two >= 4, got {md}")
    need(cfg.seg.aspect_ratio >= 1 and float(cfg.seg.aspect_ratio).is_integer(),
         f"seg.aspect_ratio must be a whole number >= 1 (1 ADE, 2 Cityscapes), got {cfg.seg.aspect_ratio}")
    need(cfg.seg.pixel_norm in ("code", "standard"), f"seg.pixel_norm must be 'code' or 'standard', got {cfg.seg.pixel_norm!r}")
    need(cfg.spade.num_upsampling_layers in ("normal", "more", "most"),
         f"spade.num_upsampling_layers must be normal|more|most, got {cfg.spade.num_upsampling_layers!r}")
    for name in ("seg.batch_size", "seg.batch_size_high", "spade.batch_size", "e2e.batch_size"):
        sec, key = name.split(".")
        need(getattr(getattr(cfg, sec), key) >= 1, f"{name} must be >= 1")
    need(cfg.max_steps >= 0, f"max_steps must be >= 0, got {cfg.max_steps}")
    need(cfg.log_every >= 1, f"log_every must be >= 1, got {cfg.log_every}")
    need(cfg.sample_every >= 0, f"sample_every must be >= 0 (0: no sample grids), got {cfg.sample_every}")
    need(cfg.ckpt_every >= 0, f"ckpt_every must be >= 0 (0: at the end of each stage only), got {cfg.ckpt_every}")
    need(cfg.n_sample_grid >= 1, f"n_sample_grid must be >= 1, got {cfg.n_sample_grid}")
    need(cfg.precision in ("fp32", "bf16", "fp16"), f"precision must be fp32|bf16|fp16, got {cfg.precision!r}")
    need(cfg.accum >= 1, f"accum must be >= 1, got {cfg.accum}")
    need(cfg.nonfinite_limit >= 0, f"nonfinite_limit must be >= 0 (0: never stop), got {cfg.nonfinite_limit}")
    need(cfg.dist_noise in ("rank", "global"), f"dist_noise must be rank|global, got {cfg.dist_noise!r}")
    need(cfg.dist_backend in ("auto", "nccl", "gloo"), f"dist_backend must be auto|nccl|gloo, got {cfg.dist_backend!r}")
    need(cfg.dist_timeout > 0, f"dist_timeout must be > 0 seconds, got {cfg.dist_timeout}")
    need(cfg.monitor_every >= 0, f"monitor_every must be >= 0 (0: off), got {cfg.monitor_every}")
    need(cfg.seg.tau > 0, f"seg.tau must be > 0, got {cfg.seg.tau}")
    need(cfg.fid_every >= 0, f"fid_every must be >= 0 (images between FID evaluations; 0: off), got {cfg.fid_every}")
    need(cfg.fid_n >= 2, f"fid_n must be >= 2 (a covariance needs 2 images), got {cfg.fid_n}")
    need(cfg.fid_n_real == 0 or cfg.fid_n_real >= 2, f"fid_n_real must be 0 (whole split) or >= 2, got {cfg.fid_n_real}")
    need(cfg.fid_variant in ("pytorch-fid", "sbgan-code"),
         f"fid_variant must be pytorch-fid|sbgan-code, got {cfg.fid_variant!r}")
    need(cfg.fid_batch >= 1, f"fid_batch must be >= 1, got {cfg.fid_batch}")
    need(cfg.e2e.finetune in ("all", "seg", "spade"), f"e2e.finetune must be all|seg|spade, got {cfg.e2e.finetune!r}")
    need(cfg.e2e.d2_lr in ("ttur", "constant"), f"e2e.d2_lr must be ttur|constant, got {cfg.e2e.d2_lr!r}")
    sp = cfg.spade
    need(sp.synthetic_labels >= 0, f"spade.synthetic_labels must be >= 0 (0: off), got {sp.synthetic_labels}")
    need(sp.synthetic_batch >= 0, f"spade.synthetic_batch must be >= 0 (0: spade.batch_size), got {sp.synthetic_batch}")
    need(sp.synthetic_weight >= 0, f"spade.synthetic_weight must be >= 0, got {sp.synthetic_weight}")
    need(sp.seg_checkpoint is None or os.path.exists(sp.seg_checkpoint),
         f"spade.seg_checkpoint: {sp.seg_checkpoint} does not exist")
    from ..ops._dispatch import IMPLS
    need(cfg.impl in IMPLS, f"impl must be one of {IMPLS}, got {cfg.impl!r}")
    n_up = {"normal": 5, "more": 6, "most": 7}[cfg.spade.num_upsampling_layers]
    sw = cfg.spade.crop_size // (2 ** n_up)
    need(sw >= 1 and cfg.spade.crop_size % (2 ** n_up) == 0,
         f"spade.crop_size {cfg.spade.crop_size} must be a multiple of 2^{n_up} for "
         f"num_upsampling_layers={cfg.spade.num_upsampling_layers!r}")
    need(round(sw / cfg.spade.aspect_ratio) >= 1,
         f"spade.crop_size {cfg.spade.crop_size} is too small for aspect_ratio {cfg.spade.aspect_ratio} with "
         f"num_upsampling_layers={cfg.spade.num_upsampling_layers!r} (the first map would have no rows)")
    img_h = round(cfg.spade.crop_size / cfg.spade.aspect_ratio)
    need((img_h, cfg.spade.crop_size) == (cfg.data.height, cfg.data.width),
         f"the image size {cfg.data.height}x{cfg.data.width} (data.height x data.width) must equal the SPADE "
         f"generator's output {img_h}x{cfg.spade.crop_size} (spade.crop_size / spade.aspect_ratio)")
    seg_h = cfg.seg.max_dim * (2 if cfg.e2e.seg_half_res else 1)
    need(seg_h == cfg.data.height and cfg.seg.aspect_ratio == cfg.spade.aspect_ratio,
         f"seg.max_dim {cfg.seg.max_dim} x aspect {cfg.seg.aspect_ratio}"
         f"{' (x2, e2e.seg_half_res)' if cfg.e2e.seg_half_res else ''} must match the image size "
         f"{cfg.data.height}x{cfg.data.width}")
