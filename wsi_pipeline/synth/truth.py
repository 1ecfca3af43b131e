"""Ground truth of a phantom: QuPath GeoJSON of the glomeruli and a downsampled instance-label mask.

Label mask: a tiled zlib TIFF, uint16, one pixel per ``downsample x downsample`` level-0 pixels (sampled at the
block centre); value ``k`` is glomerulus ``label == k`` (feature ``measurements.label`` in the GeoJSON), 0 is
everything else. Its ImageDescription is JSON: ``{"downsample": .., "mpp": .., "labels": {"1": "noa", ...}}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import tifffile

from wsi_pipeline import __version__

from ..atomic import atomic_output, atomic_write_text
from .layout import CLASS_COLORS, CLASS_NAMES, Glomerulus, Layout


def _area(points: list[tuple[float, float]]) -> float:
    xs, ys = np.array([p[0] for p in points]), np.array([p[1] for p in points])
    return float(abs(np.dot(xs[:-1], ys[1:]) - np.dot(xs[1:], ys[:-1])) / 2)


def truth_features(layout: Layout, *, stains: tuple[str, ...] = ()) -> dict[str, object]:
    """The glomeruli of ``layout`` as a QuPath-importable GeoJSON FeatureCollection (level-0 pixel coordinates)."""
    features = []
    for g in layout.glomeruli:
        ring = g.polygon()
        features.append({
            "type": "Feature",
            "id": g.uuid,
            "geometry": {"type": "Polygon", "coordinates": [[list(p) for p in ring]]},
            "properties": {
                "objectType": "annotation",
                "name": f"glomerulus {g.label}",
                "classification": {"name": CLASS_NAMES[g.cls], "color": list(CLASS_COLORS[g.cls])},
                "measurements": {"area_um2": round(_area(ring) * layout.mpp**2, 2), "label": g.label},
                "metadata": {"pipeline": f"wsi-pipeline {__version__}", "source": "synthetic phantom",
                             "seed": str(layout.seed), "stains": ",".join(stains)},
            },
        })
    return {"type": "FeatureCollection", "features": features}


def write_truth_geojson(layout: Layout, path: str | os.PathLike[str], *, stains: tuple[str, ...] = ()) -> Path:
    """Write :func:`truth_features` atomically to ``path``."""
    return atomic_write_text(path, json.dumps(truth_features(layout, stains=stains), indent=1))


def label_region(layout: Layout, x: int, y: int, w: int, h: int, *, downsample: int = 1) -> np.ndarray:
    """Instance labels ``(h, w)`` uint16 of the region at level-0 ``(x, y)`` sampled every ``downsample`` px."""
    ys = (y + np.arange(h) * downsample + (downsample - 1) / 2)[:, None]
    xs = (x + np.arange(w) * downsample + (downsample - 1) / 2)[None, :]
    out = np.zeros((h, w), np.uint16)
    x1, y1 = x + w * downsample, y + h * downsample
    for g in layout.glomeruli:
        reach = g.radius * 1.1
        if g.cx + reach < x or g.cx - reach > x1 or g.cy + reach < y or g.cy - reach > y1:
            continue
        dx, dy = xs - g.cx, ys - g.cy
        inside = np.hypot(dx, dy) < g.capsule_radius(np.arctan2(dy, dx))
        out[inside] = g.label
    return out


def write_label_mask(layout: Layout, path: str | os.PathLike[str], *, downsample: int = 4, tile: int = 256) -> Path:
    """Stream the instance-label mask to a tiled uint16 TIFF (atomic). See the module docstring for the format."""
    out = Path(path)
    w, h = -(-layout.width // downsample), -(-layout.height // downsample)

    def tiles() -> Iterator[np.ndarray]:
        for ty in range(0, h, tile):
            for tx in range(0, w, tile):
                block = np.zeros((tile, tile), np.uint16)
                bw, bh = min(tile, w - tx), min(tile, h - ty)
                block[:bh, :bw] = label_region(layout, tx * downsample, ty * downsample, bw, bh,
                                               downsample=downsample)
                yield block

    meta = {"downsample": downsample, "mpp": layout.mpp * downsample, "level0_size": [layout.width, layout.height],
            "labels": {str(g.label): g.cls for g in layout.glomeruli}}
    with atomic_output(out) as tmp, tifffile.TiffWriter(tmp) as tif:
        tif.write(tiles(), shape=(h, w), dtype=np.uint16, tile=(tile, tile), compression="zlib",
                  description=json.dumps(meta), metadata=None,
                  resolution=(1e4 / (layout.mpp * downsample),) * 2, resolutionunit="CENTIMETER")
    return out


__all__ = ["label_region", "truth_features", "write_label_mask", "write_truth_geojson"]
