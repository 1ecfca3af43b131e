"""Reinhard colour transfer (Reinhard et al. 2001) in CIELAB, fitted and applied on tissue pixels only.

``fit`` records the reference's per-channel LAB mean and std over its tissue; ``apply`` standardises a tile's
tissue pixels with the tile's own statistics, or with ``source`` statistics fitted once on the whole slide (tiles
of one slide then get one transform and no seams), and gives them the reference's. Background (glass) is left untouched, so a
white tile comes back unchanged.

>>> rng = np.random.default_rng(0)
>>> ref = rng.integers(60, 200, (16, 16, 3), dtype=np.uint8)
>>> out = apply_reinhard(ref, fit_reinhard(ref))
>>> int(np.abs(out.astype(int) - ref).max()) <= 1
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .od import check_rgb, from_lab, tissue_mask, to_lab

MIN_TISSUE_PIXELS = 16  # fewer than this: statistics meaningless, the tile is returned as is


@dataclass(frozen=True)
class ReinhardParams:
    """Reference statistics: LAB mean and std over tissue pixels, and the tissue threshold used."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    luminosity: float = 0.8


def _tissue_lab(image: NDArray[np.uint8], mask: NDArray[np.bool_]) -> NDArray[np.float64]:
    """(N, 3) LAB of the tissue pixels only (converting just those is cheaper than the whole tile)."""
    return to_lab(image[mask][None])[0]


def _stats(lab: NDArray[np.float64]) -> tuple[NDArray, NDArray]:
    return lab.mean(axis=0), np.maximum(lab.std(axis=0), 1e-6)


def fit_reinhard(reference: NDArray[np.uint8], *, luminosity: float = 0.8) -> ReinhardParams:
    """LAB mean/std of the reference's tissue pixels; raises ``ValueError`` if it holds (almost) no tissue."""
    reference = check_rgb(reference, "reference")
    mask = tissue_mask(reference, luminosity=luminosity)
    if mask.sum() < MIN_TISSUE_PIXELS:
        raise ValueError(f"reference: only {int(mask.sum())} tissue pixels at luminosity={luminosity}")
    mean, std = _stats(_tissue_lab(reference, mask))
    return ReinhardParams(tuple(map(float, mean)), tuple(map(float, std)), luminosity)  # type: ignore[arg-type]


def apply_reinhard(image: NDArray[np.uint8], params: ReinhardParams, *,
                   source: ReinhardParams | None = None) -> NDArray[np.uint8]:
    """Map the tile's (or ``source``'s) tissue LAB statistics onto the reference's; returns new uint8 RGB."""
    image = check_rgb(image)
    mask = tissue_mask(image, luminosity=params.luminosity)
    out = image.copy()
    if mask.sum() < MIN_TISSUE_PIXELS:
        return out
    lab = _tissue_lab(image, mask)
    mean, std = _stats(lab) if source is None else (np.asarray(source.mean), np.asarray(source.std))
    mapped = (lab - mean) / std * np.asarray(params.std) + np.asarray(params.mean)
    out[mask] = from_lab(mapped[None])[0]
    return out
