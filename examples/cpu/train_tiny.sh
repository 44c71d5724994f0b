#!/usr/bin/env bash
# Stage 2 on one machine's CPU: ADEPT training of an expanded checkpoint with TP=2 over gloo.
# Usage: bash examples/cpu/train_tiny.sh EXPANDED_CKPT DATA_PREFIX PROBE.jsonl SAVE_DIR
# (examples/quickstart.sh builds all four inputs from the bundled demo corpora.)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="$(bash "$repo/scripts/setup_env.sh" test)"
export OMP_NUM_THREADS=1
exec "$python" -m torch.distributed.run --standalone --nproc-per-node 2 "$repo/pretrain_adept.py" \
    --load "$1" --data-path "$2" --probe-data "$3" --save "$4" --save-interval 20 \
    --mode adept --tensor-model-parallel-size 2 \
    --micro-batch-size 8 --global-batch-size 16 --seq-length 128 --train-iters 60 \
    --lr 2e-3 --min-lr 2e-4 --importance-interval 20 --log-interval 10 --split 100,0,0
