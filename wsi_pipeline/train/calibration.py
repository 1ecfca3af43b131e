"""Probability calibration of the G2C classifier: temperature scaling and the expected calibration error.

Real labels say only *globally sclerosed or not*, so calibration is fitted and measured on the binary probability
``p_gs`` of the three-class softmax (``p_not = p_noa + p_ss``): ``softmax(logits / T)`` with one temperature ``T``
chosen to minimise the binary negative log-likelihood on out-of-fold predictions (cross-validation inside the
training data; Guo et al. 2017 fit T on a validation set). ``T`` does not change the ranking of ``p_gs``.

>>> import numpy as np
>>> round(ece(np.array([0.9, 0.9, 0.1, 0.1]), np.array([1, 1, 0, 0]), bins=10), 3)
0.1
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.floating]


def softmax(logits: FloatArray, *, temperature: float = 1.0) -> NDArray[np.float64]:
    """Row softmax of ``logits / temperature``."""
    z = np.asarray(logits, np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def gs_probability(logits: FloatArray, *, temperature: float = 1.0, gs_index: int = -1) -> NDArray[np.float64]:
    """``p_gs`` of three-class (or binary) logits at ``temperature``."""
    return softmax(logits, temperature=temperature)[:, gs_index]


def binary_nll(p: FloatArray, truth: NDArray[np.int64]) -> float:
    """Mean negative log-likelihood of 0/1 ``truth`` under ``P(1) = p``."""
    q = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(np.where(truth == 1, np.log(q), np.log1p(-q))))


def ece(p: FloatArray, truth: NDArray[np.int64], *, bins: int = 10) -> float:
    """Expected calibration error of a binary predictor (top-label: confidence ``max(p, 1 - p)``, equal-width bins)."""
    p = np.asarray(p, np.float64)
    if len(p) == 0:
        return float("nan")
    conf = np.maximum(p, 1 - p)
    correct = ((p >= 0.5).astype(np.int64) == truth).astype(np.float64)
    edges = np.linspace(0.5, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        sel = which == b
        if sel.any():
            total += sel.mean() * abs(conf[sel].mean() - correct[sel].mean())
    return float(total)


def fit_temperature(logits: FloatArray, truth: NDArray[np.int64], *, gs_index: int = -1,
                    grid: NDArray[np.float64] | None = None) -> float:
    """The ``T`` (log-spaced grid 0.05..20, then a local refinement) minimising the binary NLL of ``p_gs``."""
    if len(truth) == 0:
        raise ValueError("fit_temperature: no samples")
    candidates = np.exp(np.linspace(np.log(0.05), np.log(20.0), 121)) if grid is None else grid

    def loss(t: float) -> float:
        return binary_nll(gs_probability(logits, temperature=t, gs_index=gs_index), truth)

    best = float(min(candidates, key=loss))
    fine = best * np.exp(np.linspace(-0.06, 0.06, 25))
    return float(min(fine, key=loss))


__all__ = ["binary_nll", "ece", "fit_temperature", "gs_probability", "softmax"]
