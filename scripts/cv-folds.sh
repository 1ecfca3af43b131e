#!/usr/bin/env bash
# The five CV folds of one segmenter recipe (no all-data run), in CHAINS chains of one torch thread each (fold k in
# chain k mod CHAINS); each run resumes from its checkpoint if interrupted. Logs: ROOT/chain-N.log.
#   bash scripts/cv-folds.sh CONFIG ROOT [CHAINS=2] [FOLDS="0 1 2 3 4"]
source "$(dirname "$0")/env.sh"
CONFIG="$1"; ROOT="$2"; CHAINS="${3:-2}"; FOLDS="${4:-0 1 2 3 4}"
mkdir -p "$ROOT"
for c in $(seq 0 $((CHAINS - 1))); do
  (
    i=0
    for k in $FOLDS; do
      if [ $((i % CHAINS)) -eq "$c" ]; then
        wsi-pipeline train segmenter --config "$CONFIG" --set real.fold="$k" --out "$ROOT/fold-$k" --no-progress
      fi
      i=$((i + 1))
    done
  ) > "$ROOT/chain-$c.log" 2>&1 &
done
wait
