#!/usr/bin/env bash
# The cross-validation table of the README (Reward models): 5-fold CV of QA-Feedback's 300 examples,
# the trivial rules on the same folds, then the RM configurations and variants named on the command
# line, one after the other (they share the machine's cores). Every fold is saved as it finishes and
# reused when the same command runs again, so an interrupted run resumes.
#   bash bench/rm_cv_qa_feedback.sh                          # baselines + the four configs
#   bash bench/rm_cv_qa_feedback.sh relevance                # baselines + one config
#   NAME=relevance-val bash bench/rm_cv_qa_feedback.sh relevance -- validation=0.2 epochs=10   # a variant
#   NAME=relevance-multitask bash bench/rm_cv_qa_feedback.sh relevance -- 'tasks=[relevance,factuality]'   # a row per head
#   NAME=relevance-ens3 bash bench/rm_cv_qa_feedback.sh relevance -- ensemble=3   # mean of 3 seeds
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/qa_feedback/feedback.json}
OUT=${OUT:-runs/cv}
FG=${FG:-.venv/bin/finegrain}
THREADS=${THREADS:-1}  # one torch thread: two spin-wait on each other on a shared machine (docs/reward-models.md)
names=()
while [[ $# -gt 0 && $1 != "--" ]]; do names+=("$1"); shift; done
[[ ${1:-} == "--" ]] && shift
[[ ${#names[@]} -eq 0 ]] && names=(relevance factuality completeness preference)
for name in relevance factuality completeness preference; do
  "$FG" rm cv --file "$DATA" --config "configs/rm_$name.yaml" --out "$OUT-base/$name" --baselines-only > /dev/null
done
mkdir -p "$OUT"
folders=()
for name in "${names[@]}"; do
  out="$OUT/${NAME:-$name}"
  "$FG" rm cv --file "$DATA" --config "configs/rm_$name.yaml" --out "$out" "threads=$THREADS" "$@" 2>&1 | tee "$out.log"
  folders+=("$out")
done
.venv/bin/python bench/rm_cv_table.py "$OUT-base/relevance" "$OUT-base/factuality" "$OUT-base/completeness" "$OUT-base/preference" "${folders[@]}"
