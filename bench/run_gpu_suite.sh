#!/usr/bin/env bash
# The whole GPU suite on a lent CUDA machine: GPU tests (Triton kernels compiled for the device, not
# interpreted), op microbenchmarks, training-step throughput at real shapes (seg at every resolution, spade,
# e2e; ref = fp32/NCHW reference paths against fast = fused kernels, one-hot extension, bf16 autocast,
# channels-last), loader throughput, and, when a dataset is given, the loader against the training step at the
# real shape (torch loader and DALI); then bench/RESULTS.md is regenerated from the CSVs. Strict mode: a
# fallback to a reference path is an error.
#   bash bench/run_gpu_suite.sh            (from the repository root, package installed)
#   SBGAN_DATA_ROOT=/data/cityscapes bash bench/run_gpu_suite.sh      (+ loader vs step on that dataset)
#   SBGAN_DATA_DATASET=ade_indoor SBGAN_DATA_ROOT=/data/ade_indoor ...  (dataset kind; default cityscapes)
#   SBGAN_DATA_ARGS="--set data.list_dir=/data/lists"                   (extra arguments of that run)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
export SBGAN_FAST_STRICT=1 TRITON_INTERPRET=0
$PY -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
$PY -m pytest -q tests/test_gumbel.py tests/test_spade_norm.py tests/test_one_hot.py tests/test_onehot_conv2d.py
$PY -m pytest -q bench/bench_triton_ops.py
$PY bench/bench_one_hot.py
# Cityscapes 256x512 (35 classes, SPADE 'more') and ADE 256x256 (95 classes, 'normal'), authors' widths
CS=(--preset cityscapes --size 256x512 --classes 35 --num-upsampling-layers more --ngf 64 --seg-width 1 --batch 8)
ADE=(--preset ade_indoor --size 256x256 --classes 95 --num-upsampling-layers normal --ngf 64 --seg-width 1 --batch 8)
$PY bench/bench_train_step.py "${CS[@]}" --precision bf16 --steps 10 --no-report
$PY bench/bench_train_step.py "${ADE[@]}" --precision bf16 --steps 10 --no-report
$PY bench/bench_loaders.py --device cuda
if [[ -n "${SBGAN_DATA_ROOT:-}" ]]; then
    case "${SBGAN_DATA_DATASET:-cityscapes}" in
        cityscapes) SHAPE=("${CS[@]}") ;;
        ade_indoor) SHAPE=("${ADE[@]}") ;;
        ade20k) SHAPE=(--preset ade_indoor --size 256x256 --classes 151 --num-upsampling-layers normal --ngf 64
                       --seg-width 1 --batch 8) ;;
        *) echo "SBGAN_DATA_DATASET must be cityscapes, ade_indoor or ade20k" >&2; exit 2 ;;
    esac
    $PY bench/bench_train_step.py "${SHAPE[@]}" --precision bf16 --steps 20 --providers fast --seg-res all \
        --loader torch,dali --workers 8 --dataset "${SBGAN_DATA_DATASET:-cityscapes}" \
        --data-root "$SBGAN_DATA_ROOT" ${SBGAN_DATA_ARGS:-} --no-report
else
    echo "loader vs training step at the real shape: skipped (set SBGAN_DATA_ROOT to a dataset root in its" \
         "official layout, and SBGAN_DATA_DATASET=cityscapes|ade_indoor|ade20k)"
fi
$PY bench/report.py
