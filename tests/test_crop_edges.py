"""The job's glomerulus crop at a slide's edge: mirrored slide pixels (as the real-crop training data), not white.

A real AIDPATH glomerulus crop written as a slide (JPEG, as a scanner stores it) with the glomerulus box reaching the
slide's edges is the case `wsi-pipeline run --task classify` meets on crops-as-slides: the job must then cut what
:func:`wsi_pipeline.train.data_real.job_crop` trained the classifier on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image

from wsi_pipeline.export import write_pyramidal_tiff
from wsi_pipeline.infer.classify import CropSpec
from wsi_pipeline.infer.crops import read_glomerulus_crops, read_mirrored
from wsi_pipeline.slide import open_slide
from wsi_pipeline.train.data_real import job_crop

CROPS = Path(__file__).resolve().parents[2] / "shared" / "data" / "real-glomeruli" / "aidpath-crops"


def _slide(tmp_path: Path, image: np.ndarray, *, mpp: float) -> Path:
    path = tmp_path / "crop.svs"
    write_pyramidal_tiff(path, lambda x, y, w, h: image[y:y + h, x:x + w], size=(image.shape[1], image.shape[0]),
                         mpp=mpp, quality=95, flavor="svs")
    return path


def test_a_crop_written_as_a_slide_is_cut_as_in_training(tmp_path: Path) -> None:
    name = "SAS_21883_001-10.png"
    if not (CROPS / "images" / name).is_file():
        pytest.fail(f"shared test data missing: {CROPS}")
    image = np.asarray(Image.open(CROPS / "images" / name).convert("RGB"))
    mask = np.asarray(Image.open(CROPS / "masks" / name).convert("L")) > 127
    h, w = image.shape[:2]
    spec = CropSpec(size=128, mpp=1.0, margin=0.2)
    with open_slide(_slide(tmp_path, image, mpp=1.0)) as slide:
        job = read_glomerulus_crops(slide, [shapely.box(0, 0, w, h)], spec)[0].astype(float)
    train = job_crop(image, mask, size=128, margin=0.2).astype(float)
    white = np.full_like(image, 255)
    padded = np.concatenate([white[:, :19], image, white[:, :19]], axis=1)
    padded = np.concatenate([np.full((19, padded.shape[1], 3), 255, np.uint8), padded,
                             np.full((19, padded.shape[1], 3), 255, np.uint8)])
    white_border = np.asarray(Image.fromarray(padded).resize((128, 128), Image.Resampling.BILINEAR), float)
    assert np.abs(job - train).mean() < 6.0  # JPEG and resampling only
    assert np.abs(white_border - train).mean() > 3 * np.abs(job - train).mean()
    assert (job[:6] > 245).all(-1).mean() < 0.2  # no white band along the edge


def test_inside_reads_are_plain_reads_and_outside_is_mirrored(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    with open_slide(_slide(tmp_path, image, mpp=0.5)) as slide:
        assert np.array_equal(read_mirrored(slide, (10, 20), 0, 64), slide.read_region((10, 20), 0, (64, 64)))
        edge = read_mirrored(slide, (-8, 290), 0, 20)  # 8 px left of and 10 px below the slide
        inside = slide.read_region((0, 290), 0, (12, 10))
        assert np.array_equal(edge[:10, 8:], inside)
        assert np.array_equal(edge[:10, :8], inside[:, :8][:, ::-1])  # mirrored at the left edge
        assert np.array_equal(edge[10:, 8:], inside[::-1])  # ... and at the bottom edge
        assert (read_mirrored(slide, (1000, 1000), 0, 8) == 255).all()  # nothing inside: white
