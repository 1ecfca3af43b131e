"""One detection-matching rule: objects are paired one-to-one by IoU, greedily from the highest IoU, and a pair is a
hit when ``IoU >= iou_threshold`` (0.5: at most one partner per object is possible, so greedy is optimal).

Used for polygons (the slide job's GeoJSON against a truth GeoJSON: ``wsi-pipeline demo``, ``bench accuracy``, the
tests) and, through :func:`greedy_pairs`, for label images in training metrics.

>>> from shapely.geometry import box
>>> polygon_detection_scores([box(0, 0, 10, 10), box(50, 50, 60, 60)], [box(1, 0, 11, 10)]).f1
0.6666666666666666
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union
from shapely.strtree import STRtree

from .geojson import class_code, is_glomerulus

__all__ = ["DetectionScores", "evaluate_geojson", "greedy_pairs", "match_polygons", "polygon_detection_scores",
           "polygon_iou", "ratio"]


def ratio(num: float, den: float, empty: float) -> float:
    """``num / den``, or ``empty`` when there is nothing to count."""
    return float(num) / float(den) if den else empty


@dataclass(frozen=True)
class DetectionScores:
    """One-to-one object matching result; ``+`` pools counts over images. No objects at all scores 1."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    ious: tuple[float, ...] = field(default=(), repr=False)  # IoU of each matched pair

    def __add__(self, other: DetectionScores) -> DetectionScores:
        return DetectionScores(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.ious + other.ious)

    @property
    def precision(self) -> float:
        return ratio(self.tp, self.tp + self.fp, 1.0)

    @property
    def recall(self) -> float:
        return ratio(self.tp, self.tp + self.fn, 1.0)

    @property
    def f1(self) -> float:
        return ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, 1.0)

    @property
    def mean_iou(self) -> float:
        return float(np.mean(self.ious)) if self.ious else 0.0

    def as_dict(self, prefix: str = "det_") -> dict[str, float]:
        return {f"{prefix}f1": self.f1, f"{prefix}precision": self.precision, f"{prefix}recall": self.recall,
                f"{prefix}tp": float(self.tp), f"{prefix}fp": float(self.fp), f"{prefix}fn": float(self.fn),
                f"{prefix}mean_iou": self.mean_iou}

    @classmethod
    def of_pairs(cls, pairs: Sequence[tuple[int, int, float]], n_pred: int, n_truth: int) -> DetectionScores:
        return cls(len(pairs), n_pred - len(pairs), n_truth - len(pairs), tuple(p[2] for p in pairs))


def _check_threshold(iou_threshold: float) -> None:
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold={iou_threshold}: expected in (0, 1]")


def greedy_pairs(iou: np.ndarray, threshold: float) -> list[tuple[int, int, float]]:
    """``(pred, truth, IoU)`` of the one-to-one pairs picked greedily (highest IoU first) among those ``>= threshold``."""
    _check_threshold(threshold)
    pairs = np.argwhere(iou >= threshold)
    order: np.ndarray | list[int] = np.argsort(-iou[pairs[:, 0], pairs[:, 1]], kind="stable") if len(pairs) else []
    used_p: set[int] = set()
    used_t: set[int] = set()
    out = []
    for k in order:
        i, j = (int(v) for v in pairs[k])
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            out.append((i, j, float(iou[i, j])))
    return out


def polygon_iou(pred: Sequence[BaseGeometry], truth: Sequence[BaseGeometry]) -> np.ndarray:
    """IoU matrix ``(n_pred, n_truth)`` of two polygon lists (exact areas; only overlapping pairs are computed)."""
    iou = np.zeros((len(pred), len(truth)))
    if len(pred) and len(truth):
        tree = STRtree(list(truth))
        for i, g in enumerate(pred):
            for j in tree.query(g):
                t = truth[int(j)]
                inter = g.intersection(t).area
                if inter > 0:
                    iou[i, int(j)] = inter / (g.area + t.area - inter)
    return iou


def match_polygons(pred: Sequence[BaseGeometry], truth: Sequence[BaseGeometry], *,
                   iou_threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """The matched ``(pred index, truth index, IoU)`` pairs of predicted vs truth polygons."""
    return greedy_pairs(polygon_iou(pred, truth), iou_threshold)


def polygon_detection_scores(pred: Sequence[BaseGeometry], truth: Sequence[BaseGeometry], *,
                             iou_threshold: float = 0.5) -> DetectionScores:
    """Detection scores of predicted vs truth polygons (e.g. the pipeline's GeoJSON vs the phantom's truth)."""
    return DetectionScores.of_pairs(match_polygons(pred, truth, iou_threshold=iou_threshold), len(pred), len(truth))


def evaluate_geojson(pred_geojson: str | Path, truth_geojson: str | Path, *,
                     iou_threshold: float = 0.5) -> dict[str, Any]:
    """Detection F1 / precision / recall at ``iou_threshold``, the area Dice of all predicted vs all true glomeruli,
    and the class accuracy of the matched pairs (the same pairs the detection counts).

    ``class_pairs`` lists ``(truth code, predicted code)`` of every matched, classified glomerulus. A predicted
    class is the largest of its ``p_<code>`` measurements; the truth's is its class name's code (:func:`class_code`).
    Annotations of class ``Tissue`` (the tissue outline) are not glomeruli and are left out on both sides.
    """
    pred, truth = (_glomeruli(json.loads(Path(p).read_text(encoding="utf-8"))["features"])
                   for p in (pred_geojson, truth_geojson))
    pg, tg = [shape(f["geometry"]) for f in pred], [shape(f["geometry"]) for f in truth]
    pairs = match_polygons(pg, tg, iou_threshold=iou_threshold)
    scores = DetectionScores.of_pairs(pairs, len(pg), len(tg))
    pu, tu = unary_union(pg), unary_union(tg)  # area Dice of the glomerulus masks, exact on the polygons
    dice = 2 * pu.intersection(tu).area / (pu.area + tu.area) if pu.area + tu.area > 0 else 1.0
    classes: list[tuple[str, str]] = []  # (truth code, predicted code) of each matched, classified glomerulus
    for i, j, _ in sorted(pairs):
        probs = {k[2:]: v for k, v in (pred[i]["properties"].get("measurements") or {}).items() if k.startswith("p_")}
        if not probs:
            continue
        name = str(truth[j]["properties"]["classification"]["name"])
        classes.append((class_code(name) or name.split(": ")[-1], max(probs, key=probs.__getitem__)))
    correct = sum(t == p for t, p in classes)
    return {"f1": scores.f1, "precision": scores.precision, "recall": scores.recall, "tp": scores.tp,
            "fp": scores.fp, "fn": scores.fn, "mean_iou": scores.mean_iou, "dice": dice, "classified": len(classes),
            "class_accuracy": correct / len(classes) if classes else None, "class_pairs": classes}


def _glomeruli(features: list[Any]) -> list[Any]:
    return [f for f in features
            if is_glomerulus(((f.get("properties") or {}).get("classification") or {}).get("name"))]
