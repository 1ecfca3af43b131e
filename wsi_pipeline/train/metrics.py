"""Segmentation metrics: pixel Dice / accuracy / precision / recall, and object detection F1 at an IoU threshold.

Pixel scores come from confusion counts (:class:`PixelCounts`), which add up, so a score over many patches or
slides is the pooled score (every pixel counts once), not a mean of per-patch ratios. Detection matches predicted
objects (connected components or polygons) one-to-one to truth objects by IoU, greedily from the highest IoU; a pair
counts as a hit when ``IoU >= iou_threshold`` (0.5: at most one partner per object is possible, so greedy is optimal).

>>> pred = np.array([[1, 1, 0, 0], [1, 1, 0, 0]], bool)
>>> truth = np.array([[1, 1, 0, 0], [1, 0, 0, 1]], bool)
>>> round(pixel_counts(pred, truth).dice, 4)
0.75
>>> detection_scores(pred, truth).f1  # 1 of 1 predicted objects matched, 1 of 2 truth objects found
0.6666666666666666
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..annotations.matching import DetectionScores, greedy_pairs, polygon_detection_scores
from ..annotations.matching import ratio as _ratio



@dataclass(frozen=True)
class PixelCounts:
    """Confusion counts of a binary segmentation; ``+`` pools them. Empty-vs-empty scores 1 (nothing to miss)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: PixelCounts) -> PixelCounts:
        return PixelCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def dice(self) -> float:
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn, 1.0)

    @property
    def accuracy(self) -> float:
        return _ratio(self.tp + self.tn, self.tp + self.fp + self.fn + self.tn, 1.0)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp, 1.0)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn, 1.0)

    @property
    def f1(self) -> float:
        """Pixel F1; for a binary mask it equals Dice (kept under both names, as the papers use both)."""
        return self.dice

    @property
    def iou(self) -> float:
        return _ratio(self.tp, self.tp + self.fp + self.fn, 1.0)

    def as_dict(self, prefix: str = "") -> dict[str, float]:
        return {f"{prefix}dice": self.dice, f"{prefix}pixel_accuracy": self.accuracy,
                f"{prefix}pixel_precision": self.precision, f"{prefix}pixel_recall": self.recall}


def pixel_counts(pred: np.ndarray, truth: np.ndarray, *, valid: np.ndarray | None = None) -> PixelCounts:
    """Confusion counts of two same-shape masks (any non-zero = foreground); ``valid`` restricts the pixels.

    >>> pixel_counts(np.array([1, 0, 1]), np.array([1, 1, 0]))
    PixelCounts(tp=1, fp=1, fn=1, tn=0)
    """
    p, t = np.asarray(pred) != 0, np.asarray(truth) != 0
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != truth shape {t.shape}")
    if valid is not None:
        v = np.asarray(valid, bool)
        if v.shape != p.shape:
            raise ValueError(f"valid shape {v.shape} != pred shape {p.shape}")
        p, t = p[v], t[v]
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return PixelCounts(tp, fp, fn, int(p.size) - tp - fp - fn)


def label_iou(pred_labels: np.ndarray, truth_labels: np.ndarray) -> np.ndarray:
    """IoU matrix ``(n_pred, n_truth)`` of two label images (0 = background; labels need not be consecutive)."""
    p, t = np.asarray(pred_labels), np.asarray(truth_labels)
    if p.shape != t.shape:
        raise ValueError(f"pred shape {p.shape} != truth shape {t.shape}")
    p_ids, p_inv = np.unique(p, return_inverse=True)
    t_ids, t_inv = np.unique(t, return_inverse=True)
    # contingency table of (pred id, truth id) pixel counts in one bincount
    joint = np.bincount(p_inv.ravel() * len(t_ids) + t_inv.ravel(), minlength=len(p_ids) * len(t_ids))
    joint = joint.reshape(len(p_ids), len(t_ids)).astype(np.float64)
    area_p, area_t = joint.sum(1), joint.sum(0)
    keep_p, keep_t = p_ids != 0, t_ids != 0
    inter = joint[np.ix_(keep_p, keep_t)]
    union = area_p[keep_p][:, None] + area_t[keep_t][None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def detection_scores(pred: np.ndarray, truth: np.ndarray, *, iou_threshold: float = 0.5,
                     min_area: int = 0, connectivity: int = 2) -> DetectionScores:
    """Object detection scores of a predicted mask/label image against a truth mask/label image.

    A boolean (or 0/1) input is split into connected components (``connectivity`` 2: 8-neighbours); an integer
    label image with more than one label is used as is (touching truth instances stay apart). Predicted components
    smaller than ``min_area`` pixels are dropped first, as the pipeline drops them.
    """
    if not 0.0 < iou_threshold <= 1.0:
        raise ValueError(f"iou_threshold={iou_threshold}: expected in (0, 1]")
    p_lab, t_lab = _as_labels(pred, connectivity), _as_labels(truth, connectivity)
    if min_area > 0 and p_lab.max() > 0:
        areas = np.bincount(p_lab.ravel())
        small = np.flatnonzero(areas < min_area)
        p_lab = np.where(np.isin(p_lab, small[small > 0]), 0, p_lab)
    iou = label_iou(p_lab, t_lab)
    n_p, n_t = iou.shape
    return DetectionScores.of_pairs(greedy_pairs(iou, iou_threshold), n_p, n_t)


def _as_labels(a: np.ndarray, connectivity: int) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool or a.max(initial=0) <= 1:
        structure = ndimage.generate_binary_structure(a.ndim, connectivity)
        return ndimage.label(a != 0, structure=structure)[0]
    return a.astype(np.int64)


__all__ = ["DetectionScores", "PixelCounts", "detection_scores", "label_iou", "pixel_counts",
           "polygon_detection_scores"]
