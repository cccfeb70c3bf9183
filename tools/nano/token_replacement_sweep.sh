#!/usr/bin/env bash
# Token replacement (Personalize Anything) on the nano model across τ (docs/NANO.md, "Token
# replacement"): for each one-image subject (`nano subject --seed S`), prompts that keep the
# subject's size, shape and position and ask for other backgrounds; each rendered with the
# subject as --ref (foreground mask `auto`, no shift) at every τ, and without a reference
# (base). Prompt fidelity (the judge reads background, shape, size and position) and subject
# similarity (judge features against the reference), mean ± sd over subjects.
#
#   tools/nano/token_replacement_sweep.sh OUT_DIR [SUBJECT_SEEDS] [TAUS]
#   e.g. tools/nano/token_replacement_sweep.sh runs/tau "1 2 3 4 5 6" "0.0 0.3 0.5 0.7 0.9"
# Environment: DREAMFORGE (binary, default target/release/dreamforge), SEEDS (image seeds per
# prompt, default "1 2"), SHARE=1 (attention sharing below τ: --share-attention; no base row).
set -euo pipefail
OUT=${1:?usage: token_replacement_sweep.sh OUT_DIR [SUBJECT_SEEDS] [TAUS]}
SUBJECTS=${2:-"1 2 3 4 5 6"}
TAUS=${3:-"0.0 0.3 0.5 0.7 0.9"}
DF=${DREAMFORGE:-target/release/dreamforge}
SEEDS=${SEEDS:-"1 2"}
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
for s in $SUBJECTS; do
  subj="$OUT/subject-$s"
  "$DF" nano subject --seed "$s" --out "$subj" >/dev/null
  # "a large sks hexagon on a black background, top right" → size, shape, background, position.
  read -r size shape bg pos <<< "$(python3 -c "
import sys, re
c = open('$subj/subject.txt').read().strip()
m = re.match(r'a (\w+) sks (\w+) on an? (\w+) background, (.+)', c)
print(m.group(1), m.group(2), m.group(3), m.group(4).replace(' ', '_'))")"
  pos=${pos//_/ }
  : > "$subj/prompts.txt"
  for c in red blue green white yellow purple black orange; do
    [ "$c" = "$bg" ] && continue
    art=a; [ "$c" = orange ] && art=an
    echo "a $size sks $shape on $art $c background, $pos" >> "$subj/prompts.txt"
  done
  head -n 4 "$subj/prompts.txt" > "$subj/p4.txt"
  settings="base $TAUS"
  [ -n "${SHARE:-}" ] && settings="$TAUS"
  for tau in $settings; do
    dir="$OUT/images-$s-$tau"
    rm -rf "$dir"
    ref=()
    [ "$tau" != base ] && ref=(--ref "$subj/subject.png" --ref-mask auto --tau "$tau")
    [ -n "${SHARE:-}" ] && ref+=(--share-attention)
    while IFS= read -r p; do
      for k in $SEEDS; do
        "$DF" sample "${ref[@]}" --prompt "$p" --seed "$k" --out "$dir" --quiet >/dev/null 2>&1
      done
    done < "$subj/p4.txt"
    "$DF" eval --images "$dir" --reference "$subj/subject.png" --trigger sks --json "$dir/eval.json" >/dev/null
    python3 - "$s" "$tau" "$dir/eval.json" >> "$RESULTS" <<'PY'
import json, sys
s, tau, path = sys.argv[1:]
d = json.load(open(path))
print(json.dumps({"subject": int(s), "tau": tau, "prompt_fidelity": d["prompt_fidelity"],
                  "subject_similarity": d["subject_similarity"]["mean"], "images": d["images"]}))
PY
  done
done
python3 - "$RESULTS" <<'PY'
import json, statistics as st, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
by = {}
for r in rows:
    by.setdefault(r["tau"], []).append(r)
sd = lambda v: st.stdev(v) if len(v) > 1 else 0.0
print("| τ | subjects | prompt fidelity (mean ± sd) | subject similarity (mean ± sd) |")
print("|---|---|---|---|")
for t, rs in by.items():
    f = [r["prompt_fidelity"] for r in rs]
    s = [r["subject_similarity"] for r in rs]
    label = "no reference (base)" if t == "base" else t
    print(f"| {label} | {len(rs)} | {100*st.mean(f):.1f}% ± {100*sd(f):.1f} | {st.mean(s):.3f} ± {sd(s):.3f} |")
PY
