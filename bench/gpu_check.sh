#!/usr/bin/env bash
# The README's GPU figures in one go (a few minutes on one GPU): the training step and the
# predict stage for eva02_base_patch14_448 at 448 px, random weights. Each bench's table and
# JSON line go to the screen and to OUT_DIR/NAME.txt.
#
#   bash bench/gpu_check.sh [OUT_DIR]      (default OUT_DIR: $TMPDIR/xray-kit-bench)
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${TMPDIR:-/tmp}/xray-kit-bench}
python=${PYTHON:-python}
mkdir -p "$out"

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
# precisions: those the GPU runs natively (bf16 on Ampere and newer, fp16, fp32 as tf32);
# compile and checkpointing are measured at the kit's default precision and batch. Predict
# cycles 256 films through 1024 images a pass, two batches or more for each of 8 workers.
status=0
"$python" -m bench.train_step --model eva02_base_patch14_448 --img-size 448 --batch-sizes 32,64 \
    --updates 5 --repeats 3 2>&1 | tee "$out/train_step.txt" || status=1
"$python" -m bench.predict --model eva02_base_patch14_448 --img-size 448 --images 1024 --repeats 2 \
    --batch-sizes 32 --workers 4 2>&1 | tee "$out/predict.txt" || status=1
exit $status
