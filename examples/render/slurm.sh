#!/bin/bash
# A Slurm job array rendering one manifest over 64 GPU boxes: one command per task, the shard
# read from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT / SLURM_ARRAY_TASK_MIN.
#
#   sbatch --export=ALL,MANIFEST=/shared/jobs.jsonl,OUT=/shared/renders examples/render/slurm.sh
#   dreamforge render /shared/jobs.jsonl --out /shared/renders --status --shard-count 64
#
# Any task may die (preemption, node failure, kill -9): rerunning it (`scontrol requeue`, or
# resubmitting the array, or just this index with --array=17) skips the images that exist and
# makes the rest. Exit codes: 0 done; 1 something failed on its input (retrying will not help:
# see OUT/_render/results-*.jsonl); 2 something failed in a way a retry may fix (I/O, device,
# out of memory) — retried here a few times; 130 interrupted.
#SBATCH --job-name=dreamforge-render
#SBATCH --array=0-63
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=64G
#SBATCH --time=12:00:00
#SBATCH --requeue
#SBATCH --output=render-%A_%a.log
set -uo pipefail

MANIFEST=${MANIFEST:?set MANIFEST to the manifest path}
OUT=${OUT:?set OUT to the shared output folder}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-4}

for attempt in 1 2 3; do
  dreamforge render "$MANIFEST" --out "$OUT" --device "$DEVICE" --batch "$BATCH" --quiet
  rc=$?
  [ "$rc" -ne 2 ] && exit "$rc"
  echo "attempt $attempt: retryable failures (exit 2); retrying in 60 s" >&2
  sleep 60
done
exit 2
