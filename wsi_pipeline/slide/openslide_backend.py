"""openslide backend: the reference reader for every vendor format (SVS, NDPI, MRXS, SCN, DICOM, ...)."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import openslide

from ..errors import SlideError
from .base import Slide, check_region_args, resolve_mpp
from .scale import openslide_tag_dpi
from .tiles import TiffTileDecoder, composite_on_white

# pixels per openslide call: openslide-python allocates w*h*4 bytes per call, so big regions are read in blocks
_MAX_CALL_PIXELS = 16 * 1024 * 1024
_MAX_CALL_WIDTH = 16384


# what to do about a file of a vendor format openslide detects but cannot open
_HINTS = {"zeiss": " (Zeiss CZI: only the brightfield CZI files OpenSlide reads are supported; convert others to "
                   "OME-TIFF, e.g. with bfconvert)"}


def detect_vendor(path: Path) -> str | None:
    """openslide's format name for ``path`` (``"aperio"``, ``"dicom"``, ...), or None."""
    try:
        return openslide.OpenSlide.detect_format(path)
    except Exception:  # detect_format may fail on garbage: no vendor to name
        return None


def _float_prop(props: Mapping[str, str], key: str) -> float | None:
    try:
        v = float(props[key])
    except (KeyError, ValueError):
        return None
    return v if v > 0 else None


class OpenSlideSlide(Slide):
    """A slide read with openslide; after any openslide error the handle is dropped and reopened on the next call.

    >>> with OpenSlideSlide("small.svs") as s:  # doctest: +SKIP
    ...     s.vendor, s.mpp
    ('aperio', (0.499, 0.499))
    """

    def __init__(self, path: str | os.PathLike[str], *, mpp_override: float | None = None) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._osr: openslide.OpenSlide | None = self._open()
        osr = self._osr
        self._props = MappingProxyType(dict(osr.properties))
        self._level_dimensions = tuple((int(w), int(h)) for w, h in osr.level_dimensions)
        self._level_downsamples = tuple(float(d) for d in osr.level_downsamples)
        mx, my = _float_prop(self._props, "openslide.mpp-x"), _float_prop(self._props, "openslide.mpp-y")
        self._mpp, self.mpp_source = resolve_mpp((mx, my) if mx and my else None, mpp_override)
        self.mpp_tag_dpi = openslide_tag_dpi(self._props, (mx, my) if mx and my else None)
        self._tiff: Any = None  # TiffSlide for tile_decoder(), built on first use
        self._closed = False

    def _open(self) -> openslide.OpenSlide:
        if not self.path.exists():
            raise SlideError(self.path, "no such file")
        if not self.path.is_file():
            raise SlideError(self.path, "not a regular file")
        try:
            return openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise SlideError(self.path, f"openslide does not recognise this file (not a slide, or truncated): {exc}") from exc
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            vendor = detect_vendor(self.path)
            what = f" ({vendor} format)" if vendor else ""
            hint = _HINTS.get(vendor or "", "")
            raise SlideError(self.path, f"openslide cannot open it{what}: {exc}{hint}") from exc

    def _handle(self) -> openslide.OpenSlide:
        if self._closed:
            raise SlideError(self.path, "slide is closed")
        if self._osr is None:
            # the previous handle hit an error; openslide handles stay broken after one, so start afresh
            self._osr = self._open()
        return self._osr

    def _drop_handle(self) -> None:
        osr, self._osr = self._osr, None
        if osr is not None:
            try:
                osr.close()
            except Exception:  # a broken handle may fail to close too; it is discarded either way
                pass

    # -- metadata ---------------------------------------------------------------------------------
    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._level_downsamples

    @property
    def mpp(self) -> tuple[float, float] | None:
        return self._mpp

    @property
    def objective_power(self) -> float | None:
        return _float_prop(self._props, openslide.PROPERTY_NAME_OBJECTIVE_POWER)

    @property
    def bounds(self) -> tuple[int, int, int, int] | None:
        keys = ("x", "y", "width", "height")
        try:
            x, y, w, h = (int(self._props[f"openslide.bounds-{k}"]) for k in keys)
        except (KeyError, ValueError):
            return None
        return (x, y, w, h)

    @property
    def vendor(self) -> str | None:
        return self._props.get(openslide.PROPERTY_NAME_VENDOR)

    @property
    def properties(self) -> Mapping[str, str]:
        return self._props

    # -- pixels -----------------------------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """``size[1] x size[0] x 3`` uint8 RGB at ``level``, level-0 ``location``; transparent -> white."""
        if not 0 <= level < self.level_count:
            raise IndexError(f"level={level} out of range 0..{self.level_count - 1} for {self.path}")
        (x, y), (w, h) = check_region_args(location, size)
        out = np.empty((h, w, 3), np.uint8)
        if w == 0 or h == 0:
            return out
        ds = self._level_downsamples[level]
        bw = min(w, _MAX_CALL_WIDTH)
        bh = max(1, min(h, _MAX_CALL_PIXELS // bw))
        for oy in range(0, h, bh):
            for ox in range(0, w, bw):
                cw, ch = min(bw, w - ox), min(bh, h - oy)
                # block offsets are level pixels; openslide takes level-0 coordinates (exact for integer downsamples)
                loc = (x + round(ox * ds), y + round(oy * ds))
                out[oy : oy + ch, ox : ox + cw] = self._read_block(loc, level, (cw, ch))
        return out

    def _read_block(self, loc: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        with self._lock:
            osr = self._handle()
            try:
                rgba = np.asarray(osr.read_region(loc, level, size))
            except openslide.OpenSlideError as exc:
                self._drop_handle()
                raise SlideError(
                    self.path, f"openslide read failed at location={loc} level={level} size={size}: {exc}"
                ) from exc
        alpha = rgba[..., 3]
        if alpha.min() == 255:
            return rgba[..., :3]
        # openslide-python returns un-premultiplied RGBA; areas outside the scanned regions have alpha 0
        return composite_on_white(rgba[..., :3], alpha, premultiplied=False)

    def tile_decoder(self, level: int) -> TiffTileDecoder | None:
        """Direct tile decoder for TIFF-based formats (Aperio, generic TIFF) whose levels are plain tiled pages."""
        if not 0 <= level < self.level_count:
            raise IndexError(f"level={level} out of range 0..{self.level_count - 1} for {self.path}")
        if self.vendor not in ("aperio", "generic-tiff"):
            return None
        with self._lock:
            if self._tiff is None:
                from .tifffile_backend import TiffSlide

                try:
                    self._tiff = TiffSlide(self.path)
                except SlideError:
                    self._tiff = False
            if not self._tiff or self._tiff.level_dimensions != self.level_dimensions:
                return None  # the TIFF pages do not map one-to-one onto openslide's levels
            return self._tiff.tile_decoder(level)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop_handle()
            if self._tiff:
                self._tiff.close()
