#!/usr/bin/env bash
# The nano personalization experiment (issue 5, docs/NANO.md): subjects the nano model never saw,
# ONE image each; LoRA vs T-LoRA at the same rank, several seeds; subject similarity (judge
# features vs the training image) and prompt fidelity (the judge reads background, position,
# shape and size of the new contexts in eval_prompts.txt) per run, then mean ± spread per method.
#
#   tools/nano/subject_experiment.sh OUT_DIR [SUBJECT_SEEDS] [TRAIN_SEEDS] [METHODS]
#   e.g. tools/nano/subject_experiment.sh runs/subjects "1 2 3 4" "0 1 2" "lora tlora tlora-ortho"
#
# Environment: DREAMFORGE (binary, default target/release/dreamforge), RANK (16), STEPS (the
# model's default), PROMPTS (eval prompts per subject, 8), IMAGES (seeds per prompt, 2).
set -euo pipefail
OUT=${1:?usage: subject_experiment.sh OUT_DIR [SUBJECT_SEEDS] [TRAIN_SEEDS] [METHODS]}
SUBJECTS=${2:-"1 2 3 4"}
SEEDS=${3:-"0 1 2"}
METHODS=${4:-"lora tlora"}
DF=${DREAMFORGE:-target/release/dreamforge}
RANK=${RANK:-16}
PROMPTS=${PROMPTS:-8}
IMAGES=${IMAGES:-2}
STEPS_ARG=()
[ -n "${STEPS:-}" ] && STEPS_ARG=(--steps "$STEPS")
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"

sample_prompts() { # ADAPTER_OR_EMPTY PROMPTS_FILE IMAGE_DIR
  local lora=() i=0
  [ -n "$1" ] && lora=(--lora "$1")
  rm -rf "$3"
  while IFS= read -r p; do
    for k in $(seq 1 "$IMAGES"); do
      "$DF" sample "${lora[@]}" --prompt "$p" --seed $((1000 + 10 * i + k)) --out "$3" --quiet >/dev/null 2>&1
    done
    i=$((i + 1))
  done < "$2"
}

record() { # SUBJECT METHOD SEED IMAGE_DIR REFERENCE SECONDS
  "$DF" eval --images "$4" --reference "$5" --trigger sks --json "$4/eval.json" --ground-truth 200 >/dev/null
  python3 - "$1" "$2" "$3" "$4/eval.json" "$6" >> "$RESULTS" <<'PY'
import json, sys
s, m, seed, path, secs = sys.argv[1:]
d = json.load(open(path))
print(json.dumps({"subject": int(s), "method": m, "seed": seed, "prompt_fidelity": d["prompt_fidelity"],
                  "subject_similarity": d["subject_similarity"]["mean"], "images": d["images"],
                  "train_seconds": float(secs), "judge_gt": d["judge_ground_truth_accuracy"]}))
PY
}

for s in $SUBJECTS; do
  subj="$OUT/subject-$s"
  "$DF" nano subject --seed "$s" --out "$subj" --eval-prompts "$PROMPTS" >/dev/null
  head -n "$PROMPTS" "$subj/eval_prompts.txt" > "$subj/prompts.txt"
  # Training folder: the image and its caption only.
  mkdir -p "$subj/train" && cp "$subj/subject.png" "$subj/subject.txt" "$subj/train/"
  class=$(awk '{print $4}' "$subj/subject.txt")
  # The base model on the same prompts (the trigger is a word it never saw).
  sample_prompts "" "$subj/prompts.txt" "$OUT/images-$s-base"
  record "$s" base - "$OUT/images-$s-base" "$subj/subject.png" 0
  for m in $METHODS; do
    case $m in
      lora) margs=(--method lora) ;;
      tlora) margs=(--method tlora) ;;
      tlora-ortho) margs=(--method tlora --orthogonal) ;;
      *) echo "unknown method $m" >&2; exit 1 ;;
    esac
    for seed in $SEEDS; do
      run="$OUT/run-$s-$m-$seed"
      rm -rf "$run"
      t0=$(date +%s.%N)
      "$DF" train --subject "$subj/train" --token sks --class "$class" "${margs[@]}" --rank "$RANK" \
        "${STEPS_ARG[@]}" --seed "$seed" --out "$run" --quiet 2> "$run.log"
      t1=$(date +%s.%N)
      sample_prompts "$run/adapter.safetensors" "$subj/prompts.txt" "$OUT/images-$s-$m-$seed"
      record "$s" "$m" "$seed" "$OUT/images-$s-$m-$seed" "$subj/subject.png" "$(echo "$t1 - $t0" | bc)"
    done
  done
done

python3 - "$RESULTS" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["method"], []).append(r)
print("| method | runs | prompt fidelity (mean ± sd over runs) | subject similarity (mean ± sd) | train s/run |")
print("|---|---|---|---|---|")
for m, rs in by.items():
    f = [r["prompt_fidelity"] for r in rs]
    s = [r["subject_similarity"] for r in rs]
    t = [r["train_seconds"] for r in rs]
    sd = lambda v: st.stdev(v) if len(v) > 1 else 0.0
    print(f"| {m} | {len(rs)} | {100*st.mean(f):.1f}% ± {100*sd(f):.1f} | {st.mean(s):.3f} ± {sd(s):.3f} | {st.mean(t):.0f} |")
PY
