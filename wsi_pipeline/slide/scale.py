"""Is a slide's scale believable? Whole-slide scanners write 0.1-1 um/px at level 0 (overviews a few um/px); image
editors, screen captures and office software write 72-600 dots per inch (42-353 um/px) into the TIFF resolution tags,
which readers (openslide's generic TIFF, tifffile) then report as the MPP. Trusting such a tag made the job upsample
a 300 x 250 px image 176x into a 4.8 GB store; this module refuses it before any work, naming the file and the fix.

    >>> check_mpp_value(0.25, path="a.svs")
    >>> check_mpp_value(352.78, path="boxes.tiff")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    wsi_pipeline.errors.SlideError: boxes.tiff: MPP 352.78 um/px is outside what slide scanners write (0.05-20 um/px)...
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

from ..errors import SlideError
from .base import Slide

#: level-0 microns per pixel a whole-slide scanner (or its overview camera) can plausibly produce
MPP_RANGE = (0.05, 20.0)
#: a resolution tag of at most this many dots per inch (>= 2.65 um/px) is a screen / print / flatbed value, not a
#: microscope's calibration (scanners' converters write 25,000-100,000 dpi: 1-0.25 um/px)
DPI_STYLE_MAX = 9600.0
#: TIFF ResolutionUnit -> micrometres per unit (2 inch, 3 centimetre)
RESUNIT_UM = {2: 25400.0, 3: 10000.0}
_UNIT_NAMES = {"inch": 2, "centimeter": 3, "centimetre": 3}

_FIX = "check the file, or pass --mpp-override UM with the slide's real microns per pixel"


def tag_dpi(resolution: float, unit: int) -> float:
    """A TIFF resolution (pixels per ``unit``) in dots per inch.

    >>> round(tag_dpi(28.346456527709961, 3), 3)
    72.0
    """
    return resolution * 25400.0 / RESUNIT_UM[unit]


#: openslide vendors whose MPP is read from the TIFF resolution tags; every other vendor has its own calibration
#: (Aperio's ``MPP =`` in the ImageDescription, Ventana / Philips / Leica XML, MIRAX ini, DICOM pixel spacing...)
TAG_MPP_VENDORS = ("generic-tiff", "hamamatsu")


def openslide_tag_dpi(properties: Mapping[str, str], mpp: tuple[float, float] | None) -> float | None:
    """Dots per inch of ``tiff.XResolution`` when openslide's MPP is that tag (generic TIFF, NDPI), else ``None``.

    An Aperio SVS at 3 um/px (an overview scan) whose resolution tag agrees with its ``MPP = 3`` is not blamed on
    the tag: its MPP is the scanner's.

    >>> tags = {"tiff.XResolution": "3333.33", "tiff.ResolutionUnit": "centimeter"}
    >>> round(openslide_tag_dpi({**tags, "openslide.vendor": "generic-tiff"}, (3.0, 3.0)))
    8467
    >>> openslide_tag_dpi({**tags, "openslide.vendor": "aperio", "aperio.MPP": "3"}, (3.0, 3.0)) is None
    True
    """
    if properties.get("openslide.vendor") not in TAG_MPP_VENDORS:
        return None
    unit = _UNIT_NAMES.get(properties.get("tiff.ResolutionUnit", "").lower())
    try:
        res = float(properties["tiff.XResolution"])
    except (KeyError, ValueError):
        return None
    if unit is None or mpp is None or not res > 0:
        return None
    from_tag = RESUNIT_UM[unit] / res
    return tag_dpi(res, unit) if math.isclose(from_tag, mpp[0], rel_tol=1e-4) else None


def check_mpp_value(mpp: float, *, path: str | Path, what: str = "MPP") -> None:
    """``SlideError`` naming ``path`` when ``mpp`` is not a finite value inside :data:`MPP_RANGE`."""
    lo, hi = MPP_RANGE
    if not (math.isfinite(mpp) and lo <= mpp <= hi):
        raise SlideError(path, f"{what} {mpp:.5g} um/px is outside what slide scanners write ({lo:g}-{hi:g} um/px); "
                               f"{_FIX}")


def check_scale(slide: Slide) -> None:
    """Refuse a slide whose MPP comes from a dpi-style TIFF resolution tag or lies outside :data:`MPP_RANGE`.

    An ``--mpp-override`` is the user's word: only its range is checked. A slide without an MPP passes (the job
    asks for an override itself).
    """
    if slide.mpp is None:
        return
    mpp = max(slide.mpp)
    if slide.mpp_source == "override":
        check_mpp_value(mpp, path=slide.path, what="--mpp-override")
        return
    dpi = slide.mpp_tag_dpi
    if dpi is not None and dpi <= DPI_STYLE_MAX:
        raise SlideError(slide.path, f"its {mpp:.5g} um/px comes from a {dpi:.4g}-dpi TIFF resolution tag (what image "
                                     f"editors and screen captures write), not from a scanner's calibration; {_FIX}")
    check_mpp_value(mpp, path=slide.path)


def check_upsample(mpp0: float, target_mpp: float, *, max_upsample: float, path: str | Path) -> None:
    """``SlideError`` when tiling ``mpp0`` at ``target_mpp`` would upsample by more than ``max_upsample``."""
    factor = mpp0 / target_mpp
    if factor > max_upsample * (1 + 1e-6):
        raise SlideError(path, f"tiling at {target_mpp:g} um/px would upsample its {mpp0:.4g} um/px {factor:.3g}x "
                               f"(more than tile.max_upsample = {max_upsample:g}); the slide is too coarse for this "
                               f"job: raise tile.max_upsample in the job YAML to allow it, or {_FIX}")


__all__ = ["DPI_STYLE_MAX", "MPP_RANGE", "RESUNIT_UM", "TAG_MPP_VENDORS", "check_mpp_value", "check_scale", "check_upsample",
           "openslide_tag_dpi", "tag_dpi"]
