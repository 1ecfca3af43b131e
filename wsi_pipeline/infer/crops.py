"""Glomerulus crops read from a slide: the one function that both G2C training and the slide job cut crops with.

The G2C training data (:func:`wsi_pipeline.train.data_stain.glomerulus_crops`) are read with it from written
phantom slides around the truth polygons, and the slide job (:func:`workflows.slide_ops.classify`) reads with it
around the predicted polygons, so the classifier sees the same pyramid level, JPEG artefacts, resampling and
geometry in training as in use. Where the square runs past the slide's edge (a glomerulus at the edge, or a slide
that is one glomerulus crop), the missing part is the slide's own pixels mirrored at the edge, as the real-crop
training data are (:func:`wsi_pipeline.train.data_real.job_crop`), never the white of an out-of-slide read.

>>> from wsi_pipeline.slide import open_slide  # doctest: +SKIP
>>> read_glomerulus_crops(open_slide("a.svs"), [polygon], CropSpec()).shape  # doctest: +SKIP
(1, 64, 64, 3)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray
from shapely.geometry.base import BaseGeometry

from ..errors import SlideError
from ..slide import Slide
from .classify import CropSpec, crop_box, finish_crop


def read_glomerulus_crops(slide: Slide, shapes: Sequence[BaseGeometry], spec: CropSpec) -> NDArray[np.uint8]:
    """``(N, size, size, 3)`` crops of level-0 ``shapes`` at ``spec.mpp``, read from the best pyramid level."""
    if slide.mpp is None:
        raise SlideError(slide.path, "no microns-per-pixel in the file: pass --mpp-override to classify")
    mpp0 = (slide.mpp[0] + slide.mpp[1]) / 2.0
    target_ds = spec.mpp / mpp0
    level = slide.best_level_for_downsample(target_ds)
    d = slide.level_downsamples[level]
    out = np.empty((len(shapes), spec.size, spec.size, 3), np.uint8)
    for i, shape in enumerate(shapes):
        x0, y0, x1, _ = crop_box(shape, margin=spec.margin)
        side0 = x1 - x0
        n = max(1, math.ceil(side0 / d))
        region = read_mirrored(slide, (math.floor(x0), math.floor(y0)), level, n)
        out[i] = finish_crop(region, side_px=round(side0 / target_ds), size=spec.size)
    return out


def read_mirrored(slide: Slide, location: tuple[int, int], level: int, n: int) -> NDArray[np.uint8]:
    """An ``n x n`` read at ``level`` from level-0 ``location``; what lies outside the slide is the inside part
    mirrored at the edge (``numpy.pad`` "symmetric"), so the slide's edge is not a white band."""
    width, height = slide.dimensions
    d = slide.level_downsamples[level]
    # the request's inside part, in level pixels from its corner
    left, top = max(0, math.ceil(-location[0] / d)), max(0, math.ceil(-location[1] / d))
    right = min(n, max(0, math.floor((width - location[0]) / d)))
    bottom = min(n, max(0, math.floor((height - location[1]) / d)))
    if left == 0 and top == 0 and right == n and bottom == n or right <= left or bottom <= top:
        return slide.read_region(location, level, (n, n))  # all inside (or nothing inside: white)
    inside = slide.read_region((location[0] + round(left * d), location[1] + round(top * d)), level,
                               (right - left, bottom - top))
    return np.pad(inside, ((top, n - bottom), (left, n - right), (0, 0)), mode="symmetric")


__all__ = ["read_glomerulus_crops", "read_mirrored"]
