#!/usr/bin/env bash
# Accelerator measurements in one run (benchmarks/accelerator.py): attention kernels, the
# var-d16 training step and cached sampling, side by side with the official PyTorch VAR.
#
#   benchmarks/accelerator.sh [--quick] [--var-archive FILE.tar.gz | --var-src DIR]
#                             [--out DIR] [--budget-s S] [--only SECTIONS]
#
# --quick        CPU-sized shapes: checks every code path on a machine without a GPU.
# --var-archive  a tar.gz of github.com/FoundationVision/VAR (models/, utils/, dist.py),
#                unpacked into a temporary folder for this run only: the reference is the
#                authors' code, never part of this repository. Without it (or --var-src)
#                the PyTorch rows are skipped.
# PYTHON / TORCH_PYTHON choose the interpreters (default: .venv's python if present, else
# python3; on the GPU machine python3 holds JAX and PyTorch together).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
TORCH_PYTHON=${TORCH_PYTHON:-$PYTHON}
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --var-archive)
      [ -f "${2:-}" ] || { echo "accelerator.sh: --var-archive: no such file: ${2:-}" >&2; exit 2; }
      src=$(mktemp -d)
      trap 'rm -rf "$src"' EXIT
      tar -xzf "$2" -C "$src"
      args+=(--var-src "$src"); shift 2 ;;
    *) args+=("$1"); shift ;;
  esac
done
exec_args=(benchmarks/accelerator.py --python "$PYTHON" --torch-python "$TORCH_PYTHON" "${args[@]}")
"$PYTHON" "${exec_args[@]}"
