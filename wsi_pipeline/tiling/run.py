"""Tile a slide's tissue into a zarr v3 store at a target resolution: a resumable Dask stage at or above the
JPEG-decode floor.

    >>> from wsi_pipeline.tiling import TileConfig, tile_slide
    >>> res = tile_slide("slide.svs", "slide.zarr", config=TileConfig(mpp=1.0, tile=512))  # doctest: +SKIP
    >>> res.chunks_written, res.chunks_total  # doctest: +SKIP

The image is read from the pyramid level closest to (not coarser than) the target MPP, decoded (area-resampled
when needed) and stored losslessly with zarr v3 core codecs (blosc zstd by default: any zarr v3 reader opens the
store), with a 2x-mean pyramid. With ``compressor: jpeg``, when that level matches the target and its stored JPEG
tiles line up with the chunks (the chunk edge is a multiple of the tile edge), the tiles are *copied* into the
chunks without decoding (codec ``wsi_pipeline.jpeg``, readable where this package is installed): the stored pixels
are exactly the slide's, and the pyramid is the slide's own reduced levels, copied the same way (JPEG-encoded 2x
means below the coarsest). See :mod:`wsi_pipeline.tiling.shards` for the layout.

Work is cut into *blocks* of ``block x block`` chunks (one Dask task each, a few MPix): a block writes its tissue
chunks, its share of the pyramid and, last, its done marker. A re-run skips blocks whose marker exists, so a killed
run resumes and the finished store is byte-identical to an uninterrupted one. Tasks:
:mod:`wsi_pipeline.tiling.tasks`; the store's record: :mod:`wsi_pipeline.tiling.store`.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry import MultiPolygon, mapping

from ..errors import NoTissueError, SlideError
from ..slide import Slide, check_upsample, open_slide
from ..slide.tiles import TiffTileDecoder
from ..tissue import TissueResult, detect_tissue, mask_to_polygons
from .plan import (
    LevelPlan,
    SourceLevel,
    TileConfig,
    TilePlan,
    block_levels,
    chunk_tissue_map,
    level_maps,
    plan_pyramid,
    plan_tiling,
)
from .shards import ChunkCodec, JpegChunks, RawChunks, StoreLevel, done_path, remove_partials
from .store import STORE_FORMAT, StoreInfo, create_arrays, finish_store, new_store_info, open_or_create
from .tasks import BlockJob, CopyJob, ReduceJob, run_task, worker_decoder

__all__ = ["TileResult", "tile_slide"]


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
    copied: bool = False  # level "0" holds the slide's own JPEG tiles (copied, not decoded)
    info: StoreInfo | None = None  # the store's record as written (no need to read it back)
    thumbnail: np.ndarray | None = field(default=None, repr=False)  # the RGB thumbnail tissue was detected on
    tissue_mask: np.ndarray | None = field(default=None, repr=False)  # its tissue mask (same shape)


def tile_slide(
    slide: str | os.PathLike[str] | Slide,
    store_path: str | os.PathLike[str],
    *,
    config: TileConfig,
    client: Any = None,
    workers: int | None = None,
    mpp_override: float | None = None,
    overwrite: bool = False,
    progress: bool | Callable[[int, int], None] = True,
) -> TileResult:
    """Tile a slide's tissue into the zarr v3 group ``store_path``; resumes an interrupted run.

    ``slide``: a path, or a slide the caller already opened (with ``mpp_override`` applied; it stays open).
    ``client``: a ``dask.distributed.Client`` to run on; otherwise Dask's threaded scheduler with ``workers``
    threads (default: all cores). ``progress``: a tqdm bar, or ``progress(done, total)`` called after each task.
    Raises ``NoTissueError`` when no tissue is found (nothing is written) and
    ``StoreError`` when ``store_path`` holds a store written with other settings (unless ``overwrite``).
    """
    t0 = time.perf_counter()
    store = Path(store_path)
    opened = None if isinstance(slide, Slide) else open_slide(slide, mpp_override=mpp_override)
    src: Slide = slide if isinstance(slide, Slide) else opened  # type: ignore[assignment]
    with opened if opened is not None else contextlib.nullcontext():
        slide_path = Path(src.path).resolve()
        mpp0 = _mean_mpp(src)
        if mpp0 is not None and config.mpp is not None:
            check_upsample(mpp0, config.mpp, max_upsample=config.max_upsample, path=slide_path)
        try:
            plan = plan_tiling(src.level_dimensions, src.level_downsamples, mpp0, target_mpp=config.mpp,
                               tile=config.tile, task_px=config.task_px, mpp_rtol=config.mpp_tolerance)
        except ValueError as exc:
            raise SlideError(slide_path, f"cannot tile at mpp={config.mpp}: {exc}") from None
        source = _source_record(src, slide_path, mpp_override)
        tissue, thumb_ds, thumb = _detect(src, config=config, mpp0=mpp0)
        pyramid, copy_codecs = _plan_levels(src, plan, config)
    if tissue.is_empty:
        raise NoTissueError(f"{slide_path}: no tissue detected (optical-density threshold {tissue.threshold:.3f} "
                            f"on a {tissue.mask.shape[1]}x{tissue.mask.shape[0]} thumbnail)")
    chunk_map = chunk_tissue_map(tissue.mask, mask_downsample=thumb_ds, plan=plan)
    settings = {"format": STORE_FORMAT, "config": config.to_dict(), "mpp_override": mpp_override,
                "source": {"path": str(slide_path), "size": slide_path.stat().st_size}}
    levels, n_block = _store_levels(pyramid, copy_codecs, plan, config)
    info = open_or_create(store, new_store_info(plan=plan, levels=levels, tissue=tissue, settings=settings,
                                                source=source, mpp0=mpp0, chunks=int(chunk_map.sum())),
                          overwrite=overwrite,
                          create=lambda group: create_arrays(group, plan=plan, levels=levels, tissue_mask=tissue.mask))
    out_mpp = info.geometry.mpp
    maps = level_maps(chunk_map, pyramid, tile=plan.tile)
    blocks = _block_maps(maps, levels, plan, n_block)
    copied = levels[0].copy_from is not None
    if info.complete:
        return TileResult(store, (plan.height, plan.width), plan.level, plan.scale, out_mpp, chunk_map.size,
                          int(chunk_map.sum()), 0, len(blocks), len(blocks), 0,
                          time.perf_counter() - t0, already_complete=True, copied=copied, info=info,
                          thumbnail=thumb, tissue_mask=tissue.mask)

    remove_partials(store)
    todo = [(br, bc, m) for (br, bc), m in blocks.items() if not done_path(store, br, bc).exists()]
    jobs: list[Any] = [BlockJob(str(slide_path), mpp_override, str(store), plan, levels[:n_block + 1], br, bc, m)
                       for br, bc, m in todo]
    copies, reduces = _post_jobs(str(slide_path), mpp_override, str(store), levels, maps, n_block, plan.tile)
    stages = [jobs + copies] + reduces  # copied levels need nothing else: they run beside the blocks
    written = 0
    # the tissue outline is recorded only when the store completes: it is traced while the tasks run
    with ThreadPoolExecutor(1) as side:
        outline = side.submit(mask_to_polygons, tissue.mask, downsample=tissue.downsample)
        with _progress_bar(sum(len(s) for s in stages), progress, desc=f"tile {slide_path.name}") as bar:
            for k, stage in enumerate(stages):
                counts = _run_tasks(run_task, stage, client=client, workers=workers, on_done=bar)
                if k == 0:
                    written = sum(counts[:len(jobs)])
        polygons = MultiPolygon(list(outline.result()))

    info = finish_store(store, info, polygons_level0=mapping(polygons))
    return TileResult(store, (plan.height, plan.width), plan.level, plan.scale, out_mpp, chunk_map.size,
                      int(chunk_map.sum()), written, len(blocks), len(blocks) - len(todo), len(todo),
                      time.perf_counter() - t0, copied=copied, info=info, thumbnail=thumb, tissue_mask=tissue.mask)


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


def _detect(slide: Slide, *, config: TileConfig,
            mpp0: float | None) -> tuple[TissueResult, tuple[float, float], np.ndarray]:
    thumb = _thumbnail(slide, config.thumbnail_px)
    w0, h0 = slide.dimensions
    ds = (w0 / thumb.shape[1], h0 / thumb.shape[0])
    return detect_tissue(thumb, downsample=(ds[0] + ds[1]) / 2, mpp=mpp0, min_area_um2=config.min_tissue_um2,
                         outline=False), ds, thumb


def _thumbnail(slide: Slide, max_px: int) -> np.ndarray:
    """``slide.thumbnail(max_px)``, but decoding the source level's stored tiles directly (threads) when possible."""
    from PIL import Image

    w0, h0 = slide.dimensions
    scale = max(max(w0, h0) / max_px, 1.0)
    level = slide.best_level_for_downsample(scale)
    dec = worker_decoder(slide, level)
    if dec is None:
        return slide.thumbnail(max_px)
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



# -- pyramid and task plan ------------------------------------------------------------------------------------
def _plan_levels(slide: Slide, plan: TilePlan,
                 config: TileConfig) -> tuple[tuple[LevelPlan, ...], dict[int, JpegChunks]]:
    """The output pyramid (which levels copy which slide level's JPEG tiles, when the config allows copying) and the
    chunk codec of each copied slide level."""
    sources, codecs = [], {}
    if config.compressor == "jpeg" and not plan.resampled:
        for level in range(plan.level, slide.level_count):
            w, h = (int(v) for v in slide.level_dimensions[level])
            dec = worker_decoder(slide, level)
            tile = None
            if isinstance(dec, TiffTileDecoder) and dec.copyable_jpeg and (dec.grid.width, dec.grid.height) == (w, h):
                tile = (dec.grid.tile_width, dec.grid.tile_height)
                codecs[level] = JpegChunks((dec.grid.tile_height, dec.grid.tile_width), dec.jpeg_colorspace,
                                           config.jpeg_quality)
            sources.append(SourceLevel(level, (w, h), float(slide.level_downsamples[level]), tile))
    return plan_pyramid(plan, sources, pyramid=config.pyramid), codecs


def _store_levels(pyramid: Sequence[LevelPlan], copy_codecs: dict[int, JpegChunks], plan: TilePlan,
                  config: TileConfig) -> tuple[tuple[StoreLevel, ...], int]:
    """Codec and shard size of every level, and how many levels beyond "0" the blocks write themselves.

    A level the blocks write has one shard per block (``block / factor`` chunks a side); the others get shards of
    ``post`` chunks a side, where a reducing job reads at most ``(2 post)^2`` finer chunks.
    """
    n_block = block_levels(pyramid, plan.block)
    post = max(1, config.task_px // config.tile // 2)
    computed: ChunkCodec
    if config.compressor == "jpeg":  # below copied JPEG levels too: raw would cost 10x the bytes
        computed = JpegChunks(quality=config.jpeg_quality)
    else:
        computed = RawChunks(config.compressor, config.clevel)
    levels = tuple(StoreLevel(lv.shape, lv.factor, lv.copy_from,
                              copy_codecs[lv.copy_from] if lv.copy_from is not None else computed,
                              plan.block // lv.factor if k <= n_block else post)
                   for k, lv in enumerate(pyramid))
    return levels, n_block


def _block_maps(maps: Sequence[np.ndarray], levels: Sequence[StoreLevel], plan: TilePlan,
                n_block: int) -> dict[tuple[int, int], tuple[np.ndarray, ...]]:
    """Per block with tissue: its chunk maps at level "0" and at each level it writes itself."""
    b = plan.block
    out = {}
    for br in range(plan.block_grid[0]):
        for bc in range(plan.block_grid[1]):
            m = maps[0][br * b:(br + 1) * b, bc * b:(bc + 1) * b]
            if m.any():
                per = [levels[k].per_side for k in range(n_block + 1)]
                out[(br, bc)] = tuple(maps[k][br * p:(br + 1) * p, bc * p:(bc + 1) * p].copy()
                                      for k, p in enumerate(per))
    return out


def _post_jobs(slide_path: str, mpp_override: float | None, store: str, levels: Sequence[StoreLevel],
               maps: Sequence[np.ndarray], n_block: int, tile: int) -> tuple[list[CopyJob], list[list[ReduceJob]]]:
    """Shard tasks of the levels beyond the blocks' share: copies (independent), then one stage per reduced level."""
    copies: list[CopyJob] = []
    reduces: list[list[ReduceJob]] = []
    for k in range(n_block + 1, len(levels)):
        lv, m, p = levels[k], maps[k], levels[k].per_side
        stage: list[ReduceJob] = []
        for r0 in range(0, m.shape[0], p):
            for c0 in range(0, m.shape[1], p):
                sub = m[r0:r0 + p, c0:c0 + p]
                if not sub.any():
                    continue
                if lv.copy_from is not None:
                    copies.append(CopyJob(slide_path, mpp_override, store, k, lv, r0 // p, c0 // p, sub.copy(), tile))
                else:
                    stage.append(ReduceJob(store, k, levels[k - 1], lv, r0 // p, c0 // p, sub.copy(), tile))
        if stage:
            reduces.append(stage)
    return copies, reduces


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
    """The per-task callback: a tqdm bar (``progress=True``), the caller's ``progress(done, total)``, or silent."""

    def __init__(self, total: int, progress: bool | Callable[[int, int], None], *, desc: str) -> None:
        from tqdm.auto import tqdm

        self._report = progress if callable(progress) else None
        self._bar = tqdm(total=total, disable=progress is not True, desc=desc, unit="task")
        self._lock = threading.Lock()
        self._done, self._total = 0, total
        if self._report is not None:
            self._report(0, total)

    def __call__(self) -> None:
        with self._lock:
            self._bar.update(1)
            self._done += 1
            if self._report is not None:
                self._report(self._done, self._total)

    def __enter__(self) -> _progress_bar:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()

