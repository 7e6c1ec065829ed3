#!/usr/bin/env bash
# The earlier reward-model figures (docs/reward-models.md, Earlier measurement): the fixed 240/60
# split of QA-Feedback's 300 examples, then the four RMs trained one after the other (never in parallel: they share the machine's cores)
# and evaluated on the 60 held-out examples.
#   bash bench/rm_qa_feedback.sh                   # all four
#   bash bench/rm_qa_feedback.sh relevance         # some of them
#   OUT=runs/rm-lr3 bash bench/rm_qa_feedback.sh factuality -- lr=3e-5   # with config overrides
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/qa_feedback/feedback.json}
OUT=${OUT:-runs/rm}
FG=${FG:-.venv/bin/finegrain}
# One torch thread: on a machine shared with other jobs, two threads spin-wait on each other and
# run several times slower (docs/reward-models.md); THREADS=2 on an idle machine.
THREADS=${THREADS:-1}
names=()
while [[ $# -gt 0 && $1 != "--" ]]; do names+=("$1"); shift; done
[[ ${1:-} == "--" ]] && shift
[[ ${#names[@]} -eq 0 ]] && names=(relevance factuality completeness preference)
mkdir -p "$OUT"
"$FG" rm split "$DATA" --train 240 --seed 0 --train-out "$OUT/train.json" --eval-out "$OUT/eval.json"
for name in "${names[@]}"; do
  "$FG" rm train --config "configs/rm_$name.yaml" --train-file "$OUT/train.json" --eval-file "$OUT/eval.json" \
    --out "$OUT/$name" "threads=$THREADS" "$@" 2>&1 | tee "$OUT/$name.train.log"
  "$FG" rm eval "$OUT/$name" "$OUT/eval.json" --threads "$THREADS" --json "$OUT/$name.eval.json" 2>&1 | tee "$OUT/$name.eval.log"
done
