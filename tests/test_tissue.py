"""Tissue detection on real stain patches (pasted onto glass) and on a phantom slide with known tissue."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from shapely.geometry import box

from wsi_pipeline.tissue import detect_tissue

STAIN_FILES = sorted((Path(__file__).resolve().parents[2] / "shared" / "data" / "kidney-stains").glob("*.png"))


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _glass(shape: tuple[int, int], *, level: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (level + rng.integers(0, 6, (*shape, 3))).clip(0, 255).astype(np.uint8)


def test_stain_patches_found():
    assert len(STAIN_FILES) == 11, "shared kidney-stains patches missing"


@pytest.mark.parametrize("path", STAIN_FILES, ids=[p.stem[-2:] for p in STAIN_FILES])
def test_pasted_real_patch_is_detected_as_its_box(stains_dir: Path, path: Path) -> None:
    # 1000x1000 real patch at level-0 (600, 450) on slightly noisy glass; thumbnail at 1/4
    canvas = _glass((2000, 2200), level=244, seed=1)
    canvas[450:1450, 600:1600] = np.asarray(Image.open(path).convert("RGB"))
    thumb = np.asarray(Image.fromarray(canvas).reduce(4))
    res = detect_tissue(thumb, downsample=4.0, mpp=0.5)
    truth = np.zeros(thumb.shape[:2], bool)
    truth[450 // 4:1450 // 4, 600 // 4:1600 // 4] = True
    iou = _iou(res.mask, truth)
    poly_area = sum(p.area for p in res.polygons_level0)
    inter = sum(p.intersection(box(600, 450, 1600, 1450)).area for p in res.polygons_level0)
    poly_iou = inter / (poly_area + 1_000_000 - inter)
    print(f"{path.name}: mask IoU {iou:.3f}, polygon IoU {poly_iou:.3f}, OD threshold {res.threshold:.3f}")
    assert iou > 0.93 and poly_iou > 0.93
    assert len(res.polygons_level0) == 1 and all(p.is_valid for p in res.polygons_level0)


def test_blank_slide_gives_empty_mask_and_no_polygons() -> None:
    for level in (255, 246, 236):
        res = detect_tissue(_glass((400, 500), level=level, seed=level), downsample=16.0, mpp=0.25)
        assert res.is_empty and res.polygons_level0 == () and res.mask.shape == (400, 500)


def test_min_area_in_um2_drops_specks_but_keeps_tissue() -> None:
    img = _glass((300, 300), level=248, seed=3)
    img[100:200, 100:200] = (150, 90, 160)  # 100x100 thumb px of "tissue"
    img[20:23, 20:23] = (60, 40, 80)  # dust speck, 9 px
    # 1 thumb px = 8 um x 8 um: speck is 576 um^2, tissue 640,000 um^2
    res = detect_tissue(img, downsample=16.0, mpp=0.5, min_area_um2=5_000)
    assert not res.mask[21, 21] and res.mask[150, 150]
    kept = detect_tissue(img, downsample=16.0, mpp=0.5, min_area_um2=100)
    assert kept.mask[21, 21]
    # without mpp the pixel threshold applies
    assert not detect_tissue(img, downsample=16.0, mpp=None, min_area_px=50).mask[21, 21]


def test_lumens_are_filled_and_polygons_are_level0() -> None:
    img = _glass((200, 240), level=250, seed=4)
    img[40:160, 60:200] = (120, 60, 140)
    img[80:110, 100:140] = 252  # a white lumen inside the tissue
    res = detect_tissue(img, downsample=10.0, mpp=0.5)
    assert res.mask[95, 120], "hole inside tissue must be filled"
    (poly,) = res.polygons_level0
    minx, miny, maxx, maxy = poly.bounds
    assert abs(minx - 600) <= 20 and abs(miny - 400) <= 20 and abs(maxx - 2000) <= 20 and abs(maxy - 1600) <= 20
    assert abs(poly.area - res.area_level0_px) / res.area_level0_px < 0.03


def test_arguments_are_validated() -> None:
    img = np.full((10, 10, 3), 255, np.uint8)
    with pytest.raises(ValueError, match="downsample"):
        detect_tissue(img, downsample=0, mpp=0.5)
    with pytest.raises(ValueError, match="thumbnail_rgb"):
        detect_tissue(img.astype(np.float32), downsample=1, mpp=0.5)
    with pytest.raises(ValueError, match="mpp"):
        detect_tissue(img, downsample=1, mpp=-1.0)


def test_phantom_slide_tissue_iou(tmp_path: Path) -> None:
    """A rendered phantom (PAS and pale CD34 IHC) through a real SVS: detected core vs the layout's core."""
    from wsi_pipeline.export.tiff import write_pyramidal_tiff
    from wsi_pipeline.slide import open_slide
    from wsi_pipeline.synth import make_layout, render_region

    size = 768  # rendering is ~0.3 MPix/s on a shared core: keep it small, at a coarse 2.5 um/px
    layout = make_layout(size, seed=5, mpp=2.5)
    for stain in ("PAS", "CD34"):
        path = write_pyramidal_tiff(tmp_path / f"p-{stain}.svs",
                                    lambda x, y, w, h, s=stain: render_region(layout, s, x, y, w, h),
                                    size=(size, size), mpp=2.5, tile=256, quality=85)
        with open_slide(path) as slide:
            thumb = slide.thumbnail(256)
        ds = size / thumb.shape[1]
        res = detect_tissue(thumb, downsample=ds, mpp=2.5)
        yy, xx = np.mgrid[0:thumb.shape[0], 0:thumb.shape[1]]
        truth = layout.core_distance((xx + 0.5) * ds, (yy + 0.5) * ds) < 0
        iou = _iou(res.mask, truth)
        print(f"phantom {stain}: IoU {iou:.3f} (truth {truth.mean():.1%} of the slide)")
        assert iou > 0.85


def test_fast_closing_and_hole_filling_equal_scipy() -> None:
    from scipy import ndimage as ndi

    from wsi_pipeline.tissue import _binary_closing, _disk, _fill_holes

    rng = np.random.default_rng(7)
    for trial in range(12):
        shape = tuple(int(v) for v in rng.integers(3, 120, 2))
        mask = ndi.gaussian_filter(rng.random(shape), rng.uniform(0.5, 3)) > rng.uniform(0.45, 0.55)
        for r in (1, 2, 3):
            assert np.array_equal(_binary_closing(mask, _disk(r)), ndi.binary_closing(mask, structure=_disk(r)))
        holes = ndi.binary_fill_holes(mask) & ~mask
        labels, _ = ndi.label(holes)
        sizes = np.bincount(labels.ravel())
        for max_hole in (0, 4, 40, 10**9):
            keep = sizes <= max_hole
            keep[0] = False
            assert np.array_equal(_fill_holes(mask, max_hole_px=max_hole), mask | keep[labels]), (trial, max_hole)
