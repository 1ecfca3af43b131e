"""Blended sliding-window inference over one in-memory 2-D image (the pure core of tiled inference).

Windows of ``window`` pixels step by ``window - overlap``; every window prediction is multiplied by a weight map and
the sum is divided by the summed weights, so overlapping predictions fade into each other instead of meeting at a
hard seam (plain averaging would still show the window edges, where a network sees zero padding).

Two things make the result *match whole-image inference* rather than merely look smooth:

* ``margin``: the outer ``margin`` pixels of a window get weight 0 on every side that lies inside the image. With
  ``margin`` >= the model's receptive-field radius, every pixel is taken only from windows that saw its whole
  receptive field, so a translation-equivariant network gives exactly the whole-image output. ``overlap`` must be
  at least ``2 * margin`` so the remaining window cores still cover the image.
* sides that lie on the image border keep full weight up to the window centre: there the whole-image model sees
  the same padding, and tapering would only throw accurate pixels away.

Example::

    >>> img = np.zeros((300, 517, 3), np.uint8)
    >>> out = predict_tiled(img, lambda b: b[:, :1].astype(np.float32), window=64, overlap=16, batch_size=8)
    >>> out.shape, out.dtype
    ((300, 517, 1), dtype('float32'))
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import lru_cache
from typing import Literal

import numpy as np

WeightKind = Literal["gaussian", "cosine", "uniform"]
ModelFn = Callable[[np.ndarray], np.ndarray]
"""``batch (N, C_in, h, w)`` in the image dtype -> ``(N, C_out, h, w)`` float predictions."""

_WEIGHTS = ("gaussian", "cosine", "uniform")
_FLOOR = 1e-3  # keeps every core pixel's weight positive so sums never vanish


def window_starts(length: int, window: int, overlap: int) -> list[int]:
    """Start offsets of windows covering ``[0, length)``; the last window is flush with the end."""
    if length <= window:
        return [0]
    stride = window - overlap
    starts = list(range(0, length - window, stride))
    starts.append(length - window)
    return starts


def window_spans(length: int, window: int, overlap: int, *, multiple: int = 1) -> list[tuple[int, int]]:
    """``(start, size)`` of windows covering ``[0, length)`` that step by ``window - overlap``; the last one is flush
    with the end and only as large as it must be (the rest, overlapping its neighbour by at least ``overlap``,
    rounded up to ``multiple`` and to at least half a window, so it keeps some context), instead of a full window
    that recomputes most of its neighbour: 608-px windows over 4096 px forward 1.12x the pixels per axis, not 1.19x.

    >>> window_spans(4096, 608, 64, multiple=32)[-2:], window_spans(300, 512, 64)
    ([(3264, 608), (3776, 320)], [(0, 300)])
    """
    if length <= window:
        return [(0, length)]
    stride = window - overlap
    spans, start = [], 0
    while start + window < length:
        spans.append((start, window))
        start += stride
    need = max(length - start, window // 2)  # start = the previous window's end - overlap
    size = min(window, -(-need // multiple) * multiple, length)
    spans.append((length - size, size))
    return spans


def add_window(acc: np.ndarray, wsum: np.ndarray, pred: np.ndarray, y: int, x: int, *, kind: WeightKind,
               margin: int, borders: tuple[bool, bool, bool, bool], rows: tuple[int, int] | None = None) -> None:
    """Add one window's ``(C, h, w)`` prediction, weighted, at ``(y, x)`` of ``acc`` ``(C, H, W)`` and its weight
    into ``wsum``; ``rows=(r0, r1)`` adds only the window's rows ``r0:r1`` (the first at ``y``)."""
    h, w = pred.shape[1:]
    r0, r1 = rows if rows is not None else (0, h)
    wmap = _weights((h, w), kind, margin, borders)[r0:r1]
    acc[:, y : y + r1 - r0, x : x + w] += pred[:, r0:r1].astype(np.float32, copy=False) * wmap
    wsum[y : y + r1 - r0, x : x + w] += wmap


@lru_cache(maxsize=256)
def _profile(n: int, kind: str, margin: int, at_start: bool, at_end: bool) -> np.ndarray:
    """1-D weight profile of one window side pair; flat towards image borders, zero in interior margins."""
    i = np.arange(n, dtype=np.float64)
    centre = (n - 1) / 2.0
    if kind == "gaussian":
        sigma = max(n / 8.0, 1.0)  # nnU-Net's choice: 1/8 of the window
        p = np.exp(-0.5 * ((i - centre) / sigma) ** 2)
    elif kind == "cosine":
        # flat top, raised-cosine ramps across the blend zone between the margin and a quarter of the window
        ramp = max((n // 4) - margin, 1)
        d = np.minimum(i - margin, (n - 1 - margin) - i)  # distance into the core from the nearer margin
        p = np.where(d >= ramp, 1.0, 0.5 - 0.5 * np.cos(np.pi * (np.clip(d, 0, ramp) + 0.5) / (ramp + 0.5)))
    else:
        p = np.ones(n)
    p = np.maximum(p / p.max(), _FLOOR)
    half = int(np.ceil(centre))
    if at_start:
        p[:half] = np.maximum(p[:half], p[half])
    elif margin:
        p[:margin] = 0.0
    if at_end:
        p[half:] = np.maximum(p[half:], p[half])
    elif margin:
        p[n - margin :] = 0.0
    p.setflags(write=False)
    return p


def window_weights(
    shape: tuple[int, int],
    *,
    kind: WeightKind = "gaussian",
    margin: int = 0,
    borders: tuple[bool, bool, bool, bool] = (False, False, False, False),
) -> np.ndarray:
    """Weight map ``(h, w)`` float32 of one window; ``borders`` = (top, bottom, left, right) lie on the image border."""
    if kind not in _WEIGHTS:
        raise ValueError(f"weight={kind!r}: expected one of {_WEIGHTS}")
    return _weights(tuple(shape), kind, margin, tuple(borders)).copy()


@lru_cache(maxsize=64)
def _weights(shape: tuple[int, int], kind: str, margin: int, borders: tuple[bool, ...]) -> np.ndarray:
    # at most 9 border combinations per window size: cache them, the blend loop reuses them for every window
    top, bottom, left, right = borders
    w = np.outer(_profile(shape[0], kind, margin, top, bottom), _profile(shape[1], kind, margin, left, right))
    w = w.astype(np.float32)
    w.setflags(write=False)
    return w


def _validate(window: int, overlap: int, margin: int, batch_size: int) -> None:
    if window < 1:
        raise ValueError(f"window={window}: must be >= 1")
    if not 0 <= overlap < window:
        raise ValueError(f"overlap={overlap}: must be in [0, window={window})")
    if margin < 0 or 2 * margin > overlap:
        raise ValueError(f"margin={margin}: must be in [0, overlap/2={overlap // 2}] so window cores cover the image")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size}: must be >= 1")


def _batches(items: list[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def predict_tiled(
    image: np.ndarray,
    model_fn: ModelFn,
    *,
    window: int,
    overlap: int,
    batch_size: int,
    weight: WeightKind = "gaussian",
    margin: int = 0,
) -> np.ndarray:
    """Apply ``model_fn`` to overlapping windows of ``image`` (HxWxC or HxW) and blend: float32 ``H x W x C_out``.

    ``model_fn`` receives ``(N, C, h, w)`` batches in the image's own dtype (uint8 stays uint8: normalisation is the
    predictor's job, on its device, which also quarters host-to-device traffic) and must return ``(N, C_out, h, w)``.
    Windows larger than the image shrink to it. ``margin``: see the module docstring.
    """
    _validate(window, overlap, margin, batch_size)
    if weight not in _WEIGHTS:
        raise ValueError(f"weight={weight!r}: expected one of {_WEIGHTS}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image: expected a non-empty HxWxC or HxW array, got shape {image.shape}")
    height, width = image.shape[:2]
    wh, ww = min(window, height), min(window, width)
    # a shrunken window spans the whole axis: both its sides are image borders, so no overlap is needed there
    ys = window_starts(height, wh, min(overlap, wh - 1))
    xs = window_starts(width, ww, min(overlap, ww - 1))
    positions = [(y, x) for y in ys for x in xs]
    chw = np.ascontiguousarray(image.transpose(2, 0, 1))

    acc: np.ndarray | None = None
    wsum = np.zeros((height, width), np.float32)
    for batch_pos in _batches(positions, batch_size):
        batch = np.stack([chw[:, y : y + wh, x : x + ww] for y, x in batch_pos])
        pred = np.asarray(model_fn(batch))
        if pred.ndim != 4 or pred.shape[0] != len(batch_pos) or pred.shape[2:] != (wh, ww):
            raise ValueError(
                f"model_fn returned shape {pred.shape} for a batch of shape {batch.shape}: "
                f"expected ({len(batch_pos)}, C_out, {wh}, {ww})"
            )
        if acc is None:
            acc = np.zeros((pred.shape[1], height, width), np.float32)
        for (y, x), p in zip(batch_pos, pred):
            add_window(acc, wsum, p, y, x, kind=weight, margin=margin,
                       borders=(y == 0, y + wh == height, x == 0, x + ww == width))
    assert acc is not None  # at least one window always exists
    acc /= wsum
    return np.ascontiguousarray(acc.transpose(1, 2, 0))
