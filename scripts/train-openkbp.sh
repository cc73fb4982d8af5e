#!/usr/bin/env bash
# Cumulative training of the shipped OpenKBP model: resume models/openkbp/run from its full checkpoint (weights,
# EMA, optimizer, RNG, step) and train MINUTES more on one thread under nice, checkpointing every few minutes.
# Safe to kill at any point (the next call resumes from the last checkpoint). Usage:
#   scripts/train-openkbp.sh MINUTES [DEVICE]      (DEVICE: cpu (default) or cuda)
# Then `mddose pretrained export models/openkbp/run` scores the run on the validation patients and, when it
# beats the shipped model, writes the package weights and a row of the model card's training log.
set -euo pipefail
minutes=${1:?usage: scripts/train-openkbp.sh MINUTES [DEVICE]}
device=${2:-cpu}
root=$(cd "$(dirname "$0")/.." && pwd)
data=${MDDOSE_OPENKBP:-$root/../shared/openkbp}
cache=${MDDOSE_CACHE:-$root/.cache/openkbp}
run=$root/models/openkbp/run
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
[ -f "$cache/train/cache.json" ] || nice -n 10 mddose prepare "$data/train-pats" "$cache/train"
if [ -f "$run/checkpoints/last/trainer.json" ]; then start=(--resume); else start=(--preset default); fi
exec nice -n 10 mddose train "$cache/train" "$run" "${start[@]}" --minutes "$minutes" --device "$device"
