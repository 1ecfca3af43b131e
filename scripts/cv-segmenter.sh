#!/usr/bin/env bash
# 5-fold cross-validation of the real-tissue segmenter recipe (folds of aidpath-tiles by consecutive tile ids, crops
# by slide), one fold after the other, each resumable; then the same recipe on all data (the shipped model).
#   bash scripts/cv-segmenter.sh [CONFIG] [RUN_ROOT]
source "$(dirname "$0")/env.sh"
CONFIG="${1:-configs/train-segmenter-real.yaml}"
ROOT="${2:-runs/segmenter-real-cv}"
for k in 0 1 2 3 4; do
  wsi-pipeline train segmenter --config "$CONFIG" --set real.fold=$k --out "$ROOT/fold-$k" --no-progress
done
