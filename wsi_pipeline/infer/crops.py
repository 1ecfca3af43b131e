"""Glomerulus crops read from a slide: the one function that both G2C training and the slide job cut crops with.

The G2C training data (:func:`wsi_pipeline.train.data_stain.glomerulus_crops`) are read with it from written
phantom slides around the truth polygons, and the slide job (:func:`workflows.slide_ops.classify`) reads with it
around the predicted polygons, so the classifier sees the same pyramid level, JPEG artefacts, resampling and
geometry in training as in use.

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
        region = slide.read_region((math.floor(x0), math.floor(y0)), level, (n, n))
        out[i] = finish_crop(region, side_px=round(side0 / target_ds), size=spec.size)
    return out


__all__ = ["read_glomerulus_crops"]
