"""Masks -> level-0 polygons: seams, corners, holes, touching objects, snapping, chunked == untiled."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import zarr

from wsi_pipeline.annotations import (
    Piece,
    chunk_pieces,
    mask_to_polygons,
    mean_inside,
    merge_across_seams,
    polygons_from_chunks,
    polygons_from_zarr,
)


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2


def chunked(mask: np.ndarray, chunk: tuple[int, int], **kw) -> list[shapely.Polygon]:
    pieces = []
    for cy, y in enumerate(range(0, mask.shape[0], chunk[0])):
        for cx, x in enumerate(range(0, mask.shape[1], chunk[1])):
            pieces += chunk_pieces(mask[y : y + chunk[0], x : x + chunk[1]], offset=(y, x), chunk_id=(cy, cx))
    return polygons_from_chunks(pieces, **kw)


def on_grid(geom: shapely.Geometry, grid: float = 0.01) -> bool:
    xy = shapely.get_coordinates(geom) / grid
    return bool(np.allclose(xy, np.rint(xy), atol=1e-6))


@pytest.mark.parametrize(
    "centre",
    [(100, 64), (64, 100), (64, 64), (128, 192), (63.5, 127.5)],
    ids=["vertical-seam", "horizontal-seam", "corner", "corner-2", "corner-offset"],
)
@pytest.mark.parametrize("tol", [0.0, 1.0])
def test_glomerulus_on_seam_is_one_polygon(centre: tuple[float, float], tol: float) -> None:
    mask = disc((256, 256), centre, 30)
    kw = dict(origin=(1000.0, 2000.0), scale=(2.0, 2.0), simplify_tol=tol)
    whole = mask_to_polygons(mask, **kw)
    tiled = chunked(mask, (64, 64), **kw)
    assert len(whole) == 1 and len(tiled) == 1
    assert tiled[0].area == pytest.approx(whole[0].area, rel=1e-9)
    assert tiled[0].equals(whole[0])
    if tol == 0:
        assert whole[0].area == pytest.approx(mask.sum() * 4.0)  # pixel-exact, scaled to level 0


def test_level0_transform() -> None:
    m = np.zeros((10, 10), bool)
    m[2:4, 5:8] = True
    (p,) = mask_to_polygons(m, origin=(100.0, 50.0), scale=(4.0, 2.0), simplify_tol=0)
    assert p.bounds == (100 + 5 * 4, 50 + 2 * 2, 100 + 8 * 4, 50 + 4 * 2)


def test_ring_keeps_hole_through_simplification_and_seams() -> None:
    mask = disc((200, 200), (100, 100), 45) & ~disc((200, 200), (100, 100), 20)
    for polys in (mask_to_polygons(mask), chunked(mask, (100, 100)), chunked(mask, (37, 53))):
        assert len(polys) == 1
        (p,) = polys
        assert len(p.interiors) == 1 and p.is_valid
        assert p.area == pytest.approx(mask.sum(), rel=0.02)
    (exact,) = mask_to_polygons(mask, simplify_tol=0)
    assert exact.area == mask.sum()


def test_touching_objects() -> None:
    m = np.zeros((64, 64), bool)
    m[10:20, 10:20] = True
    m[10:20, 20:30] = True  # shares an edge: one 4-connected object
    m[40:48, 40:48] = True
    m[48:56, 48:56] = True  # corner contact only: two objects
    assert len(mask_to_polygons(m)) == 3
    assert len(chunked(m, (32, 20))) == 3
    assert len(chunked(m, (48, 48))) == 3  # the corner contact sits exactly on a chunk corner


def test_touching_labels_stay_separate_across_seams() -> None:
    labels = np.zeros((64, 64), np.int32)
    labels[10:40, 10:32] = 1
    labels[10:40, 32:50] = 2  # touches label 1 along the seam at column 32
    labels[45:60, 20:60] = 3
    whole = mask_to_polygons(labels, simplify_tol=0)
    tiled = chunked(labels, (32, 32), simplify_tol=0)
    assert len(whole) == len(tiled) == 3
    assert sorted(p.area for p in tiled) == sorted(float((labels == v).sum()) for v in (1, 2, 3))


def test_chunks_from_zarr_equal_untiled_at_awkward_sizes(tmp_path) -> None:
    rng = np.random.default_rng(3)
    shape = (300, 517)
    prob = np.zeros(shape, np.float32)
    for _ in range(25):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        prob[disc(shape, (cy, cx), rng.uniform(5, 40))] = rng.uniform(0.6, 1.0)
    arr = zarr.open_group(str(tmp_path / "s.zarr"), mode="w").create_array(
        "seg", shape=(*shape, 2), chunks=(64, 100, 2), dtype="float16"
    )
    arr[:] = np.stack([1 - prob, prob], -1).astype(np.float16)
    kw = dict(origin=(7.0, 3.0), scale=(4.0, 4.0), min_area_px=16 * 60, simplify_tol=1.0)
    whole = mask_to_polygons(arr[:, :, 1], threshold=0.5, **kw)
    tiled = polygons_from_zarr(arr, channel=1, threshold=0.5, scheduler="threads", **kw)
    assert len(whole) == len(tiled) > 5
    for a, b in zip(whole, tiled):
        assert a.equals(b)
    with pytest.raises(ValueError, match="channel"):
        polygons_from_zarr(arr)
    chw = zarr.open_group(str(tmp_path / "s.zarr"), mode="a").create_array(
        "seg_chw", shape=(2, *shape), chunks=(2, 50, 128), dtype="uint8", dimension_names=("c", "y", "x")
    )
    chw[:] = np.rint(np.stack([1 - prob, prob]) * 255).astype(np.uint8)
    tiled_chw = polygons_from_zarr(chw, channel=1, threshold=128, scheduler="threads", **kw)
    assert len(tiled_chw) == len(whole) and all(a.equals(b) for a, b in zip(whole, tiled_chw))


def test_snapped_to_grid_and_valid_on_noisy_masks() -> None:
    rng = np.random.default_rng(0)
    mask = rng.random((120, 150)) < 0.55  # pinches, holes, diagonal contacts everywhere
    polys = mask_to_polygons(mask, origin=(0.123456, 7.891011), scale=(3.333333, 3.333333), simplify_tol=0.7)
    assert len(polys) > 20
    for p in polys:
        assert isinstance(p, shapely.Polygon) and p.is_valid and on_grid(p)
        assert shapely.set_precision(p, 0.01).is_valid


def test_area_filter_in_level0_pixels() -> None:
    m = np.zeros((50, 50), bool)
    m[0:2, 0:2] = True  # 4 mask px = 64 level-0 px at scale 4
    m[10:30, 10:30] = True  # 400 mask px = 6400
    kw = dict(scale=(4.0, 4.0), simplify_tol=0)
    assert [p.area for p in mask_to_polygons(m, min_area_px=100, **kw)] == [6400.0]
    assert [p.area for p in mask_to_polygons(m, max_area_px=100, **kw)] == [64.0]


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="threshold"):
        mask_to_polygons(np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="2-D"):
        mask_to_polygons(np.zeros((4, 4, 2), bool))
    assert mask_to_polygons(np.zeros((4, 4), bool)) == []
    assert merge_across_seams([]) == []


def test_same_chunk_pieces_never_merge() -> None:
    a = shapely.box(0, 0, 1, 1)
    b = shapely.box(1, 0, 2, 1)
    assert len(merge_across_seams([Piece((0, 0), 0, a), Piece((0, 0), 0, b)])) == 2
    assert len(merge_across_seams([Piece((0, 0), 0, a), Piece((0, 1), 0, b)])) == 1


def test_mean_inside_gives_per_object_confidence() -> None:
    prob = np.zeros((100, 100), np.float32)
    prob[10:30, 10:30] = 0.8
    prob[15:25, 15:25] = 0.6  # a region inside the hole of the ring below
    ring = (prob > 0.7).astype(bool)
    (p,) = mask_to_polygons(ring, origin=(50.0, 60.0), scale=(2.0, 2.0), simplify_tol=0)
    assert len(p.interiors) == 1
    assert mean_inside(prob, p, origin=(50.0, 60.0), scale=(2.0, 2.0)) == pytest.approx(0.8)
    far = shapely.box(10_000, 10_000, 10_010, 10_010)
    assert np.isnan(mean_inside(prob, far, origin=(50.0, 60.0), scale=(2.0, 2.0)))
