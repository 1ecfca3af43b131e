"""Zarr edge of tiled inference: one window grid over the slide's tissue -> blended predictions -> a zarr array.

The windows of one grid over the whole image (:func:`~wsi_pipeline.infer.blend.window_spans`) are kept where their
weighted core touches a tissue chunk, so every window is forwarded once (about 1.25x the tissue's pixels at 512 or
608 px windows with 64 px overlap; blocks tiled each on their own cost up to 2.25x). A sweep runs the kept windows
row by row, batched per row, adds each weighted prediction into the buffers of the *units* it touches (bands of
``block_chunks`` chunk rows) and writes a unit's tissue chunks as soon as no later window row reaches it, then its
done marker. Each chunk belongs to one unit, so no chunk is written twice. With ``margin >= receptive radius`` the
result equals whole-image inference.

Resume: a unit's marker (``<name>/.done/<unit>`` inside the array's folder, written atomically after its chunks) is the
only proof that its chunks are whole; a re-run with the same settings, source and model (``resume_key``) skips
marked units and recomputes the rest, including any half-written chunk. Every pixel of a unit still adds the same
windows, batched the same way, in the same order, so a resumed output is byte-identical to an uninterrupted one.

The sweep runs in the calling process (threaded or synchronous scheduler) or as one task on a distributed client's
worker (the tasks carry the zarr arrays, which pickle as their paths); the model is built there by
``predictor_factory()`` once per process and cached (see :func:`cached_predictor`).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import threading
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import dask
import numpy as np
import zarr
from pydantic import model_validator

from ..config import FrozenConfig
from ..tiling.codec import register as _register_jpeg_codec
from .blend import ModelFn, WeightKind, add_window, window_spans
from .layout import Layout

PredictorFactory = Callable[[], ModelFn]
Progress = Callable[[int, int], None]
_IN_PROCESS = ("threads", "threading", "sync", "synchronous", "single-threaded")  # Dask schedulers in this process
_register_jpeg_codec()  # workers read tiled stores whose chunks may be JPEG tiles


class TiledInferenceConfig(FrozenConfig):
    """Settings of one blended tiled-inference pass (validated; loaded from YAML by the jobs)."""

    window: int = 256
    overlap: int = 64
    margin: int = 16
    batch_size: int = 8
    weight: WeightKind = "gaussian"
    dtype: Literal["float16", "uint8", "float32"] = "float16"
    block_chunks: int = 2  # chunk rows per unit of work (written, marked done and reported together)
    window_multiple: int = 32  # the last window of a row/column shrinks to a multiple of this (U-Net: 32)

    @model_validator(mode="after")
    def _check(self) -> TiledInferenceConfig:
        if self.window < 1 or not 0 <= self.overlap < self.window:
            raise ValueError(f"overlap={self.overlap} must be in [0, window={self.window})")
        if self.margin < 0 or 2 * self.margin > self.overlap:
            raise ValueError(f"margin={self.margin} must be in [0, overlap/2]")
        if self.batch_size < 1 or self.block_chunks < 1 or self.window_multiple < 1:
            raise ValueError("batch_size, block_chunks and window_multiple must be >= 1")
        return self

    @classmethod
    def for_receptive_radius(
        cls, radius: int, *, window: int, blend: int | None = None, **settings: object
    ) -> TiledInferenceConfig:
        """Settings for a model of receptive radius ``radius`` (see ``measure_receptive_radius``).

        ``margin = radius`` (exact results), ``overlap = 2 * radius + blend`` where ``blend`` (default
        ``window // 8``) is the zone over which neighbouring windows fade into each other.
        """
        blend = window // 8 if blend is None else blend
        overlap = 2 * radius + blend
        if overlap >= window:
            raise ValueError(f"window={window}: too small for receptive radius {radius} (needs > {overlap})")
        return cls(window=window, overlap=overlap, margin=radius, **settings)  # type: ignore[arg-type]


# -- per-process model cache -------------------------------------------------------------------------------------
_CACHE: dict[Hashable, ModelFn] = {}
_CACHE_LOCK = threading.Lock()


def _factory_key(factory: PredictorFactory) -> Hashable:
    key = getattr(factory, "cache_key", None)
    if key is not None:
        return ("key", key)
    try:  # a functools.partial of a module-level loader pickles to the same bytes in every worker
        return ("pickle", hashlib.sha256(pickle.dumps(factory)).hexdigest())
    except Exception:  # closures and lambdas: only shareable inside this process anyway
        return ("id", id(factory))


def cached_predictor(factory: PredictorFactory) -> ModelFn:
    """``factory()``, built once per process (threads of a worker share it; building happens under a lock)."""
    key = _factory_key(factory)
    with _CACHE_LOCK:
        predictor = _CACHE.get(key)
        if predictor is None:
            predictor = factory()
            _CACHE[key] = predictor
    return predictor


def clear_predictor_cache() -> None:
    """Forget cached predictors (frees their memory; the next task rebuilds)."""
    with _CACHE_LOCK:
        _CACHE.clear()


# -- geometry ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WindowPlan:
    """The kept windows of one grid over an image, by window row, and the units of work they fill.

    ``rows[i] = (y, h, [(x, w), ...])``: window row ``i`` (start, height) and its kept windows (start, width);
    ``units``: the first chunk row of every unit holding tissue; ``forwarded_px`` / ``tissue_px``: the work ratio.
    """

    size: tuple[int, int]
    chunks: tuple[int, int]
    unit_rows: int
    rows: tuple[tuple[int, int, tuple[tuple[int, int], ...]], ...]
    units: tuple[int, ...]
    forwarded_px: int
    tissue_px: int

    def unit_span(self, unit: int) -> tuple[int, int]:
        """Pixel rows ``[y0, y1)`` of the unit starting at chunk row ``unit``."""
        return unit * self.chunks[0], min((unit + self.unit_rows) * self.chunks[0], self.size[0])

    @property
    def windows(self) -> int:
        return sum(len(r[2]) for r in self.rows)


def _core(start: int, size: int, length: int, margin: int) -> tuple[int, int]:
    """The pixels a window's weights reach: all but ``margin`` on the sides that lie inside the image."""
    return start + (margin if start > 0 else 0), start + size - (margin if start + size < length else 0)


def plan_windows(size: tuple[int, int], chunks: tuple[int, int], config: TiledInferenceConfig,
                 chunk_mask: np.ndarray) -> WindowPlan:
    """Lay one window grid over an image of ``size`` and keep the windows whose weighted core touches a chunk that
    ``chunk_mask`` marks (pure geometry: no pixels)."""
    (height, width), (ch, cw), m = size, chunks, config.margin
    ys = window_spans(height, config.window, config.overlap, multiple=config.window_multiple)
    xs = window_spans(width, config.window, config.overlap, multiple=config.window_multiple)
    rows, forwarded = [], 0
    for y, h in ys:
        cy0, cy1 = _core(y, h, height, m)
        band: np.ndarray = np.asarray(chunk_mask[cy0 // ch : -(-cy1 // ch)].any(axis=0))
        kept = []
        for x, w in xs:
            cx0, cx1 = _core(x, w, width, m)
            if band[cx0 // cw : -(-cx1 // cw)].any():
                kept.append((x, w))
                forwarded += h * w
        if kept:
            rows.append((y, h, tuple(kept)))
    bc = config.block_chunks
    units = tuple(u for u in range(0, chunk_mask.shape[0], bc) if chunk_mask[u : u + bc].any())
    heights = np.minimum(np.arange(1, chunk_mask.shape[0] + 1) * ch, height) - np.arange(chunk_mask.shape[0]) * ch
    widths = np.minimum(np.arange(1, chunk_mask.shape[1] + 1) * cw, width) - np.arange(chunk_mask.shape[1]) * cw
    tissue = int((np.outer(heights, widths) * chunk_mask).sum())
    return WindowPlan(size, chunks, bc, tuple(rows), units, forwarded, tissue)


def _to_dtype(pred: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint8":  # probabilities in [0, 1] -> 0..255
        return np.clip(np.rint(pred * 255.0), 0, 255).astype(np.uint8)
    return pred.astype(dtype)


# -- resume markers ----------------------------------------------------------------------------------------------
def _marker_dir(out: zarr.Array) -> Path | None:
    """``<array>/.done`` for an array in a local store, else None. Inside the array's folder, where zarr reads only
    ``zarr.json`` and chunk keys, so no reader lists or warns about it (next to the array, group listings did)."""
    root = getattr(out.store, "root", None)
    return None if root is None else Path(root) / out.path / ".done"


def _mark_done(folder: Path, unit: int) -> None:
    tmp = folder / f".{unit}.{os.getpid()}.{threading.get_ident()}.partial"
    tmp.write_bytes(b"1")
    os.replace(tmp, folder / str(unit))  # a killed writer leaves a marker or none


def _resume_key(arr: zarr.Array, factory: PredictorFactory, config: TiledInferenceConfig, out_channels: int,
                chunk_mask: np.ndarray) -> str | None:
    """What a resumed output must share with the run that wrote it; None (never resume) when the model has no
    stable identity (closures, lambdas)."""
    model = _factory_key(factory)
    if isinstance(model, tuple) and model[0] == "id":
        return None
    root = getattr(arr.store, "root", None)
    meta = Path(root) / arr.path / "zarr.json" if root is not None else None
    # the source's metadata file is rewritten when the source is re-created (re-tiled): then nothing is resumed
    written = meta.stat().st_mtime_ns if meta is not None and meta.is_file() else None
    parts = [config.to_dict(), list(arr.shape), list(arr.chunks), written, out_channels, repr(model),
             hashlib.sha256(np.packbits(chunk_mask).tobytes() + str(chunk_mask.shape).encode()).hexdigest()]
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _open_output(group: zarr.Group, name: str, layout: Layout, *, size: tuple[int, int], chunks: tuple[int, int],
                 channels: int, config: TiledInferenceConfig, source_shape: list[int],
                 key: str | None) -> zarr.Array:
    """The output array: the existing one when it was started with ``key`` (resume), else a new empty one."""
    if key is not None and name in group:
        existing = group[name]
        if isinstance(existing, zarr.Array) and existing.attrs.get("resume_key") == key:
            return existing
    out_layout = layout if layout.channel is not None else Layout(2)
    parent = getattr(group.store, "root", None)
    if parent is not None:  # stale markers of another run go first: a crash then leaves nothing to trust
        shutil.rmtree(Path(parent) / group.path / name / ".done", ignore_errors=True)
    out = out_layout.create_like(group, name, size=size, chunks=chunks, channels=channels, dtype=config.dtype)
    out.attrs.update({"inference": config.to_dict(), "source_shape": source_shape, "resume_key": key})
    return out


# -- the sweep ---------------------------------------------------------------------------------------------------
def _forward_row(model: ModelFn, region: np.ndarray, x0: int, h: int, kept: tuple[tuple[int, int], ...],
                 batch_size: int) -> list[np.ndarray]:
    """Predictions ``(C, h, w)`` of one window row's kept windows (in order), batched by window shape."""
    preds: list[np.ndarray | None] = [None] * len(kept)
    by_width: dict[int, list[int]] = {}
    for i, (_, w) in enumerate(kept):
        by_width.setdefault(w, []).append(i)
    for w, idx in by_width.items():
        for b in range(0, len(idx), batch_size):
            part = idx[b : b + batch_size]
            batch = np.stack([region[:, :, kept[i][0] - x0 : kept[i][0] - x0 + w] for i in part])
            pred = np.asarray(model(batch))
            if pred.ndim != 4 or pred.shape[0] != len(part) or pred.shape[2:] != (h, w):
                raise ValueError(f"model returned shape {pred.shape} for a batch of shape {batch.shape}: "
                                 f"expected ({len(part)}, C_out, {h}, {w})")
            for i, p in zip(part, pred):
                preds[i] = p
    return [p for p in preds if p is not None]


def _units_of(plan: WindowPlan, y: int, h: int, todo: set[int]) -> Iterator[int]:
    u0 = (y // plan.chunks[0]) // plan.unit_rows * plan.unit_rows
    for u in range(u0, -(-(y + h) // plan.chunks[0]), plan.unit_rows):
        if u in todo:
            yield u


def _sweep(src: zarr.Array, out: zarr.Array, plan: WindowPlan, chunk_mask: np.ndarray, factory: PredictorFactory,
           config: TiledInferenceConfig, todo: list[int], markers: Path | None, done_before: int,
           progress: Progress | None) -> int:
    """Forward the window rows that reach an unfinished unit, blend into per-unit buffers, write each unit when
    complete; returns the chunks written."""
    model = cached_predictor(factory)
    layout, out_layout = Layout.of(src), Layout.of(out)
    (height, width), (ch, cw) = plan.size, plan.chunks
    channels = out.shape[0] if out_layout.channel == 0 else out.shape[-1]
    pending = set(todo)
    rows = [r for r in plan.rows if any(True for _ in _units_of(plan, r[0], r[1], pending))]
    last_row = {u: max(i for i, r in enumerate(rows) if u in set(_units_of(plan, r[0], r[1], pending)))
                for u in pending}  # every unfinished unit is reached by some kept window row
    reach = {u: [r for r in rows if u in set(_units_of(plan, r[0], r[1], pending))] for u in pending}
    extent = {u: (min(r[2][0][0] for r in rs), max(r[2][-1][0] + r[2][-1][1] for r in rs)) for u, rs in reach.items()}
    buffers: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    written, done = 0, done_before

    def read(i: int) -> tuple[np.ndarray, int]:
        y, h, kept = rows[i]
        x0, x1 = kept[0][0], kept[-1][0] + kept[-1][1]
        return layout.read(src, slice(y, y + h), slice(x0, x1)).transpose(2, 0, 1), x0

    with ThreadPoolExecutor(1) as reader:  # the next row is read while this one runs through the model
        ahead = reader.submit(read, 0) if rows else None
        for i, (y, h, kept) in enumerate(rows):
            assert ahead is not None
            region, x0 = ahead.result()
            ahead = reader.submit(read, i + 1) if i + 1 < len(rows) else None
            preds = _forward_row(model, region, x0, h, kept, config.batch_size)
            for u in _units_of(plan, y, h, pending):
                u0, u1 = plan.unit_span(u)
                xl, xr = extent[u]  # a unit's buffer spans the columns its windows reach
                if u not in buffers:
                    buffers[u] = (np.zeros((channels, u1 - u0, xr - xl), np.float32),
                                  np.zeros((u1 - u0, xr - xl), np.float32))
                acc, wsum = buffers[u]
                top, bottom = max(y, u0), min(y + h, u1)
                for (x, w), p in zip(kept, preds):
                    add_window(acc, wsum, p, top - u0, x - xl, kind=config.weight, margin=config.margin,
                               borders=(y == 0, y + h == height, x == 0, x + w == width), rows=(top - y, bottom - y))
            for u in [u for u in buffers if last_row[u] == i]:
                written += _write_unit(out, out_layout, u, buffers.pop(u), extent[u][0], plan, chunk_mask,
                                       config.dtype)
                if markers is not None:
                    _mark_done(markers, u)
                done += 1
                if progress is not None:
                    progress(done, len(plan.units))
    return written


def _write_unit(out: zarr.Array, out_layout: Layout, unit: int, buffer: tuple[np.ndarray, np.ndarray], xl: int,
                plan: WindowPlan, chunk_mask: np.ndarray, dtype: str) -> int:
    """Write the tissue chunks of one finished unit from its buffer (whose column 0 is image column ``xl``)."""
    acc, wsum = buffer
    (height, width), (ch, cw) = plan.size, plan.chunks
    u0, _ = plan.unit_span(unit)
    n = 0
    for cy in range(unit, min(unit + plan.unit_rows, chunk_mask.shape[0])):
        ys, ye = cy * ch, min((cy + 1) * ch, height)
        for cx in np.flatnonzero(chunk_mask[cy]):
            xs, xe = int(cx) * cw, min((int(cx) + 1) * cw, width)
            block = acc[:, ys - u0 : ye - u0, xs - xl : xe - xl] / wsum[ys - u0 : ye - u0, xs - xl : xe - xl]
            out_layout.write(out, slice(ys, ye), slice(xs, xe), _to_dtype(block.transpose(1, 2, 0), dtype))
            n += 1
    return n


def _open_source(src: zarr.Array | str | Path) -> zarr.Array:
    arr = src if isinstance(src, zarr.Array) else zarr.open_array(str(src), mode="r")
    Layout.of(arr)  # validates the axes
    return arr


def _distributed_client() -> bool:
    try:
        from distributed import default_client

        default_client()
        return True
    except (ImportError, ValueError):
        return False


def predict_zarr(
    src: zarr.Array | str | Path,
    dst: zarr.Group | str | Path,
    *,
    predictor_factory: PredictorFactory,
    config: TiledInferenceConfig,
    out_channels: int,
    name: str = "prob",
    chunk_mask: np.ndarray | None = None,
    scheduler: str | None = None,
    progress: Progress | None = None,
) -> zarr.Array:
    """Blended tiled inference of the zarr image ``src`` into ``dst[name]``: same size, spatial chunks and axis
    layout (``(c, y, x)`` sources such as the tiling store give ``(out_channels, H, W)``; otherwise ``H x W x C``).

    ``chunk_mask`` (bool, one entry per spatial chunk of ``src``; for a tiled store:
    :func:`wsi_pipeline.tiling.tissue_chunks`) marks chunks to predict; the others are never written and read back
    as the fill value 0. ``scheduler``: ``None`` or an in-process one (``"threads"``, ``"sync"``) sweeps here unless
    a distributed client is active, which then runs the sweep as one task on a worker; ``predictor_factory`` must
    be picklable for that (a ``functools.partial`` of a module-level loader is). ``progress(done, total)`` is called
    after each unit of work (``block_chunks`` chunk rows) is written, counting units finished by an earlier run.
    An interrupted run with the same inputs resumes from its finished units (see the module docstring).
    """
    arr = _open_source(src)
    layout = Layout.of(arr)
    height, width = layout.size(arr)
    ch, cw = layout.chunks(arr)
    grid = (-(-height // ch), -(-width // cw))
    if chunk_mask is None:
        chunk_mask = np.ones(grid, bool)
    chunk_mask = np.asarray(chunk_mask, bool)
    if chunk_mask.shape != grid:
        raise ValueError(f"chunk_mask: shape {chunk_mask.shape} does not match the chunk grid {grid} of src")
    group = dst if isinstance(dst, zarr.Group) else zarr.open_group(str(dst), mode="a")
    key = _resume_key(arr, predictor_factory, config, out_channels, chunk_mask)
    out = _open_output(group, name, layout, size=(height, width), chunks=(ch, cw), channels=out_channels,
                       config=config, source_shape=list(arr.shape), key=key)
    plan = plan_windows((height, width), (ch, cw), config, chunk_mask)
    markers = _marker_dir(out) if key is not None else None
    finished = {int(p.name) for p in markers.iterdir() if p.name.isdigit()} if markers and markers.is_dir() else set()
    todo = [u for u in plan.units if u not in finished]
    if markers is not None:
        markers.mkdir(parents=True, exist_ok=True)
    if todo:
        args = (arr, out, plan, chunk_mask, predictor_factory, config, todo, markers, len(plan.units) - len(todo))
        if scheduler in _IN_PROCESS or (scheduler is None and not _distributed_client()):
            _sweep(*args, progress)
        else:
            dask.compute(dask.delayed(_sweep, pure=False)(*args, None), scheduler=scheduler)
    out.attrs["chunks_written"] = int(chunk_mask.sum())
    out.attrs["windows"] = {"forwarded": plan.windows, "forwarded_px": plan.forwarded_px,
                            "tissue_px": plan.tissue_px}
    return out
