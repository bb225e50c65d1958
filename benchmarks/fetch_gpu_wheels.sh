#!/usr/bin/env bash
# Fetch, on a machine with a package index, the wheels the GPU suite needs on a lent GPU machine
# that has none (Python 3.12, a CUDA torch, transformers and timm already there; no PyAV or ftfy).
# Writes them to .whl/ (ignored by git); benchmarks/gpu_suite.sh installs them from there.
#
#   bash benchmarks/fetch_gpu_wheels.sh            # default: CPython 3.12, x86-64 manylinux
#   PYVER=3.11 bash benchmarks/fetch_gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PYVER="${PYVER:-3.12}"
DEST="${DEST:-.whl}"
PIP="${PIP:-python3 -m pip}"
# The same versions the CPU venv resolves today, within pyproject's ranges.
# torchcodec for the suite's decode_gpu part (GPU decoding, NVDEC): PyPI's Linux x86-64 wheel of 0.16
# is its CUDA 13.0 build (version 0.16.0+cu130, linking libcudart.so.13 and libnvrtc.so.13) for
# torch >= 2.11; it finds FFmpeg at run time, and gpu_suite.sh points it at the FFmpeg 8 that PyAV's
# wheel bundles. A torch built for CUDA 12 needs torchcodec's cu12x wheel from
# https://download.pytorch.org/whl/cu12x instead (TORCHCODEC_INDEX=that URL).
PKGS=(av==18.1.0 ftfy==6.3.1 wcwidth==0.9.4)
TORCHCODEC="${TORCHCODEC:-torchcodec==0.16.0}"
mkdir -p "$DEST"
$PIP download --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any \
  -d "$DEST" "${PKGS[@]}"
$PIP download --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  ${TORCHCODEC_INDEX:+--index-url "$TORCHCODEC_INDEX"} -d "$DEST" "$TORCHCODEC"
ls -l "$DEST"
