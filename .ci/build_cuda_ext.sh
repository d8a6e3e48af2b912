#!/usr/bin/env bash
# Compile and link the CUDA kernels of sbgan_fast._C (csrc/cuda/*.cu) with a CUDA build of torch,
# without a GPU, and fail loudly if nvcc or the link fails.
#
# Uses its own virtual environment (never the project's CPU venv) holding torch==2.14.1 (+cu130),
# reused across runs when it already has that torch. The build output goes to a temporary folder,
# so the CPU build of sbgan_fast/_C*.so in the work tree is left alone.
#
# Environment:
#   SBGAN_CUDA_VENV        venv folder (default: /tmp/sbgan-cuda-venv)
#   SBGAN_CUDA_VENV_REMOVE_NEW  1: remove the venv at exit when this run created it (it takes several GB; a
#                          venv that was already usable is kept)
#   SBGAN_CUDA_TORCH       torch requirement (default: torch==2.14.1)
#   TORCH_CUDA_ARCH_LIST   GPU architectures to compile for (default: 9.0; no GPU to detect them)
#   PYTHON                 interpreter that creates the venv (default: python3)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SBGAN_CUDA_VENV:-/tmp/sbgan-cuda-venv}"
TORCH_REQ="${SBGAN_CUDA_TORCH:-torch==2.14.1}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
PY="${PYTHON:-python3}"
start=$(date +%s)

say() { echo "build_cuda_ext: $*" >&2; }
die() { say "FAILED: $*"; exit 1; }

command -v nvcc >/dev/null || die "nvcc is not on PATH"
# The nvcc on PATH may be a wrapper script: ask nvcc itself where its toolkit is.
top="$(nvcc -dryrun -x cu /dev/null -o /dev/null 2>&1 | sed -n 's/^#\$ TOP=//p' | head -n1)"
[ -n "$top" ] || die "could not find the CUDA toolkit folder from 'nvcc -dryrun'"
export CUDA_HOME="$(cd "$top" && pwd -P)"
[ -x "$CUDA_HOME/bin/nvcc" ] || die "CUDA_HOME=$CUDA_HOME has no bin/nvcc"
say "CUDA_HOME=$CUDA_HOME ($("$CUDA_HOME/bin/nvcc" --version | tail -n1)), TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"

created_venv="" tmp_out=""
trap 'rm -rf ${created_venv:+"$created_venv"} ${tmp_out:+"$tmp_out"}' EXIT

want="${TORCH_REQ#torch==}"
have="$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0] if torch.version.cuda else "cpu")' 2>/dev/null || true)"
if [ "$have" != "$want" ]; then
  say "creating $VENV with $TORCH_REQ (CUDA build)"
  rm -rf "$VENV"
  [ "${SBGAN_CUDA_VENV_REMOVE_NEW:-0}" = 1 ] && created_venv="$VENV"
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-cache-dir "$TORCH_REQ" numpy "setuptools>=64" wheel ninja \
    || die "pip could not install $TORCH_REQ"
fi
"$VENV/bin/python" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else "torch in the venv is a CPU build")' \
  || die "$VENV holds a CPU build of torch"
t_env=$(date +%s)

if [ -n "${SBGAN_CUDA_BUILD_DIR:-}" ]; then  # kept: ninja rebuilds only what changed
  out="$SBGAN_CUDA_BUILD_DIR"; mkdir -p "$out"; rm -rf "$out/import"
else
  out="$(mktemp -d)"
  tmp_out="$out"
fi
say "compiling into $out"
cd "$ROOT"
# SBGAN_FAST_FORCE_CUDA=1: a missing toolkit or a CPU torch is an error, never a CPU-only build.
SBGAN_FAST_FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-2}" "$VENV/bin/python" setup.py -q build_ext \
    --build-lib "$out/lib" --build-temp "$out/tmp" \
  || die "compiling or linking the CUDA extension failed (see the nvcc / g++ output above)"
t_build=$(date +%s)

so="$(ls "$out"/lib/sbgan_fast/_C*.so 2>/dev/null | head -n1)"
[ -n "$so" ] || die "no sbgan_fast/_C*.so was produced"
# The library must carry device code for every requested architecture. cuobjdump comes with the full
# toolkit; a minimal toolkit lacks it, but the triton wheel that the CUDA torch pulls in ships one.
cuobjdump="$(command -v cuobjdump || true)"
[ -x "$CUDA_HOME/bin/cuobjdump" ] && cuobjdump="$CUDA_HOME/bin/cuobjdump"
[ -n "$cuobjdump" ] || cuobjdump="$(ls "$VENV"/lib/python3*/site-packages/triton/backends/nvidia/bin/cuobjdump 2>/dev/null | head -n1)"
[ -n "$cuobjdump" ] || die "no cuobjdump found to check the device code of $so"
elfs="$("$cuobjdump" --list-elf "$so")" || die "cuobjdump could not read $so"
for arch in ${TORCH_CUDA_ARCH_LIST//;/ }; do
  sm="sm_${arch//./}"; sm="${sm%+PTX}"
  grep -q "$sm" <<<"$elfs" || die "$so has no $sm device code (cuobjdump --list-elf: $elfs)"
done
say "device code: $(grep -c . <<<"$elfs") cubins ($(grep -o 'sm_[0-9a-z]*' <<<"$elfs" | sort -u | tr '\n' ' '))"
# Import it with the CUDA torch (works without a GPU) and check that the CUDA kernels are registered.
imp="$out/import"
mkdir -p "$imp"
cp -r "$ROOT/sbgan_fast" "$imp/"
rm -f "$imp"/sbgan_fast/_C*.so
cp "$so" "$imp/sbgan_fast/"
cd "$imp"
"$VENV/bin/python" - <<'PY' || die "the built extension does not import or lacks its CUDA kernels"
import torch
import sbgan_fast._C as C

assert C.cuda_compiled(), "built without SBGAN_FAST_WITH_CUDA"
for name in ("one_hot", "onehot_conv2d", "onehot_conv2d_backward"):
    op = getattr(torch.ops.sbgan_fast, name)
    for key in ("CPU", "CUDA"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op._qualified_op_name, key), (name, key)
# The CPU kernels of this build still agree with the reference on a small case.
from sbgan_fast.ops.one_hot import one_hot_ref
lab = torch.randint(0, 7, (2, 5, 9))
assert torch.equal(torch.ops.sbgan_fast.one_hot(lab, 7, None, [8, 4], torch.float32, False),
                   one_hot_ref(lab, 7, None, (8, 4)))
for mode in ("nearest", "nearest-exact"):  # both resize rules reach the kernels
    assert torch.equal(torch.ops.sbgan_fast.one_hot(lab, 7, None, [3, 13], torch.float32, False, mode),
                       one_hot_ref(lab, 7, None, (3, 13), mode=mode)), mode
print(f"sbgan_fast._C with CUDA kernels imports (torch {torch.__version__}, cuda {torch.version.cuda}, "
      f"GPU present: {torch.cuda.is_available()})")
PY
end=$(date +%s)
say "OK: environment $((t_env - start)) s, compile+link $((t_build - t_env)) s, total $((end - start)) s"
