"""Whole-slide virtual staining: a PAS -> stain generator over the tiled store, blended, then a pyramidal OME-TIFF.

The generator pass is :func:`~wsi_pipeline.infer.predict_zarr` with a predictor that maps the uint8 PAS tile to
the generator's [-1, 1] range and its output back to [0, 1], so the blended result is stored as uint8 RGB
``(3, H, W)`` next to the tiles (``slide.zarr/virtual/<STAIN>``) with the tiles' geometry. Only tissue chunks are
predicted; :func:`virtual_region` paints the others white when the OME-TIFF is streamed out, pixel for pixel on
the tiled grid (pixel ``(row, col)`` covers level-0 ``origin + scale * (col, row)`` of the input slide).

>>> net = SignedToUnit(torch.nn.Identity())
>>> float(net(torch.full((1, 3, 2, 2), 0.25)).max())
0.25
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import zarr
from numpy.typing import NDArray
from torch import nn

from .layout import Layout

Region = Callable[[int, int, int, int], NDArray[np.uint8]]


class SignedToUnit(nn.Module):
    """Wrap a [-1, 1] -> [-1, 1] generator as [0, 1] -> [0, 1] (what tiled inference stores as uint8)."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ((self.generator(x * 2 - 1) + 1) / 2).clamp(0, 1)


def virtual_region(array: zarr.Array, *, tissue: NDArray[np.bool_] | None = None,
                   tissue_mask: NDArray[np.bool_] | None = None, mask_step: float = 1.0, fill: int = 255) -> Region:
    """``region(x, y, w, h) -> (h, w, 3) uint8`` over a ``(3, H, W)`` virtual stain, glass painted ``fill``.

    Glass is every pixel of a chunk not in ``tissue`` (chunk map: never predicted) and, with ``tissue_mask`` (a
    coarse pixel mask, ``mask_step`` array pixels per mask pixel), every pixel outside it: generators trained on
    tissue turn empty glass into coloured noise, which a pathologist should not see as tissue.
    """
    layout = Layout.of(array)
    height, width = layout.size(array)
    ch, cw = layout.chunks(array)

    def region(x: int, y: int, w: int, h: int) -> NDArray[np.uint8]:
        out = np.full((h, w, 3), fill, np.uint8)
        y1, x1 = min(y + h, height), min(x + w, width)
        if y1 <= y or x1 <= x:
            return out
        px = layout.read(array, slice(y, y1), slice(x, x1))
        if tissue is not None:
            r0, c0 = y // ch, x // cw
            sub = tissue[r0:(y1 - 1) // ch + 1, c0:(x1 - 1) // cw + 1]
            keep = np.repeat(np.repeat(sub, ch, axis=0), cw, axis=1)[y - r0 * ch:y1 - r0 * ch, x - c0 * cw:x1 - c0 * cw]
            px = np.where(keep[..., None], px, np.uint8(fill))
        if tissue_mask is not None:
            mh, mw = tissue_mask.shape
            rows = np.minimum(((np.arange(y, y1) + 0.5) / mask_step).astype(np.intp), mh - 1)
            cols = np.minimum(((np.arange(x, x1) + 0.5) / mask_step).astype(np.intp), mw - 1)
            px = np.where(tissue_mask[np.ix_(rows, cols)][..., None], px, np.uint8(fill))
        out[: y1 - y, : x1 - x] = px
        return out

    return region


def level0_region(grid: Region, *, grid_size: tuple[int, int], origin: tuple[float, float],
                  scale: tuple[float, float], fill: int = 255) -> Region:
    """``region`` in level-0 pixels of a slide over ``grid``, a region function on a coarser grid whose pixel
    ``(row, col)`` covers level-0 ``origin + scale * (col, row)`` (``grid_size`` = (width, height)): each level-0
    pixel takes the grid pixel its centre falls in (nearest: a power-of-two box mean of the result gives back the
    grid's pixels exactly); outside the grid is ``fill``.

    >>> cols = lambda x, y, w, h: np.broadcast_to((x + np.arange(w))[None, :, None], (h, w, 3)).astype(np.uint8)
    >>> level0_region(cols, grid_size=(2, 1), origin=(0.0, 0.0), scale=(2.0, 2.0))(0, 0, 5, 1)[0, :, 0].tolist()
    [0, 0, 1, 1, 255]
    """
    (gw, gh), (ox, oy), (sx, sy) = grid_size, origin, scale

    def region(x: int, y: int, w: int, h: int) -> NDArray[np.uint8]:
        out = np.full((h, w, 3), fill, np.uint8)
        cols = np.floor((np.arange(x, x + w) + 0.5 - ox) / sx).astype(np.intp)
        rows = np.floor((np.arange(y, y + h) + 0.5 - oy) / sy).astype(np.intp)
        cin, rin = (cols >= 0) & (cols < gw), (rows >= 0) & (rows < gh)
        if not cin.any() or not rin.any():
            return out
        c0, c1 = int(cols[cin].min()), int(cols[cin].max()) + 1
        r0, r1 = int(rows[rin].min()), int(rows[rin].max()) + 1
        block = grid(c0, r0, c1 - c0, r1 - r0)
        out[np.ix_(rin, cin)] = block[np.ix_(rows[rin] - r0, cols[cin] - c0)]
        return out

    return region


__all__ = ["SignedToUnit", "level0_region", "virtual_region"]
