"""Dask/zarr edge of tiled inference: blocks of chunks + halo -> blended predictions -> a zarr array.

The source image (``H x W x C`` uint8, chunked ``(ch, cw, C)``) is cut into blocks of ``block_chunks`` x
``block_chunks`` chunks. One Dask task per block reads the block plus a ``halo`` (clamped at the image border),
runs :func:`~wsi_pipeline.infer.blend.predict_tiled` on it (so batches gather windows across the chunks of a block),
crops the halo away and writes the chunks it owns. Blocks are chunk-aligned, so no two tasks write the same chunk
and there is no locking. With ``halo >= margin >= receptive radius`` the result equals whole-image inference.

Tasks carry the zarr arrays (a local store pickles as its path) and a small frozen config; the model is built
inside the worker by ``predictor_factory()`` once per process and cached (see :func:`cached_predictor`).
"""

from __future__ import annotations

import hashlib
import pickle
import threading
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Literal

import dask
import dask.callbacks
import numpy as np
import zarr
from pydantic import model_validator

from ..config import FrozenConfig
from ..tiling.codec import register as _register_jpeg_codec
from .blend import ModelFn, WeightKind, predict_tiled
from .layout import Layout

PredictorFactory = Callable[[], ModelFn]
_IN_PROCESS = ("threads", "threading", "sync", "synchronous", "single-threaded")  # Dask schedulers in this process
_register_jpeg_codec()  # workers read tiled stores whose chunks may be JPEG tiles


class TiledInferenceConfig(FrozenConfig):
    """Settings of one blended tiled-inference pass (validated; loaded from YAML by the jobs)."""

    window: int = 256
    overlap: int = 64
    margin: int = 16
    halo: int | None = None  # pixels read around each block; None -> overlap
    batch_size: int = 8
    weight: WeightKind = "gaussian"
    dtype: Literal["float16", "uint8", "float32"] = "float16"
    block_chunks: int = 2  # block edge in chunks: larger blocks amortise the halo, smaller ones spread work

    @model_validator(mode="after")
    def _check(self) -> TiledInferenceConfig:
        if self.window < 1 or not 0 <= self.overlap < self.window:
            raise ValueError(f"overlap={self.overlap} must be in [0, window={self.window})")
        if self.margin < 0 or 2 * self.margin > self.overlap:
            raise ValueError(f"margin={self.margin} must be in [0, overlap/2]")
        if self.halo is not None and self.halo < self.margin:
            raise ValueError(f"halo={self.halo} must be >= margin={self.margin}")
        if self.batch_size < 1 or self.block_chunks < 1:
            raise ValueError("batch_size and block_chunks must be >= 1")
        return self

    @classmethod
    def for_receptive_radius(
        cls, radius: int, *, window: int, blend: int | None = None, **settings: object
    ) -> TiledInferenceConfig:
        """Settings for a model of receptive radius ``radius`` (see ``measure_receptive_radius``).

        ``margin = radius`` (exact results), ``overlap = 2 * radius + blend`` where ``blend`` (default
        ``window // 8``) is the zone over which neighbouring windows fade into each other; ``halo = overlap``.
        """
        blend = window // 8 if blend is None else blend
        overlap = 2 * radius + blend
        if overlap >= window:
            raise ValueError(f"window={window}: too small for receptive radius {radius} (needs > {overlap})")
        return cls(window=window, overlap=overlap, margin=radius, halo=overlap, **settings)  # type: ignore[arg-type]

    @property
    def effective_halo(self) -> int:
        return self.overlap if self.halo is None else self.halo


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
def _blocks(shape: tuple[int, int], chunks: tuple[int, int], block_chunks: int) -> list[tuple[int, int, int, int]]:
    """Chunk-index ranges ``(cy0, cy1, cx0, cx1)`` of the blocks covering the chunk grid."""
    ny, nx = -(-shape[0] // chunks[0]), -(-shape[1] // chunks[1])
    return [
        (cy, min(cy + block_chunks, ny), cx, min(cx + block_chunks, nx))
        for cy in range(0, ny, block_chunks)
        for cx in range(0, nx, block_chunks)
    ]


def _to_dtype(pred: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "uint8":  # probabilities in [0, 1] -> 0..255
        return np.clip(np.rint(pred * 255.0), 0, 255).astype(np.uint8)
    return pred.astype(dtype)


def _predict_block(
    src: zarr.Array,
    dst: zarr.Array,
    block: tuple[int, int, int, int],
    owned: list[tuple[int, int]],
    factory: PredictorFactory,
    cfg: TiledInferenceConfig,
) -> int:
    """Predict one block and write the chunks listed in ``owned``; returns how many chunks were written."""
    layout = Layout.of(src)
    height, width = layout.size(src)
    ch, cw = layout.chunks(src)
    cy0, cy1, cx0, cx1 = block
    y0, y1 = cy0 * ch, min(cy1 * ch, height)
    x0, x1 = cx0 * cw, min(cx1 * cw, width)
    halo = cfg.effective_halo
    ry0, ry1 = max(y0 - halo, 0), min(y1 + halo, height)
    rx0, rx1 = max(x0 - halo, 0), min(x1 + halo, width)
    region = layout.read(src, slice(ry0, ry1), slice(rx0, rx1))
    pred = predict_tiled(
        region,
        cached_predictor(factory),
        window=cfg.window,
        overlap=cfg.overlap,
        batch_size=cfg.batch_size,
        weight=cfg.weight,
        margin=cfg.margin,
    )
    pred = _to_dtype(pred[y0 - ry0 : y1 - ry0, x0 - rx0 : x1 - rx0], cfg.dtype)
    out_layout = Layout.of(dst)
    if len(owned) == (cy1 - cy0) * (cx1 - cx0):
        out_layout.write(dst, slice(y0, y1), slice(x0, x1), pred)
    else:
        for cy, cx in owned:
            ys, ye = cy * ch, min((cy + 1) * ch, height)
            xs, xe = cx * cw, min((cx + 1) * cw, width)
            out_layout.write(dst, slice(ys, ye), slice(xs, xe), pred[ys - y0 : ye - y0, xs - x0 : xe - x0])
    return len(owned)


def _open_source(src: zarr.Array | str | Path) -> zarr.Array:
    arr = src if isinstance(src, zarr.Array) else zarr.open_array(str(src), mode="r")
    Layout.of(arr)  # validates the axes
    return arr


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
    progress: Callable[[int, int], None] | None = None,
) -> zarr.Array:
    """Blended tiled inference of the zarr image ``src`` into ``dst[name]``: same size, spatial chunks and axis
    layout (``(c, y, x)`` sources such as the tiling store give ``(out_channels, H, W)``; otherwise ``H x W x C``).

    ``chunk_mask`` (bool, one entry per spatial chunk of ``src``; for a tiled store:
    :func:`wsi_pipeline.tiling.tissue_chunks`) marks chunks to predict; the others are never written and read back as the fill value 0. ``scheduler`` goes
    to ``dask.compute`` (``None``: the active distributed client or Dask's default). ``predictor_factory`` must
    be picklable for process-based schedulers (a ``functools.partial`` of a module-level loader is).
    ``progress(done, total)`` is called after each block of chunks is written (in-process schedulers).
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
    out_layout = layout if layout.channel is not None else Layout(2)
    out = out_layout.create_like(
        group, name, size=(height, width), chunks=(ch, cw), channels=out_channels, dtype=config.dtype
    )
    out.attrs.update({"inference": config.to_dict(), "source_shape": list(arr.shape)})
    tasks = []
    for block in _blocks((height, width), (ch, cw), config.block_chunks):
        cy0, cy1, cx0, cx1 = block
        owned = [(cy, cx) for cy in range(cy0, cy1) for cx in range(cx0, cx1) if chunk_mask[cy, cx]]
        if owned:
            tasks.append(dask.delayed(_predict_block, pure=False)(arr, out, block, owned, predictor_factory, config))
    if tasks and scheduler in _IN_PROCESS:
        # the pool threads share one model: build it here, so torch also starts its own thread pool from the
        # calling thread (a first forward from a pool thread made the segmentation stage 2-3x slower on CPU)
        cached_predictor(predictor_factory)
    done = [0]

    def tick(key: object, *_: object) -> None:  # Dask's posttask hook, on the scheduling thread
        if progress is not None and str(key).startswith("_predict_block"):
            done[0] += 1
            progress(done[0], len(tasks))

    if progress is not None:
        progress(0, len(tasks))
    with dask.callbacks.Callback(posttask=tick):
        written = sum(dask.compute(*tasks, scheduler=scheduler)) if tasks else 0
    out.attrs["chunks_written"] = int(written)
    return out
