"""Scoring the classifier on anyone's labelled glomerulus crops, through the real job path.

    wsi-pipeline bench accuracy --labelled DIR --out OUT [--mpp UM] [--site NAME] [--config JOB.yaml]

``DIR`` is laid out like ``shared/data/real-glomeruli/aidpath-crops``: ``images/<file>``, ``masks/<file>`` (the
glomerulus, white on black) and ``labels.csv`` with ``file``, ``global_sclerosis`` (1 / 0) and optionally
``site``. Each crop is written as an Aperio SVS at ``--mpp`` (JPEG q90) with ``<stem>.geojson`` beside it holding
the mask's outline as a QuPath annotation, then :func:`workflows.slide_job.run_slide` classifies it exactly as
``wsi-pipeline run --task classify`` would. Scored per site and pooled, globally sclerosed (GS) vs not: recall of
each, balanced accuracy of the job's decision (its ``gs`` class) and the AUC of its ``p_gs``.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from workflows.bench.labelled import _write_slide


def _outline(mask: np.ndarray) -> Any:
    """The mask's largest object as a polygon (level-0 px); the whole image when the mask is empty."""
    import shapely

    from wsi_pipeline.annotations import mask_to_polygons

    polys = mask_to_polygons(mask.astype(np.uint8), min_area_px=1.0, simplify_tol=0.5)
    if not polys:
        return shapely.box(0, 0, mask.shape[1], mask.shape[0])
    return max(polys, key=lambda p: p.area)


def binary_summary(p_gs: np.ndarray, called_gs: np.ndarray, gs: np.ndarray) -> dict[str, Any]:
    """GS-vs-not figures of the job's calls and probabilities (the training runs' own scoring), with the GS count."""
    from wsi_pipeline.train.g2c_real import call_scores

    return call_scores(called_gs, p_gs, gs) | {"n": int(len(gs)), "gs": int(gs.sum())}


def run_labelled_crops(folder: Path, out: Path, *, config: Any, mpp: float = 1.0, sites: tuple[str, ...] = (),
                       workers: int = 2) -> dict[str, Any]:
    """Write, classify and score every crop of ``folder`` (of ``sites`` when given); results also as JSON/MD."""
    from tqdm import tqdm

    from workflows.slide_job import run_slide
    from wsi_pipeline.annotations import Annotation, read_geojson, write_geojson

    labels = folder / "labels.csv"
    with labels.open(newline="") as fh:
        rows_in = [r for r in csv.DictReader(fh) if not sites or r.get("site") in sites]
    if not rows_in:
        raise SystemExit(f"{labels}: no crops{' of sites ' + ', '.join(sites) if sites else ''}")
    slides = out / "slides"
    slides.mkdir(parents=True, exist_ok=True)
    rows = []
    for r in tqdm(rows_in, desc="labelled crops", unit="crop"):
        name = r["file"]
        stem = Path(name).stem
        slide = slides / f"{stem}.svs"
        if not slide.exists():
            image = np.asarray(Image.open(folder / "images" / name).convert("RGB"))
            mask = np.asarray(Image.open(folder / "masks" / name).convert("L")) > 127
            write_geojson(slides / f"{stem}.geojson", [Annotation(_outline(mask), classification="Glomerulus")])
            _write_slide(slide, image, mpp=mpp)  # the slide last: its presence marks the pair complete
        entry = run_slide(slide, out / "jobs", config=config, task="classify", workers=workers)
        if entry["status"] not in ("ok", "skipped"):
            raise SystemExit(f"{slide}: job {entry['status']}: {entry['reason']}")
        found = [a for a in read_geojson(Path(entry["output"]) / "glomeruli.geojson") if "p_gs" in a.measurements]
        if len(found) != 1:
            raise SystemExit(f"{slide}: expected one classified glomerulus, got {len(found)}")
        rows.append({"file": name, "site": r.get("site", ""), "gs": int(r["global_sclerosis"]),
                     "p_gs": float(found[0].measurements["p_gs"]),
                     "called": found[0].classification or ""})
    p = np.array([x["p_gs"] for x in rows])
    called = np.array([x["called"] == config.classify.class_names["gs"] for x in rows])
    gs = np.array([x["gs"] for x in rows])
    site = np.array([x["site"] for x in rows])
    results = {"folder": str(folder), "mpp": mpp, "models": str(config.classify.weights), "crops": rows,
               "per_site": {s: binary_summary(p[site == s], called[site == s], gs[site == s])
                            for s in sorted(set(site))},
               "pooled": binary_summary(p, called, gs)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown_crops(results))
    return results


def markdown_crops(results: dict[str, Any]) -> str:
    lines = [f"Classifier `{results['models']}` through `run --task classify` on `{results['folder']}` "
             f"(crops written as slides at {results['mpp']} um/px)", "",
             "| site | glomeruli | GS | GS recall | not-GS recall | balanced accuracy | AUC of p_gs |",
             "|---|---|---|---|---|---|---|"]
    for name, s in [*results["per_site"].items(), ("pooled", results["pooled"])]:
        lines.append(f"| {name or '-'} | {s['n']} | {s['gs']} | {s['recall_gs']:.3f} | {s['recall_not_gs']:.3f} | "
                     f"{s['balanced_accuracy']:.3f} | {s['auc']:.3f} |")
    return "\n".join(lines) + "\n"


__all__ = ["binary_summary", "markdown_crops", "run_labelled_crops"]
