#!/usr/bin/env bash
# Prompt fidelity of a nano model on N held-out prompts (first object a (shape, colour)
# combination never captioned in pretraining): one image per prompt with `dreamforge sample`
# (seed 1000 + i), then `dreamforge eval` on the folder (prompts read back from the PNGs).
#
#   tools/nano/fidelity.sh OUT_DIR [N=200] [MODEL=built-in] [extra `sample` flags...]
#
# DREAMFORGE selects the binary (default target/release/dreamforge); SPLIT=--seen samples
# prompts of seen combinations instead (to tune sampling settings away from the test prompts);
# SHORT=1 strips the size words and the position ("a red circle on a blue background"): partial
# prompts, which `sample` completes for the nano model (pass --exact-prompt as an extra flag to
# sample them as written, out of the training captions' form). JOBS=N runs
# N sampling loops of one thread each (faster than one N-thread loop for this small model).
set -euo pipefail
bin=${DREAMFORGE:-target/release/dreamforge}
out=$1
n=${2:-200}
model=${3:-}
shift $(( $# < 3 ? $# : 3 ))
mkdir -p "$out"
jobs=${JOBS:-1}
"$bin" nano prompts "${SPLIT:---held-out}" --count "$n" |
  if [ -n "${SHORT:-}" ]; then sed -E 's/ (small|large) / /g; s/, [a-z ]+$//'; else cat; fi \
  > "$out/prompts.txt"
start=$(date +%s.%N)
for j in $(seq 0 $((jobs - 1))); do
  (
    i=0
    while IFS= read -r prompt; do
      if [ $((i % jobs)) -eq "$j" ]; then
        mkdir -p "$out/part$j"
        RAYON_NUM_THREADS=$([ "$jobs" -gt 1 ] && echo 1 || echo "${RAYON_NUM_THREADS:-}") \
          "$bin" sample ${model:+--model "$model"} --prompt "$prompt" --seed $((1000 + i)) \
          --out "$out/part$j" --quiet "$@" > /dev/null
      fi
      i=$((i + 1))
    done < "$out/prompts.txt"
  ) &
done
wait
i=$(ls "$out"/part*/*.png | wc -l)
for f in "$out"/part*/*.png; do mv "$f" "$out/$(basename "$(dirname "$f")")-$(basename "$f")"; done
rmdir "$out"/part*/
end=$(date +%s.%N)
echo "sampled $i images in $(echo "$end - $start" | bc) s (model load included)"
"$bin" eval --images "$out" --json "$out/eval.json"
