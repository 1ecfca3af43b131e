#!/usr/bin/env bash
# The measurements behind docs/reproduction-segmentation-real.md, after scripts/cv-segmenter.sh:
#   bash scripts/eval-segmenter-real.sh [OUT] [ALL_RUN] [CV_ROOT]
# (a step whose results.md is already in OUT is skipped: a re-run finishes what is missing)
source "$(dirname "$0")/env.sh"
OUT="${1:-bench-out/seg-real}"
ALL="${2:-runs/segmenter-real-all}"
CV="${3:-runs/segmenter-real-cv}"
bench() { local out="$1"; shift; [ -f "$out/results.md" ] || wsi-pipeline bench accuracy "$@" --out "$out" --workers 2; }
TILES=../shared/data/real-glomeruli/aidpath-tiles
mkdir -p "$OUT"
printf 'segment: {weights: %s}\n' "$(realpath "$ALL/segmenter.safetensors")" > "$OUT/job-all.yaml"
# 1. 5-fold cross-validation through the job: each fold's model on its own held-out tiles
bench "$OUT/cv" --labelled "$TILES" --cv-runs "$CV"
# 2. the phantom-trained segmenter shipped before (it never saw real data: every tile is held out for it)
if [ ! -f "$OUT/phantom-model/results.md" ]; then
  git show 974b348:wsi_pipeline/weights/segmenter.safetensors > "$OUT/phantom-segmenter.safetensors"
  printf 'segment: {weights: %s}\n' "$(realpath "$OUT/phantom-segmenter.safetensors")" > "$OUT/job-phantom.yaml"
  bench "$OUT/phantom-model" --labelled "$TILES" --config "$OUT/job-phantom.yaml"
fi
# 3. the all-data model on the eleven unlabelled real stain patches (~0.5 um/px): overlays, stains, what it finds
bench "$OUT/kidney-stains" --labelled ../shared/data/kidney-stains --mpp 0.5 --config "$OUT/job-all.yaml"
# 4. held-out phantom slides (never trained on): PAS, and the other phantom stains
bench "$OUT/phantom-PAS" --stain PAS --seeds 31-35 --size 4096 --config "$OUT/job-all.yaml"
for s in HE MASSON PASM CD68 CD34; do
  bench "$OUT/phantom-$s" --stain "$s" --seeds 31-32 --size 4096 --config "$OUT/job-all.yaml"
done
