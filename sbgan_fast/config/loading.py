"""Building a config: preset -> config file (YAML/JSON) -> ``KEY=VALUE`` overrides, with type conversion, and
:func:`validate`, which checks the values that would otherwise fail deep inside training."""
from __future__ import annotations

import dataclasses
import json
import os
import typing
from typing import Any, Dict, List, Optional

from .presets import preset
from .schema import ALL_STAGES, DATASETS, IMPLS, PROGAN_SCHEDULES, ConfigError, TrainConfig


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
    bad = [s for s in cfg.stages if s not in ALL_STAGES]
    need(not bad and len(cfg.stages) > 0, f"stages: {bad or cfg.stages} invalid; choose from {ALL_STAGES}")
    if "progan" in cfg.stages:
        need(list(cfg.stages) == ["progan"],
             f"stages: {cfg.stages}: progan (the ProGAN baseline on images) trains its own networks and runs alone, "
             "in its own run folder (stages=progan, or --stage progan)")
        need(not cfg.e2e.seg_half_res, "progan: e2e.seg_half_res=true makes the progressive networks half the image "
             "height; the ProGAN baseline generates the images themselves: set seg.max_dim to data.height")
    pg = cfg.progan
    need(pg.schedule in PROGAN_SCHEDULES, f"progan.schedule must be one of {PROGAN_SCHEDULES}, got {pg.schedule!r}")
    need(pg.batch_size >= 1, f"progan.batch_size must be >= 1, got {pg.batch_size}")
    need(pg.epochs_per_phase > 0, f"progan.epochs_per_phase must be > 0, got {pg.epochs_per_phase}")
    need(cfg.data.loader in ("auto", "torch", "dali"), f"data.loader must be auto|torch|dali, got {cfg.data.loader!r}")
    sd = cfg.data.synthetic_detail
    need(0.0 <= sd <= 1.0, f"data.synthetic_detail must be in [0, 1] (1: the full scenes), got {sd}")
    need(cfg.data.num_classes >= 0, f"data.num_classes must be >= 0 (0 = from the dataset), got {cfg.data.num_classes}")
    need(cfg.data.dataset == "synthetic" or cfg.data.root or cfg.data.image_dir or cfg.data.label_dir,
         f"data.root (--data-root) is required for dataset {cfg.data.dataset!r}")
    need(cfg.ema.kimg > 0, f"ema.kimg must be > 0 (thousands of images), got {cfg.ema.kimg}")
    need(cfg.ema.rampup >= 0, f"ema.rampup must be >= 0 (0: no ramp-up), got {cfg.ema.rampup}")
    need(cfg.ema.bn_maps >= 0, f"ema.bn_maps must be >= 0 (0: no batch-norm recalibration), got {cfg.ema.bn_maps}")
    md = cfg.seg.max_dim
    need(md >= 4 and (md & (md - 1)) == 0, f"seg.max_dim must be a power of two >= 4, got {md}")
    need(cfg.seg.aspect_ratio >= 1 and float(cfg.seg.aspect_ratio).is_integer(),
         f"seg.aspect_ratio must be a whole number >= 1 (1 ADE, 2 Cityscapes), got {cfg.seg.aspect_ratio}")
    need(cfg.seg.pixel_norm in ("code", "standard"), f"seg.pixel_norm must be 'code' or 'standard', got {cfg.seg.pixel_norm!r}")
    cg = cfg.seg.cuda_graphs_max_res
    need(cg == 0 or (cg >= 4 and (cg & (cg - 1)) == 0),
         f"seg.cuda_graphs_max_res must be 0 (off) or a power of two >= 4 (a seg height), got {cg}")
    need(cfg.spade.num_upsampling_layers in ("normal", "more", "most"),
         f"spade.num_upsampling_layers must be normal|more|most, got {cfg.spade.num_upsampling_layers!r}")
    for name in ("seg.batch_size", "seg.batch_size_high", "spade.batch_size", "e2e.batch_size", "spade.ngf",
                 "spade.ndf", "spade.nhidden"):
        sec, key = name.split(".")
        value = getattr(getattr(cfg, sec), key)
        need(value >= 1, f"{name} must be >= 1, got {value}")
    need(cfg.lr_decay in ("epoch", "step"), f"lr_decay must be epoch|step, got {cfg.lr_decay!r}")
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
    need(not sp.contain_dontcare_label or cfg.data.dontcare is not None,
         "spade.contain_dontcare_label=true makes the last of the num_classes label channels the don't-care "
         "channel: set data.dontcare to the label value that maps to it (e.g. 255), or leave the option false")
    need(sp.synthetic_labels >= 0, f"spade.synthetic_labels must be >= 0 (0: off), got {sp.synthetic_labels}")
    need(sp.synthetic_batch >= 0, f"spade.synthetic_batch must be >= 0 (0: spade.batch_size), got {sp.synthetic_batch}")
    need(sp.synthetic_weight >= 0, f"spade.synthetic_weight must be >= 0, got {sp.synthetic_weight}")
    need(sp.seg_checkpoint is None or os.path.exists(sp.seg_checkpoint),
         f"spade.seg_checkpoint: {sp.seg_checkpoint} does not exist")
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
