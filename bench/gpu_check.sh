#!/usr/bin/env bash
# Every GPU figure that plans a Kaggle session, in one run of about 8 minutes on one GPU
# (bench/gpu_check.py lists them): prints one table and writes it, with the GPU, the versions
# and the command, to bench/results/<GPU>_<date>.txt. --cpu-smoke runs the same code on the
# CPU with a tiny model, to check it before a GPU is at hand.
#
#   bash bench/gpu_check.sh [--cpu-smoke] [--models A,B] [--out-dir DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python}" -m bench.gpu_check "$@"
