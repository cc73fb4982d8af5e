#!/usr/bin/env bash
# Cumulative training of the shipped OpenKBP model, MINUTES more under nice, checkpointing every few minutes:
# - with a local checkpoint in runs/openkbp (kept out of git), resume it (weights, EMA, optimizer, RNG, step);
# - else warm-start a new run there from the shipped weights (src/mddose/weights/openkbp) with the recipe
#   recipes/openkbp.json: fresh optimizer, a short warm-up, steps counted on from the shipped model's, new
#   inputs of the recipe joining with zero weights. DECAY_STEPS is then required: the step the cosine ends at.
# Safe to kill at any point (the next call resumes from the last checkpoint). Usage:
#   scripts/train-openkbp.sh MINUTES [DEVICE] [DECAY_STEPS]
# DEVICE: cpu (default) or cuda. DECAY_STEPS: the cosine ends at this step; a resumed run that reached its old
# end sits at the floor learning rate and climbs back to the stretched curve's rate at its step.
# THREADS (environment, default 1): the most threads per process (2 on an otherwise idle 2-core machine; the
# trainer drops to fewer when more do not pay).
# Then `mddose pretrained export runs/openkbp` scores the run on the validation patients and, when it
# beats the shipped model, writes the package weights and a row of the model card's training log.
set -euo pipefail
minutes=${1:?usage: scripts/train-openkbp.sh MINUTES [DEVICE] [DECAY_STEPS]}
device=${2:-cpu}
root=$(cd "$(dirname "$0")/.." && pwd)
data=${MDDOSE_OPENKBP:-$root/../shared/openkbp}
cache=${MDDOSE_CACHE:-$root/.cache/openkbp}
run=$root/runs/openkbp
export OMP_NUM_THREADS=${THREADS:-1} MKL_NUM_THREADS=${THREADS:-1}
# glibc keeps freed memory instead of handing large blocks back and getting kernel-zeroed pages for the next step
# (docs/experiments/recipe-openkbp.md, fifth stretch: the process's system time fell from 21 % to under 1 %)
export MALLOC_MMAP_THRESHOLD_=${MALLOC_MMAP_THRESHOLD_:-33554432}
export MALLOC_TRIM_THRESHOLD_=${MALLOC_TRIM_THRESHOLD_:-17179869184} MALLOC_TOP_PAD_=${MALLOC_TOP_PAD_:-1073741824}
nice -n 10 mddose prepare "$data/train-pats" "$cache/train"  # adds only what the cache lacks (the beam prior too)
if [ -f "$run/checkpoints/last/trainer.json" ]; then start=(--resume)
else start=(--init-from "$root/src/mddose/weights/openkbp" --config "$root/recipes/openkbp.json"); fi
if [ $# -ge 3 ]; then start+=(--decay-steps "$3"); fi
exec nice -n 10 mddose train "$cache/train" "$run" "${start[@]}" --minutes "$minutes" --device "$device"
