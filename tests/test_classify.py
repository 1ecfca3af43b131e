"""Classification core: crop geometry and resampling, generators on crops, G2C probabilities vs the model itself."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
import torch

from wsi_pipeline.annotations import class_code
from wsi_pipeline.infer.classify import (
    CropSpec,
    G2CModel,
    class_measurements,
    crop_box,
    finish_crop,
    g2c_probabilities,
    generate_stains,
)
from wsi_pipeline.models.registry import define
from wsi_pipeline.train.data_stain import resize_square as training_resize

G2C_CFG = {"stains": ["HE", "MASSON"], "generator": {"ngf": 4, "n_blocks": 1},
           "classifier": {"num_stains": 3, "num_classes": 3, "stem_width": 8, "widths": [16]}}


def test_crop_box_is_a_square_around_the_bounding_box() -> None:
    x0, y0, x1, y1 = crop_box(shapely.box(100, 200, 180, 260), margin=0.25)
    assert (x1 - x0, y1 - y0) == (100.0, 100.0)  # the longer side (80) plus 25 %
    assert ((x0 + x1) / 2, (y0 + y1) / 2) == (140.0, 230.0)
    with pytest.raises(ValueError, match="margin"):
        CropSpec(margin=-0.1)


def test_finish_crop_matches_the_training_resize() -> None:
    rng = np.random.default_rng(0)
    region = rng.integers(0, 256, (96, 96, 3), dtype=np.uint8)  # already at the crop resolution
    np.testing.assert_array_equal(finish_crop(region, side_px=96, size=64), training_resize(region, 64))
    fine = np.repeat(np.repeat(region, 2, axis=0), 2, axis=1)  # the same crop read one pyramid level finer
    np.testing.assert_array_equal(finish_crop(fine, side_px=96, size=64), training_resize(region, 64))
    with pytest.raises(ValueError, match="region"):
        finish_crop(region[..., :2], side_px=96, size=64)


def test_g2c_probabilities_equal_the_model_forward() -> None:
    torch.manual_seed(0)
    model = define("g2c", G2C_CFG).eval()
    rng = np.random.default_rng(1)
    crops = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    bundle = G2CModel(dict(model.generators.items()), model.classifier, ("noa", "ss", "gs"))
    probs = g2c_probabilities(crops, bundle, batch_size=2, device="cpu")
    with torch.no_grad():
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
        expected = torch.softmax(model(x), dim=1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    assert probs.shape == (5, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    m = class_measurements(probs, bundle.classes)
    assert set(m[0]) == {"p_noa", "p_ss", "p_gs"}
    assert g2c_probabilities(crops[:0], bundle).shape == (0, 3)


def test_generate_stains_on_crops() -> None:
    torch.manual_seed(0)
    model = define("g2c", G2C_CFG).eval()
    crops = np.full((3, 24, 24, 3), 200, np.uint8)
    out = generate_stains(crops, dict(model.generators.items()), batch_size=2)
    assert list(out) == ["HE", "MASSON"]
    assert all(v.shape == crops.shape and v.dtype == np.uint8 for v in out.values())
    with torch.no_grad():
        ref = (model.generators["HE"](torch.full((1, 3, 24, 24), 200 / 255 * 2 - 1)) + 1) / 2
    np.testing.assert_allclose(out["HE"][0].astype(float), (ref[0].permute(1, 2, 0).numpy() * 255), atol=0.51)


def test_training_crops_are_the_slide_jobs_crops(tmp_path) -> None:
    """G2C's training crop of a glomerulus equals the slide job's crop of it from the same written slide."""
    import json

    from shapely.geometry import shape

    from workflows.slide_ops import read_crops
    from wsi_pipeline.slide import open_slide
    from wsi_pipeline.train.data_stain import GlomerulusCropConfig, glomerulus_crops, phantom_slide_paths

    config = GlomerulusCropConfig(size=48, mpp=2.0, margin=0.2, stains=("PAS",), slide_size=2048)
    train = glomerulus_crops(config, seeds=[7400], slide_dir=tmp_path)
    slide_path = phantom_slide_paths(config, 7400, tmp_path)["PAS"]  # already written: reused, not rewritten
    truth = json.loads(slide_path.with_name("phantom-s7400.truth.geojson").read_text())["features"]
    with open_slide(slide_path) as slide:  # the job's reader, on the truth GeoJSON's polygons
        job = read_crops(slide, [shape(f["geometry"]) for f in truth], CropSpec(size=48, mpp=2.0, margin=0.2))
    assert len(truth) == len(train) >= 3 and train.images.shape == (len(truth), 1, 48, 48, 3)
    np.testing.assert_array_equal(train.images[:, 0], job)
    classes = [class_code(f["properties"]["classification"]["name"]) for f in truth]
    assert [("noa", "ss", "gs")[c] for c in train.classes] == classes
