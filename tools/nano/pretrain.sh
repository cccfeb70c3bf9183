#!/usr/bin/env bash
# Reproduces the shipped nano model (models/nano) from scratch: the `dreamforge nano pretrain`
# runs it came from, in order (docs/NANO.md, "Pretraining"). Stage k's run config is
# models/nano/stages/k/run_config.json (its loss curve beside it); stage 1 starts from the
# seeded init, every later stage from the previous stage's exported bundle (`init_from` is
# rewritten to point there). models/nano/run_config.json is the last stage's.
#
#   tools/nano/pretrain.sh [OUT=runs/nano-repro]    # OUT/stage1, OUT/stage2, ...; the last model/ is the bundle
#
# Every stage is resumable: rerunning the script after an interruption (Ctrl-C saves a
# checkpoint) continues where it stopped; finished stages resume to a no-op.
# DREAMFORGE selects the binary (default target/release/dreamforge).
set -euo pipefail
bin=${DREAMFORGE:-target/release/dreamforge}
out=${1:-runs/nano-repro}
stages=$(cd "$(dirname "$0")/../../models/nano/stages" && pwd)
mkdir -p "$out"
prev=""
for k in $(ls "$stages" | sort -n); do
  cfg="$out/stage$k.json"
  if [ -z "$prev" ]; then
    cp "$stages/$k/run_config.json" "$cfg"
  else
    sed -E "s#\"init_from\": *\"[^\"]*\"#\"init_from\": \"$prev\"#" "$stages/$k/run_config.json" > "$cfg"
  fi
  dir="$out/stage$k"
  if [ -f "$dir/checkpoint/state.json" ]; then
    "$bin" nano pretrain --config "$cfg" --out "$dir" --resume
  else
    "$bin" nano pretrain --config "$cfg" --out "$dir"
  fi
  prev="$dir/model"
done
echo "bundle: $prev"
