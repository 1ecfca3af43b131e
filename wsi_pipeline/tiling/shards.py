"""The zarr v3 store layout of a tiled slide, and fast direct chunk I/O for it.

Chunks are encoded here, packed into one *shard* file per task block (zarr v3 ``sharding_indexed``: a file per
block, not per tile, because creating files costs as much as the pixels in them) and written with temp-file +
``os.replace``. This bypasses zarr-python's write path, which costs several times the JPEG decode it follows. Every
array is created through zarr itself, so ``zarr.open_group`` and napari read the result normally.

A level's chunks are either :class:`JpegChunks` (the slide's own JPEG tiles copied byte for byte, or pixels encoded
at a quality; codec ``wsi_pipeline.jpeg``, see :mod:`wsi_pipeline.tiling.codec`; only with ``compressor: jpeg``) or :class:`RawChunks` (decoded pixels,
blosc-compressed or not; lossless, zarr v3 core codecs: any zarr v3 implementation reads them; the default).

Layout::

    STORE.zarr/zarr.json        group; attributes "ome" (OME-NGFF 0.5 multiscales, :mod:`.ngff`) and "wsi_pipeline"
    STORE.zarr/0, 1, ...        image pyramid, (c, y, x) uint8, chunks (3, tile, tile) inside shards of one task
                                block each, fill 255 (white); stored interleaved (transpose codec): a chunk's
                                bytes are the tile's RGB (raw) or JPEG streams; chunks without tissue are absent
                                from the shard index
    STORE.zarr/tissue_mask      uint8 thumbnail-resolution tissue mask
    STORE.zarr/tiling_done      uint8 per task block: 1 once every chunk of that block is on disk
    STORE.zarr/labels/tissue    OME-NGFF label image of the tissue mask (one level per image level)
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import imagecodecs
import numpy as np
import zarr
from zarr.codecs import BloscCodec, BytesCodec, ShardingCodec, TransposeCodec

from .codec import JpegTilesCodec, decode_jpeg_chunk, encode_jpeg_chunk

Compressor = Literal["lz4", "zstd", "none"]
FILL = 255
DONE_ARRAY = "tiling_done"
MASK_ARRAY = "tissue_mask"
_EMPTY = np.uint64(2**64 - 1)


def shard_path(store: Path, level: int, row: int, col: int) -> Path:
    """File of shard ``(0, row, col)`` of pyramid level ``level`` (default v3 "/" chunk key encoding)."""
    return store / str(level) / "c" / "0" / str(row) / str(col)


def done_path(store: Path, brow: int, bcol: int) -> Path:
    return store / DONE_ARRAY / "c" / str(brow) / str(bcol)


@dataclass(frozen=True)
class RawChunks:
    """Decoded RGB bytes, blosc-compressed or not (lossless; decoded tissue barely compresses)."""

    compressor: Compressor = "none"
    clevel: int = 1

    def zarr_codecs(self) -> list[Any]:
        """The inner-chunk codecs after the transpose to interleaved RGB."""
        codecs: list[Any] = [BytesCodec()]
        if self.compressor != "none":
            # bit-shuffled bytes: on real tissue (CMU-1, zstd level 1) 0.59 of raw against 0.62 unshuffled, and faster
            codecs.append(BloscCodec(cname=self.compressor, clevel=self.clevel, shuffle="bitshuffle", typesize=1,
                                     blocksize=0))
        return codecs

    def encode(self, px: np.ndarray) -> bytes | memoryview:
        """One full ``(tile, tile, 3)`` chunk's bytes (uncompressed: a view of ``px``, no copy)."""
        data = np.ascontiguousarray(px)
        # ndarray is a buffer, but numpy's stubs only say so (__buffer__) for Python >= 3.12, and imagecodecs' stubs
        # list bytes | bytearray | mmap where any buffer is accepted
        if self.compressor == "none":
            return memoryview(data).cast("B")  # type: ignore[arg-type]
        return bytes(imagecodecs.blosc_encode(data,  # type: ignore[arg-type]
                                              level=self.clevel, compressor=self.compressor, shuffle=2,
                                              typesize=1, numthreads=1))

    def decode(self, raw: bytes | memoryview, *, tile: int) -> np.ndarray:
        # imagecodecs takes any buffer (memoryview too); its stubs say bytes | bytearray | mmap
        data = raw if self.compressor == "none" else imagecodecs.blosc_decode(raw)  # type: ignore[arg-type]
        return np.frombuffer(data, np.uint8).reshape(tile, tile, 3)


@dataclass(frozen=True)
class JpegChunks:
    """JPEG streams: a grid of copied slide tiles (``tile_shape``, (height, width)) or one encoded stream."""

    tile_shape: tuple[int, int] | None = None  # None: one stream per chunk
    colorspace: str | None = None  # what copied streams hold when their markers do not say it
    quality: int = 90  # for chunks encoded here

    def zarr_codecs(self) -> list[Any]:
        return [JpegTilesCodec(tile_shape=self.tile_shape, colorspace=self.colorspace, quality=self.quality)]

    def encode(self, px: np.ndarray) -> bytes:
        """Encode one full ``(tile, tile, 3)`` chunk (all-white sub-tiles are stored as absent: exact fill)."""
        return encode_jpeg_chunk(px, tile_shape=self.tile_shape or px.shape[:2], quality=self.quality, fill=FILL)

    def decode(self, raw: bytes | memoryview, *, tile: int) -> np.ndarray:
        return decode_jpeg_chunk(raw, shape=(tile, tile), tile_shape=self.tile_shape or (tile, tile),
                                 colorspace=self.colorspace, fill=FILL)


ChunkCodec = RawChunks | JpegChunks


@dataclass(frozen=True)
class StoreLevel:
    """One output pyramid level as the tasks write it."""

    shape: tuple[int, int]  # (height, width)
    factor: int  # level-"0" pixels per pixel of this level
    copy_from: int | None  # slide level whose stored JPEG tiles are copied; None = computed pixels
    codec: ChunkCodec
    per_side: int  # chunks per shard side


def create_image_array(group: zarr.Group, name: str, *, shape: tuple[int, int], tile: int, shard: int,
                       codec: ChunkCodec) -> zarr.Array:
    """An empty (c, y, x) uint8 level: ``shard x shard`` files of ``tile x tile`` chunks holding interleaved RGB."""
    inner: list[Any] = [TransposeCodec(order=(1, 2, 0)), *codec.zarr_codecs()]
    sharding = ShardingCodec(chunk_shape=(3, tile, tile), codecs=inner, index_codecs=[BytesCodec()],
                             index_location="end")
    return group.create_array(name, shape=(3, *shape), chunks=(3, shard, shard), dtype="uint8", fill_value=FILL,
                              serializer=sharding, compressors=None, filters=None, dimension_names=("c", "y", "x"))


Chunk = bytes | memoryview | list[bytes]  # one chunk's bytes, possibly as parts written back to back


def encode_shard(chunks: Mapping[tuple[int, int], Chunk], *, per_side: int) -> list[bytes | memoryview]:
    """A ``sharding_indexed`` shard as buffers to write in order: inner chunks, then the (offset, nbytes) index."""
    index = np.full((per_side, per_side, 2), _EMPTY, np.uint64)
    parts: list[bytes | memoryview] = []
    offset = 0
    for (r, c), data in sorted(chunks.items()):
        pieces = data if isinstance(data, list) else [data]
        n = sum(memoryview(p).nbytes for p in pieces)
        index[r, c] = (offset, n)
        parts.extend(pieces)
        offset += n
    parts.append(index.astype("<u8").tobytes())
    return parts


def shard_index(raw: bytes, *, per_side: int) -> np.ndarray:
    """(per_side, per_side, 2) uint64 (offset, nbytes) of each inner chunk; all-ones marks an absent chunk."""
    n = per_side * per_side * 16
    return np.frombuffer(raw[-n:], "<u8").reshape(per_side, per_side, 2)


def read_shard(path: Path, *, per_side: int, tile: int, codec: ChunkCodec) -> dict[tuple[int, int], np.ndarray]:
    """The chunks present in a shard file (empty when the shard was never written)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}
    index = shard_index(raw, per_side=per_side)
    out = {}
    for r in range(per_side):
        for c in range(per_side):
            off, nbytes = (int(v) for v in index[r, c])
            if off != int(_EMPTY):
                out[(r, c)] = codec.decode(memoryview(raw)[off:off + nbytes], tile=tile)
    return out


def written_chunks(store: Path, level: int) -> set[tuple[int, int]]:
    """Global (row, col) of every chunk present at ``level`` (reads the shard indexes only)."""
    meta = json.loads((store / str(level) / "zarr.json").read_text())
    tile = meta["codecs"][0]["configuration"]["chunk_shape"][1]
    per_side = meta["chunk_grid"]["configuration"]["chunk_shape"][1] // tile
    out = set()
    for p in (store / str(level) / "c" / "0").glob("*/*"):
        if p.name.startswith("."):
            continue
        index = shard_index(p.read_bytes(), per_side=per_side)
        for r, c in zip(*np.nonzero(index[:, :, 0] != _EMPTY)):
            out.add((int(p.parent.name) * per_side + int(r), int(p.name) * per_side + int(c)))
    return out


def create_done_array(group: zarr.Group, *, block_grid: tuple[int, int]) -> zarr.Array:
    return group.create_array(DONE_ARRAY, shape=block_grid, chunks=(1, 1), dtype="uint8", fill_value=0,
                              compressors=None)


def encode_chunk(px: np.ndarray, *, tile: int, codec: ChunkCodec) -> bytes | memoryview:
    """Bytes of one chunk: ``px`` (the chunk's valid part) padded to ``tile x tile`` with white, then encoded."""
    h, w = px.shape[:2]
    if (h, w) != (tile, tile):
        full = np.full((tile, tile, 3), FILL, np.uint8)
        full[:h, :w] = px
        px = full
    return codec.encode(px)


def write_atomic(path: Path, data: bytes | list[bytes | memoryview]) -> None:
    """Write via a hidden temp file and ``os.replace``: a killed writer leaves the old file or none, never half."""
    tmp = path.parent / f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial"
    parts = [data] if isinstance(data, bytes) else data
    try:
        fh = open(tmp, "wb")
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(tmp, "wb")
    with fh:
        fh.writelines(parts)
    os.replace(tmp, path)


def remove_partials(store: Path) -> int:
    """Delete temp files left by killed writers (ours and zarr's); returns how many."""
    n = 0
    for p in store.rglob("*.partial"):
        p.unlink(missing_ok=True)
        n += 1
    return n
