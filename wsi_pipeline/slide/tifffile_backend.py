"""tifffile backend: OME-TIFF (SubIFD pyramids), Aperio SVS and generic pyramidal TIFF, read by direct tile decode."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ..errors import SlideError
from .base import Slide, resolve_mpp
from .scale import RESUNIT_UM, tag_dpi
from .tiles import TiffTileDecoder, composite_on_white

# micrometres per OME length unit (OME's UnitsLength enumeration, the common part)
_OME_UNIT_UM = {
    "m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "μm": 1.0, "micron": 1.0,
    "nm": 1e-3, "pm": 1e-6, "Å": 1e-4, "å": 1e-4, "in": 25400.0, "ft": 304800.0,
}


class _Capture(logging.Handler):
    """Collects tifffile's log records while a read is in progress (tifffile logs damage instead of raising)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.records is not None:
            self.records.append(record)


_CAPTURE = _Capture()
_CAPTURE_LOCK = threading.RLock()  # zarr 3 may decode on its own threads, so capture is process-wide, one at a time
logging.getLogger("tifffile").addHandler(_CAPTURE)
# harmless metadata noise that must not fail a slide
_BENIGN = re.compile(r"coercing invalid ASCII|imagej_metadata|micromanager|eer_xml")
# while opening, only structural damage fails the slide (tifffile also warns about e.g. OME quirks it works around)
_DAMAGE = re.compile(r"invalid|truncat|corrupt|damage|segments|offset|bytecount|unexpected end|failed to read",
                     re.IGNORECASE)


@contextlib.contextmanager
def escalate_tifffile_warnings(path: Path, what: str, *, only_damage: bool = False) -> Iterator[None]:
    """Turn tifffile warnings logged inside the block into ``SlideError`` (never zero-filled success).

    >>> with escalate_tifffile_warnings(Path("x.tif"), "read"):  # doctest: +SKIP
    ...     tif.pages[0].asarray()
    """
    with _CAPTURE_LOCK:
        _CAPTURE.records = []
        try:
            yield
            msgs = [r.getMessage() for r in _CAPTURE.records]
        finally:
            _CAPTURE.records = None
    bad = [m for m in msgs if not _BENIGN.search(m) and (not only_damage or _DAMAGE.search(m))]
    if bad:
        raise SlideError(path, f"{what}: tifffile reported damaged data: {bad[0][:300]}")


def check_tiff_segments(path: Path, tif: tifffile.TiffFile) -> None:
    """Raise ``SlideError`` when any page's tile/strip data runs past the end of the file (a truncated slide)."""
    size = os.path.getsize(path)
    for page in tif.pages:
        if not isinstance(page, tifffile.TiffPage) or not len(page.dataoffsets):
            continue
        ends = np.asarray(page.dataoffsets, np.int64) + np.asarray(page.databytecounts, np.int64)
        if ends.max() > size:
            raise SlideError(path, f"truncated file: page {page.index} needs {int(ends.max())} bytes, file has {size}")


def _level_key_page(level: Any) -> Any:
    page = level.keyframe
    # only one 2-D plane per level is a slide; fluorescence stacks (several C/Z/T planes) are not
    extra = [n for a, n in zip(level.axes, level.shape) if a not in "YXS" and n != 1]
    return page if not extra else None


class TiffSlide(Slide):
    """A slide read with tifffile; pixels come from :class:`TiffTileDecoder` or, for odd encodings, the zarr view.

    >>> with TiffSlide("boxes.tiff") as s:  # doctest: +SKIP
    ...     s.read_region((0, 0), 0, (8, 8)).shape
    (8, 8, 3)
    """

    def __init__(self, path: str | os.PathLike[str], *, mpp_override: float | None = None) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise SlideError(self.path, "no such file")
        if not self.path.is_file():
            raise SlideError(self.path, "not a regular file")
        tif: tifffile.TiffFile | None = None
        try:
            with escalate_tifffile_warnings(self.path, "open", only_damage=True):
                tif = self._tif = tifffile.TiffFile(self.path)
                series = self._pick_series(tif)
                self._series = series
                self._pages = [_level_key_page(lv) for lv in series.levels]
        except Exception as exc:  # tifffile raises TiffFileError, ValueError, struct.error... on bad files
            if tif is not None:
                tif.close()
            if isinstance(exc, SlideError):
                raise
            raise SlideError(self.path, f"cannot open with tifffile: {exc}") from exc
        if self._pages[0] is None:
            reason = _not_rgb_reason(self._tif, series)
            self._tif.close()
            raise SlideError(self.path, reason)
        self._pages = [p for p in self._pages if p is not None]
        try:
            check_tiff_segments(self.path, self._tif)
            for page in self._pages:
                if int(page.compression) not in tifffile.TIFF.DECOMPRESSORS:
                    raise SlideError(self.path, f"page {page.index}: unsupported TIFF compression {int(page.compression)}")
        except SlideError:
            self._tif.close()
            raise
        self._decoders: dict[int, TiffTileDecoder | None] = {}
        self._zarr: dict[int, Any] = {}
        self._mpp, self.mpp_source = resolve_mpp(self._file_mpp(), mpp_override)

    @staticmethod
    def _pick_series(tif: tifffile.TiffFile) -> Any:
        if not tif.series:
            raise ValueError("no image series")
        # Aperio: series 0 is 'Baseline' (pyramid); thumbnail, label and macro are separate series we ignore
        return max(tif.series[:1] + [s for s in tif.series if s.is_pyramidal][:1], key=lambda s: len(s.levels))

    # -- metadata ---------------------------------------------------------------------------------
    @cached_property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple((int(p.imagewidth), int(p.imagelength)) for p in self._pages)

    @property
    def mpp(self) -> tuple[float, float] | None:
        return self._mpp

    @cached_property
    def vendor(self) -> str | None:
        if self._tif.is_ome:
            return "ome"
        if self._tif.is_svs:
            return "aperio"
        return "generic-tiff"

    @cached_property
    def _aperio(self) -> dict[str, str]:
        if not self._tif.is_svs:
            return {}
        # "Aperio Image Library v12 \n 46000x32914 ... |AppMag = 20|MPP = 0.499"
        fields = self._tif.pages.first.description.split("|")[1:]
        return {k.strip(): v.strip() for k, _, v in (f.partition("=") for f in fields) if k.strip()}

    @cached_property
    def _ome_pixels(self) -> tuple[ET.Element | None, ET.Element]:
        root = ET.fromstring(self._tif.ome_metadata or "<OME/>")
        ns = {"ome": root.tag[1:].split("}")[0]} if root.tag.startswith("{") else {}
        q = (lambda t: f"ome:{t}") if ns else (lambda t: t)
        image = root.find(q("Image"), ns)
        pixels = image.find(q("Pixels"), ns) if image is not None else None
        return pixels, root

    def _file_mpp(self) -> tuple[float, float] | None:
        if self._tif.is_ome:
            pixels, _ = self._ome_pixels
            if pixels is None:
                return None
            vals = []
            for ax in ("X", "Y"):
                size = pixels.get(f"PhysicalSize{ax}")
                unit = pixels.get(f"PhysicalSize{ax}Unit", "µm")  # OME's default unit
                if size is None or unit not in _OME_UNIT_UM:
                    return None
                vals.append(float(size) * _OME_UNIT_UM[unit])
            return (vals[0], vals[1])
        if self._tif.is_svs:
            mpp = self._aperio.get("MPP")
            return (float(mpp), float(mpp)) if mpp else None
        page = self._tif.pages.first
        res_unit = int(page.tags.valueof(296, 2))  # ResolutionUnit, TIFF default inch (an int, unlike OME's unit)
        xr, yr = page.tags.valueof(282), page.tags.valueof(283)
        if res_unit not in RESUNIT_UM or not xr or not yr or not xr[1] or not yr[1]:
            return None
        rx, ry = xr[0] / xr[1], yr[0] / yr[1]
        if not (rx > 0 and ry > 0):
            return None
        self.mpp_tag_dpi = tag_dpi(rx, res_unit)  # a bare resolution tag: check_scale judges it
        return (RESUNIT_UM[res_unit] / rx, RESUNIT_UM[res_unit] / ry)

    @cached_property
    def objective_power(self) -> float | None:
        if self._tif.is_svs and "AppMag" in self._aperio:
            return float(self._aperio["AppMag"])
        if self._tif.is_ome:
            _, root = self._ome_pixels
            for el in root.iter():
                if el.tag.endswith("Objective") and el.get("NominalMagnification"):
                    return float(el.get("NominalMagnification"))  # type: ignore[arg-type]
        return None

    @property
    def bounds(self) -> tuple[int, int, int, int] | None:
        return None  # only openslide vendor formats define bounds

    @cached_property
    def properties(self) -> Mapping[str, str]:
        props = {"tifffile.vendor": self.vendor or "", "tifffile.series": self._series.name}
        desc = self._tif.pages.first.description
        if desc:
            props["tiff.ImageDescription"] = desc
        props.update({f"aperio.{k}": v for k, v in self._aperio.items()})
        if self._mpp:
            props["mpp-x"], props["mpp-y"] = (repr(v) for v in self._mpp)
        return props

    # -- pixels -----------------------------------------------------------------------------------
    def tile_decoder(self, level: int) -> TiffTileDecoder | None:
        """Direct decoder of ``level``'s stored tiles; ``None`` for stripped pages or encodings tifffile must handle."""
        dec = self._decoder(level)
        return dec if dec is not None and self._pages[level].is_tiled else None

    def _decoder(self, level: int) -> TiffTileDecoder | None:
        # strips decode through the same fast path inside read_region (they are full-width tiles)
        self._check_level(level)
        if level not in self._decoders:
            self._decoders[level] = TiffTileDecoder.from_page(self.path, self._pages[level], level)
        return self._decoders[level]

    def zarr_level(self, level: int) -> Any:
        """Read-only zarr 3 array over ``level`` (tifffile's store; shape as tifffile reports, e.g. ``Y X S``)."""
        import zarr

        self._check_level(level)
        if level not in self._zarr:
            store = self._series.aszarr(level=level)
            self._zarr[level] = zarr.open_array(store=store, mode="r")
        return self._zarr[level]

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.level_count:
            raise IndexError(f"level={level} out of range 0..{self.level_count - 1} for {self.path}")

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """``size[1] x size[0] x 3`` uint8 RGB at ``level``, anchored at level-0 ``location``; outside -> white.

        Level pixel ``floor(location / downsample)`` is the top-left corner. openslide is identical whenever
        ``location / downsample`` is whole (always at level 0); otherwise it resamples by the sub-pixel fraction.
        """
        self._check_level(level)
        out, lx, ly, box = self._level_canvas(location, level, size)
        if box is None:
            return out
        x0, y0, x1, y1 = box
        dec = self._decoder(level)
        if dec is not None:
            self._paint_tiles(dec, out, lx, ly, (x0, y0, x1, y1))
        else:
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = self._read_generic(level, x0, y0, x1, y1)
        return out

    def _paint_tiles(self, dec: TiffTileDecoder, out: np.ndarray, lx: int, ly: int, box: tuple[int, int, int, int]) -> None:
        x0, y0, x1, y1 = box
        tw, th = dec.grid.tile_width, dec.grid.tile_height
        cols = range(x0 // tw, (x1 - 1) // tw + 1)
        for r in range(y0 // th, (y1 - 1) // th + 1):  # one tile row at a time bounds the decoded memory
            tiles = dec.read_tiles([(r, c) for c in cols])
            ty = r * th
            sy0, sy1 = max(y0, ty), min(y1, ty + th)
            for c, tile in zip(cols, tiles):
                tx = c * tw
                sx0, sx1 = max(x0, tx), min(x1, tx + tw)
                out[sy0 - ly : sy1 - ly, sx0 - lx : sx1 - lx] = tile[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]

    def _read_generic(self, level: int, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Pixels through tifffile's zarr store, for encodings the direct decoder does not handle."""
        arr = self.zarr_level(level)
        axes = self._series.levels[level].axes
        index = tuple(slice(y0, y1) if a == "Y" else slice(x0, x1) if a == "X" else slice(None) if a == "S" else 0
                      for a in axes)
        try:
            with escalate_tifffile_warnings(self.path, f"level {level} read"):
                data = np.asarray(arr[index])
        except SlideError:
            raise
        except Exception as exc:
            raise SlideError(self.path, f"level {level} read failed: {exc}") from exc
        kept = [a for a in axes if a in "YXS"]
        if "S" in kept and kept[-1] != "S":  # planar-separate samples come first: move them last
            data = np.moveaxis(data, kept.index("S"), -1)
        return _to_rgb8(data, self._pages[level], self.path)

    def close(self) -> None:
        for dec in self._decoders.values():
            if dec is not None:
                dec.close()
        self._tif.close()


def _channel_names(tif: tifffile.TiffFile, series: Any) -> list[str]:
    """Channel names a multichannel series states: OME ``Channel Name`` or QPTIFF's per-page ``<Name>``."""
    if tif.is_ome:
        root = ET.fromstring(tif.ome_metadata or "<OME/>")
        return [el.get("Name", "") for el in root.iter() if el.tag.endswith("}Channel") or el.tag == "Channel"]
    if tif.is_qpi:
        names = []
        for page in series.pages:
            found = re.search(r"<Name>([^<]*)</Name>", getattr(page, "description", "") or "")
            names.append(found.group(1) if found else "")
        return names
    return []


def _not_rgb_reason(tif: tifffile.TiffFile, series: Any) -> str:
    """Why a series is not a brightfield slide (several planes: fluorescence channels, Z or T)."""
    channels = [n for n in _channel_names(tif, series) if n]
    kind = "PerkinElmer QPTIFF " if tif.is_qpi else "OME-TIFF " if tif.is_ome else ""
    what = (f"{len(channels)}-channel fluorescence image (channels {', '.join(channels)})" if len(channels) > 1
            else f"image with axes {series.axes} {series.shape}")
    return (f"{kind}{what}, not a brightfield RGB slide: only brightfield RGB slides are processed "
            "(export an RGB brightfield image, e.g. a pseudo-coloured composite, to run it)")


def _to_rgb8(data: np.ndarray, page: Any, path: Path) -> np.ndarray:
    """tifffile's decoded samples (``Y X [S]``) -> uint8 RGB, alpha composited on white."""
    if data.ndim == 2:
        data = data[..., None]
    if data.dtype != np.uint8:
        if data.dtype.kind not in "ui":
            raise SlideError(path, f"unsupported sample type {data.dtype}")
        bits = int(page.bitspersample)
        data = (data.astype(np.float64) * (255.0 / (2**bits - 1))).round().astype(np.uint8)
    if int(page.photometric) == 3:  # palette: tifffile returns indices
        cmap = np.asarray(page.colormap)
        data = (cmap.T[data[..., 0]] >> (8 if cmap.max() > 255 else 0)).astype(np.uint8)
    ncolor = 1 if data.shape[2] in (1, 2) else 3
    color = data[..., :ncolor]
    if ncolor == 1:
        color = np.repeat(255 - color if int(page.photometric) == 0 else color, 3, axis=2)
    extras = tuple(int(e) for e in page.extrasamples)
    if data.shape[2] > ncolor and extras and extras[0] in (1, 2):
        return composite_on_white(color, data[..., ncolor], premultiplied=extras[0] == 1)
    return np.ascontiguousarray(color)
