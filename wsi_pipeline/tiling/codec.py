"""A zarr v3 chunk codec for JPEG tiles: a chunk is a small grid of baseline JPEG streams (``wsi_pipeline.jpeg``).

Tiling copies a slide's stored JPEG tiles into chunks without decoding them, so a chunk larger than the slide's
tiles holds several streams. Encoded chunk layout (all little-endian)::

    uint32 nbytes[rows * cols]     one per sub-tile, row-major; 0 = absent (reads as the fill value)
    bytes  streams...              the sub-tiles' standalone JPEG streams, in the same order

``rows x cols`` = the chunk shape divided by ``tile_shape`` (a plain one-stream chunk when they are equal). The
array side is ``(height, width, 3)`` uint8 RGB (an image array stored ``(c, y, x)`` puts a ``transpose`` codec in
front). ``colorspace`` tells libjpeg what the streams hold when their markers do not say it (Aperio's RGB tiles
carry no JFIF/Adobe marker): ``"RGB"``, ``"YCbCr"`` or ``None`` (libjpeg's own guess); decoded pixels equal
openslide's for the same stream. Registered with zarr on ``import wsi_pipeline.tiling`` and through the ``zarr.codecs``
entry point, so any environment with the package installed reads such stores with plain ``zarr.open_group``.

    >>> px = np.full((32, 64, 3), 200, np.uint8)
    >>> data = encode_jpeg_chunk(px, tile_shape=(32, 32), quality=90)
    >>> decode_jpeg_chunk(data, shape=(32, 64), tile_shape=(32, 32)).shape
    (32, 64, 3)
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import imagecodecs
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import JSON, parse_named_configuration

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

__all__ = [
    "CODEC_NAME",
    "JpegTilesCodec",
    "decode_jpeg_chunk",
    "encode_jpeg_chunk",
    "pack_jpeg_tiles",
    "register",
]

CODEC_NAME = "wsi_pipeline.jpeg"
_COLORSPACES = {None: None, "RGB": 2, "YCbCr": 3}  # libjpeg J_COLOR_SPACE of the stream
_RGB_OUT = 2  # JCS_RGB


def _grid(shape: tuple[int, int], tile_shape: tuple[int, int]) -> tuple[int, int]:
    (h, w), (th, tw) = shape, tile_shape
    if th <= 0 or tw <= 0 or h % th or w % tw:
        raise ValueError(f"tile_shape={tile_shape}: must divide the chunk shape {shape}")
    return h // th, w // tw


def jpeg_tiles_parts(streams: Sequence[bytes]) -> list[bytes]:
    """One chunk's bytes as a list of buffers to write in order (no join: the streams are not copied)."""
    return [np.array([len(s) for s in streams], "<u4").tobytes(), *streams]


def pack_jpeg_tiles(streams: Sequence[bytes]) -> bytes:
    """One chunk's bytes from its sub-tiles' JPEG streams (row-major; ``b""`` = absent)."""
    return b"".join(jpeg_tiles_parts(streams))


def decode_jpeg_chunk(data: bytes | memoryview, *, shape: tuple[int, int], tile_shape: tuple[int, int],
                      colorspace: str | None = None, fill: int = 255,
                      out: np.ndarray | None = None) -> np.ndarray:
    """The ``(height, width, 3)`` uint8 pixels of one encoded chunk (``out``: a C-contiguous buffer to fill)."""
    rows, cols = _grid(shape, tile_shape)
    th, tw = tile_shape
    n = rows * cols
    view = memoryview(data).cast("B")
    if view.nbytes < 4 * n:
        raise ValueError(f"{CODEC_NAME}: chunk of {view.nbytes} bytes is shorter than its {n}-entry index")
    sizes = np.frombuffer(view[:4 * n], "<u4").astype(np.int64)
    ends = 4 * n + np.cumsum(sizes)
    if int(ends[-1]) != view.nbytes:
        raise ValueError(f"{CODEC_NAME}: chunk holds {view.nbytes} bytes, its index says {int(ends[-1])}")
    if out is None:
        out = np.empty((*shape, 3), np.uint8)
    elif out.shape != (*shape, 3) or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"out must be C-contiguous uint8 {(*shape, 3)}, got {out.dtype} {out.shape}")
    cs = _COLORSPACES[colorspace]
    single = n == 1
    buf = None
    for k in range(n):
        r, c = divmod(k, cols)
        dst = out[r * th:(r + 1) * th, c * tw:(c + 1) * tw]
        if sizes[k] == 0:
            dst[...] = fill
            continue
        stream = cast(bytes, view[int(ends[k] - sizes[k]):int(ends[k])])  # any buffer will do: no copy
        try:
            if single:  # the chunk is one stream: decode straight into the output
                imagecodecs.jpeg8_decode(stream, colorspace=cs, outcolorspace=_RGB_OUT, out=out)
            else:
                if buf is None:
                    buf = np.empty((th, tw, 3), np.uint8)
                imagecodecs.jpeg8_decode(stream, colorspace=cs, outcolorspace=_RGB_OUT, out=buf)
                dst[...] = buf
        except Exception as exc:  # imagecodecs raises its own error classes; all mean a damaged stream here
            raise ValueError(f"{CODEC_NAME}: sub-tile {(r, c)} of a {shape} chunk does not decode to "
                             f"{tile_shape} RGB ({exc})") from exc
    return out


def encode_jpeg_chunk(px: np.ndarray, *, tile_shape: tuple[int, int], quality: int, fill: int | None = 255) -> bytes:
    """Encode ``(height, width, 3)`` uint8 pixels; a sub-tile that is all ``fill`` is stored as absent."""
    h, w = px.shape[:2]
    rows, cols = _grid((h, w), tile_shape)
    th, tw = tile_shape
    streams: list[bytes] = []
    for r in range(rows):
        for c in range(cols):
            sub = px[r * th:(r + 1) * th, c * tw:(c + 1) * tw]
            if fill is not None and not (sub != fill).any():
                streams.append(b"")
            else:
                streams.append(bytes(imagecodecs.jpeg8_encode(np.ascontiguousarray(sub), level=quality)))
    return pack_jpeg_tiles(streams)


@dataclass(frozen=True)
class JpegTilesCodec(ArrayBytesCodec):
    """zarr v3 array -> bytes codec for ``(height, width, 3)`` uint8 chunks stored as a grid of JPEG streams."""

    is_fixed_size = False

    tile_shape: tuple[int, int] | None  # None: one stream per chunk
    colorspace: str | None
    quality: int  # used when zarr itself encodes a chunk

    def __init__(self, *, tile_shape: Sequence[int] | None = None, colorspace: str | None = None,
                 quality: int = 90) -> None:
        if colorspace not in _COLORSPACES:
            raise ValueError(f"colorspace={colorspace!r}: expected one of {sorted(c for c in _COLORSPACES if c)} "
                             "or None")
        if not 1 <= int(quality) <= 100:
            raise ValueError(f"quality={quality!r}: expected 1..100")
        if tile_shape is not None and (len(tile_shape) != 2 or min(int(v) for v in tile_shape) <= 0):
            raise ValueError(f"tile_shape={tile_shape!r}: expected two positive ints")
        ts = None if tile_shape is None else (int(tile_shape[0]), int(tile_shape[1]))
        object.__setattr__(self, "tile_shape", ts)
        object.__setattr__(self, "colorspace", colorspace)
        object.__setattr__(self, "quality", int(quality))

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, config = parse_named_configuration(data, CODEC_NAME, require_configuration=False)
        return cls(**(config or {}))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        config: dict[str, JSON] = {"colorspace": self.colorspace, "quality": self.quality}
        if self.tile_shape is not None:
            config["tile_shape"] = list(self.tile_shape)
        return {"name": CODEC_NAME, "configuration": config}

    def validate(self, *, shape: tuple[int, ...], dtype: Any, chunk_grid: Any) -> None:
        if np.dtype(dtype.to_native_dtype()) != np.uint8:
            raise ValueError(f"{CODEC_NAME}: needs uint8 data, got {dtype}")

    def _chunk_tiles(self, chunk_spec: ArraySpec) -> tuple[tuple[int, int], tuple[int, int]]:
        shape = chunk_spec.shape
        if len(shape) != 3 or shape[2] != 3:
            raise ValueError(f"{CODEC_NAME}: chunks must be (height, width, 3) after the codecs before it, got "
                             f"{shape} (put a transpose codec first for (c, y, x) arrays)")
        hw = (int(shape[0]), int(shape[1]))
        return hw, self.tile_shape or hw

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        hw, tile = self._chunk_tiles(chunk_spec)
        fill = int(chunk_spec.fill_value) if chunk_spec.fill_value is not None else 0
        px = decode_jpeg_chunk(cast(memoryview, chunk_bytes.as_array_like()), shape=hw, tile_shape=tile,
                               colorspace=self.colorspace, fill=fill)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(cast(Any, px))

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        _, tile = self._chunk_tiles(chunk_spec)
        px = np.ascontiguousarray(chunk_array.as_numpy_array(), dtype=np.uint8)
        fill = int(chunk_spec.fill_value) if chunk_spec.fill_value is not None else None
        data = encode_jpeg_chunk(px, tile_shape=tile, quality=self.quality, fill=fill)
        return chunk_spec.prototype.buffer.from_bytes(data)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        # zarr's codec interface: a compressed chunk's size is unknown before encoding, so this raises exactly as
        # zarr's own BloscCodec.compute_encoded_size does (not a stub: there is no size to return)
        raise NotImplementedError(f"{CODEC_NAME} output size depends on the pixels")


def register() -> None:
    """Make zarr resolve ``wsi_pipeline.jpeg`` (idempotent; the entry point does the same lazily)."""
    from zarr.registry import register_codec

    register_codec(CODEC_NAME, JpegTilesCodec)



