"""Scoring on anyone's labelled data: each image of a labelled folder written as a slide and run through the job.

    wsi-pipeline bench accuracy --labelled DIR [--mpp UM] [--stain NAME] [--only a,b] [--config JOB.yaml] --out OUT

``DIR`` holds ``images/`` and ``masks/`` (see :mod:`wsi_pipeline.labelled` for the MPP and stain sources). Each
image becomes an Aperio SVS at its MPP (JPEG q90, as a scanner stores it) in ``OUT/slides``, then
:func:`workflows.slide_job.run_slide` segments it exactly as `wsi-pipeline run --task segment` would. Scored per
image, per stain and pooled: pixel Dice of the predicted polygons rasterised at the image's resolution against the
mask, and object precision / recall / F1 at IoU 0.5 against the mask's objects. Truth objects smaller than
``--min-truth-um2`` (slivers of glomeruli cut by the image edge) are left out of the object scores (still in the
pixel scores). ``OUT/overlays.jpg`` shows truth (green) and prediction (magenta) on every image.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw


def _polygons_of(path: Path) -> list[Any]:
    """The glomerulus polygons of the job's GeoJSON (level-0 pixels of a slide without bounds offset)."""
    from wsi_pipeline.annotations import read_geojson

    return [a.geometry for a in read_geojson(path) if (a.classification or "Glomerulus").startswith("Glomerulus")]


def _rasterise(polys: list[Any], size: tuple[int, int]) -> np.ndarray:
    canvas = Image.new("L", size, 0)
    draw = ImageDraw.Draw(canvas)
    for p in polys:
        for part in getattr(p, "geoms", [p]):
            draw.polygon([tuple(c) for c in np.asarray(part.exterior.coords)], fill=1)
            for hole in part.interiors:
                draw.polygon([tuple(c) for c in np.asarray(hole.coords)], fill=0)
    return np.asarray(canvas, bool)


def _write_slide(path: Path, image: np.ndarray, *, mpp: float) -> None:
    """``image`` as an Aperio SVS at ``mpp`` (JPEG q90, as a scanner stores it)."""
    from wsi_pipeline.export import write_pyramidal_tiff

    def region(x: int, y: int, w: int, h: int) -> np.ndarray:
        return image[y:y + h, x:x + w]

    write_pyramidal_tiff(path, region, size=(image.shape[1], image.shape[0]), mpp=mpp, quality=90, flavor="svs")


def score_image(pred_polys: list[Any], labels: np.ndarray, *, mpp: float, min_truth_um2: float) -> dict[str, Any]:
    """Pixel counts and detection scores of level-0 polygons against instance labels of the same image."""
    from wsi_pipeline.annotations import mask_to_polygons
    from wsi_pipeline.annotations.matching import polygon_detection_scores

    h, w = labels.shape
    pred = _rasterise(pred_polys, (w, h))
    truth_px = labels > 0
    tp, fp, fn = int((pred & truth_px).sum()), int((pred & ~truth_px).sum()), int((~pred & truth_px).sum())
    truth = mask_to_polygons(labels, min_area_px=min_truth_um2 / mpp**2, simplify_tol=0.5)
    det = polygon_detection_scores(pred_polys, truth, iou_threshold=0.5)
    return {"tp_px": tp, "fp_px": fp, "fn_px": fn, "dice": 2 * tp / max(2 * tp + fp + fn, 1),
            "truth": len(truth), "pred": len(pred_polys), "tp": det.tp, "fp": det.fp, "fn": det.fn,
            "f1": det.f1, "precision": det.precision, "recall": det.recall}


def _pool(rows: list[dict[str, Any]]) -> dict[str, Any]:
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    tpx, fpx, fnx = (sum(r[k] for r in rows) for k in ("tp_px", "fp_px", "fn_px"))
    p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {"images": len(rows), "truth": tp + fn, "tp": tp, "fp": fp, "fn": fn, "precision": p, "recall": r,
            "f1": 2 * p * r / max(p + r, 1e-12) if tp else 0.0,
            "dice": 2 * tpx / max(2 * tpx + fpx + fnx, 1)}


def _overlay(image: np.ndarray, labels: np.ndarray, pred_polys: list[Any], *, side: int = 256) -> np.ndarray:
    from scipy import ndimage

    h, w = labels.shape
    img = image.copy()
    truth = labels > 0
    edge = truth & ~ndimage.binary_erosion(truth, iterations=max(1, w // 256))
    img[edge] = (0, 200, 0)
    pred = _rasterise(pred_polys, (w, h))
    pedge = pred & ~ndimage.binary_erosion(pred, iterations=max(1, w // 256))
    img[pedge] = (230, 0, 230)
    scale = side / max(h, w)
    small = Image.fromarray(img).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
    tile = Image.new("RGB", (side, side), (255, 255, 255))
    tile.paste(small, (0, 0))
    return np.asarray(tile)


def run_labelled(folder: Path, out: Path, *, config: Any, mpp: float | None = None, stain: str | None = None,
                 only: list[str] | None = None, min_truth_um2: float = 2000.0, workers: int = 2) -> dict[str, Any]:
    """Write, run and score every (selected) image of ``folder``; returns the results dict (also as JSON/MD)."""
    from tqdm import tqdm

    from workflows.slide_job import run_slide
    from wsi_pipeline.labelled import read_labelled_folder

    items = read_labelled_folder(folder, mpp=mpp, stain=stain)
    if only:
        missing = sorted(set(only) - {i.name for i in items})
        if missing:
            raise SystemExit(f"{folder}: --only names not found: {missing}")
        items = [i for i in items if i.name in set(only)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "slides").mkdir(exist_ok=True)
    rows, tiles = [], []
    for item in tqdm(items, desc="labelled images", unit="image"):
        image, labels = item.load()
        slide = out / "slides" / f"{item.name}.svs"
        if not slide.exists():
            _write_slide(slide, image, mpp=item.mpp)
        t0 = time.perf_counter()
        entry = run_slide(slide, out / "jobs", config=config, task="segment", workers=workers)
        seconds = time.perf_counter() - t0
        stain_found = (entry.get("counts") or {}).get("stain")
        # per-stain tables use the folder's stain names, else what the job recognised
        row: dict[str, Any] = {"name": item.name, "stain": item.stain or stain_found or "unknown",
                               "stain_recognised": stain_found, "group": item.group, "mpp": item.mpp,
                               "status": entry["status"], "seconds": round(seconds, 2)}
        polys: list[Any] = []
        if entry["status"] in ("ok", "skipped"):
            polys = _polygons_of(Path(entry["output"]) / "glomeruli.geojson")
        elif entry["status"] != "no-tissue":
            raise SystemExit(f"{slide}: job {entry['status']}: {entry['reason']}")
        row.update(score_image(polys, labels, mpp=item.mpp, min_truth_um2=min_truth_um2))
        rows.append(row)
        tiles.append(_overlay(image, labels, polys))
    stains = sorted({r["stain"] for r in rows})
    results = {"folder": str(folder), "models": str(config.segment.weights), "min_truth_um2": min_truth_um2,
               "images": rows, "per_stain": {s: _pool([r for r in rows if r["stain"] == s]) for s in stains},
               "pooled": _pool(rows)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown_labelled(results))
    if tiles:
        cols = min(8, len(tiles))
        rows_img = [np.concatenate(tiles[i:i + cols] + [np.full_like(tiles[0], 255)] * (cols - len(tiles[i:i + cols])),
                                   axis=1) for i in range(0, len(tiles), cols)]
        Image.fromarray(np.concatenate(rows_img, axis=0)).save(out / "overlays.jpg", quality=88)
    return results


def run_cv(folder: Path, runs: Path, out: Path, *, config: Any, min_truth_um2: float = 2000.0,
           workers: int = 2) -> dict[str, Any]:
    """Cross-validation through the job: every ``runs/fold-k`` (a segmenter run with ``real.fold = k``) scores the
    images of its own held-out fold (the split its training used), with its own exported weights; pooled after."""
    from wsi_pipeline.labelled import contiguous_groups, read_labelled_folder

    items = read_labelled_folder(folder)
    fold_runs = sorted(p for p in runs.iterdir() if (p / "segmenter.safetensors").exists())
    if not fold_runs:
        raise SystemExit(f"{runs}: no fold-*/segmenter.safetensors")
    rows, per_fold = [], {}
    for run in fold_runs:
        train_cfg = json.loads((run / "config.json").read_text())
        real = train_cfg.get("real") or {}
        k, n = real.get("fold"), real.get("n_folds", 5)
        if k is None:
            continue
        names = [name for name, f in contiguous_groups(items, n).items() if f == k]
        fold_cfg = config.model_copy(update={"segment": config.segment.model_copy(
            update={"weights": str((run / "segmenter.safetensors").resolve())})})
        res = run_labelled(folder, out / run.name, config=fold_cfg, only=names, min_truth_um2=min_truth_um2,
                           workers=workers)
        per_fold[run.name] = res["pooled"]
        rows += [{**r, "fold": k} for r in res["images"]]
    results = {"folder": str(folder), "models": f"{runs}/fold-*", "min_truth_um2": min_truth_um2, "images": rows,
               "per_fold": per_fold, "per_stain": {}, "pooled": _pool(rows)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    lines = [markdown_labelled(results), "", "| fold | images | glomeruli | precision | recall | F1 | pixel Dice |",
             "|---|---|---|---|---|---|---|"]
    for name, p in per_fold.items():
        lines.append(f"| {name} | {p['images']} | {p['truth']} | {p['precision']:.3f} | {p['recall']:.3f} | "
                     f"{p['f1']:.3f} | {p['dice']:.3f} |")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return results


def run_unlabelled(images: list[Path], out: Path, *, config: Any, mpp: float, workers: int = 2) -> dict[str, Any]:
    """Images without masks (e.g. the real stain patches): each written as a slide, segmented by the job, its stain
    recognised; returns the glomeruli found per image and writes ``OUT/overlays.jpg`` (prediction in magenta)."""
    from tqdm import tqdm

    from workflows.slide_job import run_slide
    from wsi_pipeline.labelled import read_rgb
    from wsi_pipeline.stain.recognise import recognise_stain

    (out / "slides").mkdir(parents=True, exist_ok=True)
    rows, tiles = [], []
    for path in tqdm(images, desc="images", unit="image"):
        image = read_rgb(path)
        slide = out / "slides" / f"{path.stem}.svs"
        if not slide.exists():
            _write_slide(slide, image, mpp=mpp)
        entry = run_slide(slide, out / "jobs", config=config, task="segment", workers=workers)
        polys = (_polygons_of(Path(entry["output"]) / "glomeruli.geojson")
                 if entry["status"] in ("ok", "skipped") else [])
        small = np.asarray(Image.fromarray(image).resize((256, 256), Image.Resampling.BOX))
        stain = (entry.get("counts") or {}).get("stain") or recognise_stain(small).stain
        rows.append({"name": path.stem, "status": entry["status"], "stain_recognised": stain,
                     "glomeruli": len(polys), "areas_um2": [round(p.area * mpp**2) for p in polys]})
        tile = Image.fromarray(_overlay(image, np.zeros(image.shape[:2], np.uint16), polys, side=400))
        draw = ImageDraw.Draw(tile)
        draw.rectangle((0, 0, 399, 16), fill=(255, 255, 255))
        draw.text((4, 3), f"{path.stem}: {stain}, {len(polys)} found", fill=(0, 0, 0))
        tiles.append(np.asarray(tile))
    results = {"images": rows, "mpp": mpp, "models": str(config.segment.weights)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    cols = min(6, len(tiles))
    grid = [np.concatenate(tiles[i:i + cols] + [np.full_like(tiles[0], 255)] * (cols - len(tiles[i:i + cols])), 1)
            for i in range(0, len(tiles), cols)]
    Image.fromarray(np.concatenate(grid, 0)).save(out / "overlays.jpg", quality=88)
    return results


def markdown_labelled(results: dict[str, Any]) -> str:
    """The results as tables: one row per image, per stain, pooled."""
    lines = [f"# Segmentation on labelled images: {results['folder']}", "",
             f"Model: {results['models']}. Object scores at IoU >= 0.5; truth objects under "
             f"{results['min_truth_um2']:g} um^2 left out of them.", "",
             "| image | stain | um/px | glomeruli | TP / FP / FN | F1 | pixel Dice | job s |", "|---|---|---|---|---|---|---|---|"]
    for r in results["images"]:
        lines.append(f"| {r['name']} | {r['stain']} | {r['mpp']:g} | {r['truth']} | {r['tp']} / {r['fp']} / "
                     f"{r['fn']} | {r['f1']:.3f} | {r['dice']:.3f} | {r['seconds']:.1f} |")
    lines += ["", "| stain | images | glomeruli | precision | recall | F1 | pixel Dice |", "|---|---|---|---|---|---|---|"]
    for s, p in {**results["per_stain"], "**pooled**": results["pooled"]}.items():
        lines.append(f"| {s} | {p['images']} | {p['truth']} | {p['precision']:.3f} | {p['recall']:.3f} | "
                     f"{p['f1']:.3f} | {p['dice']:.3f} |")
    return "\n".join(lines) + "\n"


__all__ = ["markdown_labelled", "run_cv", "run_labelled", "run_unlabelled", "score_image"]
