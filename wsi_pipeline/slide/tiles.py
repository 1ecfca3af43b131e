"""Direct decode of a TIFF page's stored tiles (or strips): the tiling fast path, no tifffile in the loop."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np

from ..errors import SlideError
from .base import TileGrid

# TIFF compression codes we decode ourselves; anything else goes through tifffile's generic (slower) path.
_JPEG = 7
_JPEG2K = {33003, 33005}  # Aperio JPEG 2000: 33003 stores YCbCr, 33005 stores RGB
_DECOMPRESSORS: dict[int, Callable[[bytes], Any]] = {
    1: bytes,
    5: imagecodecs.lzw_decode,
    8: imagecodecs.zlib_decode,
    32946: imagecodecs.zlib_decode,  # old-style deflate
    50000: imagecodecs.zstd_decode,
    _JPEG: imagecodecs.jpeg8_decode,
    33003: imagecodecs.jpeg2k_decode,
    33005: imagecodecs.jpeg2k_decode,
}
_PHOTOMETRICS = {0, 1, 2, 6}  # miniswhite, minisblack, RGB, YCbCr (YCbCr only inside JPEG)


def merge_jpeg_tables(tables: bytes | None, tile: bytes) -> bytes:
    """One self-contained JPEG stream from abbreviated tile data plus the page's shared JPEGTables.

    >>> merge_jpeg_tables(b"\\xff\\xd8T\\xff\\xd9", b"\\xff\\xd8D\\xff\\xd9")
    b'\\xff\\xd8TD\\xff\\xd9'
    """
    if not tables or len(tables) <= 4:
        return tile
    # tables = SOI <DQT/DHT...> EOI, tile = SOI <frame...> EOI: drop the tables' EOI and the tile's SOI
    return tables[:-2] + tile[2:]


def composite_on_white(color: np.ndarray, alpha: np.ndarray, *, premultiplied: bool) -> np.ndarray:
    """RGB uint8 of ``color`` over a white background with ``alpha`` (uint8, HxW)."""
    a = alpha.astype(np.uint16)[..., None]
    if premultiplied:
        out = color.astype(np.uint16) + (255 - a)
    else:
        out = (color.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return np.minimum(out, 255).astype(np.uint8)


def _round_half_away(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, np.floor(x + 0.5), np.ceil(x - 0.5)).astype(np.int32)


# openslide's YCbCr -> RGB chroma tables for Aperio 33003 (per-entry rounding, G in 16.16 fixed point): using the
# same tables makes our pixels identical to openslide's, not just within one level of each other
_C = np.arange(256, dtype=np.float64) - 128
_R_CR = _round_half_away(1.402 * _C)
_B_CB = _round_half_away(1.772 * _C)
_G_CB = _round_half_away(-0.34414 * _C * 65536)
_G_CR = _round_half_away(-0.71414 * _C * 65536) + 32768


def _ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """Full-range YCbCr (what Aperio 33003 JPEG 2000 tiles hold) -> RGB, bit-exact with openslide."""
    y = ycc[..., 0].astype(np.int32)
    cb, cr = ycc[..., 1], ycc[..., 2]
    rgb = np.stack([y + _R_CR[cr], y + ((_G_CB[cb] + _G_CR[cr]) >> 16), y + _B_CB[cb]], axis=-1)
    return np.clip(rgb, 0, 255).astype(np.uint8)


class TiffTileDecoder:
    """Reads and decodes the stored tiles of one TIFF page with ``os.pread`` + imagecodecs.

    Build it with :meth:`from_page`; strips are treated as full-width tiles.

    >>> dec = open_slide("small.svs", backend="tifffile").tile_decoder(0)  # doctest: +SKIP
    >>> dec.decode(dec.read_raw(0, 0)).shape  # doctest: +SKIP
    (64, 64, 3)
    """

    def __init__(
        self,
        path: Path,
        *,
        grid: TileGrid,
        offsets: Sequence[int],
        bytecounts: Sequence[int],
        compression: int,
        photometric: int,
        samples: int,
        extrasamples: tuple[int, ...] = (),
        predictor: int = 1,
        jpegtables: bytes | None = None,
        jpeg_colorspace: tuple[int | None, int | str | None] = (None, None),
        tiled: bool = True,
    ) -> None:
        self.path = Path(path)
        self.grid = grid
        self.compression = compression
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self._bytecounts = np.asarray(bytecounts, dtype=np.int64)
        self._photometric = photometric
        self._samples = samples
        self._extrasamples = extrasamples
        self._predictor = predictor
        self._jpegtables = jpegtables
        self._colorspace, self._outcolorspace = jpeg_colorspace
        self._tiled = tiled
        self._decompress = _DECOMPRESSORS[compression]
        self._fd: int | None = None
        self._fd_pid = -1
        self._lock = threading.Lock()
        self._filesize = os.path.getsize(self.path)
        self._white = np.full((grid.tile_height, grid.tile_width, 3), 255, np.uint8)
        self._white.flags.writeable = False
        # plain 3-sample JPEG tiles decode to exactly (tile_height, tile_width, 3) RGB: no post-processing needed
        self._jpeg_rgb_out = compression == _JPEG and samples == 3 and not extrasamples and tiled

    @classmethod
    def from_page(cls, path: Path, page: Any, level: int) -> TiffTileDecoder | None:
        """A decoder for a tifffile ``TiffPage``, or ``None`` when its encoding needs tifffile's generic path."""
        from tifffile.tifffile import jpeg_decode_colorspace  # private helper: tifffile's own Aperio rules

        compression = int(page.compression)
        photometric = int(page.photometric)
        samples = int(page.samplesperpixel)
        extras = tuple(int(e) for e in page.extrasamples)
        color = samples - len(extras)
        if (
            compression not in _DECOMPRESSORS
            or photometric not in _PHOTOMETRICS
            or page.dtype != np.uint8
            or page.imagedepth != 1
            or color not in (1, 3)
            or len(extras) > 1
            or (samples > 1 and int(page.planarconfig) != 1)
            or int(page.predictor) not in (1, 2)
            or (photometric == 6 and compression != _JPEG)  # subsampled raw YCbCr: let tifffile upsample it
            or (compression in _JPEG2K and samples != 3)
            or len(page.dataoffsets) == 0
        ):
            return None
        tiled = bool(page.is_tiled)
        tw, th = (page.tilewidth, page.tilelength) if tiled else (page.imagewidth, page.rowsperstrip or page.imagelength)
        th = min(th, page.imagelength) if not tiled else th
        grid = TileGrid(level, page.imagewidth, page.imagelength, int(tw), int(th))
        if len(page.dataoffsets) != grid.rows * grid.columns:
            return None
        tables = page.jpegtables if compression == _JPEG else None
        cs = jpeg_decode_colorspace(photometric, int(page.planarconfig), extras, page.is_jfif)
        return cls(
            path,
            grid=grid,
            offsets=page.dataoffsets,
            bytecounts=page.databytecounts,
            compression=compression,
            photometric=photometric,
            samples=samples,
            extrasamples=extras,
            predictor=int(page.predictor),
            jpegtables=bytes(tables) if tables else None,
            jpeg_colorspace=cs,
            tiled=tiled,
        )

    @property
    def copyable_jpeg(self) -> bool:
        """Tiles are RGB JPEG streams whose plain decode *is* the level's pixels: copying :meth:`read_raw`'s bytes
        (tables merged) with :attr:`jpeg_colorspace` as the decode hint reproduces them exactly."""
        return self._jpeg_rgb_out and self._outcolorspace == 2 and self._colorspace in (None, 2)

    @property
    def jpeg_colorspace(self) -> str | None:
        """What the JPEG streams hold when their markers do not say it: ``"RGB"`` (Aperio's marker-less RGB tiles)
        or ``None`` (libjpeg's default rules: JFIF/Adobe markers, else YCbCr)."""
        return "RGB" if self._colorspace == 2 else None

    # -- raw access -------------------------------------------------------------------------------
    def _file(self) -> int:
        # one descriptor per process: a forked worker must not share the parent's file offset state
        if self._fd is None or self._fd_pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._fd_pid = os.getpid()
        return self._fd

    def _index(self, row: int, col: int) -> int:
        if not (0 <= row < self.grid.rows and 0 <= col < self.grid.columns):
            raise IndexError(f"tile (row={row}, col={col}) outside {self.grid.rows}x{self.grid.columns} grid")
        return row * self.grid.columns + col

    def read_raw(self, row: int, col: int) -> bytes:
        """Compressed bytes of tile ``(row, col)``, JPEGTables merged; ``b""`` for a tile the file leaves out."""
        i = self._index(row, col)
        offset, count = int(self._offsets[i]), int(self._bytecounts[i])
        if count == 0 or offset == 0:
            return b""  # sparse tile: openslide shows these as transparent, i.e. white
        if offset + count > self._filesize:
            raise SlideError(
                self.path,
                f"level {self.grid.level} tile ({row}, {col}) truncated: needs bytes {offset}..{offset + count}, "
                f"file has {self._filesize}",
            )
        with self._lock:
            fd = self._file()
        data = os.pread(fd, count, offset)
        if len(data) != count:
            raise SlideError(self.path, f"level {self.grid.level} tile ({row}, {col}): short read")
        if self.compression == _JPEG and self._jpegtables:
            return merge_jpeg_tables(self._jpegtables, data)
        return data

    # -- decode -----------------------------------------------------------------------------------
    def decode(self, raw: bytes, *, out: np.ndarray | None = None) -> np.ndarray:
        """Decode one stored tile to ``tile_height x tile_width x 3`` uint8 RGB (missing tile -> white).

        ``out``: a C-contiguous ``(tile_height, tile_width, 3)`` uint8 buffer to decode into (returned). Reusing
        one buffer per thread skips allocating and page-faulting a fresh array per tile, which costs about a
        third of the JPEG decode itself.
        """
        g = self.grid
        if out is not None:
            if out.shape != (g.tile_height, g.tile_width, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
                raise ValueError(f"out must be C-contiguous uint8 {(g.tile_height, g.tile_width, 3)}, got "
                                 f"{out.dtype} {out.shape}")
            if not raw:
                out[...] = 255
                return out
            if self._jpeg_rgb_out:  # the codec writes straight into ``out``
                try:
                    imagecodecs.jpeg8_decode(raw, colorspace=self._colorspace, outcolorspace=self._outcolorspace,
                                             out=out)
                except Exception as exc:
                    raise SlideError(self.path, f"level {g.level}: damaged tile data ({exc})") from exc
                return out
            out[...] = self.decode(raw)
            return out
        if not raw:
            return self._white.copy()
        try:
            if self.compression == _JPEG:
                arr = imagecodecs.jpeg8_decode(raw, colorspace=self._colorspace, outcolorspace=self._outcolorspace)
            else:
                arr = self._decompress(raw)
        except Exception as exc:  # every codec has its own error class; all mean damaged data here
            raise SlideError(self.path, f"level {g.level}: damaged tile data ({exc})") from exc
        arr = np.asarray(arr) if not isinstance(arr, (bytes, bytearray)) else np.frombuffer(arr, np.uint8)
        if arr.ndim == 1:  # raw sample bytes from deflate/LZW/zstd/none
            per_row = g.tile_width * self._samples
            rows = arr.size // per_row
            if arr.size % per_row or rows > g.tile_height or (self._tiled and rows != g.tile_height) or rows == 0:
                raise SlideError(self.path, f"level {g.level}: tile holds {arr.size} bytes, expected a multiple of {per_row}")
            arr = arr.reshape(rows, g.tile_width, self._samples)
            if self._predictor == 2:
                arr = np.cumsum(arr, axis=1, dtype=np.uint8)  # horizontal differencing, wraps mod 256
        elif arr.ndim == 2:
            arr = arr[..., None]
        if arr.shape[0] > g.tile_height or arr.shape[1] != g.tile_width or arr.shape[0] == 0:
            raise SlideError(self.path, f"level {g.level}: tile decoded to {arr.shape[:2]}, expected "
                             f"{(g.tile_height, g.tile_width)}")
        if self._tiled and arr.shape[0] != g.tile_height:
            raise SlideError(self.path, f"level {g.level}: tile decoded to {arr.shape[0]} rows, expected {g.tile_height}")
        rgb = self._to_rgb(arr)
        if rgb.shape[0] < g.tile_height:  # last strip is shorter than RowsPerStrip
            rgb = np.concatenate([rgb, self._white[: g.tile_height - rgb.shape[0]]])
        return rgb

    def _to_rgb(self, arr: np.ndarray) -> np.ndarray:
        if self.compression == 33003:
            arr = _ycbcr_to_rgb(arr[..., :3])
        ncolor = 1 if arr.shape[2] in (1, 2) else 3
        color = arr[..., :ncolor]
        if ncolor == 1:
            if self._photometric == 0:
                color = 255 - color
            color = np.repeat(color, 3, axis=2)
        if arr.shape[2] > ncolor and self._extrasamples and self._extrasamples[0] in (1, 2):
            return composite_on_white(color, arr[..., ncolor], premultiplied=self._extrasamples[0] == 1)
        return np.ascontiguousarray(color)

    def read_tiles(self, indices: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Decode many ``(row, col)`` tiles, reading them in file order; results follow ``indices``' order."""
        order = sorted(range(len(indices)), key=lambda k: int(self._offsets[self._index(*indices[k])]))
        out: list[np.ndarray] = [self._white] * len(indices)
        for k in order:
            out[k] = self.decode(self.read_raw(*indices[k]))
        return out

    def close(self) -> None:
        """Release the file descriptor (reopened on demand)."""
        with self._lock:
            if self._fd is not None and self._fd_pid == os.getpid():
                os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __reduce__(self):  # type: ignore[no-untyped-def]
        raise TypeError("TiffTileDecoder must not be pickled: open the slide in the worker")
