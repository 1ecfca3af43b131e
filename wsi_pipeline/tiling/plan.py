"""Pure geometry and pixel kernels of the tiling stage: plan, tissue chunk map, area resampling, 2x reduction.

No I/O here: :mod:`wsi_pipeline.tiling` wires these to slides, zarr and Dask.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import Field

from ..config import FrozenConfig

__all__ = ["TileConfig", "TilePlan", "plan_tiling", "SourceLevel", "LevelPlan", "plan_pyramid", "block_levels", "level_maps",
           "chunk_tissue_map", "area_resample", "reduce2", "pool_any2", "level_shapes"]

class TileConfig(FrozenConfig):
    """Tiling settings; their digest is stored so a store written with other settings is never mixed in."""

    mpp: float | None = Field(default=None, gt=0, description="target um/px; None = the slide's level 0")
    # how far the output MPP may be from ``mpp`` (relative) when that lets tiling copy a pyramid level or reduce it
    # by a whole factor instead of resampling by a fraction (scanner MPPs are not round); the store records the MPP
    mpp_tolerance: float = Field(default=0.05, ge=0, lt=0.5)
    # a slide coarser than the target is upsampled at most this much (more is refused: a mis-read MPP, or a slide
    # too coarse for the job; raise it to allow)
    max_upsample: float = Field(default=2.5, ge=1.0, le=64.0, allow_inf_nan=False)
    tile: int = Field(default=512, ge=16, le=8192, description="chunk edge in output pixels")
    task_px: int = Field(default=2048, ge=16, description="edge of one Dask task's block in source pixels")
    # zstd (default) / lz4: decoded pixels, lossless, blosc-compressed; none: decoded pixels, uncompressed. All three
    # are zarr v3 core codecs (blosc, bytes, sharding_indexed): any zarr v3 implementation reads the store with
    # nothing extra installed. jpeg: the slide's JPEG tiles copied into the chunks where they line up (exact pixels,
    # nothing decoded), JPEG-encoded at jpeg_quality elsewhere (lossy); about 7-10x smaller, but its chunks need this
    # package's ``wsi_pipeline.jpeg`` codec to read (the ecosystem's ``imagecodecs_jpeg`` needs Python >= 3.12)
    compressor: Literal["zstd", "lz4", "none", "jpeg"] = "zstd"
    clevel: int = Field(default=1, ge=0, le=9, description="blosc level for lz4 / zstd")
    jpeg_quality: int = Field(default=90, ge=1, le=100,
                              description="quality of chunks JPEG-encoded here (pyramid levels below the copied ones)")
    thumbnail_px: int = Field(default=1024, ge=64, description="longest side of the tissue-detection thumbnail")
    min_tissue_um2: float = Field(default=20_000.0, ge=0)
    pyramid: bool = True


# mpp ratios closer than this to a stored level are read without resampling (exact pixels)
_SAME_SCALE_RTOL = 1e-3


@dataclass(frozen=True)
class TilePlan:
    """Where the output comes from and how it is cut into chunks and tasks."""

    level: int  # source pyramid level
    level_downsample: float  # its downsample relative to level 0
    level_size: tuple[int, int]  # (width, height) of the source level
    scale: float  # source-level pixels per output pixel (1.0 = exact copy, no resampling)
    width: int  # output image size
    height: int
    tile: int  # output chunk edge
    block: int  # chunks per task side (power of two; the task also writes its own pyramid levels)
    shapes: tuple[tuple[int, int], ...]  # (height, width) of pyramid levels "0", "1", ...

    @property
    def resampled(self) -> bool:
        return self.scale != 1.0

    @property
    def downsample0(self) -> float:
        """Level-0 pixels per output pixel."""
        return self.level_downsample * self.scale

    @property
    def grid(self) -> tuple[int, int]:
        """(rows, cols) of output chunks at level "0"."""
        return -(-self.height // self.tile), -(-self.width // self.tile)

    @property
    def block_grid(self) -> tuple[int, int]:
        r, c = self.grid
        return -(-r // self.block), -(-c // self.block)

    @property
    def block_levels(self) -> int:
        """Pyramid levels each block task writes itself (beyond "0"): log2(block), capped by the pyramid."""
        return min(int(math.log2(self.block)), len(self.shapes) - 1)


def level_shapes(height: int, width: int, *, tile: int) -> tuple[tuple[int, int], ...]:
    """2x pyramid shapes from ``(height, width)`` down to the first level that fits in one chunk."""
    shapes = [(height, width)]
    while max(shapes[-1]) > tile:
        h, w = shapes[-1]
        shapes.append((-(-h // 2), -(-w // 2)))
    return tuple(shapes)


def plan_tiling(
    level_dimensions: Sequence[tuple[int, int]],
    level_downsamples: Sequence[float],
    mpp0: float | None,
    *,
    target_mpp: float | None,
    tile: int,
    task_px: int,
    mpp_rtol: float = _SAME_SCALE_RTOL,
) -> TilePlan:
    """Pick the pyramid level for ``target_mpp`` (the coarsest not coarser than the target) and the chunking.

    ``mpp_rtol`` is how far (relative) the output resolution may be from the target when that saves work: a level
    within it is copied as it is, and a scale within it of a whole factor becomes that factor (a block mean).
    Scanners' MPPs are not round (0.2528 um/px): at 5 %, 2.0 um/px from such a slide is its 4x level reduced 2x
    (2.02 um/px, recorded as such) instead of that level resampled by 1.978.

    >>> p = plan_tiling([(1000, 800), (250, 200)], [1.0, 4.0], 0.25, target_mpp=1.0, tile=128, task_px=256)
    >>> (p.level, p.scale, p.width, p.height, p.block)
    (1, 1.0, 250, 200, 2)
    >>> plan_tiling([(1000, 800), (250, 200)], [1.0, 4.0], 0.2528, target_mpp=2.0, tile=128, task_px=256,
    ...             mpp_rtol=0.05).scale
    2.0
    """
    if not 0 <= mpp_rtol < 0.5:
        raise ValueError(f"mpp_rtol must be in [0, 0.5), got {mpp_rtol!r}")
    rtol = max(mpp_rtol, _SAME_SCALE_RTOL)
    if tile < 16:
        raise ValueError(f"tile must be >= 16, got {tile!r}")
    if task_px < tile:
        raise ValueError(f"task_px must be >= tile ({tile}), got {task_px!r}")
    w0, h0 = level_dimensions[0]
    if target_mpp is None:
        factor = 1.0
    else:
        if mpp0 is None:
            raise ValueError("target_mpp needs the slide's MPP; the slide has none (use an MPP override)")
        if not target_mpp > 0:
            raise ValueError(f"target_mpp must be > 0, got {target_mpp!r}")
        factor = target_mpp / mpp0
    level = 0
    for i, d in enumerate(level_downsamples):
        if d <= factor * (1 + rtol):
            level = i
    d = float(level_downsamples[level])
    lw, lh = level_dimensions[level]
    scale = factor / d
    whole = max(1, round(scale))
    if abs(scale / whole - 1.0) <= rtol:
        scale = float(whole)
    if scale == 1.0:
        width, height = lw, lh
    else:
        width, height = max(1, round(w0 / (d * scale))), max(1, round(h0 / (d * scale)))
    block = 1
    while block * 2 * tile * max(scale, 1.0) <= task_px:
        block *= 2
    shapes = level_shapes(height, width, tile=tile)
    return TilePlan(level=level, level_downsample=d, level_size=(lw, lh), scale=scale, width=width,
                    height=height, tile=tile, block=block, shapes=shapes)


@dataclass(frozen=True)
class SourceLevel:
    """A slide pyramid level as the pyramid planner sees it."""

    level: int
    size: tuple[int, int]  # (width, height)
    downsample: float  # relative to the slide's level 0
    jpeg_tile: tuple[int, int] | None  # (width, height) of its stored tiles when they can be copied as JPEG


@dataclass(frozen=True)
class LevelPlan:
    """One level of the output pyramid: its size, scale, and whether its chunks are copied from a slide level."""

    shape: tuple[int, int]  # (height, width)
    factor: int  # output level-"0" pixels per pixel of this level (a power of two)
    copy_from: int | None  # slide level whose stored JPEG tiles become the chunks; None = computed pixels


def _copyable(source: SourceLevel | None, tile: int) -> bool:
    """The level's stored JPEG tiles line up with ``tile``-px chunks: each chunk is a whole grid of tiles."""
    if source is None or source.jpeg_tile is None:
        return False
    tw, th = source.jpeg_tile
    return tile % tw == 0 and tile % th == 0


def plan_pyramid(plan: TilePlan, sources: Sequence[SourceLevel], *, pyramid: bool = True) -> tuple[LevelPlan, ...]:
    """The output pyramid: copied slide levels where the slide's JPEG tiles line up with the chunks, else 2x means.

    Level "0" is copied when it needs no resampling and its tiles line up; then every further slide level that does
    too and sits at a power-of-two scale of it (any power: Aperio's 4x steps stay 4x) is copied, and 2x reductions
    of the coarsest one continue down to a single chunk. Otherwise (``sources`` empty, resampling, other tiles)
    every level is computed: ``plan.shapes``, each the 2x mean of the one before.

    >>> plan = plan_tiling([(4096, 4096), (1024, 1024)], [1.0, 4.0], 0.25, target_mpp=None, tile=512, task_px=2048)
    >>> src = [SourceLevel(0, (4096, 4096), 1.0, (256, 256)), SourceLevel(1, (1024, 1024), 4.0, (256, 256))]
    >>> [(lv.shape, lv.factor, lv.copy_from) for lv in plan_pyramid(plan, src)]
    [((4096, 4096), 1, 0), ((1024, 1024), 4, 1), ((512, 512), 8, None)]
    """
    by_level = {s.level: s for s in sources}
    t = plan.tile
    first = by_level.get(plan.level)
    if plan.resampled or first is None or not _copyable(first, t):
        shapes = plan.shapes if pyramid else plan.shapes[:1]
        return tuple(LevelPlan(shape, 2**i, None) for i, shape in enumerate(shapes))
    h0, w0 = plan.height, plan.width
    levels = [LevelPlan((h0, w0), 1, plan.level)]
    if not pyramid:
        return tuple(levels)
    for s in sorted(sources, key=lambda s: s.level):
        if s.level <= plan.level or max(levels[-1].shape) <= t or not _copyable(s, t):
            continue
        f = 2 ** max(0, round(math.log2(s.downsample / first.downsample)))
        w, h = s.size
        # the same image at 1/f: each side within one of its pixels of level "0"'s / f (Aperio rounds down)
        if f > levels[-1].factor and abs(w * f - w0) <= f and abs(h * f - h0) <= f:
            levels.append(LevelPlan((h, w), f, s.level))
    while max(levels[-1].shape) > t:
        h, w = levels[-1].shape
        levels.append(LevelPlan((-(-h // 2), -(-w // 2)), 2 * levels[-1].factor, None))
    return tuple(levels)


def block_levels(levels: Sequence[LevelPlan], block: int) -> int:
    """Pyramid levels (beyond "0") a task block writes itself: those that fit the block and are made as level "0" is.

    A block of ``block x block`` level-"0" chunks covers ``block / factor`` chunks of a coarser level; a block whose
    level "0" is decoded also reduces its own next levels, one whose level "0" is copied copies its next levels.
    """
    copying = levels[0].copy_from is not None
    n = 0
    for lv in levels[1:]:
        if lv.factor > block or (lv.copy_from is not None) != copying:
            break
        n += 1
    return n


def level_maps(chunk_map: np.ndarray, levels: Sequence[LevelPlan], *, tile: int) -> list[np.ndarray]:
    """The tissue chunk map of every level: level "0"'s OR-pooled by each level's factor, cut to its chunk grid."""
    maps = [chunk_map]
    for prev, lv in itertools.pairwise(levels):
        m = maps[-1]
        for _ in range(int(math.log2(lv.factor // prev.factor))):
            m = pool_any2(m)
        rows, cols = -(-lv.shape[0] // tile), -(-lv.shape[1] // tile)
        grid = np.zeros((rows, cols), bool)
        r, c = min(rows, m.shape[0]), min(cols, m.shape[1])
        grid[:r, :c] = m[:r, :c]
        maps.append(grid)
    return maps


def chunk_tissue_map(mask: np.ndarray, *, mask_downsample: tuple[float, float], plan: TilePlan,
                     margin_px: int = 1) -> np.ndarray:
    """Bool ``plan.grid`` map: True where a level-"0" chunk touches the tissue mask (dilated by ``margin_px``).

    ``mask_downsample`` is (x, y) level-0 pixels per mask pixel.
    """
    rows, cols = plan.grid
    out = np.zeros((rows, cols), bool)
    if not mask.any():
        return out
    mh, mw = mask.shape
    # integral image: any() over a rectangle in O(1)
    acc = np.int32 if mask.size < 2**31 else np.int64  # counts up to mask.size; int32 halves the memory traffic
    ii = np.zeros((mh + 1, mw + 1), acc)
    np.cumsum(mask, axis=0, dtype=acc, out=ii[1:, 1:])
    np.cumsum(ii[1:, 1:], axis=1, out=ii[1:, 1:])
    f = plan.downsample0
    t = plan.tile
    for r in range(rows):
        y0 = math.floor(r * t * f / mask_downsample[1]) - margin_px
        y1 = math.ceil(min((r + 1) * t, plan.height) * f / mask_downsample[1]) + margin_px
        y0, y1 = max(0, y0), min(mh, max(y1, y0 + 1))
        for c in range(cols):
            x0 = math.floor(c * t * f / mask_downsample[0]) - margin_px
            x1 = math.ceil(min((c + 1) * t, plan.width) * f / mask_downsample[0]) + margin_px
            x0, x1 = max(0, x0), min(mw, max(x1, x0 + 1))
            if y1 > y0 and x1 > x0:
                out[r, c] = (ii[y1, x1] - ii[y0, x1] - ii[y1, x0] + ii[y0, x0]) > 0
    return out


def pool_any2(grid: np.ndarray) -> np.ndarray:
    """OR-pool a bool chunk map 2x2 (the chunk map of the next pyramid level)."""
    r, c = grid.shape
    padded = np.zeros((r + r % 2, c + c % 2), bool)
    padded[:r, :c] = grid
    return np.asarray(padded.reshape(padded.shape[0] // 2, 2, padded.shape[1] // 2, 2).any(axis=(1, 3)))


def reduce2(img: np.ndarray, *, out: np.ndarray | None = None) -> np.ndarray:
    """2x2 mean (rounded) of uint8 HxWx3; odd edges average the pixels that exist (Pillow's ``reduce``).

    Bit-identical to ``Image.reduce(2)``. The even part is summed in uint16 with numpy, which releases the GIL (two
    tiling threads reduce in parallel) and beats Pillow, whose RGB -> RGBX -> RGB conversions cost more than the
    reduction; only an odd last row / column goes through Pillow. ``out`` (optional) receives the
    ``(ceil(H/2), ceil(W/2), 3)`` result, e.g. a view into a larger buffer.
    """
    h, w = img.shape[:2]
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        res = np.asarray(Image.fromarray(img).reduce(2))
        if out is None:
            return res
        out[...] = res
        return out
    if out is None:
        out = np.empty(((h + 1) // 2, (w + 1) // 2, 3), np.uint8)
    he, we = h // 2, w // 2
    if he and we:
        even = img[:2 * he, :2 * we]
        rows = np.add(even[0::2], even[1::2], dtype=np.uint16)  # (he, 2we, 3): vertical pairs, contiguous
        # horizontal pairs into a planar (3, he, we) sum: numpy's inner loop then runs along x (long), not over
        # the 3 channels of an interleaved pixel (which makes it several times slower)
        planar = rows.transpose(2, 0, 1)
        acc = np.add(planar[:, :, 0::2], planar[:, :, 1::2], order="C")
        acc += 2  # round half up, as Pillow: (a + b + c + d + 2) >> 2
        np.right_shift(acc, 2, out=out[:he, :we].transpose(2, 0, 1), casting="unsafe")  # <= 255: exact cast
    if h % 2:  # last row (and corner): partial boxes, Pillow's arithmetic
        out[-1:, :] = np.asarray(Image.fromarray(np.ascontiguousarray(img[-1:])).reduce(2))
    if w % 2:
        out[:, -1:] = np.asarray(Image.fromarray(np.ascontiguousarray(img[:, -1:])).reduce(2))
    return out


def source_span(o0: int, o1: int, *, scale: float, limit: int) -> tuple[int, int]:
    """Source-level pixel range ``[s0, s1)`` that output pixels ``[o0, o1)`` cover (area resampling)."""
    s0 = max(0, math.floor(o0 * scale + 1e-9))
    s1 = min(limit, math.ceil(o1 * scale - 1e-9))
    return s0, max(s1, s0 + 1) if s0 < limit else s0


def area_resample(src: np.ndarray, *, src_origin: tuple[int, int], out_origin: tuple[int, int],
                  out_shape: tuple[int, int], scale: float, src_limit: tuple[int, int]) -> np.ndarray:
    """Exact area-weighted resampling of a window: output pixel ``i`` averages source ``[i*scale, (i+1)*scale)``.

    ``src`` is the source window starting at ``src_origin`` (row, col) in source-level pixels; ``src_limit``
    (height, width) clips the last output pixels at the level edge. Windows computed chunk by chunk agree
    with one computed over the whole image (global coordinates throughout). A whole factor ``k`` on a window
    that starts on the ``k`` grid is a plain block mean (:func:`reduce_int`, several times faster).
    """
    k = round(scale)
    if k == scale and k >= 2 and src_origin == (out_origin[0] * k, out_origin[1] * k):
        fast = reduce_int(src, k, out_shape=out_shape, src_limit=(src_limit[0] - src_origin[0],
                                                                   src_limit[1] - src_origin[1]))
        if fast is not None:
            return fast
    out = _area_axis(src, axis=0, s0=src_origin[0], o0=out_origin[0], n=out_shape[0], scale=scale,
                     limit=src_limit[0])
    out = _area_axis(out, axis=1, s0=src_origin[1], o0=out_origin[1], n=out_shape[1], scale=scale,
                     limit=src_limit[1])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def reduce_int(src: np.ndarray, k: int, *, out_shape: tuple[int, int], src_limit: tuple[int, int]
               ) -> np.ndarray | None:
    """``k x k`` block means (rounded half up) of the window ``src`` into ``out_shape``; None if ``src`` is short.

    ``src_limit`` (rows, cols) is where the level ends, counted from the window's origin: a box cut by it averages
    the pixels that exist, as area resampling does. ``k == 2`` is :func:`reduce2` (Pillow's arithmetic).
    """
    oh, ow = out_shape
    need_h, need_w = min(oh * k, src_limit[0]), min(ow * k, src_limit[1])
    if src.shape[0] < need_h or src.shape[1] < need_w or -(-need_h // k) != oh or -(-need_w // k) != ow:
        return None
    window = src[:need_h, :need_w]
    if k == 2 and window.ndim == 3 and window.dtype == np.uint8:
        return reduce2(window)
    if (need_h, need_w) != (oh * k, ow * k):  # boxes cut by the level edge: zero-pad, divide by what exists
        padded = np.zeros((oh * k, ow * k, *src.shape[2:]), src.dtype)
        padded[:need_h, :need_w] = window
        window = padded
    # rows first (contiguous runs), then the columns of the k-times smaller result
    sums = np.add.reduce(window.reshape(oh, k, ow * k, *src.shape[2:]), axis=1, dtype=np.uint32)
    sums = np.add.reduce(sums.reshape(oh, ow, k, *src.shape[2:]), axis=2)
    rows = np.minimum(k, need_h - k * np.arange(oh))
    cols = np.minimum(k, need_w - k * np.arange(ow))
    counts = (rows[:, None] * cols[None, :]).astype(np.uint32).reshape(oh, ow, *([1] * (src.ndim - 2)))
    return ((sums + counts // 2) // counts).astype(np.uint8)


def _area_axis(a: np.ndarray, *, axis: int, s0: int, o0: int, n: int, scale: float, limit: int) -> np.ndarray:
    """Area-resample ``a`` along ``axis`` to ``n`` samples (float32 out) as a short sum of weighted source rows.

    Output ``i`` covers source ``[lo, hi)``; it touches at most ``ceil(scale) + 1`` source pixels, so the result
    is ``sum_t w_t * a[first + t]`` over that many taps: whole rows (or columns) gathered and accumulated, with
    long contiguous inner loops. (A cumulative sum along the axis gives the same numbers but runs its inner
    loop across the strided axis, an order of magnitude slower.)
    """
    m = a.shape[axis]
    i = np.arange(o0, o0 + n, dtype=np.float64)
    lo = np.clip(np.clip(i * scale, 0, limit) - s0, 0, m)
    hi = np.clip(np.clip((i + 1) * scale, 0, limit) - s0, 0, m)
    first = np.minimum(np.floor(lo).astype(np.int64), m - 1)
    taps = max(1, int(np.max(np.ceil(hi) - first)))
    width = np.maximum(hi - lo, 1e-12)
    bshape = [1] * a.ndim
    bshape[axis] = n
    out: np.ndarray | None = None
    for t in range(taps):
        j = first + t
        w = np.clip(np.minimum(hi, j + 1) - np.maximum(lo, j), 0, None) / width  # overlap of pixel j with [lo, hi)
        rows = np.take(a, np.minimum(j, m - 1), axis=axis)  # uint8 on the first axis: a quarter of the bytes
        term = np.multiply(rows, w.astype(np.float32).reshape(bshape), dtype=np.float32)
        out = term if out is None else np.add(out, term, out=out)
    assert out is not None
    return out
