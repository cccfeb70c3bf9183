#!/usr/bin/env bash
# The GPU laboratory sweep for the from-scratch, single-run nano recipe (docs/NANO.md,
# "Choosing the recipe"): several `torch_lab.py` variants at batch 128 trained side by side on
# one GPU from the same dumped scenes, each judged on 200 held-out and 200 seen prompts at
# chosen steps. Optionally first times `dreamforge nano pretrain` on the wgpu backend in f32,
# bf16 and f16 (mixed precision on a real GPU).
#
#   LAB_IO=target/release/examples/lab_io DF=target/release/dreamforge \
#       tools/nano/gpu_lab_sweep.sh /tmp/lab
#
# Env: LAB_IO (the lab_io example binary), DF (a dreamforge binary built with --features wgpu;
# unset: skip the wgpu timing), DEADLINE (seconds per lab run, default 420), SCENES (per dump,
# 8 dumps; default 32000), PY (python with torch + diffusers + transformers).
set -u
W=${1:-/tmp/lab}
LAB_IO=${LAB_IO:-target/release/examples/lab_io}
DEADLINE=${DEADLINE:-420}
SCENES=${SCENES:-32000}
PY=${PY:-python3}
mkdir -p "$W/out"
t0=$(date +%s)

# Training scenes (pretraining combinations only) and the two prompt sets.
for i in 0 1 2 3 4 5 6 7; do
  "$LAB_IO" dump "$W/d$i" "$SCENES" $((100 + i)) seen >/dev/null &
done
"$LAB_IO" dump "$W/held" 200 1000 held-out >/dev/null
"$LAB_IO" dump "$W/seen" 200 2000 seen >/dev/null

if [ -n "${DF:-}" ]; then
  # Mixed precision on the GPU: up to 40 steps at batch 128 in each precision (the first steps
  # carry shader compilation and autotuning, so the rate is taken over the second half).
  for pt in f32:75 f16:60 bf16:45; do
    p=${pt%:*}
    timeout "${pt#*:}" "$DF" nano pretrain --out "$W/wgpu-$p" --steps 40 --batch-size 128 \
      --device wgpu --precision "$p" --checkpoint-every 1000 --quiet >"$W/wgpu-$p.log" 2>&1
    echo "wgpu $p rc=$? $(tail -c 300 "$W/wgpu-$p.log" | tr '\n' ' ')"
    "$PY" - "$W/wgpu-$p/loss.jsonl" "$p" <<'EOF' || true
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
a, b = rows[len(rows) // 2], rows[-1]
print(json.dumps({"wgpu_precision": sys.argv[2], "steps": len(rows),
                  "s_per_step_last": round((b["seconds"] - a["seconds"]) / (b["step"] - a["step"]), 4),
                  "first_step_s": round(rows[0]["seconds"], 2),
                  "loss_first": rows[0]["loss"], "loss_last": b["loss"]}))
EOF
  done
fi
wait
echo "data ready after $(( $(date +%s) - t0 )) s"

data=""
for i in 0 1 2 3 4 5 6 7; do data="$data $W/d$i"; done
run() {
  name=$1
  shift
  PYTHONUNBUFFERED=1 "$PY" tools/nano/torch_lab.py --data $data --heldout "$W/held" --seen "$W/seen" \
    --lab-io "$LAB_IO" --judge models/nano-judge/judge.safetensors --config-dir models/nano \
    --work "$W/out" --name "$name" --batch 128 --tf32 --deadline "$DEADLINE" "$@" >"$W/$name.log" 2>&1 &
}
run wsd70 --steps 1900 --stable-fraction 0.7 --eval-at 1000,1300,1600
run wsd70-seed1 --steps 1900 --stable-fraction 0.7 --eval-at 1300,1600 --seed 1
run cosine --steps 1900 --eval-at 1000,1300,1600
run wsd70-1500 --steps 1500 --stable-fraction 0.7 --eval-at 1000,1300
run wsd70-lr6e-4 --steps 1900 --lr 6e-4 --stable-fraction 0.7 --eval-at 1300,1600
run wsd70-2300 --steps 2300 --stable-fraction 0.7 --eval-at 1300,1600,1900
run wsd70-attr0.15 --steps 1900 --stable-fraction 0.7 --attr-dropout 0.15 --eval-at 1300,1600
run wsd70-attr0.3 --steps 1900 --stable-fraction 0.7 --attr-dropout 0.3 --eval-at 1300,1600
wait
echo "sweep done after $(( $(date +%s) - t0 )) s"
for f in "$W"/*.log; do
  echo "== $(basename "$f" .log)"
  grep -E '"step"|Error|rror:' "$f" | head -20
done
