"""Tile a slide's tissue into a zarr v3 store at a target resolution: resumable Dask stage at the JPEG-decode floor.

    >>> from wsi_pipeline.tiling import TileConfig, tile_slide
    >>> res = tile_slide("slide.svs", "slide.zarr", config=TileConfig(mpp=1.0, tile=512))  # doctest: +SKIP
    >>> res.chunks_written, res.chunks_total  # doctest: +SKIP

The image is read from the pyramid level closest to (not coarser than) the target MPP; when that level matches
the target the stored pixels are copied exactly, otherwise they are area-resampled. Work is cut into *blocks* of
``block x block`` chunks (one Dask task each, a few MPix); a block decodes the stored JPEG tiles its tissue chunks
need (each once, straight from the file with imagecodecs), writes its tissue chunks, its share of the pyramid and,
last, its done marker. A re-run skips blocks whose marker exists, so a killed run resumes and the finished store is
byte-identical to an uninterrupted one. Layout: :mod:`wsi_pipeline.tiling_store`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from pydantic import Field
from shapely.geometry import MultiPolygon, mapping

from . import __version__
from .config import FrozenConfig
from .errors import NoTissueError, SlideError, StoreError
from .slide import Slide, TileDecoder, open_slide
from .slide.tiles import TiffTileDecoder
from .tiling_core import (
    TilePlan,
    area_resample,
    chunk_tissue_map,
    plan_tiling,
    pool_any2,
    reduce2,
    source_span,
)
from .tiling_store import (
    DONE_ARRAY,
    FILL,
    MASK_ARRAY,
    Compressor,
    create_done_array,
    create_image_array,
    done_path,
    encode_chunk,
    encode_shard,
    ngff_multiscales,
    read_shard,
    remove_partials,
    shard_path,
    write_atomic,
)
from .tissue import TissueResult, detect_tissue

__all__ = ["TileConfig", "TileResult", "tile_slide", "read_store_info", "STORE_FORMAT"]

STORE_FORMAT = 1


class TileConfig(FrozenConfig):
    """Tiling settings; their digest is stored so a store written with other settings is never mixed in."""

    mpp: float | None = Field(default=None, gt=0, description="target um/px; None = the slide's level 0")
    tile: int = Field(default=512, ge=16, le=8192, description="chunk edge in output pixels")
    task_px: int = Field(default=2048, ge=16, description="edge of one Dask task's block in source pixels")
    compressor: Compressor = "none"  # decoded tissue barely compresses (lz4 ~1.0, zstd ~0.9)
    clevel: int = Field(default=1, ge=0, le=9)
    thumbnail_px: int = Field(default=1024, ge=64, description="longest side of the tissue-detection thumbnail")
    min_tissue_um2: float = Field(default=20_000.0, ge=0)
    pyramid: bool = True


@dataclass(frozen=True)
class TileResult:
    """What one ``tile_slide`` call did (``blocks_skipped`` were finished by an earlier, interrupted run)."""

    store_path: Path
    shape: tuple[int, int]  # (height, width) of level "0"
    level: int
    scale: float
    mpp: float | None
    chunks_total: int
    chunks_tissue: int
    chunks_written: int
    blocks_total: int
    blocks_skipped: int
    blocks_run: int
    seconds: float
    already_complete: bool = False


@dataclass(frozen=True)
class _BlockJob:
    """One Dask task: small and picklable (paths, plan, a bool map), never a Slide."""

    slide_path: str
    mpp_override: float | None
    store: str
    plan: TilePlan
    brow: int
    bcol: int
    tissue: np.ndarray  # bool (rows, cols) of this block's level-0 chunks
    compressor: Compressor
    clevel: int
    levels: int  # pyramid levels this block writes beyond "0"


@dataclass(frozen=True)
class _PyramidJob:
    """Build chunks of pyramid level ``level`` from level ``level - 1`` (levels above the blocks' share)."""

    store: str
    level: int
    rows: tuple[int, int]
    cols: tuple[int, int]
    tissue: np.ndarray  # bool map of this job's chunks at ``level`` (= one shard)
    shapes: tuple[tuple[int, int], ...]
    shard_chunks: tuple[int, ...]  # chunks per shard side, per level
    tile: int
    compressor: Compressor
    clevel: int


def tile_slide(
    slide_path: str | os.PathLike[str],
    store_path: str | os.PathLike[str],
    *,
    config: TileConfig,
    client: Any = None,
    workers: int | None = None,
    mpp_override: float | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> TileResult:
    """Tile ``slide_path``'s tissue into the zarr v3 group ``store_path``; resumes an interrupted run.

    ``client``: a ``dask.distributed.Client`` to run on; otherwise Dask's threaded scheduler with ``workers``
    threads (default: all cores). Raises ``NoTissueError`` when no tissue is found (nothing is written) and
    ``StoreError`` when ``store_path`` holds a store written with other settings (unless ``overwrite``).
    """
    t0 = time.perf_counter()
    slide_path, store = Path(slide_path).resolve(), Path(store_path)
    with open_slide(slide_path, mpp_override=mpp_override) as slide:
        mpp0 = _mean_mpp(slide)
        try:
            plan = plan_tiling(slide.level_dimensions, slide.level_downsamples, mpp0, target_mpp=config.mpp,
                               tile=config.tile, task_px=config.task_px)
        except ValueError as exc:
            raise SlideError(slide_path, f"cannot tile at mpp={config.mpp}: {exc}") from None
        source = _source_record(slide, slide_path, mpp_override)
        tissue, thumb_ds = _detect(slide, config=config, mpp0=mpp0)
    if tissue.is_empty:
        raise NoTissueError(f"{slide_path}: no tissue detected (optical-density threshold {tissue.threshold:.3f} "
                            f"on a {tissue.mask.shape[1]}x{tissue.mask.shape[0]} thumbnail)")
    chunk_map = chunk_tissue_map(tissue.mask, mask_downsample=thumb_ds, plan=plan)
    settings = {"format": STORE_FORMAT, "config": config.to_dict(), "mpp_override": mpp_override,
                "source": {"path": str(slide_path), "size": slide_path.stat().st_size}}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()

    state = _open_or_create(store, digest=digest, overwrite=overwrite, create=lambda tmp: _create_store(
        tmp, plan=plan, config=config, tissue=tissue, digest=digest, settings=settings, source=source,
        mpp0=mpp0, chunk_map=chunk_map))
    out_mpp = mpp0 * plan.downsample0 if mpp0 is not None else None
    block_maps = _block_maps(chunk_map, plan)
    if state == "complete":
        return TileResult(store, (plan.height, plan.width), plan.level, plan.scale, out_mpp, chunk_map.size,
                          int(chunk_map.sum()), 0, len(block_maps), len(block_maps), 0,
                          time.perf_counter() - t0, already_complete=True)

    remove_partials(store)
    levels = plan.block_levels if config.pyramid else 0
    todo = [(br, bc, m) for (br, bc), m in block_maps.items() if not done_path(store, br, bc).exists()]
    jobs = [_BlockJob(str(slide_path), mpp_override, str(store), plan, br, bc, m, config.compressor,
                      config.clevel, levels) for br, bc, m in todo]
    shapes = plan.shapes if config.pyramid else plan.shapes[:1]
    shards = _shard_chunks(plan, config)
    stages: list[list[Any]] = [jobs] + _pyramid_stages(store, plan, chunk_map, config, shapes, levels, shards)
    n_tasks = sum(len(s) for s in stages)
    written = 0
    with _progress_bar(n_tasks, progress, desc=f"tile {slide_path.name}") as bar:
        for k, stage in enumerate(stages):
            fn = _run_block if k == 0 else _run_pyramid
            counts = _run_tasks(fn, stage, client=client, workers=workers, on_done=bar)
            if k == 0:
                written = sum(counts)

    group = zarr.open_group(store, mode="r+")
    meta = dict(group.attrs["wsi_pipeline"])
    meta["complete"] = True  # written last: readers trust the store only from here on
    group.attrs["wsi_pipeline"] = meta
    return TileResult(store, (plan.height, plan.width), plan.level, plan.scale, out_mpp, chunk_map.size,
                      int(chunk_map.sum()), written, len(block_maps), len(block_maps) - len(todo), len(todo),
                      time.perf_counter() - t0)


def read_store_info(store_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``wsi_pipeline`` attributes of a tiled store; ``StoreError`` if it is not one or is unfinished."""
    store = Path(store_path)
    try:
        group = zarr.open_group(store, mode="r")
        meta = dict(group.attrs["wsi_pipeline"])
    except (FileNotFoundError, KeyError, ValueError, zarr.errors.NodeTypeValidationError) as exc:
        raise StoreError(f"{store}: not a wsi-pipeline tiled store ({type(exc).__name__}: {exc})") from None
    if not meta.get("complete"):
        raise StoreError(f"{store}: tiling did not finish (re-run `wsi-pipeline tile` to resume)")
    return meta


# -- driver-side helpers ----------------------------------------------------------------------------------
def _mean_mpp(slide: Slide) -> float | None:
    mpp = slide.mpp
    return None if mpp is None else (float(mpp[0]) + float(mpp[1])) / 2.0


def _source_record(slide: Slide, path: Path, mpp_override: float | None) -> dict[str, Any]:
    return {"path": str(path), "mpp": list(slide.mpp) if slide.mpp else None,
            "mpp_source": getattr(slide, "mpp_source", "override" if mpp_override else "file"),
            "vendor": slide.vendor, "level_dimensions": [list(d) for d in slide.level_dimensions],
            "level_downsamples": list(slide.level_downsamples),
            "bounds": list(slide.bounds) if slide.bounds else None}


def _detect(slide: Slide, *, config: TileConfig, mpp0: float | None) -> tuple[TissueResult, tuple[float, float]]:
    thumb = _thumbnail(slide, config.thumbnail_px)
    w0, h0 = slide.dimensions
    ds = (w0 / thumb.shape[1], h0 / thumb.shape[0])
    return detect_tissue(thumb, downsample=(ds[0] + ds[1]) / 2, mpp=mpp0, min_area_um2=config.min_tissue_um2), ds


def _thumbnail(slide: Slide, max_px: int) -> np.ndarray:
    """``slide.thumbnail(max_px)``, but decoding the source level's stored tiles directly (threads) when possible."""
    from PIL import Image

    w0, h0 = slide.dimensions
    scale = max(max(w0, h0) / max_px, 1.0)
    level = slide.best_level_for_downsample(scale)
    dec = _worker_decoder(slide, level)
    if dec is None:
        return slide.thumbnail(max_px)
    from concurrent.futures import ThreadPoolExecutor

    g = dec.grid
    rows = [[(r, c) for c in range(g.columns)] for r in range(g.rows)]
    img = np.empty((g.rows * g.tile_height, g.columns * g.tile_width, 3), np.uint8)

    def decode_row(row: list[tuple[int, int]]) -> None:
        for (r, c), px in zip(row, dec.read_tiles(row)):
            img[r * g.tile_height:(r + 1) * g.tile_height, c * g.tile_width:(c + 1) * g.tile_width] = px

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(decode_row, rows))
    region = img[:g.height, :g.width]
    tw, th = max(1, round(w0 / scale)), max(1, round(h0 / scale))
    if (tw, th) == (g.width, g.height):
        return np.ascontiguousarray(region)
    return np.asarray(Image.fromarray(region).resize((tw, th), Image.Resampling.BOX))


def _block_maps(chunk_map: np.ndarray, plan: TilePlan) -> dict[tuple[int, int], np.ndarray]:
    b = plan.block
    out = {}
    for br in range(plan.block_grid[0]):
        for bc in range(plan.block_grid[1]):
            m = chunk_map[br * b:(br + 1) * b, bc * b:(bc + 1) * b]
            if m.any():
                out[(br, bc)] = m.copy()
    return out


def _shard_chunks(plan: TilePlan, config: TileConfig) -> tuple[int, ...]:
    """Chunks per shard side for each level: a block's footprint where blocks write the level, else a post job's."""
    n = len(plan.shapes) if config.pyramid else 1
    levels = plan.block_levels if config.pyramid else 0
    post = max(1, config.task_px // config.tile // 2)  # a post job reads up to (2 post)^2 finer chunks
    return tuple(plan.block // 2**j if j <= levels else post for j in range(n))


def _pyramid_stages(store: Path, plan: TilePlan, chunk_map: np.ndarray, config: TileConfig,
                    shapes: tuple[tuple[int, int], ...], done_levels: int,
                    shards: tuple[int, ...]) -> list[list[_PyramidJob]]:
    maps = [chunk_map]
    for _ in range(1, len(shapes)):
        maps.append(pool_any2(maps[-1]))
    stages = []
    for level in range(done_levels + 1, len(shapes)):
        m, b = maps[level], shards[level]
        jobs = []
        for r0 in range(0, m.shape[0], b):
            for c0 in range(0, m.shape[1], b):
                sub = m[r0:r0 + b, c0:c0 + b]
                if sub.any():
                    jobs.append(_PyramidJob(str(store), level, (r0, r0 + sub.shape[0]), (c0, c0 + sub.shape[1]),
                                            sub.copy(), shapes, shards, plan.tile, config.compressor,
                                            config.clevel))
        stages.append(jobs)
    return stages


def _open_or_create(store: Path, *, digest: str, overwrite: bool, create: Callable[[Path], None]) -> str:
    """``"complete"``, ``"resume"`` or ``"new"``; a new store is built under a temp name, then renamed."""
    if store.exists():
        try:
            meta = dict(zarr.open_group(store, mode="r").attrs["wsi_pipeline"])
            found = meta.get("settings_digest")
        except Exception:  # not a zarr group or not ours
            found, meta = None, {}
        if found == digest and not overwrite:
            return "complete" if meta.get("complete") else "resume"
        if not overwrite:
            what = "another slide or other settings" if found else "something that is not a wsi-pipeline store"
            raise StoreError(f"{store}: holds {what} (settings digest {str(found)[:12]} != {digest[:12]}); "
                             "pass overwrite=True / --overwrite to replace it")
        shutil.rmtree(store) if store.is_dir() else store.unlink()
    tmp = store.with_name(f".{store.name}.creating-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    store.parent.mkdir(parents=True, exist_ok=True)
    create(tmp)
    os.replace(tmp, store)
    return "new"


def _create_store(tmp: Path, *, plan: TilePlan, config: TileConfig, tissue: TissueResult, digest: str,
                  settings: dict[str, Any], source: dict[str, Any], mpp0: float | None,
                  chunk_map: np.ndarray) -> None:
    group = zarr.open_group(tmp, mode="w", zarr_format=3)
    shapes = plan.shapes if config.pyramid else plan.shapes[:1]
    for i, (shape, per_side) in enumerate(zip(shapes, _shard_chunks(plan, config))):
        create_image_array(group, str(i), shape=shape, tile=plan.tile, shard=per_side * plan.tile,
                           compressor=config.compressor, clevel=config.clevel)
    create_done_array(group, block_grid=plan.block_grid)
    mask = group.create_array(MASK_ARRAY, shape=tissue.mask.shape, chunks=tissue.mask.shape, dtype="uint8",
                              fill_value=0)
    mask[:] = tissue.mask.astype(np.uint8)
    out_mpp = mpp0 * plan.downsample0 if mpp0 is not None else None
    polys = MultiPolygon(list(tissue.polygons_level0))
    group.attrs["ome"] = ngff_multiscales(name=Path(source["path"]).stem, shapes=shapes, mpp=out_mpp)
    group.attrs["wsi_pipeline"] = {
        "version": __version__,
        "settings_digest": digest,
        "settings": settings,
        "complete": False,
        "source": source,
        "geometry": {
            "origin_level0": [0.0, 0.0],  # level-0 (x, y) of output pixel (0, 0)'s top-left corner
            "scale_level0": [plan.downsample0, plan.downsample0],  # level-0 pixels per output pixel (x, y)
            "source_level": plan.level,
            "resampled": plan.resampled,
            "mpp": out_mpp,
            "shape": [plan.height, plan.width],
            "tile": plan.tile,
            "block": plan.block,
            "shard_chunks": list(_shard_chunks(plan, config)),
        },
        "tissue": {
            "mask_array": MASK_ARRAY,
            "mask_downsample_level0": tissue.downsample,
            "threshold_od": tissue.threshold,
            "area_level0_px": tissue.area_level0_px,
            "chunks": int(chunk_map.sum()),
            "polygons_level0": mapping(polys),
        },
        "done_array": DONE_ARRAY,
    }


def _run_tasks(fn: Callable[[Any], int], jobs: Sequence[Any], *, client: Any, workers: int | None,
               on_done: Callable[[], None]) -> list[int]:
    """Run ``fn(job)`` for each job as Dask tasks (threads, or a distributed ``client``)."""
    if not jobs:
        return []
    if client is not None:
        import dask
        from distributed import as_completed

        futures = client.compute([dask.delayed(fn, pure=False)(job) for job in jobs])
        results = {}
        for fut in as_completed(futures):
            results[fut.key] = fut.result()
            on_done()
        return [results[f.key] for f in futures]

    from dask.callbacks import Callback
    from dask.threaded import get as threaded_get

    class _Tick(Callback):  # type: ignore[misc]
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            on_done()

    # a plain task graph on the threaded scheduler: no per-call scheduler discovery (which imports distributed)
    name = f"{fn.__name__}-{id(jobs):x}"
    graph = {(name, i): (fn, job) for i, job in enumerate(jobs)}
    with _Tick():
        return list(threaded_get(graph, list(graph), num_workers=workers or os.cpu_count() or 1))


class _progress_bar:
    """tqdm bar that is also the per-task callback; silent when ``enabled`` is False."""

    def __init__(self, total: int, enabled: bool, *, desc: str) -> None:
        from tqdm.auto import tqdm

        self._bar = tqdm(total=total, disable=not enabled, desc=desc, unit="task")
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self._bar.update(1)

    def __enter__(self) -> _progress_bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()


# -- worker side: runs inside Dask tasks --------------------------------------------------------------------
_local = threading.local()


def _worker_slide(path: str, mpp_override: float | None) -> Slide:
    """The slide opened once per worker thread (never pickled; openslide/tifffile handles stay local)."""
    cache: dict[tuple[str, float | None], Slide] = _local.__dict__.setdefault("slides", {})
    key = (path, mpp_override)
    slide = cache.get(key)
    if slide is None:
        slide = cache[key] = open_slide(path, mpp_override=mpp_override)
    return slide


def _worker_decoder(slide: Slide, level: int) -> TileDecoder | None:
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

    from .slide.tiles import TiffTileDecoder

    try:
        with tifffile.TiffFile(path) as tif:
            for page in tif.pages:
                if page.is_tiled and (page.imagewidth, page.imagelength) == tuple(size):
                    return TiffTileDecoder.from_page(path, page, level)
    except (tifffile.TiffFileError, OSError, ValueError):
        return None
    return None


def _run_block(job: _BlockJob) -> int:
    """Decode, (resample,) write a block's tissue chunks and its pyramid share, then its done marker.

    The block lives as a dict of its *tissue* chunks, each a contiguous ``(tile, tile, 3)`` slot of a per-thread
    arena laid out like the stored chunks: decoded tiles are copied once into their slots, the shard is written
    straight from the slots, and each pyramid level reduces only tissue chunks (the rest is known to be white).
    """
    plan, t, b = job.plan, job.plan.tile, job.plan.block
    store = Path(job.store)
    oy0, ox0 = job.brow * b * t, job.bcol * b * t
    oh, ow = min(b * t, plan.height - oy0), min(b * t, plan.width - ox0)
    tissue = job.tissue
    slide = _worker_slide(job.slide_path, job.mpp_override)
    dec = None if plan.resampled else _worker_decoder(slide, plan.level)
    arena = _arena(0, b, t)
    if dec is not None:
        chunks = _decode_chunks(dec, arena, tissue, origin=(oy0, ox0), size=(oh, ow), tile=t)
    else:
        chunks = _split_chunks(_block_image(job, slide, oy0, ox0, oh, ow), tissue, arena, tile=t)
    n_written = _write_chunks(store, 0, chunks, srow=job.brow, scol=job.bcol, per_side=b, compressor=job.compressor,
                              clevel=job.clevel)
    size = (oh, ow)
    for level in range(1, job.levels + 1):
        tissue = pool_any2(tissue)
        chunks, size = _reduce_chunks(chunks, size, tissue, _arena(level, b >> level, t), tile=t)
        _write_chunks(store, level, chunks, srow=job.brow, scol=job.bcol, per_side=b >> level,
                      compressor=job.compressor, clevel=job.clevel)
    write_atomic(done_path(store, job.brow, job.bcol), b"\x01")  # last: the block is complete
    return n_written


def _block_image(job: _BlockJob, slide: Slide, oy0: int, ox0: int, oh: int, ow: int) -> np.ndarray:
    """The block's ``(oh, ow)`` output pixels (tissue chunks valid) via resampling or ``read_region``."""
    plan, t = job.plan, job.plan.tile
    rows, cols = job.tissue.shape
    chunk_boxes = [(r * t, c * t, min((r + 1) * t, oh), min((c + 1) * t, ow))
                   for r in range(rows) for c in range(cols) if job.tissue[r, c]]
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


def _write_chunks(store: Path, level: int, chunks: dict[tuple[int, int], np.ndarray], *, srow: int, scol: int,
                  per_side: int, compressor: Compressor, clevel: int) -> int:
    """Write full ``(tile, tile, 3)`` chunk slots as one shard file (uncompressed: straight from the slots)."""
    if not chunks:
        return 0
    t = next(iter(chunks.values())).shape[0]
    encoded = {k: encode_chunk(px, tile=t, compressor=compressor, clevel=clevel) for k, px in chunks.items()}
    write_atomic(shard_path(store, level, srow, scol), encode_shard(encoded, per_side=per_side))
    return len(encoded)


def _run_pyramid(job: _PyramidJob) -> int:
    """Reduce (2 rows x 2 cols) of level ``level - 1`` chunks into each tissue chunk of one ``level`` shard."""
    t, store = job.tile, Path(job.store)
    ph, pw = job.shapes[job.level - 1]
    r0, r1 = job.rows
    c0, c1 = job.cols
    y0, x0 = 2 * r0 * t, 2 * c0 * t
    y1, x1 = min(2 * r1 * t, ph), min(2 * c1 * t, pw)
    src = np.full((y1 - y0, x1 - x0, 3), 255, np.uint8)
    fine = job.shard_chunks[job.level - 1]
    for sr in range(2 * r0 // fine, (2 * r1 - 1) // fine + 1):
        for sc in range(2 * c0 // fine, (2 * c1 - 1) // fine + 1):
            chunks = read_shard(shard_path(store, job.level - 1, sr, sc), per_side=fine, tile=t,
                                compressor=job.compressor)
            for (r, c), px in chunks.items():
                gy, gx = (sr * fine + r) * t - y0, (sc * fine + c) * t - x0
                if 0 <= gy < y1 - y0 and 0 <= gx < x1 - x0:
                    h, w = min(t, y1 - y0 - gy), min(t, x1 - x0 - gx)
                    src[gy:gy + h, gx:gx + w] = px[:h, :w]
    img = reduce2(src)
    per_side = job.shard_chunks[job.level]
    return _write_shard(store, job.level, img, job.tissue, srow=r0 // per_side, scol=c0 // per_side,
                        per_side=per_side, tile=t, compressor=job.compressor, clevel=job.clevel)


def _write_shard(store: Path, level: int, img: np.ndarray, tissue: np.ndarray, *, srow: int, scol: int,
                 per_side: int, tile: int, compressor: Compressor, clevel: int) -> int:
    """Encode the tissue chunks of ``img`` (one shard's pixels) and write them as one shard file."""
    chunks = {}
    h, w = img.shape[:2]
    for r in range(min(tissue.shape[0], -(-h // tile))):
        for c in range(min(tissue.shape[1], -(-w // tile))):
            if tissue[r, c]:
                chunks[(r, c)] = encode_chunk(img[r * tile:(r + 1) * tile, c * tile:(c + 1) * tile], tile=tile,
                                              compressor=compressor, clevel=clevel)
    if chunks:
        write_atomic(shard_path(store, level, srow, scol), encode_shard(chunks, per_side=per_side))
    return len(chunks)


def _read_level(slide: Slide, plan: TilePlan, y0: int, x0: int, h: int, w: int,
                needed: list[tuple[int, int, int, int]], *, disjoint: bool = False) -> np.ndarray:
    """Pixels ``[y0, y0+h) x [x0, x0+w)`` of the plan's level; only the ``needed`` boxes (relative) are read."""
    dec = _worker_decoder(slide, plan.level)
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
