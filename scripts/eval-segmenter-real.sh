#!/usr/bin/env bash
# The measurements behind docs/reproduction-segmentation-real.md, after scripts/cv-segmenter.sh:
#   bash scripts/eval-segmenter-real.sh [OUT] [ALL_RUN]
source "$(dirname "$0")/env.sh"
OUT="${1:-bench-out/seg-real}"
ALL="${2:-runs/segmenter-real-all}"
TILES=../shared/data/real-glomeruli/aidpath-tiles
mkdir -p "$OUT"
printf 'segment: {weights: %s}\n' "$(realpath "$ALL/segmenter.safetensors")" > "$OUT/job-all.yaml"
# 1. 5-fold cross-validation through the job: each fold's model on its own held-out tiles
wsi-pipeline bench accuracy --labelled "$TILES" --cv-runs runs/segmenter-real-cv --out "$OUT/cv" --workers 2
# 2. the phantom-trained segmenter shipped before (it never saw real data: every tile is held out for it)
git show 974b348:wsi_pipeline/weights/segmenter.safetensors > "$OUT/phantom-segmenter.safetensors"
printf 'segment: {weights: %s}\n' "$(realpath "$OUT/phantom-segmenter.safetensors")" > "$OUT/job-phantom.yaml"
wsi-pipeline bench accuracy --labelled "$TILES" --config "$OUT/job-phantom.yaml" --out "$OUT/phantom-model" --workers 2
# 3. the all-data model on the eleven unlabelled real stain patches (~0.5 um/px): overlays, stains, what it finds
wsi-pipeline bench accuracy --labelled ../shared/data/kidney-stains --mpp 0.5 --config "$OUT/job-all.yaml" \
  --out "$OUT/kidney-stains" --workers 2
# 4. held-out phantom slides (never trained on): PAS, and the other phantom stains
wsi-pipeline bench accuracy --stain PAS --seeds 31-35 --size 4096 --config "$OUT/job-all.yaml" \
  --out "$OUT/phantom-PAS" --workers 2
for s in HE MASSON PASM CD68 CD34; do
  wsi-pipeline bench accuracy --stain "$s" --seeds 31-32 --size 4096 --config "$OUT/job-all.yaml" \
    --out "$OUT/phantom-$s" --workers 2
done
