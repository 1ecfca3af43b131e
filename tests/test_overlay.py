"""overlay.png: outlines in class colours at thumbnail scale, light fill, holes left clear, legend, atomic PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image

from wsi_pipeline.annotations import Annotation, class_color
from wsi_pipeline.overlay import UNCLASSIFIED_COLOR, render_overlay, save_png

GRAY = 128


@pytest.fixture()
def thumb() -> np.ndarray:
    return np.full((400, 600, 3), GRAY, np.uint8)


def test_outline_fill_hole_and_scale(thumb: np.ndarray) -> None:
    ring = shapely.box(3200, 3200, 6400, 6400).difference(shapely.box(4400, 4400, 5200, 5200))  # level 0
    name = "Glomerulus: Global sclerosis"
    before = thumb.copy()
    out = render_overlay(thumb, [(ring, name)], downsample=16.0, legend=False, line_width=3)
    np.testing.assert_array_equal(thumb, before)  # input untouched
    assert out.shape == thumb.shape and out.dtype == np.uint8
    rgb = np.array(class_color(name))
    # thumbnail coordinates: outer box 200..400, hole 275..325
    np.testing.assert_array_equal(out[300, 200], rgb)  # on the outline
    inside = out[240, 240].astype(int)
    assert np.all(np.abs(inside - (0.75 * GRAY + 0.25 * rgb)) <= 2)  # light 25 % fill
    np.testing.assert_array_equal(out[300, 300], [GRAY] * 3)  # the hole stays clear
    np.testing.assert_array_equal(out[50, 50], [GRAY] * 3)  # far away: untouched


def test_colours_by_class_and_legend(thumb: np.ndarray) -> None:
    items = [
        (shapely.box(100, 100, 200, 200), "Glomerulus: Non-sclerotic"),
        (shapely.box(300, 100, 400, 200), None),
        Annotation(shapely.box(100, 250, 200, 350), classification="Custom", color=(10, 20, 250)),
        (shapely.box(300, 250, 400, 350), "Glomerulus: Non-sclerotic"),
    ]
    out = render_overlay(thumb, items, downsample=1.0, legend=True, colors={"Glomerulus: Non-sclerotic": (0, 255, 0)},
                         line_width=2)
    np.testing.assert_array_equal(out[150, 200], [0, 255, 0])  # explicit colour wins
    np.testing.assert_array_equal(out[150, 400], UNCLASSIFIED_COLOR)
    np.testing.assert_array_equal(out[300, 100], [10, 20, 250])  # the annotation's own colour
    legend_area = out[:60, :250]
    assert (legend_area > 200).all(axis=2).mean() > 0.3  # a light legend panel ...
    assert (legend_area < 60).all(axis=2).any()  # ... with dark text
    assert render_overlay(thumb, items, downsample=1.0, legend=False)[:60, :90].std() < 1  # no legend: plain gray


def test_anisotropic_downsample_and_bad_inputs(thumb: np.ndarray) -> None:
    out = render_overlay(thumb, [(shapely.box(0, 0, 1000, 400), "A")], downsample=(10.0, 4.0), legend=False,
                         line_width=1)
    assert (out[50, 100] != GRAY).any() and (out[50, 50] != GRAY).any() and (out[150, 150] == GRAY).all()
    with pytest.raises(ValueError, match="thumbnail_rgb"):
        render_overlay(thumb.astype(np.float32), [], downsample=1.0)
    with pytest.raises(ValueError, match="downsample"):
        render_overlay(thumb, [], downsample=0.0)


def test_save_png_atomic_round_trip(tmp_path: Path, thumb: np.ndarray) -> None:
    img = render_overlay(thumb, [(shapely.box(10, 10, 90, 90), "Glomerulus")], downsample=1.0)
    path = save_png(tmp_path / "slide" / "overlay.png", img)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), img)
    assert [p.name for p in path.parent.iterdir()] == ["overlay.png"]
    with pytest.raises((TypeError, ValueError, KeyError)):
        save_png(tmp_path / "bad.png", np.zeros((4, 4, 7), np.float64))
    assert not list(tmp_path.glob(".bad.png*")) and not (tmp_path / "bad.png").exists()
