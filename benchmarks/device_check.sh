#!/usr/bin/env bash
# The GPU figures of the benchmarks in one run on a CUDA machine (a few minutes on one H200; the device tool allows 10):
# `benchmarks/run.py --only gpu`, i.e. the real-size video branch (EVA ViT-g + Q-Formers) in bf16 with sdpa and eager
# attention (utterances/s, TFLOP/s, share of the GPU's dense bf16 peak) and the video + audio feature cache built by
# `train.FeatureCache` with exp0's encoders on the GPU in bf16, clips decoded by 0 / 4 / 12 DataLoader workers.
#
#     OUT=/tmp/device benchmarks/device_check.sh    # writes results.{json,md}, log.txt, nvidia-smi.txt to $OUT
#     benchmarks/device_check.sh --dry-run          # prints the commands it would run, on any machine
#
# Packages the machine lacks travel as wheels in .whl/ (benchmarks/README.md, "GPU figures"): they are installed into
# /tmp/site first. Without a CUDA device it stops with a one-line error before running anything.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

case "${1:-}" in
    "") dry_run=false ;;
    --dry-run) dry_run=true ;;
    *) echo "usage: benchmarks/device_check.sh [--dry-run]" >&2; exit 2 ;;
esac

# Prints each command; runs it unless this is a dry run.
run() {
    echo "+ $*"
    if ! $dry_run; then "$@"; fi
}

if ! $dry_run; then
    if [ -z "${OUT:-}" ]; then
        echo "device_check.sh: OUT is not set: name the folder for the results (the device tool sets it)" >&2
        exit 2
    fi
    if ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
        echo "device_check.sh: no CUDA device (torch.cuda.is_available() is False in $PYTHON): run it on a GPU machine" >&2
        exit 1
    fi
    mkdir -p "$OUT"
fi

if [ -d .whl ]; then
    run "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
if ! $dry_run && command -v nvidia-smi > /dev/null; then
    nvidia-smi > "$OUT/nvidia-smi.txt"
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
log=$($dry_run && echo /dev/null || echo "$OUT/log.txt")
run "$PYTHON" benchmarks/run.py --only gpu --output "${OUT:-\$OUT}" 2>&1 | tee "$log"
