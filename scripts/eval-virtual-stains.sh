#!/usr/bin/env bash
# Table 3 of docs/reproduction-segmentation-real.md: each CV fold model scored on its own held-out AIDPATH tiles in
# virtual stains (scripts/virtual_stain_labelled.py: CycleGAN generators, their Macenko-to-PAS normalisation, and the
# colour-only re-staining "~colour"), through the job.
#   [STAINS="HE~colour ..."] bash scripts/eval-virtual-stains.sh [CV_ROOT] [OUT]
source "$(dirname "$0")/env.sh"
CV="${1:-runs/segmenter-real-cv}"
OUT="${2:-bench-out/vs-shipped}"
VS=bench-out/virtual-stains
[ -f "$VS/IHC_CD68+macenko/mpp.json" ] || python scripts/virtual_stain_labelled.py --out "$VS" --macenko
[ -f "$VS/IHC_CD68~colour/mpp.json" ] || python scripts/virtual_stain_labelled.py --out "$VS" --via colour --stains HE SILVER SIRIUS_RED IHC_CD68
[ -f "$VS/HE~colour@3/mpp.json" ] || python scripts/virtual_stain_labelled.py --out "$VS" --via colour --stains HE --final-mpp 3.0
[ -f "$VS/HE@3/mpp.json" ] || python scripts/virtual_stain_labelled.py --out "$VS" --stains PAS HE --final-mpp 3.0
mkdir -p "$OUT"
STAINS="${STAINS:-PAS HE SILVER SIRIUS_RED IHC_CD68 PAS@3 HE@3 HE+macenko SILVER+macenko SIRIUS_RED+macenko IHC_CD68+macenko HE~colour SILVER~colour SIRIUS_RED~colour IHC_CD68~colour HE~colour@3}"
for s in $STAINS; do
  wsi-pipeline bench accuracy --labelled "$VS/$s" --cv-runs "$CV" --out "$OUT/$s" --workers 1 > "$OUT/$s.log" 2>&1
  echo "$s: $(grep '\*\*pooled' "$OUT/$s/results.md")"
done
