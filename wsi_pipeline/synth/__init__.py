"""Synthetic multi-stain kidney phantom: one seeded layout, rendered procedurally into many stains + truth.

>>> from wsi_pipeline.synth import write_phantom
>>> ph = write_phantom("out", size=4096, stains="PAS,MASSON,PASM", seed=3)  # doctest: +SKIP
"""

from .fields import COMPONENTS, components
from .layout import CLASS_COLORS, CLASS_NAMES, CLASSES, Artery, Glomerulus, Layout, make_layout
from .phantom import PhantomSlides, parse_stains, write_phantom
from .render import render_region, render_regions
from .stains import DYES, STAINS, StainStyle, stain_style
from .truth import label_region, truth_features, write_label_mask, write_truth_geojson

__all__ = ["CLASSES", "CLASS_COLORS", "CLASS_NAMES", "COMPONENTS", "DYES", "STAINS", "Artery", "Glomerulus",
           "Layout", "PhantomSlides", "StainStyle", "components", "label_region", "make_layout", "parse_stains",
           "render_region", "render_regions", "stain_style", "truth_features", "write_label_mask", "write_phantom",
           "write_truth_geojson"]
