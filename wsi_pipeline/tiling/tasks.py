"""The tiling stage's Dask tasks: what runs inside the workers (slides and decoders are opened there, per thread).

Three kinds of task, each a small picklable dataclass (paths, plans, bool maps; never a Slide):

* :class:`BlockJob`: one ``block x block`` square of level-"0" chunks. It copies its tissue chunks' stored JPEG
  tiles (no decode), or decodes / resamples them, writes them as one shard, then its share of the next pyramid
  levels, and last its done marker; a re-run skips blocks whose marker exists.
* :class:`CopyJob`: one shard of a copied coarser level (again no pixels involved).
* :class:`ReduceJob`: one shard of a computed level, the 2x mean of the level before it.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SlideError
from .codec import jpeg_tiles_parts
from ..slide import Slide, TileDecoder, open_slide
from ..slide.tiles import TiffTileDecoder
from .plan import TilePlan, area_resample, reduce2, source_span
from .shards import (
    StoreLevel,
    FILL,
    Chunk,
    done_path,
    encode_chunk,
    encode_shard,
    read_shard,
    shard_path,
    write_atomic,
)

__all__ = ["BlockJob", "CopyJob", "ReduceJob", "run_task", "worker_decoder"]

_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"


@dataclass(frozen=True)
class BlockJob:
    """Level-"0" chunks ``[brow * block, (brow + 1) * block) x [bcol * block, ...)`` and their coarser share."""

    slide_path: str
    mpp_override: float | None
    store: str
    plan: TilePlan
    levels: tuple[StoreLevel, ...]  # "0" and the next levels this block writes (one shard each)
    brow: int
    bcol: int
    tissue: tuple[np.ndarray, ...]  # per written level: bool map of the block's chunks there


@dataclass(frozen=True)
class CopyJob:
    """One shard of a copied level beyond the blocks' share."""

    slide_path: str
    mpp_override: float | None
    store: str
    index: int  # pyramid level
    level: StoreLevel
    srow: int
    scol: int
    tissue: np.ndarray  # bool map of the shard's chunks
    tile: int


@dataclass(frozen=True)
class ReduceJob:
    """One shard of computed level ``index``: the 2x mean of level ``index - 1`` (``fine``)."""

    store: str
    index: int
    fine: StoreLevel
    level: StoreLevel
    srow: int
    scol: int
    tissue: np.ndarray  # bool map of the shard's chunks
    tile: int


def run_task(job: BlockJob | CopyJob | ReduceJob) -> int:
    """Run one task; returns how many chunks it wrote (for a block: at level "0")."""
    if isinstance(job, BlockJob):
        return _run_block(job)
    if isinstance(job, CopyJob):
        return _run_copy(job)
    return _run_reduce(job)


# -- per-thread caches ----------------------------------------------------------------------------------------
_local = threading.local()


def _worker_slide(path: str, mpp_override: float | None) -> Slide:
    """The slide opened once per worker thread (never pickled; openslide/tifffile handles stay local)."""
    cache: dict[tuple[str, float | None], Slide] = _local.__dict__.setdefault("slides", {})
    key = (path, mpp_override)
    slide = cache.get(key)
    if slide is None:
        slide = cache[key] = open_slide(path, mpp_override=mpp_override)
    return slide


def worker_decoder(slide: Slide, level: int) -> TileDecoder | None:
    """``slide.tile_decoder(level)``, else a decoder for the tiled TIFF page with exactly that level's size.

    The fallback is for SVS files whose reduced levels carry NewSubfileType 1 (wsi-pipeline's own exports and
    phantoms written before that was fixed, and any other writer doing the same): tifffile's SVS parser files
    such a page as the label, so the tifffile backend sees only level 0, while openslide still lists the level
    and remains the reference for the geometry. Aperio's own files (type 0) never need it.
    """
    cache: dict[tuple[str, int], TileDecoder | None] = _local.__dict__.setdefault("decoders", {})
    key = (str(slide.path), level)
    if key in cache:
        return cache[key]
    dec = slide.tile_decoder(level)
    if dec is None and slide.vendor in ("aperio", "generic-tiff"):
        dec = _page_decoder(slide.path, level, slide.level_dimensions[level])
    cache[key] = dec
    return dec


def _page_decoder(path: Path, level: int, size: tuple[int, int]) -> TileDecoder | None:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                if isinstance(page, tifffile.TiffPage) and page.is_tiled \
                        and (page.imagewidth, page.imagelength) == tuple(size):
                    return TiffTileDecoder.from_page(path, page, level)
    except (tifffile.TiffFileError, OSError, ValueError):
        return None
    return None


# -- block and copy tasks ---------------------------------------------------------------------------------------
def _run_block(job: BlockJob) -> int:
    """Write a block's tissue chunks and its share of the pyramid, then its done marker."""
    store = Path(job.store)
    slide = _worker_slide(job.slide_path, job.mpp_override)
    if job.levels[0].copy_from is not None:
        counts = [_write_encoded(store, k, _copy_chunks(_copy_decoder(slide, lv), tissue,
                                                        origin=(job.brow * lv.per_side, job.bcol * lv.per_side),
                                                        shape=lv.shape, tile=job.plan.tile),
                                 srow=job.brow, scol=job.bcol, per_side=lv.per_side)
                  for k, (lv, tissue) in enumerate(zip(job.levels, job.tissue))]
        n_written = counts[0]
    else:
        n_written = _decode_block(job, slide, store)
    write_atomic(done_path(store, job.brow, job.bcol), b"\x01")  # last: the block is complete
    return n_written


def _run_copy(job: CopyJob) -> int:
    lv = job.level
    dec = _copy_decoder(_worker_slide(job.slide_path, job.mpp_override), lv)
    chunks = _copy_chunks(dec, job.tissue, origin=(job.srow * lv.per_side, job.scol * lv.per_side), shape=lv.shape,
                          tile=job.tile)
    return _write_encoded(Path(job.store), job.index, chunks, srow=job.srow, scol=job.scol, per_side=lv.per_side)


# -- copied levels: stored JPEG tiles straight into chunks -----------------------------------------------------
def _copy_decoder(slide: Slide, level: StoreLevel) -> TiffTileDecoder:
    assert level.copy_from is not None
    dec = worker_decoder(slide, level.copy_from)
    if not isinstance(dec, TiffTileDecoder) or not dec.copyable_jpeg:  # the driver checked this: the file changed
        raise SlideError(slide.path, f"level {level.copy_from}: stored tiles are no longer copyable JPEG")
    return dec


def _copy_chunks(dec: TiffTileDecoder, tissue: np.ndarray, *, origin: tuple[int, int], shape: tuple[int, int],
                 tile: int) -> dict[tuple[int, int], list[bytes]]:
    """The ``tissue`` chunks (indices relative to chunk ``origin``) as grids of the level's stored JPEG tiles.

    The level's tile grid starts at the chunk grid's origin and ``tile`` is a multiple of the stored tile, so a
    chunk is exactly ``rows x cols`` stored tiles; tiles beyond the level's last one are absent (white).
    """
    g = dec.grid
    ky, kx = tile // g.tile_height, tile // g.tile_width
    rows, cols = -(-shape[0] // tile), -(-shape[1] // tile)
    out = {}
    for r, c in zip(*np.nonzero(tissue)):
        R, C = origin[0] + int(r), origin[1] + int(c)
        if R >= rows or C >= cols:
            continue
        streams = []
        for i in range(ky):
            for j in range(kx):
                tr, tc = R * ky + i, C * kx + j
                streams.append(_jpeg_tile(dec, tr, tc) if tr < g.rows and tc < g.columns else b"")
        out[(int(r), int(c))] = jpeg_tiles_parts(streams)  # written as they are: no join
    return out


def _jpeg_tile(dec: TiffTileDecoder, row: int, col: int) -> bytes:
    """A stored tile's standalone JPEG stream; a damaged one fails here, not when someone reads the store."""
    raw = dec.read_raw(row, col)
    if raw and not (raw.startswith(_SOI) and raw[-16:].rstrip(b"\x00").endswith(_EOI)):
        raise SlideError(dec.path, f"level {dec.grid.level} tile ({row}, {col}): not a complete JPEG stream "
                                   f"({len(raw)} bytes)")
    return raw


def _write_encoded(store: Path, level: int, chunks: Mapping[tuple[int, int], Chunk], *, srow: int,
                   scol: int, per_side: int) -> int:
    """Write encoded chunks as one shard file (nothing when there are none)."""
    if chunks:
        write_atomic(shard_path(store, level, srow, scol), encode_shard(chunks, per_side=per_side))
    return len(chunks)


# -- computed levels: decoded (resampled) pixels and 2x means ---------------------------------------------------
def _decode_block(job: BlockJob, slide: Slide, store: Path) -> int:
    """Decode (resample) the block's tissue chunks, write them, then reduce and write its next levels.

    The block lives as a dict of its *tissue* chunks, each a contiguous ``(tile, tile, 3)`` slot of a per-thread
    arena laid out like the stored chunks: decoded tiles are copied once into their slots, the shard is written
    straight from the slots, and each pyramid level reduces only tissue chunks (the rest is known to be white).
    """
    plan, t, b = job.plan, job.plan.tile, job.plan.block
    oy0, ox0 = job.brow * b * t, job.bcol * b * t
    oh, ow = min(b * t, plan.height - oy0), min(b * t, plan.width - ox0)
    dec = None if plan.resampled else worker_decoder(slide, plan.level)
    arena = _arena(0, b, t)
    if dec is not None:
        chunks = _decode_chunks(dec, arena, job.tissue[0], origin=(oy0, ox0), size=(oh, ow), tile=t)
    else:
        chunks = _split_chunks(_block_image(job, slide, oy0, ox0, oh, ow), job.tissue[0], arena, tile=t)
    n_written = _write_chunks(store, 0, chunks, srow=job.brow, scol=job.bcol, level=job.levels[0])
    size = (oh, ow)
    for k in range(1, len(job.levels)):
        chunks, size = _reduce_chunks(chunks, size, job.tissue[k], _arena(k, b >> k, t), tile=t)
        _write_chunks(store, k, chunks, srow=job.brow, scol=job.bcol, level=job.levels[k])
    return n_written


def _block_image(job: BlockJob, slide: Slide, oy0: int, ox0: int, oh: int, ow: int) -> np.ndarray:
    """The block's ``(oh, ow)`` output pixels (tissue chunks valid) via resampling or ``read_region``."""
    plan, t = job.plan, job.plan.tile
    tissue = job.tissue[0]
    rows, cols = tissue.shape
    chunk_boxes = [(r * t, c * t, min((r + 1) * t, oh), min((c + 1) * t, ow))
                   for r in range(rows) for c in range(cols) if tissue[r, c]]
    if not plan.resampled:
        return _read_level(slide, plan, oy0, ox0, oh, ow, chunk_boxes, disjoint=True)
    lw, lh = plan.level_size
    sy0, sy1 = source_span(oy0, oy0 + oh, scale=plan.scale, limit=lh)
    sx0, sx1 = source_span(ox0, ox0 + ow, scale=plan.scale, limit=lw)
    needed = []
    for y0, x0, y1, x1 in chunk_boxes:
        a0, a1 = source_span(oy0 + y0, oy0 + y1, scale=plan.scale, limit=lh)
        c0, c1 = source_span(ox0 + x0, ox0 + x1, scale=plan.scale, limit=lw)
        needed.append((a0 - sy0, c0 - sx0, a1 - sy0, c1 - sx0))
    src = _read_level(slide, plan, sy0, sx0, sy1 - sy0, sx1 - sx0, needed)
    return area_resample(src, src_origin=(sy0, sx0), out_origin=(oy0, ox0), out_shape=(oh, ow),
                         scale=plan.scale, src_limit=(lh, lw))


def _arena(level: int, per_side: int, tile: int) -> np.ndarray:
    """This thread's reusable ``(per_side, per_side, tile, tile, 3)`` chunk slots for one block level.

    Reused across blocks: allocating (and page-faulting) a block's worth of fresh memory per task costs a
    noticeable share of the decode. Shard writes are synchronous, so a slot is free again once written.
    """
    arenas: dict[int, np.ndarray] = _local.__dict__.setdefault("arenas", {})
    shape = (per_side, per_side, tile, tile, 3)
    buf = arenas.get(level)
    if buf is None or buf.shape != shape:
        buf = arenas[level] = np.empty(shape, np.uint8)
    return buf


def _slot(arena: np.ndarray, r: int, c: int, valid: tuple[int, int]) -> np.ndarray:
    """Chunk slot ``(r, c)``; the part beyond ``valid`` (h, w) (the image edge) is white, as zarr pads it."""
    slot = arena[r, c]
    vh, vw = valid
    if vh < slot.shape[0]:
        slot[vh:] = FILL
    if vw < slot.shape[1]:
        slot[:vh, vw:] = FILL
    return slot


def _decode_chunks(dec: TileDecoder, arena: np.ndarray, tissue: np.ndarray, *, origin: tuple[int, int],
                   size: tuple[int, int], tile: int) -> dict[tuple[int, int], np.ndarray]:
    """The block's tissue chunks, decoded from the stored tiles they overlap (each tile once, in file order)."""
    g, t = dec.grid, tile
    oy0, ox0 = origin
    oh, ow = size
    chunks: dict[tuple[int, int], np.ndarray] = {}
    targets: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for r, c in zip(*np.nonzero(tissue)):
        r, c = int(r), int(c)
        vh, vw = min(t, oh - r * t), min(t, ow - c * t)
        chunks[(r, c)] = _slot(arena, r, c, (vh, vw))
        y0, x0 = oy0 + r * t, ox0 + c * t
        for tr in range(y0 // g.tile_height, (y0 + vh - 1) // g.tile_height + 1):
            for tc in range(x0 // g.tile_width, (x0 + vw - 1) // g.tile_width + 1):
                targets.setdefault((tr, tc), []).append((r, c))
    exact = (g.tile_height, g.tile_width) == (t, t)  # stored tile == chunk: decode straight into the slot
    buf = _tile_buffer(g.tile_height, g.tile_width)
    for (tr, tc), owners in sorted(targets.items()):  # row-major = file order for the usual tile layout
        ty, tx = tr * g.tile_height, tc * g.tile_width
        if exact and (ty - oy0, tx - ox0) == (owners[0][0] * t, owners[0][1] * t):
            r, c = owners[0]
            slot = chunks[(r, c)]
            vh, vw = min(t, oh - r * t), min(t, ow - c * t)
            _decode_into(dec, tr, tc, slot)
            _slot(arena, r, c, (vh, vw))  # re-whiten what the tile holds beyond the image edge
            continue
        px = _decode_into(dec, tr, tc, buf)  # one reused buffer, then one copy per owning chunk
        for r, c in owners:
            cy0, cx0 = oy0 + r * t, ox0 + c * t
            a0, a1 = max(ty, cy0), min(ty + g.tile_height, cy0 + t, oy0 + oh)
            b0, b1 = max(tx, cx0), min(tx + g.tile_width, cx0 + t, ox0 + ow)
            chunks[(r, c)][a0 - cy0:a1 - cy0, b0 - cx0:b1 - cx0] = px[a0 - ty:a1 - ty, b0 - tx:b1 - tx]
    return chunks


def _split_chunks(img: np.ndarray, tissue: np.ndarray, arena: np.ndarray, *,
                  tile: int) -> dict[tuple[int, int], np.ndarray]:
    """The tissue chunks of a block image, copied into arena slots (padded white at the image edge)."""
    t = tile
    h, w = img.shape[:2]
    chunks = {}
    for r, c in zip(*np.nonzero(tissue)):
        r, c = int(r), int(c)
        vh, vw = min(t, h - r * t), min(t, w - c * t)
        if vh <= 0 or vw <= 0:
            continue
        slot = chunks[(r, c)] = _slot(arena, r, c, (vh, vw))
        slot[:vh, :vw] = img[r * t:r * t + vh, c * t:c * t + vw]
    return chunks


def _reduce_chunks(chunks: dict[tuple[int, int], np.ndarray], size: tuple[int, int], tissue: np.ndarray,
                   arena: np.ndarray, *, tile: int) -> tuple[dict[tuple[int, int], np.ndarray], tuple[int, int]]:
    """The next pyramid level's tissue chunks (2x2 mean) and block size, from this level's chunks.

    Equals ``reduce2`` of the whole block image with white outside the tissue chunks: chunk origins are even
    (for an even tile), so every 2x2 box lies in one chunk; a chunk without tissue reduces to white, so only
    tissue chunks are reduced. An odd tile breaks that alignment: then the block image is reduced whole.
    """
    t = tile
    h, w = size
    nh, nw = -(-h // 2), -(-w // 2)
    if t % 2:
        img = np.full((h, w, 3), FILL, np.uint8)
        for (r, c), px in chunks.items():
            img[r * t:(r + 1) * t, c * t:(c + 1) * t] = px[:min(t, h - r * t), :min(t, w - c * t)]
        return _split_chunks(reduce2(img), tissue, arena, tile=t), (nh, nw)
    half = t // 2
    out = {}
    for R, C in zip(*np.nonzero(tissue)):
        R, C = int(R), int(C)
        vh, vw = min(t, nh - R * t), min(t, nw - C * t)
        if vh <= 0 or vw <= 0:
            continue
        slot = out[(R, C)] = _slot(arena, R, C, (vh, vw))
        for dy in (0, 1):
            for dx in (0, 1):
                r, c = 2 * R + dy, 2 * C + dx
                sh, sw = min(t, h - r * t), min(t, w - c * t)  # valid source pixels of chunk (r, c)
                if sh <= 0 or sw <= 0:
                    continue
                q = slot[dy * half:dy * half + (sh + 1) // 2, dx * half:dx * half + (sw + 1) // 2]
                src = chunks.get((r, c))
                if src is None:
                    q[...] = FILL
                else:
                    reduce2(src[:sh, :sw], out=q)
    return out, (nh, nw)

def _write_chunks(store: Path, index: int, chunks: dict[tuple[int, int], np.ndarray], *, srow: int, scol: int,
                  level: StoreLevel) -> int:
    """Encode full ``(tile, tile, 3)`` chunk slots and write them as one shard (uncompressed: straight from the
    slots)."""
    return _write_encoded(store, index, {k: level.codec.encode(px) for k, px in chunks.items()}, srow=srow,
                          scol=scol, per_side=level.per_side)


def _run_reduce(job: ReduceJob) -> int:
    """Reduce (2 rows x 2 cols) of level ``index - 1`` chunks into each tissue chunk of one level-``index`` shard."""
    t, store, per_side = job.tile, Path(job.store), job.level.per_side
    ph, pw = job.fine.shape
    r0, c0 = job.srow * per_side, job.scol * per_side
    r1, c1 = r0 + job.tissue.shape[0], c0 + job.tissue.shape[1]
    y0, x0 = 2 * r0 * t, 2 * c0 * t
    y1, x1 = min(2 * r1 * t, ph), min(2 * c1 * t, pw)
    src = np.full((y1 - y0, x1 - x0, 3), FILL, np.uint8)
    fine = job.fine.per_side
    for sr in range(2 * r0 // fine, (2 * r1 - 1) // fine + 1):
        for sc in range(2 * c0 // fine, (2 * c1 - 1) // fine + 1):
            chunks = read_shard(shard_path(store, job.index - 1, sr, sc), per_side=fine, tile=t, codec=job.fine.codec)
            for (r, c), px in chunks.items():
                gy, gx = (sr * fine + r) * t - y0, (sc * fine + c) * t - x0
                if 0 <= gy < y1 - y0 and 0 <= gx < x1 - x0:
                    h, w = min(t, y1 - y0 - gy), min(t, x1 - x0 - gx)
                    src[gy:gy + h, gx:gx + w] = px[:h, :w]
    img = reduce2(src)
    chunks_out = {}
    h, w = img.shape[:2]
    for r in range(min(job.tissue.shape[0], -(-h // t))):
        for c in range(min(job.tissue.shape[1], -(-w // t))):
            if job.tissue[r, c]:
                chunks_out[(r, c)] = encode_chunk(img[r * t:(r + 1) * t, c * t:(c + 1) * t], tile=t,
                                                  codec=job.level.codec)
    return _write_encoded(store, job.index, chunks_out, srow=job.srow, scol=job.scol, per_side=per_side)


def _read_level(slide: Slide, plan: TilePlan, y0: int, x0: int, h: int, w: int,
                needed: list[tuple[int, int, int, int]], *, disjoint: bool = False) -> np.ndarray:
    """Pixels ``[y0, y0+h) x [x0, x0+w)`` of the plan's level; only the ``needed`` boxes (relative) are read."""
    dec = worker_decoder(slide, plan.level)
    covered = disjoint and sum((by1 - by0) * (bx1 - bx0) for by0, bx0, by1, bx1 in needed) == h * w
    # stored tiles tile the whole level: when the needed boxes cover the window, every pixel gets painted
    out = np.empty((h, w, 3), np.uint8) if covered and dec is not None else np.full((h, w, 3), 255, np.uint8)
    if not needed:
        return out
    if dec is None:
        d = plan.level_downsample
        for by0, bx0, by1, bx1 in needed:
            loc = (round((x0 + bx0) * d), round((y0 + by0) * d))
            out[by0:by1, bx0:bx1] = slide.read_region(loc, plan.level, (bx1 - bx0, by1 - by0))
        return out
    g = dec.grid
    tiles: set[tuple[int, int]] = set()
    for by0, bx0, by1, bx1 in needed:
        for tr in range((y0 + by0) // g.tile_height, (y0 + by1 - 1) // g.tile_height + 1):
            for tc in range((x0 + bx0) // g.tile_width, (x0 + bx1 - 1) // g.tile_width + 1):
                tiles.add((tr, tc))
    # decode each tile into one reused per-thread buffer, then one copy into place (the codec needs a contiguous
    # target; a fresh array per tile costs a third of the decode in allocation and page faults)
    buf = _tile_buffer(g.tile_height, g.tile_width)
    for tr, tc in sorted(tiles):  # row-major = file order for the usual tile layout
        ty, tx = tr * g.tile_height, tc * g.tile_width
        a0, a1 = max(ty, y0), min(ty + g.tile_height, y0 + h, g.height)
        b0, b1 = max(tx, x0), min(tx + g.tile_width, x0 + w, g.width)
        if a1 > a0 and b1 > b0:
            px = _decode_into(dec, tr, tc, buf)
            out[a0 - y0:a1 - y0, b0 - x0:b1 - x0] = px[a0 - ty:a1 - ty, b0 - tx:b1 - tx]
    return out


def _decode_into(dec: TileDecoder, row: int, col: int, buf: np.ndarray) -> np.ndarray:
    """Stored tile ``(row, col)`` decoded into ``buf`` (C-contiguous, the stored tile's shape); returns ``buf``."""
    raw = dec.read_raw(row, col)
    if isinstance(dec, TiffTileDecoder):  # the codec writes into buf: no per-tile array
        return dec.decode(raw, out=buf)
    buf[...] = dec.decode(raw)  # any other TileDecoder: plain protocol
    return buf


def _tile_buffer(th: int, tw: int) -> np.ndarray:
    """This thread's scratch tile (decode target), reused across blocks."""
    buf = getattr(_local, "tile_buffer", None)
    if buf is None or buf.shape != (th, tw, 3):
        buf = _local.tile_buffer = np.empty((th, tw, 3), np.uint8)
    return buf
