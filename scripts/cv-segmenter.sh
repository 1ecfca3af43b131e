#!/usr/bin/env bash
# 5-fold cross-validation of the real-tissue segmenter recipe (folds of aidpath-tiles by consecutive tile ids, crops
# by slide) and the same recipe on all data (the shipped model): six runs, two at a time, one torch thread each;
# each run resumes from its checkpoint if interrupted.
#   [INIT_ROOT=CV_ROOT0 INIT_ALL=ALL_RUN0] bash scripts/cv-segmenter.sh [CONFIG] [CV_ROOT] [ALL_RUN]
# INIT_ROOT / INIT_ALL: start each fold (and the all-data run) from the model of the same fold of another CV run
# (e.g. domain adaptation after the plain recipe).
# Then score every fold on its own held-out tiles through the real job path:
#   wsi-pipeline bench accuracy --labelled ../shared/data/real-glomeruli/aidpath-tiles --cv-runs CV_ROOT --out OUT
source "$(dirname "$0")/env.sh"
CONFIG="${1:-configs/train-segmenter-real.yaml}"
ROOT="${2:-runs/segmenter-real-cv}"
ALL="${3:-runs/segmenter-real-all}"
mkdir -p "$ROOT"
init() { [ -n "${INIT_ROOT:-}" ] && echo "--set init=$1/segmenter.safetensors"; }
fold() { wsi-pipeline train segmenter --config "$CONFIG" --set real.fold=$1 $(init "${INIT_ROOT:-}/fold-$1") \
           --out "$ROOT/fold-$1" --no-progress; }
( fold 0; fold 2; fold 4 ) > "$ROOT/chain-a.log" 2>&1 &
( fold 1; fold 3; wsi-pipeline train segmenter --config "$CONFIG" $(init "${INIT_ALL:-}") --out "$ALL" --no-progress ) > "$ROOT/chain-b.log" 2>&1 &
wait
