"""Whole-slide reading: ``open_slide(path) -> Slide`` (openslide, tifffile or DICOM backend).

openslide reads every vendor format it claims; tifffile reads OME-TIFF, QPTIFF and other TIFF-based brightfield RGB
slides openslide does not; DICOM WSI that openslide cannot open go to wsidicom (:mod:`.dicom_backend`). A file no
backend reads fails with a ``SlideError`` naming the file and every reader's reason.
"""

from __future__ import annotations

import os
from pathlib import Path


from ..errors import SlideError
from .base import Slide, TileDecoder, TileGrid
from .dicom_backend import DicomFramesSlide, WsiDicomSlide, open_dicom
from .openslide_backend import OpenSlideSlide, detect_vendor
from .scale import MPP_RANGE, check_mpp_value, check_scale, check_upsample
from .tifffile_backend import TiffSlide
from .tiles import TiffTileDecoder

__all__ = ["MPP_RANGE", "Slide", "TileDecoder", "TileGrid", "DicomFramesSlide", "OpenSlideSlide", "TiffSlide",
           "TiffTileDecoder", "WsiDicomSlide", "check_mpp_value", "check_scale", "check_upsample", "open_slide",
           "choose_backend"]

BACKENDS = ("auto", "openslide", "tifffile", "dicom")
_TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")


def _is_ome_tiff(path: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return bool(tif.is_ome)
    except Exception:  # not readable by tifffile either: let openslide produce the error message
        return False


def choose_backend(path: str | os.PathLike[str]) -> str:
    """``"openslide"``, ``"tifffile"`` or ``"dicom"`` for ``path``: openslide for every format it claims, except
    OME-TIFF; DICOM files openslide does not claim go to wsidicom.

    >>> choose_backend("small.svs")  # doctest: +SKIP
    'openslide'
    """
    p = Path(path)
    if not p.is_file():
        raise SlideError(p, "no such file" if not p.exists() else "not a regular file")
    vendor = detect_vendor(p)
    if vendor is not None and vendor != "generic-tiff":
        return "openslide"  # Aperio, Hamamatsu, MIRAX, Leica, DICOM, ...: openslide is the reference
    with open(p, "rb") as fh:
        head = fh.read(132)
    is_tiff = head[:4] in _TIFF_MAGIC
    if head[128:132] == b"DICM":
        return "dicom"
    if vendor == "generic-tiff":
        # openslide sees OME-TIFF as a generic TIFF without its SubIFD pyramid or OME physical size
        return "tifffile" if _is_ome_tiff(p) else "openslide"
    # openslide does not recognise it: a TIFF it cannot read (stripped, odd layout) goes to tifffile
    return "tifffile" if is_tiff else "openslide"


def open_slide(path: str | os.PathLike[str], *, backend: str = "auto", mpp_override: float | None = None) -> Slide:
    """Open a whole-slide image; raises ``SlideError`` naming the file and the reason when it cannot.

    ``mpp_override`` replaces the file's microns per pixel (``slide.mpp_source == "override"``).

    >>> with open_slide("small.svs") as s:  # doctest: +SKIP
    ...     s.dimensions, s.mpp, s.mpp_source
    ((16, 16), (0.499, 0.499), 'file')
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} must be one of {BACKENDS}")
    auto = backend == "auto"
    if auto:
        backend = choose_backend(path)
    if backend == "openslide":
        try:
            return OpenSlideSlide(path, mpp_override=mpp_override)
        except SlideError as exc:
            # a DICOM WSI openslide cannot open (it needs ImageType, one series...): wsidicom may still read it
            if auto and detect_vendor(Path(path)) == "dicom":
                return open_dicom(path, mpp_override=mpp_override, openslide_reason=exc.reason)
            raise
    if backend == "dicom":
        return open_dicom(path, mpp_override=mpp_override)
    return TiffSlide(path, mpp_override=mpp_override)
