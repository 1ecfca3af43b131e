"""Library half of the slide job end to end: zarr image -> blended segmentation -> seam-merged polygons ->
QuPath GeoJSON -> overlay.png, with glomeruli deliberately placed on chunk seams and corners."""

from __future__ import annotations

import functools
import json
import uuid

import numpy as np
import shapely
import shapely.affinity
import torch
import zarr
from PIL import Image
from torch import nn

from wsi_pipeline.annotations import (
    annotations_from_polygons,
    mean_inside,
    polygons_from_zarr,
    read_geojson,
    write_geojson,
)
from wsi_pipeline.infer import TiledInferenceConfig, TorchPredictor, clear_predictor_cache, predict_zarr
from wsi_pipeline.overlay import render_overlay, save_png

SEG_DOWNSAMPLE = 4.0  # the segmentation grid is 4x coarser than level 0
CENTRES = [(128, 128), (64, 256), (200, 384), (256, 100), (150, 470), (40, 40)]  # (row, col) on the seg grid
RADIUS = 22


def dark_detector() -> TorchPredictor:
    """A real conv net with fixed weights: probability that the 3x3 neighbourhood is dark."""
    conv = nn.Conv2d(3, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.fill_(-20.0 / 27.0)
        conv.bias.fill_(10.0)  # sigmoid(20 * (0.5 - mean intensity))
    return TorchPredictor(conv, device="cpu", activation="sigmoid")


def test_segment_polygons_geojson_overlay(tmp_path) -> None:
    h, w = 300, 517
    yy, xx = np.mgrid[:h, :w]
    img = np.full((3, h, w), 235, np.uint8)
    for cy, cx in CENTRES:
        img[:, (yy - cy) ** 2 + (xx - cx) ** 2 < RADIUS**2] = 70
    group = zarr.open_group(str(tmp_path / "slide.zarr"), mode="w")
    src = group.create_array("0", shape=img.shape, chunks=(3, 128, 128), dtype="uint8", fill_value=255,
                             dimension_names=("c", "y", "x"))
    src[:] = img

    clear_predictor_cache()
    cfg = TiledInferenceConfig(window=64, overlap=8, margin=2, batch_size=8, dtype="uint8", block_chunks=2)
    prob = predict_zarr(src, group, predictor_factory=functools.partial(dark_detector), config=cfg,
                        out_channels=1, name="seg", scheduler="threads")
    clear_predictor_cache()

    origin = (1000.0, 500.0)
    scale = (SEG_DOWNSAMPLE, SEG_DOWNSAMPLE)
    polys = polygons_from_zarr(prob, channel=0, threshold=128, origin=origin, scale=scale, min_area_px=400 * 16)
    assert len(polys) == len(CENTRES)  # one polygon per glomerulus, seams and corners included
    truth = [  # discs centred on seg pixel centres, in level-0 coordinates
        shapely.Point(origin[0] + (cx + 0.5) * 4, origin[1] + (cy + 0.5) * 4).buffer(RADIUS * 4) for cy, cx in CENTRES
    ]
    for t in truth:
        best = max(polys, key=lambda p: p.intersection(t).area)
        assert best.intersection(t).area / best.union(t).area > 0.93

    seg = np.asarray(prob[0]).astype(np.float32) / 255
    confidences = [{"seg_confidence": mean_inside(seg, p, origin=origin, scale=scale)} for p in polys]
    anns = annotations_from_polygons(polys, classes=["Glomerulus"] * len(polys), measurements=confidences,
                                     metadata={"pipeline": "wsi-pipeline test"})
    path = write_geojson(tmp_path / "glomeruli.geojson", anns, mpp=(0.25, 0.25), bounds_offset=(1000, 0))
    data = json.loads(path.read_text())
    assert {str(uuid.UUID(f["id"])) for f in data["features"]} == {a.id for a in anns}
    for f in data["features"]:
        props = f["properties"]
        assert props["classification"]["color"] and props["objectType"] == "annotation"
        assert props["measurements"]["seg_confidence"] > 0.9
        disc_um2 = np.pi * (RADIUS * SEG_DOWNSAMPLE * 0.25) ** 2
        assert 0.9 * disc_um2 < props["measurements"]["area_um2"] < 1.1 * disc_um2
        assert shapely.geometry.shape(f["geometry"]).is_valid
    back = read_geojson(path, bounds_offset=(1000, 0))
    assert all(a.geometry.equals(b.geometry) for a, b in zip(anns, back))

    # a thumbnail at 16x below level 0 with the glomeruli drawn on it
    thumb = np.asarray(Image.fromarray(img.transpose(1, 2, 0)).resize((w // 4, h // 4)))
    shifted = [(shapely.affinity.translate(a.geometry, -origin[0], -origin[1]), a.classification) for a in back]
    png = save_png(tmp_path / "overlay.png", render_overlay(thumb, shifted, downsample=16.0))
    drawn = np.asarray(Image.open(png))
    assert drawn.shape == thumb.shape and (drawn != thumb).any(axis=2).mean() > 0.02
