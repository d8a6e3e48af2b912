#!/usr/bin/env bash
# The whole GPU suite on a lent CUDA machine: GPU tests (Triton kernels compiled for the device, not
# interpreted), op microbenchmarks, training-step throughput at real shapes, loader throughput; then
# bench/RESULTS.md is regenerated from the CSVs. Strict mode: a fallback to a reference path is an error.
#   bash bench/run_gpu_suite.sh            (from the repository root, package installed)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export SBGAN_FAST_STRICT=1 TRITON_INTERPRET=0
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
$PY -m pytest -q tests/test_gumbel.py tests/test_spade_norm.py tests/test_one_hot.py tests/test_onehot_conv2d.py
$PY -m pytest -q bench/bench_triton_ops.py
$PY bench/bench_one_hot.py
# Cityscapes 256x512 (35 classes, SPADE 'more') and ADE 256x256 (95 classes, 'normal'), authors' widths
$PY bench/bench_train_step.py --preset cityscapes --size 256x512 --classes 35 --num-upsampling-layers more \
    --ngf 64 --seg-width 1 --batch 8 --steps 10
$PY bench/bench_train_step.py --preset ade_indoor --size 256x256 --classes 95 --num-upsampling-layers normal \
    --ngf 64 --seg-width 1 --batch 8 --steps 10
$PY bench/bench_loaders.py --device cuda
$PY bench/report.py
