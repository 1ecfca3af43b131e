"""Streaming pyramidal TIFF writer: Aperio-style SVS, OME-TIFF or plain pyramidal TIFF.

The OME-TIFF keeps its reduced levels in the main IFD chain (NewSubfileType 1), where openslide reads a pyramid,
and lists the same IFDs in level 0's SubIFDs tag, where OME readers (tifffile, tiffslide, Bio-Formats / QuPath)
read it: one copy of each level, every reader sees the same level count and sizes.

Level 0 is pulled from a ``region(x, y, w, h)`` callback one tile row at a time and handed to tifffile as a tile
iterator; while a level is written, its 2x box-downsample goes to a raw temporary file next to the output, and the
next level is streamed from that file. Peak memory is a few tile rows of the widest level, never a whole level.
The file appears atomically (temporary name in the same folder, then ``os.replace``).

>>> import numpy as np
>>> region = lambda x, y, w, h: np.full((h, w, 3), 200, np.uint8)
>>> write_pyramidal_tiff("/tmp/grey.svs", region, size=(1000, 700), mpp=0.5)  # doctest: +SKIP
PosixPath('/tmp/grey.svs')
"""

from __future__ import annotations

import math
import os
import struct
import tempfile
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from xml.sax.saxutils import escape as xml_escape
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np
import tifffile

from wsi_pipeline import __version__
from wsi_pipeline.atomic import atomic_output
from wsi_pipeline.errors import ConfigError

Region = Callable[[int, int, int, int], np.ndarray]
Flavor = Literal["svs", "ome", "tiff"]

_COMPRESSIONS = ("jpeg", "zlib", "lzw", "none")
_BLOCK_TILES = 8  # level-0 tiles per region() call: amortises per-call overhead, bounds the working set
_THUMB_MAX = 1024  # Aperio thumbnails are about 1024 px on their long side


def level_sizes(size: tuple[int, int], *, min_level_size: int = 512, step: int = 2) -> list[tuple[int, int]]:
    """Pyramid level sizes ``(width, height)``: divide by ``step`` (2 or 4, rounding up) until the long side is at
    most ``min_level_size``."""
    w, h = size
    sizes = [(w, h)]
    while max(w, h) > min_level_size and min(w, h) > 1:
        w, h = -(-w // step), -(-h // step)
        sizes.append((w, h))
    return sizes


def aperio_description(size: tuple[int, int], *, tile: int, mpp: float | None, quality: int,
                       compression: str, extra: str = "") -> str:
    """An Aperio ImageDescription that openslide reads as vendor ``aperio`` (with ``MPP``/``AppMag`` when known)."""
    w, h = size
    head = f"Aperio Image Library v12.0.0 wsi-pipeline {__version__}\r\n"
    head += f"{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) {compression.upper()}/RGB Q={quality}"
    fields = [head]
    if mpp is not None:
        # AppMag follows the usual 0.25 um/px = 40x convention
        fields += [f"AppMag = {10.0 / mpp:g}", f"MPP = {mpp:.6g}"]
    fields += ["Filename = " + "wsi-pipeline", "Title = synthetic"]
    if extra:
        fields.append(extra.replace("\r", " ").replace("\n", " "))  # extra "key = value" fields, "|"-separated
    return "|".join(fields)


def downsample2(block: np.ndarray) -> np.ndarray:
    """2x2 box mean of an HxWx3 uint8 block (odd edges replicate the last row/column)."""
    h, w = block.shape[:2]
    if h % 2 or w % 2:
        block = np.pad(block, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    acc = block.reshape(block.shape[0] // 2, 2, block.shape[1] // 2, 2, 3).astype(np.uint16).sum(axis=(1, 3))
    return ((acc + 2) // 4).astype(np.uint8)


def _validate(size: tuple[int, int], tile: int, compression: str, quality: int, flavor: str,
              mpp: float | None, min_level_size: int) -> None:
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"size={size!r}: expected (width, height) with both >= 1")
    if tile < 16 or tile % 16:
        raise ConfigError(f"tile={tile}: must be a positive multiple of 16")
    if compression not in _COMPRESSIONS:
        raise ConfigError(f"compression={compression!r}: expected one of {_COMPRESSIONS}")
    if not 1 <= quality <= 100:
        raise ConfigError(f"quality={quality}: expected 1..100")
    if flavor not in ("svs", "ome", "tiff"):
        raise ConfigError(f"flavor={flavor!r}: expected 'svs', 'ome' or 'tiff'")
    if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
        raise ConfigError(f"mpp={mpp!r}: expected a positive number of microns per pixel or None")
    if min_level_size < 1:
        raise ConfigError(f"min_level_size={min_level_size}: expected >= 1")


class _LevelStream:
    """Streams one level as tile rows and feeds its 2x downsample (and a thumbnail) onward.

    The source is either the ``region`` callback (level 0) or the raw file the previous level wrote.
    """

    def __init__(self, size: tuple[int, int], tile: int, read_rows: Callable[[int, int], np.ndarray],
                 sink: BinaryIO | None, thumb_factor: int, progress: object | None, step: int = 2) -> None:
        self.size, self.tile, self.step = size, tile, step
        self.read_rows = read_rows
        self.sink = sink
        self.thumb_factor = thumb_factor
        self.thumb_rows: list[np.ndarray] = []
        self.progress = progress

    def tiles(self) -> Iterator[np.ndarray]:
        w, h = self.size
        t = self.tile
        ncols = -(-w // t)
        for y in range(0, h, t):
            rows = self.read_rows(y, min(t, h - y))
            if self.sink is not None:
                small = downsample2(rows)
                for _ in range(self.step // 2 - 1):  # 4x: twice (a tile row's height is a multiple of 4)
                    small = downsample2(small)
                self.sink.write(small.tobytes())
            if self.thumb_factor:
                self.thumb_rows.append(_box_reduce(rows, self.thumb_factor))
            if rows.shape[0] < t or ncols * t != w:
                padded = np.full((t, ncols * t, 3), 255, np.uint8)
                padded[: rows.shape[0], :w] = rows
                rows = padded
            for c in range(ncols):
                yield rows[:, c * t:(c + 1) * t]
            if self.progress is not None:
                self.progress.update(ncols)  # type: ignore[attr-defined]

    def thumbnail(self) -> np.ndarray:
        return np.concatenate(self.thumb_rows, axis=0)


def _box_reduce(rows: np.ndarray, f: int) -> np.ndarray:
    """Mean over ``f x f`` blocks (partial blocks at the edges are averaged over what exists)."""
    h, w = rows.shape[:2]
    hh, ww = -(-h // f), -(-w // f)
    pad = np.pad(rows.astype(np.float32), ((0, hh * f - h), (0, ww * f - w), (0, 0)))
    ones = np.pad(np.ones((h, w), np.float32), ((0, hh * f - h), (0, ww * f - w)))
    s = pad.reshape(hh, f, ww, f, 3).sum(axis=(1, 3))
    n = ones.reshape(hh, f, ww, f).sum(axis=(1, 3))[..., None]
    return np.clip(s / n + 0.5, 0, 255).astype(np.uint8)


def level0_boxes(size: tuple[int, int], *, tile: int = 256) -> list[tuple[int, int, int, int]]:
    """The ``(x, y, w, h)`` boxes :func:`write_pyramidal_tiff` asks its ``region`` callback for, in that order
    (lets a caller render them ahead, in parallel)."""
    width, height = size
    return [box for y in range(0, height, tile) for box in _row_boxes(width, y, min(tile, height - y), tile)]


def _row_boxes(width: int, y: int, h: int, tile: int) -> list[tuple[int, int, int, int]]:
    block = tile * _BLOCK_TILES
    return [(x, y, min(block, width - x), h) for x in range(0, width, block)]


def _region_reader(region: Region, width: int, tile: int) -> Callable[[int, int], np.ndarray]:
    def read(y: int, h: int) -> np.ndarray:
        out = np.empty((h, width, 3), np.uint8)
        for x, _, w, _ in _row_boxes(width, y, h, tile):
            arr = np.asarray(region(x, y, w, h))
            if arr.shape != (h, w, 3) or arr.dtype != np.uint8:
                raise ConfigError(f"region({x}, {y}, {w}, {h}) returned {arr.dtype} {arr.shape}; "
                                  f"expected uint8 {(h, w, 3)}")
            out[:, x:x + w] = arr
        return out

    return read


def _file_reader(path: Path, size: tuple[int, int]) -> tuple[Callable[[int, int], np.ndarray], BinaryIO]:
    w = size[0]
    fh = open(path, "rb")  # noqa: SIM115 - closed by the caller once the level is written
    stride = w * 3

    def read(y: int, h: int) -> np.ndarray:
        fh.seek(y * stride)
        buf = fh.read(h * stride)
        if len(buf) != h * stride:
            raise OSError(f"{path}: temporary level store truncated at row {y}")
        return np.frombuffer(buf, np.uint8).reshape(h, w, 3)

    return read, fh


def write_pyramidal_tiff(path: str | os.PathLike[str], region: Region, *, size: tuple[int, int],
                         mpp: float | None, tile: int = 256, compression: str = "jpeg", quality: int = 90,
                         flavor: Flavor = "svs", min_level_size: int = 512, level_step: int = 2,
                         description_extra: str = "", progress: bool = False,
                         ome: OmeInfo | None = None) -> Path:
    """Write a tiled pyramidal TIFF whose level-0 pixels come from ``region(x, y, w, h) -> uint8 HxWx3``.

    ``flavor="svs"``: Aperio layout (level 0, stripped thumbnail, reduced levels as top-level IFDs) that openslide
    reads as vendor ``aperio``; ``"ome"``: OME-XML with ``PhysicalSizeX/Y`` in um and the pyramid in SubIFDs;
    ``"tiff"``: plain pyramidal TIFF (reduced levels as top-level IFDs). ``description_extra``: for SVS more
    ``key = value`` fields joined by ``|`` (openslide lists them as ``aperio.<key>``); for OME the image name.
    ``level_step``: 2 (every 2x level) or 4 (what Aperio scanners write: 1x, 4x, 16x, ...). ``ome``: channel name,
    objective power and key-value annotations for the OME-XML. Returns the final path.
    """
    if level_step not in (2, 4):
        raise ConfigError(f"level_step={level_step!r}: expected 2 or 4")
    size = (int(size[0]), int(size[1]))
    _validate(size, tile, compression, quality, flavor, mpp, min_level_size)
    out = Path(path)
    if not out.parent.is_dir():
        raise ConfigError(f"path={out}: folder {out.parent} does not exist")
    sizes = level_sizes(size, min_level_size=min_level_size, step=level_step)
    bar = None
    if progress:
        from tqdm import tqdm

        total = sum(-(-w // tile) * -(-h // tile) for w, h in sizes)
        bar = tqdm(total=total, unit="tile", desc=out.name, leave=False)
    try:
        with atomic_output(out) as tmp, \
                tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as scratch:
            _write(tmp, region, sizes, Path(scratch), mpp=mpp, tile=tile, compression=compression,
                   quality=quality, flavor=flavor, extra=description_extra, progress=bar, step=level_step,
                   ome=ome or OmeInfo())
            if flavor == "ome" and len(sizes) > 1:
                _link_subifds(tmp)
    finally:
        if bar is not None:
            bar.close()
    return out


def _write(tmp: Path, region: Region, sizes: list[tuple[int, int]], scratch: Path, *, mpp: float | None,
           tile: int, compression: str, quality: int, flavor: str, extra: str, progress: object | None,
           step: int = 2, ome: OmeInfo) -> None:
    comp = None if compression == "none" else compression
    cargs = {"level": quality} if compression == "jpeg" else None
    common: dict[str, Any] = dict(tile=(tile, tile), photometric="rgb", compression=comp, compressionargs=cargs,
                                     dtype=np.uint8, software=f"wsi-pipeline {__version__}",
                                     metadata=None)
    resolution = None
    if mpp is not None:
        resolution = (1e4 / mpp, 1e4 / mpp)  # pixels per cm
    # Aperio-style thumbnail, computed from level 0 while it streams by (cheap: one small array)
    thumb_factor = 0
    if flavor == "svs":
        thumb_factor = 1
        while max(sizes[0]) / thumb_factor > _THUMB_MAX:
            thumb_factor *= 2
    bigtiff = sizes[0][0] * sizes[0][1] * 3 > 2**31
    with tifffile.TiffWriter(tmp, bigtiff=bigtiff, ome=False) as tif:
        reader = _region_reader(region, sizes[0][0], tile)
        handle: BinaryIO | None = None
        for level, lsize in enumerate(sizes):
            last = level == len(sizes) - 1
            store = scratch / f"level{level + 1}.raw"
            sink = None if last else open(store, "wb")  # noqa: SIM115
            stream = _LevelStream(lsize, tile, reader, sink, thumb_factor if level == 0 else 0, progress, step)
            kwargs = dict(common, shape=(lsize[1], lsize[0], 3))
            if resolution is not None:
                ds = sizes[0][0] / lsize[0]
                kwargs.update(resolution=(resolution[0] / ds, resolution[1] / ds), resolutionunit="CENTIMETER")
            if level == 0 and flavor == "ome":
                kwargs["description"] = ome_xml(sizes[0], mpp=mpp, name=extra or "image", info=ome)
                kwargs["subifds"] = len(sizes) - 1  # _link_subifds then chains them into the main IFD chain too
            elif level == 0:
                kwargs["description"] = _description(sizes[0], flavor, mpp=mpp, tile=tile, quality=quality,
                                                     compression=compression, extra=extra)
            elif flavor == "svs":
                # Aperio writes NewSubfileType 0 on reduced pyramid levels (1 = label, 9 = macro): tifffile's SVS
                # parser files a subfiletype-1 page as the label, hiding the level from tifffile-based readers
                kwargs["subfiletype"] = 0
                kwargs["description"] = _description(lsize, "svs", mpp=None, tile=tile, quality=quality,
                                                     compression=compression, extra="")
            else:
                kwargs["subfiletype"] = 1  # generic TIFF: the standard "reduced-resolution image" flag
            try:
                tif.write(stream.tiles(), **kwargs)
            finally:
                if sink is not None:
                    sink.close()
                if handle is not None:
                    handle.close()
                    handle = None
            if level == 0 and flavor == "svs":
                thumb = stream.thumbnail()
                tif.write(thumb, photometric="rgb", compression=comp, compressionargs=cargs, rowsperstrip=16, metadata=None,
                          description=_description(thumb.shape[1::-1], "svs", mpp=None, tile=tile,
                                                   quality=quality, compression=compression, extra=""))
            if not last:
                (scratch / f"level{level}.raw").unlink(missing_ok=True)
                reader, handle = _file_reader(store, sizes[level + 1])


def _description(size: tuple[int, int], flavor: str, *, mpp: float | None, tile: int, quality: int,
                 compression: str, extra: str) -> str:
    if flavor == "svs":
        return aperio_description(size, tile=tile, mpp=mpp, quality=quality, compression=compression, extra=extra)
    return extra or f"wsi-pipeline {__version__}"


@dataclass(frozen=True)
class OmeInfo:
    """What the OME-XML says beyond the pixels: the channel's name, the objective, free key-value pairs."""

    channel: str = "RGB"
    objective_power: float | None = None  # None: 10 / mpp (0.25 um/px = 40x), when the MPP is known
    annotations: Mapping[str, str] = field(default_factory=dict)  # an OME MapAnnotation on the image


def ome_xml(size: tuple[int, int], *, mpp: float | None, name: str, info: OmeInfo) -> str:
    """OME-XML (2016-06) for one interleaved RGB uint8 image in IFD 0: physical size, objective, channel name.

    >>> 'NominalMagnification="20"' in ome_xml((10, 10), mpp=0.5, name="x", info=OmeInfo(channel="HE"))
    True
    """
    w, h = size
    power = info.objective_power if info.objective_power is not None else (10.0 / mpp if mpp else None)
    a = xml_escape
    phys = (f' PhysicalSizeX="{mpp:.9g}" PhysicalSizeXUnit="&#181;m" PhysicalSizeY="{mpp:.9g}" '
            f'PhysicalSizeYUnit="&#181;m"' if mpp is not None else "")
    instrument = (f'<Instrument ID="Instrument:0"><Objective ID="Objective:0:0" NominalMagnification="{power:g}"/>'
                  f'</Instrument>' if power is not None else "")
    refs = '<InstrumentRef ID="Instrument:0"/><ObjectiveSettings ID="Objective:0:0"/>' if power is not None else ""
    notes = "".join(f'<M K="{a(str(k), {chr(34): "&quot;"})}">{a(str(v))}</M>' for k, v in info.annotations.items())
    ann_ref = '<AnnotationRef ID="Annotation:0"/>' if notes else ""
    structured = (f'<StructuredAnnotations><MapAnnotation ID="Annotation:0" '
                  f'Namespace="wsi-pipeline"><Value>{notes}</Value></MapAnnotation></StructuredAnnotations>'
                  if notes else "")
    xml = ('<?xml version="1.0" encoding="UTF-8"?>'
            '<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
            'xsi:schemaLocation="http://www.openmicroscopy.org/Schemas/OME/2016-06 '
            'http://www.openmicroscopy.org/Schemas/OME/2016-06/ome.xsd" '
            f'UUID="urn:uuid:{uuid.uuid4()}" Creator="wsi-pipeline {__version__}">'
            f'{instrument}<Image ID="Image:0" Name="{a(name, {chr(34): "&quot;"})}">{refs}'
            f'<Pixels ID="Pixels:0" DimensionOrder="XYCZT" Type="uint8" SizeX="{w}" SizeY="{h}" SizeC="3" '
            f'SizeZ="1" SizeT="1" Interleaved="true" SignificantBits="8"{phys}>'
            f'<Channel ID="Channel:0:0" Name="{a(info.channel, {chr(34): "&quot;"})}" SamplesPerPixel="3"/>'
            f'<TiffData IFD="0" PlaneCount="1"/></Pixels>{ann_ref}</Image>{structured}</OME>')
    return xml.encode("ascii", "xmlcharrefreplace").decode("ascii")  # TIFF strings are 7-bit ASCII


def _link_subifds(path: Path) -> None:
    """Chain level 0's SubIFDs (the reduced levels) into the main IFD chain: IFD 0 -> level 1 -> level 2 ...,
    by setting each IFD's next-IFD offset (tifffile writes SubIFDs unchained)."""
    with tifffile.TiffFile(path) as tif:
        first = tif.pages.first
        chain = [int(first.offset), *(int(o) for o in first.subifds or ())]
        big, order = tif.is_bigtiff, tif.byteorder
    count_fmt, entry, off_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
    with open(path, "r+b") as fh:
        for here, following in zip(chain, [*chain[1:], 0]):
            fh.seek(here)
            (n,) = struct.unpack(order + count_fmt, fh.read(struct.calcsize(count_fmt)))
            fh.seek(here + struct.calcsize(count_fmt) + n * entry)
            fh.write(struct.pack(order + off_fmt, following))


__all__ = ["OmeInfo", "Region", "aperio_description", "downsample2", "level0_boxes", "level_sizes", "ome_xml",
           "write_pyramidal_tiff"]
