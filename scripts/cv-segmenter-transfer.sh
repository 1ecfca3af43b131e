#!/usr/bin/env bash
# 5-fold CV of the stain-transfer recipe with a held-out pair of generators (the folds train with the Sirius Red and
# CD68 generators only; H&E and silver stay unseen for the virtual-stain scores), then the shipped run on all data
# with all four generators. Two chains, one torch thread each; every run resumes from its checkpoint.
#   bash scripts/cv-segmenter-transfer.sh [CV_ROOT] [ALL_RUN]
# Score: python scripts/virtual_stain_labelled.py (once), then for each stain S in PAS HE SILVER SIRIUS_RED IHC_CD68:
#   wsi-pipeline bench accuracy --labelled bench-out/virtual-stains/S --cv-runs CV_ROOT --out OUT/S
source "$(dirname "$0")/env.sh"
CONFIG=configs/train-segmenter-real-transfer.yaml
ROOT="${1:-runs/segmenter-transfer-cv}"
ALL="${2:-runs/segmenter-transfer-all}"
mkdir -p "$ROOT"
fold() { wsi-pipeline train segmenter --config "$CONFIG" --set real.fold=$1 \
  --set 'stain_transfer.generators=[generator-real-PAS-MASSON, generator-real-PAS-CD68]' \
  --out "$ROOT/fold-$1" --no-progress; }
( fold 0; fold 2; fold 4 ) > "$ROOT/chain-a.log" 2>&1 &
( fold 1; fold 3; wsi-pipeline train segmenter --config "$CONFIG" --out "$ALL" --no-progress ) > "$ROOT/chain-b.log" 2>&1 &
wait
