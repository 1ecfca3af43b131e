"""DICOM WSI that openslide cannot open: read through wsidicom, or frame by frame with pydicom.

``open_dicom`` tries wsidicom (the maintained DICOM-WSI library: every conformant VL Whole Slide Microscopy file,
pyramids split over instances included). Converters also write single-instance files that both openslide and
wsidicom turn away because a required attribute is missing (``ImageType``, ``PixelSpacing``); when such a file is
one ``TILED_FULL`` matrix of RGB frames, :class:`DicomFramesSlide` reads it with pydicom, one frame at a time, and
reports no MPP unless the file has one (a job then needs ``--mpp-override``). Anything else fails with both
libraries' reasons.

    >>> with open_dicom("small_dicom.dcm") as s:  # doctest: +SKIP
    ...     s.vendor, s.dimensions, s.mpp
    ('dicom-frames', (3236, 2638), None)
"""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import SlideError
from .base import Slide, check_region_args, resolve_mpp

__all__ = ["DicomFramesSlide", "WsiDicomSlide", "open_dicom"]

_WSI_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage


class _DicomSlide(Slide):
    """What both DICOM readers share: the MPP found (or overridden) when opening, and
    no single objective power or bounds (DICOM records the objective per optical path)."""

    _mpp: tuple[float, float] | None

    @property
    def mpp(self) -> tuple[float, float] | None:
        return self._mpp

    @property
    def objective_power(self) -> float | None:
        return None

    @property
    def bounds(self) -> tuple[int, int, int, int] | None:
        return None


class WsiDicomSlide(_DicomSlide):
    """A DICOM WSI read with wsidicom (the selected pyramid, every level)."""

    def __init__(self, path: str | os.PathLike[str], *, mpp_override: float | None = None) -> None:
        import wsidicom

        self.path = Path(path)
        try:
            with warnings.catch_warnings():  # pydicom warns about over-long values that converters write
                warnings.simplefilter("ignore", UserWarning)
                self._wsi = wsidicom.WsiDicom.open([self.path])
        except Exception as exc:  # wsidicom raises its own errors, pydicom's, OSError, ValueError...
            raise SlideError(self.path, f"wsidicom cannot open it: {type(exc).__name__}: {exc}") from exc
        self._levels = list(self._wsi.levels)
        mpp = self._wsi.mpp
        self._mpp, self.mpp_source = resolve_mpp((float(mpp.width), float(mpp.height)) if mpp else None,
                                                 mpp_override)

    @functools.cached_property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(lv.size.width), int(lv.size.height)) for lv in self._levels)

    @property
    def vendor(self) -> str | None:
        return "dicom"

    @functools.cached_property
    def properties(self) -> Mapping[str, str]:
        return {"dicom.reader": "wsidicom", "dicom.levels": str(len(self._levels))}

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        if not 0 <= level < self.level_count:
            raise IndexError(f"level={level} out of range 0..{self.level_count - 1} for {self.path}")
        out, lx, ly, box = self._level_canvas(location, level, size)
        if box is None:
            return out
        x0, y0, x1, y1 = box
        try:
            img = self._wsi.read_region((x0, y0), self._levels[level].level, (x1 - x0, y1 - y0))
        except Exception as exc:
            raise SlideError(self.path, f"level {level} read failed: {type(exc).__name__}: {exc}") from exc
        out[y0 - ly:y1 - ly, x0 - lx:x1 - lx] = np.asarray(img.convert("RGB"))
        return out

    def close(self) -> None:
        self._wsi.close()


class DicomFramesSlide(_DicomSlide):
    """One ``TILED_FULL`` DICOM instance of RGB frames, decoded with pydicom (a single level)."""

    def __init__(self, path: str | os.PathLike[str], *, mpp_override: float | None = None) -> None:
        import pydicom

        self.path = Path(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                ds = pydicom.dcmread(self.path, stop_before_pixels=True)
        except Exception as exc:
            raise SlideError(self.path, f"pydicom cannot read it: {exc}") from exc
        if str(ds.get("SOPClassUID", "")) != _WSI_SOP_CLASS:
            raise SlideError(self.path, f"not a DICOM whole-slide image (SOP class {ds.get('SOPClassUID')})")
        organisation = str(ds.get("DimensionOrganizationType", "TILED_FULL"))
        if organisation != "TILED_FULL":
            raise SlideError(self.path, f"frames organised as {organisation}: only TILED_FULL is read without wsidicom")
        if int(ds.get("SamplesPerPixel", 0)) != 3:
            raise SlideError(self.path, f"{ds.get('SamplesPerPixel')} samples per pixel: only brightfield RGB is read")
        if int(ds.get("NumberOfFocalPlanes", 1)) != 1 or int(ds.get("TotalPixelMatrixFocalPlanes", 1)) != 1:
            raise SlideError(self.path, "several focal planes: not read without wsidicom")
        self._size = (int(ds.TotalPixelMatrixColumns), int(ds.TotalPixelMatrixRows))
        self._tile = (int(ds.Columns), int(ds.Rows))
        self._frames = int(ds.get("NumberOfFrames", 1))
        cols, rows = -(-self._size[0] // self._tile[0]), -(-self._size[1] // self._tile[1])
        if cols * rows != self._frames:
            raise SlideError(self.path, f"{self._frames} frames for a {cols} x {rows} tile grid: not one TILED_FULL "
                                        "matrix")
        self._columns = cols
        spacing = _shared_spacing(ds)
        self._missing = [k for k, found in (("ImageType", "ImageType" in ds), ("PixelSpacing", spacing is not None))
                         if not found]
        file_mpp = (spacing[1] * 1000.0, spacing[0] * 1000.0) if spacing else None  # (row, col) mm -> (x, y) um
        self._mpp, self.mpp_source = resolve_mpp(file_mpp, mpp_override)
        self._frame = functools.lru_cache(maxsize=64)(self._decode)

    def _decode(self, index: int) -> np.ndarray:
        from pydicom.pixels import pixel_array

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                px = np.asarray(pixel_array(self.path, index=index))
        except Exception as exc:
            raise SlideError(self.path, f"frame {index} cannot be decoded: {type(exc).__name__}: {exc}") from exc
        if px.shape != (self._tile[1], self._tile[0], 3) or px.dtype != np.uint8:
            raise SlideError(self.path, f"frame {index} decodes to {px.dtype} {px.shape}, expected uint8 "
                                        f"{(self._tile[1], self._tile[0], 3)}")
        return px

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return (self._size,)

    @property
    def vendor(self) -> str | None:
        return "dicom-frames"

    @property
    def properties(self) -> Mapping[str, str]:
        return {"dicom.reader": "pydicom (TILED_FULL frames)", "dicom.missing": ",".join(self._missing)}

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        if level != 0:
            raise IndexError(f"level={level} out of range 0..0 for {self.path}")
        (x, y), (w, h) = check_region_args(location, size)
        out = np.full((h, w, 3), 255, np.uint8)
        (sw, sh), (tw, th) = self._size, self._tile
        x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, sw), min(y + h, sh)
        for r in range(y0 // th, (y1 - 1) // th + 1) if y1 > y0 and x1 > x0 else ():
            for c in range(x0 // tw, (x1 - 1) // tw + 1):
                tile = self._frame(r * self._columns + c)
                ty0, ty1 = max(y0, r * th), min(y1, (r + 1) * th)
                tx0, tx1 = max(x0, c * tw), min(x1, (c + 1) * tw)
                out[ty0 - y:ty1 - y, tx0 - x:tx1 - x] = tile[ty0 - r * th:ty1 - r * th, tx0 - c * tw:tx1 - c * tw]
        return out

    def close(self) -> None:
        self._frame.cache_clear()


def _shared_spacing(ds: Any) -> tuple[float, float] | None:
    """``PixelSpacing`` (row, column) in mm from the shared functional groups, or None."""
    try:
        spacing = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing
        row, col = float(spacing[0]), float(spacing[1])
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return None
    return (row, col) if row > 0 and col > 0 else None


def open_dicom(path: str | os.PathLike[str], *, mpp_override: float | None = None,
               openslide_reason: str | None = None) -> Slide:
    """A DICOM WSI through wsidicom, else (non-conformant single instance) pydicom frames; ``SlideError`` with every
    reader's reason when none reads it."""
    p = Path(path)
    try:
        return WsiDicomSlide(p, mpp_override=mpp_override)
    except SlideError as exc:
        wsidicom_reason = exc.reason
    try:
        return DicomFramesSlide(p, mpp_override=mpp_override)
    except SlideError as exc:
        frames_reason = exc.reason
    reasons = [r for r in (openslide_reason, wsidicom_reason, frames_reason) if r]
    raise SlideError(p, "; ".join(reasons))
