#!/usr/bin/env bash
# Reproduces the shipped nano model (models/nano) from scratch: one `dreamforge nano pretrain`
# run with the run config models/nano/run_config.json records (the same as the command's
# defaults; docs/NANO.md, "Pretraining"). Rerunning after an interruption (Ctrl-C saves a
# checkpoint) resumes it; a finished run resumes to a no-op.
#
#   tools/nano/pretrain.sh [OUT=runs/nano-repro]    # OUT/model is the bundle
#
# DREAMFORGE selects the binary (default target/release/dreamforge).
set -euo pipefail
bin=${DREAMFORGE:-target/release/dreamforge}
out=${1:-runs/nano-repro}
cfg="$(dirname "$0")/../../models/nano/run_config.json"
if [ -f "$out/checkpoint/state.json" ]; then
  "$bin" nano pretrain --config "$cfg" --out "$out" --resume
else
  "$bin" nano pretrain --config "$cfg" --out "$out"
fi
echo "bundle: $out/model"
