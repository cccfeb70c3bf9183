#!/usr/bin/env bash
# Reproduces the shipped nano model (models/nano) from scratch, as the two `dreamforge nano
# pretrain` runs it came from (docs/NANO.md, "Pretraining"):
#   1. batch 32, 4500 steps, cosine from lr 1e-3 (models/nano/stage1/run_config.json);
#   2. batch 128, continuing stage 1's exported weights, lr 6e-4 held, then cosine
#      (models/nano/run_config.json, its `init_from` pointed at stage 1's bundle).
#
#   tools/nano/pretrain.sh [OUT=runs/nano-repro]     # OUT/stage1, OUT/stage2; OUT/stage2/model is the bundle
#
# Each stage is resumable: rerunning the script after an interruption (Ctrl-C saves a
# checkpoint) continues the stage it stopped in. DREAMFORGE selects the binary.
set -euo pipefail
bin=${DREAMFORGE:-target/release/dreamforge}
out=${1:-runs/nano-repro}
here=$(cd "$(dirname "$0")/../.." && pwd)
mkdir -p "$out"
stage() { # stage DIR CONFIG (a finished stage resumes to no-op)
  if [ -f "$1/checkpoint/state.json" ]; then
    "$bin" nano pretrain --config "$2" --out "$1" --resume
  else
    "$bin" nano pretrain --config "$2" --out "$1"
  fi
}
stage "$out/stage1" "$here/models/nano/stage1/run_config.json"
sed -E "s#\"init_from\": *\"[^\"]*\"#\"init_from\": \"$out/stage1/model\"#" \
  "$here/models/nano/run_config.json" > "$out/stage2.json"
stage "$out/stage2" "$out/stage2.json"
echo "bundle: $out/stage2/model"
