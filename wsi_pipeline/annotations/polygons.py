"""Segmentation masks -> valid shapely polygons in level-0 coordinates, merged exactly across chunk seams.

Vectorisation is *pixel-exact*: each object is the union of its pixel squares (one box per horizontal run), so its
area equals its pixel count, holes come out as interior rings, and two pieces of one object cut by a chunk seam share
the seam edge exactly (integer coordinates, no marching-squares interpolation). Merging across seams is therefore
an exact union of pieces that share a seam edge, with no tolerance to tune: the chunked result equals the untiled one.
Only then is each object simplified, mapped to level 0 (``origin + scale * (col, row)``), made valid and snapped to
QuPath's 0.01 px grid.

Connectivity is 4 (edge-sharing pixels): an 8-connected diagonal contact would be a polygon pinched to a point.

Example::

    >>> m = np.zeros((8, 8), bool); m[2:6, 2:6] = True
    >>> [p.area for p in mask_to_polygons(m, origin=(100, 0), scale=(4, 4), simplify_tol=0)]
    [256.0]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import dask
import numpy as np
import shapely
import shapely.affinity
import zarr
from scipy import ndimage
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from ..infer.layout import Layout

GRID = 0.01  # QuPath >= 0.6 reduces coordinates to this precision on import


@dataclass(frozen=True)
class Piece:
    """One object's raw pixel polygon inside one chunk, in global mask-pixel coordinates."""

    chunk: tuple[int, int]
    label: int  # global label for label images; 0 for pieces of a binary mask (merged by geometry)
    polygon: BaseGeometry


def to_labels(mask: np.ndarray, *, threshold: float | None = None) -> tuple[np.ndarray, bool]:
    """``(labels, from_binary)``: threshold/label a mask, or pass a label image through (0 = background)."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: expected a 2-D array, got shape {mask.shape}")
    if threshold is not None:
        mask = mask >= threshold
    elif mask.dtype.kind == "f":
        raise ValueError("mask: float arrays need threshold= (e.g. 0.5 for probabilities)")
    if mask.dtype == bool:
        labels, _ = ndimage.label(mask)  # default structure: 4-connectivity
        return labels, True
    if mask.dtype.kind not in "iu":
        raise ValueError(f"mask: expected bool, integer labels or probabilities, got dtype {mask.dtype}")
    return mask, False


def label_polygons(labels: np.ndarray, *, offset: tuple[int, int] = (0, 0)) -> dict[int, BaseGeometry]:
    """Exact pixel-union geometry of every non-zero label, in mask pixels shifted by ``offset = (row0, col0)``."""
    h, w = labels.shape
    if h == 0 or w == 0:
        return {}
    padded = np.zeros((h, w + 2), labels.dtype)
    padded[:, 1:-1] = labels
    rows, cols = np.nonzero(padded[:, 1:] != padded[:, :-1])  # run boundaries: value changes between col-1 and col
    same_row = rows[:-1] == rows[1:]
    r, start, end = rows[:-1][same_row], cols[:-1][same_row], cols[1:][same_row]
    values = labels[r, start]
    keep = values != 0
    r, start, end, values = r[keep], start[keep], end[keep], values[keep]
    if values.size == 0:
        return {}
    r0, c0 = offset
    boxes = shapely.box(start + c0, r + r0, end + c0, r + 1 + r0)
    order = np.argsort(values, kind="stable")
    values, boxes = values[order], boxes[order]
    uniq, first = np.unique(values, return_index=True)
    bounds = list(first[1:]) + [values.size]
    return {int(v): shapely.union_all(boxes[a:b]) for v, a, b in zip(uniq, first, bounds)}


def _parts(geom: BaseGeometry) -> list[Polygon]:
    if isinstance(geom, Polygon):
        return [] if geom.is_empty else [geom]
    if isinstance(geom, MultiPolygon):
        return [g for g in geom.geoms if not g.is_empty]
    if hasattr(geom, "geoms"):  # GeometryCollection from make_valid: keep the areal parts
        return [p for g in geom.geoms for p in _parts(g)]
    return []


def snap_valid(geom: BaseGeometry, *, grid: float = GRID) -> list[Polygon]:
    """Valid polygons of ``geom`` snapped to ``grid``; empty when nothing areal survives the snapping."""
    geom = shapely.make_valid(geom) if not geom.is_valid else geom
    out: list[Polygon] = []
    for part in _parts(geom):
        snapped = shapely.set_precision(part, grid)  # mode "valid_output": GEOS repairs what rounding breaks
        if not snapped.is_valid:
            snapped = shapely.set_precision(shapely.make_valid(snapped), grid)
        out.extend(p for p in _parts(snapped) if p.is_valid and p.area > 0)
    return out


def finalize(
    geom: BaseGeometry,
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    scale: tuple[float, float] = (1.0, 1.0),
    simplify_tol: float = 1.0,
    min_area_px: float = 0.0,
    max_area_px: float = float("inf"),
) -> list[Polygon]:
    """Simplify (mask px), map to level 0, validate, snap; keep parts with level-0 area in ``[min, max]``."""
    # canonical form first (collinear seam vertices dropped, rings start at a fixed vertex) so simplification
    # is identical whether the object was vectorised whole or merged from chunks
    geom = shapely.normalize(shapely.simplify(geom, 0.0, preserve_topology=True))
    if simplify_tol > 0:
        geom = shapely.simplify(geom, simplify_tol, preserve_topology=True)
    sx, sy = scale
    x0, y0 = origin
    geom = shapely.affinity.affine_transform(geom, [sx, 0.0, 0.0, sy, x0, y0])
    return [p for p in snap_valid(geom) if min_area_px <= p.area <= max_area_px]


def _sorted(polys: Iterable[Polygon]) -> list[Polygon]:
    return sorted(polys, key=lambda p: (p.bounds[1], p.bounds[0], -p.area))


def mask_to_polygons(
    mask: np.ndarray,
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    scale: tuple[float, float] = (1.0, 1.0),
    threshold: float | None = None,
    min_area_px: float = 0.0,
    max_area_px: float = float("inf"),
    simplify_tol: float = 1.0,
) -> list[Polygon]:
    """Objects of a bool mask, label image or (with ``threshold``) probability map as level-0 polygons.

    Mask pixel ``(row, col)`` covers level-0 ``[x0 + col*sx, x0 + (col+1)*sx) x [y0 + row*sy, ...)``; areas are
    level-0 px^2; ``simplify_tol`` is in mask pixels. Sorted top-to-bottom, left-to-right.
    """
    labels, _ = to_labels(mask, threshold=threshold)
    kw = dict(origin=origin, scale=scale, simplify_tol=simplify_tol, min_area_px=min_area_px, max_area_px=max_area_px)
    return _sorted(p for g in label_polygons(labels).values() for p in finalize(g, **kw))  # type: ignore[arg-type]


def chunk_pieces(
    chunk: np.ndarray, *, offset: tuple[int, int], chunk_id: tuple[int, int], threshold: float | None = None
) -> list[Piece]:
    """Raw pieces of one chunk whose top-left mask pixel is ``offset = (row0, col0)`` (pure; run it per chunk)."""
    labels, binary = to_labels(chunk, threshold=threshold)
    return [Piece(chunk_id, 0 if binary else v, g) for v, g in label_polygons(labels, offset=offset).items()]


def merge_across_seams(pieces: Sequence[Piece]) -> list[BaseGeometry]:
    """Union pieces of one object: same label (label images) or a shared seam edge (binary masks).

    Pieces of a binary mask from *different* chunks belong together when their boundaries share a segment of
    positive length (DE-9IM boundary/boundary dimension 1); a mere corner contact is not 4-connected. Pieces of
    the same chunk are separate components by construction and are never merged directly.
    """
    if not pieces:
        return []
    parent = list(range(len(pieces)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def join(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    by_label: dict[int, int] = {}
    binary = [i for i, p in enumerate(pieces) if p.label == 0]
    for i, p in enumerate(pieces):
        if p.label != 0:
            join(i, by_label.setdefault(p.label, i))
    if binary:
        geoms = np.array([pieces[i].polygon for i in binary], dtype=object)
        tree = shapely.STRtree(geoms)
        left, right = tree.query(geoms, predicate="touches")
        cand = (left < right) & np.array(
            [pieces[binary[a]].chunk != pieces[binary[b]].chunk for a, b in zip(left, right)], dtype=bool
        )
        left, right = left[cand], right[cand]
        if left.size:
            shares_edge = shapely.relate_pattern(geoms[left], geoms[right], "****1****")
            for a, b in zip(left[shares_edge], right[shares_edge]):
                join(binary[a], binary[b])
    groups: dict[int, list[BaseGeometry]] = {}
    for i, p in enumerate(pieces):
        groups.setdefault(find(i), []).append(p.polygon)
    return [g[0] if len(g) == 1 else shapely.union_all(g) for g in groups.values()]


def polygons_from_chunks(
    pieces: Iterable[Piece],
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    scale: tuple[float, float] = (1.0, 1.0),
    min_area_px: float = 0.0,
    max_area_px: float = float("inf"),
    simplify_tol: float = 1.0,
) -> list[Polygon]:
    """Merge per-chunk pieces across seams, then finalise exactly like :func:`mask_to_polygons`."""
    kw = dict(origin=origin, scale=scale, simplify_tol=simplify_tol, min_area_px=min_area_px, max_area_px=max_area_px)
    merged = merge_across_seams(list(pieces))
    return _sorted(p for g in merged for p in finalize(g, **kw))  # type: ignore[arg-type]


def polygons_from_zarr(
    array: zarr.Array,
    *,
    channel: int | None = None,
    threshold: float | None = None,
    origin: tuple[float, float] = (0.0, 0.0),
    scale: tuple[float, float] = (1.0, 1.0),
    min_area_px: float = 0.0,
    max_area_px: float = float("inf"),
    simplify_tol: float = 1.0,
    scheduler: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Polygon]:
    """Chunk-parallel :func:`mask_to_polygons` over a zarr mask/probability array: 2-D, or ``channel`` of a
    ``(y, x, c)`` or ``(c, y, x)`` array (as :func:`~wsi_pipeline.infer.predict_zarr` writes).

    One Dask task per chunk vectorises it (memory: one chunk, not the whole mask); pieces are merged centrally,
    which only touches objects, not pixels. ``progress(done, total)`` is called as batches of chunks finish
    (about 20 calls, so a large slide's polygon pass is not silent).
    """
    layout = Layout.of(array)
    if layout.channel is not None and channel is None:
        raise ValueError(f"channel: required for a 3-D array of shape {array.shape}")
    height, width = layout.size(array)
    ch, cw = layout.chunks(array)
    tasks = []
    for cy, y in enumerate(range(0, height, ch)):
        for cx, x in enumerate(range(0, width, cw)):
            tasks.append(dask.delayed(_zarr_chunk_pieces)(array, (y, x, ch, cw), channel, threshold, (cy, cx)))
    pieces: list[Piece] = []
    batch = max(16, -(-len(tasks) // 20))  # enough tasks per batch to keep every thread busy
    for start in range(0, len(tasks), batch):
        pieces.extend(p for chunk in dask.compute(*tasks[start:start + batch], scheduler=scheduler) for p in chunk)
        if progress is not None:
            progress(min(start + batch, len(tasks)), len(tasks))
    return polygons_from_chunks(
        pieces, origin=origin, scale=scale, min_area_px=min_area_px, max_area_px=max_area_px, simplify_tol=simplify_tol
    )


def _zarr_chunk_pieces(
    array: zarr.Array,
    window: tuple[int, int, int, int],
    channel: int | None,
    threshold: float | None,
    chunk_id: tuple[int, int],
) -> list[Piece]:
    y, x, ch, cw = window
    data = Layout.of(array).read(array, slice(y, y + ch), slice(x, x + cw), channel=channel)
    return chunk_pieces(data, offset=(y, x), chunk_id=chunk_id, threshold=threshold)


def mean_inside(
    values: np.ndarray,
    polygon: BaseGeometry,
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    scale: tuple[float, float] = (1.0, 1.0),
) -> float:
    """Mean of a 2-D ``values`` grid (same geometry as the mask) over pixels whose centre lies in ``polygon``.

    ``polygon`` is in level-0 coordinates; use it for a per-object segmentation confidence. NaN when no pixel
    centre falls inside.
    """
    x0, y0 = origin
    sx, sy = scale
    minx, miny, maxx, maxy = polygon.bounds
    c0, c1 = max(int(np.floor((minx - x0) / sx)), 0), min(int(np.ceil((maxx - x0) / sx)), values.shape[1])
    r0, r1 = max(int(np.floor((miny - y0) / sy)), 0), min(int(np.ceil((maxy - y0) / sy)), values.shape[0])
    if c1 <= c0 or r1 <= r0:
        return float("nan")
    rr, cc = np.mgrid[r0:r1, c0:c1]
    inside = shapely.contains_xy(polygon, x0 + (cc + 0.5) * sx, y0 + (rr + 0.5) * sy)
    if not inside.any():
        return float("nan")
    return float(np.asarray(values[r0:r1, c0:c1], dtype=np.float64)[inside].mean())


def area_um2_to_px(area_um2: float, mpp: tuple[float, float]) -> float:
    """Convert an area in um^2 to level-0 px^2 given level-0 microns per pixel ``(x, y)``."""
    return area_um2 / (mpp[0] * mpp[1])
