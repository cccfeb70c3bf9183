#!/usr/bin/env bash
# Batch-render throughput on the built-in nano model (BENCHMARKS.md, "Batch rendering"):
#   A. one `dreamforge render` of JOBS one-image jobs (batch 1): images/s and per-job overhead
#      (wall time minus the summed image times of the results log, per job);
#   B. the same JOBS images as JOBS separate `dreamforge sample` processes (one model load each);
#   C. JOBS/4 jobs of 4 seeds each, rendered with --batch 1 and with --batch 4.
# Usage: benches/render_throughput.sh [JOBS] [STEPS]   (env DREAMFORGE: the binary)
set -euo pipefail
JOBS=${1:-16}
STEPS=${2:-20}
DF=${DREAMFORGE:-target/release/dreamforge}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
"$DF" nano prompts --held-out --count "$JOBS" > "$W/prompts.txt"
python3 - "$W" "$STEPS" <<'PY'
import json, sys
w, steps = sys.argv[1], int(sys.argv[2])
prompts = open(f"{w}/prompts.txt").read().splitlines()
with open(f"{w}/single.jsonl", "w") as f:
    for i, p in enumerate(prompts):
        f.write(json.dumps({"prompt": p, "seed": i, "steps": steps}) + "\n")
with open(f"{w}/grouped.jsonl", "w") as f:
    for i, p in enumerate(prompts[: max(1, len(prompts) // 4)]):
        f.write(json.dumps({"prompt": p, "seed": 100 * i, "count": 4, "steps": steps}) + "\n")
PY
now() { date +%s.%N; }
logsum() { python3 -c "import json,sys; print(sum(json.loads(l)['seconds'] or 0 for l in open(sys.argv[1]) if l.strip()))" "$1/_render/results-0000-of-0001.jsonl"; }

t0=$(now); "$DF" render "$W/single.jsonl" --out "$W/a" --batch 1 --quiet 2>/dev/null; t1=$(now)
ta=$(echo "$t1 - $t0" | bc); sa=$(logsum "$W/a")
t0=$(now)
i=0
while IFS= read -r p; do
  "$DF" sample --prompt "$p" --seed "$i" --steps "$STEPS" --out "$W/b" --quiet >/dev/null 2>&1
  i=$((i + 1))
done < "$W/prompts.txt"
t1=$(now); tb=$(echo "$t1 - $t0" | bc)
n_grouped=$(( (JOBS / 4 > 0 ? JOBS / 4 : 1) * 4 ))
t0=$(now); "$DF" render "$W/grouped.jsonl" --out "$W/c1" --batch 1 --quiet 2>/dev/null; t1=$(now); tc1=$(echo "$t1 - $t0" | bc)
t0=$(now); "$DF" render "$W/grouped.jsonl" --out "$W/c4" --batch 4 --quiet 2>/dev/null; t1=$(now); tc4=$(echo "$t1 - $t0" | bc)

python3 - "$JOBS" "$STEPS" "$ta" "$sa" "$tb" "$n_grouped" "$tc1" "$tc4" <<'PY'
import sys
jobs, steps = int(sys.argv[1]), int(sys.argv[2])
ta, sa, tb, ng, tc1, tc4 = map(float, sys.argv[3:])
ng = int(ng)
print(f"| setup ({jobs} jobs, {steps} steps, 64×64) | wall s | images/s | per-job overhead s |")
print("|---|---|---|---|")
print(f"| A. one `render` process, batch 1 | {ta:.2f} | {jobs/ta:.2f} | {(ta-sa)/jobs:.3f} |")
print(f"| B. one `sample` process per job | {tb:.2f} | {jobs/tb:.2f} | {(tb-sa)/jobs:.3f} |")
print(f"| C1. {ng//4} jobs × 4 seeds, batch 1 | {tc1:.2f} | {ng/tc1:.2f} | |")
print(f"| C4. {ng//4} jobs × 4 seeds, batch 4 | {tc4:.2f} | {ng/tc4:.2f} | |")
print()
print(f"Reusing the loaded model saves {(tb-ta)/jobs:.3f} s per job ({tb/ta:.2f}× faster than one process per job).")
PY
