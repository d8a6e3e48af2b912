#!/usr/bin/env bash
# The GPU suite under a time budget (bench/gpu_suite.py): build the extension for the device, the kernel parity
# tests on the device in strict mode, the op microbenchmarks at Cityscapes shapes, the spade and e2e training
# steps at 256x512 and the authors' widths (ref fp32 NCHW, fast bf16 channels-last, fast + compile), seg at 4x8
# and 256x512, then the rest; each item only when its estimated cost still fits the budget. Rows are appended as
# they are measured; RESULTS.md is regenerated after every item and on SIGTERM/SIGINT/SIGHUP, so a run cut
# short still returns its numbers. The last thing printed is the table of targets (target, goal, measured, met?).
#   bash bench/run_gpu_suite.sh                          (a CUDA machine with torch and Triton; budget 480 s)
#   bash bench/run_gpu_suite.sh --budget 480 --out DIR   (also copy results/*.csv, RESULTS.md and the log to DIR)
#   bash bench/run_gpu_suite.sh --dry-run                (CPU, tiny shapes, Triton interpreter, temporary results)
#   bash bench/run_gpu_suite.sh --list | --only ITEMS | --skip ITEMS | --rebuild | --help
#   SBGAN_DATA_ROOT=/data/cityscapes bash bench/run_gpu_suite.sh   (+ the loader against the step on that dataset;
#   SBGAN_DATA_DATASET=cityscapes|ade_indoor|ade20k, SBGAN_DATA_ARGS="--set data.list_dir=DIR")
# PYTHON names the interpreter (default: python3, else python), the one that holds torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3 || command -v python)}
exec "$PY" bench/gpu_suite.py "$@"
