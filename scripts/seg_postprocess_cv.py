"""Nested cross-validation of the segmentation post-processing (probability threshold, minimum object area).

Reads the probability maps a finished ``wsi-pipeline bench accuracy --labelled DIR --cv-runs RUNS --out OUT`` left in
``OUT/fold-k/jobs/<image>/slide.zarr/seg``, re-extracts polygons exactly as the job does for every setting of a grid,
and scores them. Nested: for each fold the setting is the one with the best pooled F1 on the *other* folds, and only
then is the fold scored, so the pooled figure is a held-out estimate of "tune the post-processing by CV"; the grid's
best pooled F1 (tuned on the folds it is scored on) is printed beside it as the optimistic bound.

    python scripts/seg_postprocess_cv.py --labelled ../shared/data/real-glomeruli/aidpath-tiles --cv OUT
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path
from typing import Any

import zarr

from workflows.bench.labelled import _pool, score_image
from wsi_pipeline.annotations.polygons import polygons_from_zarr
from wsi_pipeline.labelled import read_labelled_folder
from wsi_pipeline.tiling import read_store_info

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7)
MIN_AREAS = (2000.0, 4000.0, 8000.0, 12000.0)
MAX_AREA = 100_000.0


def _rows(folder: Path, cv: Path) -> dict[tuple[float, float], list[dict[str, Any]]]:
    items = {i.name: i for i in read_labelled_folder(folder)}
    out: dict[tuple[float, float], list[dict[str, Any]]] = {k: [] for k in itertools.product(THRESHOLDS, MIN_AREAS)}
    for fold_dir in sorted(p for p in cv.iterdir() if p.name.startswith("fold-")):
        for store in sorted(fold_dir.glob("jobs/*/slide.zarr")):
            item = items[store.parent.name]
            _, labels = item.load()
            geometry = read_store_info(store).geometry
            seg = zarr.open_array(str(store / "seg"), mode="r")
            px_area = item.mpp**2
            for t, a in out:
                polys = polygons_from_zarr(seg, channel=0, threshold=t * 255.0, origin=geometry.origin,
                                           scale=geometry.scale, min_area_px=a / px_area,
                                           max_area_px=MAX_AREA / px_area, simplify_tol=1.0, scheduler="sync")
                row = score_image(polys, labels, mpp=item.mpp, min_truth_um2=2000.0)
                out[(t, a)].append({**row, "fold": fold_dir.name, "name": item.name})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labelled", type=Path, required=True)
    ap.add_argument("--cv", type=Path, required=True, help="the --out folder of a bench accuracy --cv-runs run")
    args = ap.parse_args()
    rows = _rows(args.labelled, args.cv)
    folds = sorted({r["fold"] for r in next(iter(rows.values()))})
    nested, chosen = [], {}
    for f in folds:
        best = max(rows, key=lambda k: (_pool([r for r in rows[k] if r["fold"] != f])["f1"], k == (0.5, 4000.0)))
        chosen[f] = best
        nested += [r for r in rows[best] if r["fold"] == f]
    grid = {f"t={t} min_area={a:g}": _pool(v) for (t, a), v in rows.items()}
    result = {"nested": _pool(nested), "chosen_per_fold": {f: list(k) for f, k in chosen.items()},
              "default (0.5, 4000)": _pool(rows[(0.5, 4000.0)]), "grid": grid}
    (args.cv / "postprocess-cv.json").write_text(json.dumps(result, indent=2))
    for name in ("default (0.5, 4000)", "nested"):
        p = result[name]
        print(f"{name}: P {p['precision']:.3f} R {p['recall']:.3f} F1 {p['f1']:.3f} Dice {p['dice']:.3f}")
    print("chosen per fold:", result["chosen_per_fold"])
    top = max(grid.items(), key=lambda kv: kv[1]["f1"])
    print(f"best of grid (optimistic, tuned on the scored folds): {top[0]} F1 {top[1]['f1']:.3f} Dice {top[1]['dice']:.3f}")


if __name__ == "__main__":
    main()
