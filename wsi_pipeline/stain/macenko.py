"""Macenko stain normalisation (Macenko et al. 2009), robust to white background.

Fit: optical density of the reference; drop pixels whose OD is below ``beta`` in any channel (glass, faint
background); the plane of the two largest eigenvectors of the OD covariance; the extreme stain directions are the
``alpha`` / ``100 - alpha`` percentiles of the angles in that plane (robust to outliers); concentrations by least
squares, their 99th percentile is the stain's maximum. Apply: estimate the tile's own stain matrix and maxima the
same way (or take them from ``source``, fitted once on the whole slide, so all its tiles get one transform),
rescale its concentrations to the reference's maxima and recompose with the reference's stain matrix.

Like the original, the ``beta`` filter applies to every channel, so pixels of a stain that barely absorbs one
channel (pale eosin in red) only count where they overlap the other stain.

>>> vec = np.array([[0.65, 0.70, 0.29], [0.30, 0.85, 0.43]])
>>> vec /= np.linalg.norm(vec, axis=1, keepdims=True)
>>> c = np.random.default_rng(0).uniform(0.3, 1.5, (2000, 2))
>>> c[:300, 1] = c[300:600, 0] = 0  # some pure-stain pixels
>>> rgb = od_to_rgb(c @ vec).reshape(40, 50, 3)
>>> bool(np.allclose(fit_macenko(rgb).stain_matrix, vec, atol=0.03))
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .od import check_rgb, od_to_rgb, rgb_to_od

MIN_TISSUE_PIXELS = 100  # below this the covariance is unreliable; such a tile is returned unchanged


@dataclass(frozen=True)
class MacenkoParams:
    """Reference stain matrix (rows: unit OD vectors, first = the one absorbing red most, i.e. hematoxylin-like),
    its 99th-percentile concentrations, and the estimation settings reused on every tile."""

    stain_matrix: tuple[tuple[float, float, float], tuple[float, float, float]]
    max_concentrations: tuple[float, float]
    beta: float = 0.15
    alpha: float = 1.0
    background: float = 255.0


def _estimate(od: NDArray[np.float64], *, beta: float, alpha: float) -> tuple[NDArray, NDArray] | None:
    """(N, 3) OD -> (stain matrix (2, 3), 99th-percentile concentrations (2,)), or None without enough tissue."""
    tissue = od[np.all(od > beta, axis=1)]
    if len(tissue) < MIN_TISSUE_PIXELS:
        return None
    _, vecs = np.linalg.eigh(np.cov(tissue, rowvar=False))
    plane = vecs[:, [2, 1]]  # eigh sorts ascending: the two largest
    if tissue.mean(axis=0) @ plane[:, 0] < 0:  # point the main axis into the positive OD octant
        plane[:, 0] *= -1
    proj = tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100.0 - alpha])
    v1 = plane @ np.array([np.cos(lo), np.sin(lo)])
    v2 = plane @ np.array([np.cos(hi), np.sin(hi)])
    matrix = np.stack([v1, v2] if v1[0] >= v2[0] else [v2, v1])
    # A stain cannot have negative absorbance; tiny negative components come from noise.
    matrix = np.clip(matrix, 1e-6, None)
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    conc = _concentrations(tissue, matrix)
    return matrix, np.maximum(np.percentile(conc, 99, axis=0), 1e-6)


def _concentrations(od: NDArray[np.float64], matrix: NDArray[np.float64]) -> NDArray[np.float64]:
    """Least-squares stain concentrations: (N, 3) OD, (2, 3) matrix -> (N, 2)."""
    return od @ np.linalg.pinv(matrix)


def fit_macenko(reference: NDArray[np.uint8], *, beta: float = 0.15, alpha: float = 1.0,
                background: float = 255.0) -> MacenkoParams:
    """Stain matrix and maximum concentrations of the reference; ``ValueError`` if it has too little tissue."""
    if not 0.0 <= alpha < 50.0:
        raise ValueError(f"alpha={alpha}: percentile must be in [0, 50)")
    od = rgb_to_od(check_rgb(reference, "reference"), background=background).reshape(-1, 3)
    est = _estimate(od, beta=beta, alpha=alpha)
    if est is None:
        raise ValueError(f"reference: fewer than {MIN_TISSUE_PIXELS} pixels with OD > beta={beta} in all channels")
    matrix, maxima = est
    return MacenkoParams(tuple(tuple(map(float, row)) for row in matrix),  # type: ignore[arg-type]
                         tuple(map(float, maxima)), beta, alpha, background)  # type: ignore[arg-type]


def apply_macenko(image: NDArray[np.uint8], params: MacenkoParams, *,
                  source: MacenkoParams | None = None) -> NDArray[np.uint8]:
    """Re-stain a tile with the reference's stain vectors and concentration range; returns new uint8 RGB."""
    image = check_rgb(image)
    od = rgb_to_od(image, background=params.background).reshape(-1, 3)
    if source is not None:
        matrix, maxima = np.asarray(source.stain_matrix), np.asarray(source.max_concentrations)
    else:
        est = _estimate(od, beta=params.beta, alpha=params.alpha)
        if est is None:
            return image.copy()
        matrix, maxima = est
    conc = _concentrations(od, matrix) * (np.asarray(params.max_concentrations) / maxima)
    out = od_to_rgb(conc @ np.asarray(params.stain_matrix), background=params.background)
    return out.reshape(image.shape)
