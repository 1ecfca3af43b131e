#!/usr/bin/env bash
# Self-adversarial CycleGAN augmentation on real PAS (issue 17): 5-fold CV of the real recipe with the augmentation
# (configs/train-segmenter-real-sa.yaml) and of its control (configs/train-segmenter-real.yaml: the same recipe,
# code and seed without it), two chains of one torch thread each; each run resumes from its checkpoint.
#   bash scripts/cv-segmenter-sa.sh [SA_ROOT] [CONTROL_ROOT]
# Needs the four real-stain CycleGANs with both directions in runs/cyclegan-x2pas (see the SA config's header).
# Then score each on its own held-out tiles through the job:
#   wsi-pipeline bench accuracy --labelled ../shared/data/real-glomeruli/aidpath-tiles --cv-runs SA_ROOT --out OUT
source "$(dirname "$0")/env.sh"
SA="${1:-runs/segmenter-sa-cv}"
CONTROL="${2:-runs/segmenter-sa-control-cv}"
mkdir -p "$SA" "$CONTROL"
run() { wsi-pipeline train segmenter --config "$1" --set real.fold=$2 --out "$3/fold-$2" --no-progress; }
sa() { run configs/train-segmenter-real-sa.yaml "$1" "$SA"; }
control() { run configs/train-segmenter-real.yaml "$1" "$CONTROL"; }
( sa 0; control 0; sa 2; control 2; sa 4 ) > "$SA/chain-a.log" 2>&1 &
( sa 1; control 1; sa 3; control 3; control 4 ) > "$SA/chain-b.log" 2>&1 &
wait
