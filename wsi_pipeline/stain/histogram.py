"""Histogram specification per RGB channel by CDF matching, on tissue pixels only.

``fit`` keeps the reference's per-channel histograms (256 bins) over its tissue; ``apply`` builds each channel's
look-up table by matching the tile's tissue CDF (or ``source``'s, fitted once on the whole slide) to the reference's (linear interpolation between the reference's
occupied intensities, as scikit-image's ``match_histograms``) and applies it to the tile's tissue pixels.

>>> ref = np.arange(0, 192, dtype=np.uint8).reshape(8, 8, 3)
>>> bool((apply_histogram(ref, fit_histogram(ref)) == ref).all())
True
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from .od import check_rgb, tissue_mask

MIN_TISSUE_PIXELS = 16


@dataclass(frozen=True)
class HistogramParams:
    """Reference histograms: ``counts[c][v]`` tissue pixels of intensity v in channel c."""

    counts: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]
    luminosity: float = 0.8


def _histograms(pixels: NDArray[np.uint8]) -> NDArray[np.int64]:
    """(N, 3) uint8 -> (3, 256) counts, vectorised by offsetting each channel into its own 256-bin range."""
    flat = (pixels.astype(np.int64) + np.arange(3) * 256).ravel()
    return np.bincount(flat, minlength=3 * 256).reshape(3, 256)


def fit_histogram(reference: NDArray[np.uint8], *, luminosity: float = 0.8) -> HistogramParams:
    """Per-channel tissue histograms of the reference; ``ValueError`` if it holds (almost) no tissue."""
    mask = tissue_mask(check_rgb(reference, "reference"), luminosity=luminosity)
    if mask.sum() < MIN_TISSUE_PIXELS:
        raise ValueError(f"reference: only {int(mask.sum())} tissue pixels at luminosity={luminosity}")
    counts = _histograms(reference[..., :3][mask])
    return HistogramParams(tuple(tuple(int(v) for v in ch) for ch in counts), luminosity)  # type: ignore[arg-type]


def lookup_tables(source_counts: NDArray[np.int64], reference_counts: NDArray[np.int64]) -> NDArray[np.uint8]:
    """(3, 256) source and reference histograms -> (3, 256) uint8 LUTs mapping source CDF onto reference CDF."""
    luts = np.zeros((3, 256), dtype=np.uint8)
    values = np.arange(256, dtype=np.float64)
    for c in range(3):  # three channels: a loop over 256-entry tables, not over pixels
        src_cdf = np.cumsum(source_counts[c]) / max(source_counts[c].sum(), 1)
        occupied = reference_counts[c] > 0
        ref_cdf = (np.cumsum(reference_counts[c]) / reference_counts[c].sum())[occupied]
        luts[c] = np.clip(np.rint(np.interp(src_cdf, ref_cdf, values[occupied])), 0, 255)
    return luts


def apply_histogram(image: NDArray[np.uint8], params: HistogramParams, *,
                    source: HistogramParams | None = None) -> NDArray[np.uint8]:
    """Give the tile's tissue pixels the reference's per-channel histograms; background is left as is."""
    image = check_rgb(image)
    mask = tissue_mask(image, luminosity=params.luminosity)
    out = image.copy()
    if mask.sum() < MIN_TISSUE_PIXELS:
        return out
    pixels = image[mask]
    counts = _histograms(pixels) if source is None else np.asarray(source.counts, dtype=np.int64)
    luts = lookup_tables(counts, np.asarray(params.counts, dtype=np.int64))
    out[mask] = np.stack([luts[c][pixels[:, c]] for c in range(3)], axis=-1)
    return out
