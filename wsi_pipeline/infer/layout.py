"""Axis layout of an image zarr array: ``(y, x)``, ``(y, x, c)`` or the tiling store's OME-NGFF ``(c, y, x)``.

The layout comes from zarr v3 ``dimension_names`` when present (the tiling store writes ``("c", "y", "x")``),
else a 3-D array is taken as ``(y, x, c)``. Everything else in ``infer``/``annotations`` works in ``(y, x, c)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import zarr


@dataclass(frozen=True)
class Layout:
    """Where the channel axis is: ``None`` (2-D), 0 (``c, y, x``) or 2 (``y, x, c``)."""

    channel: int | None

    @classmethod
    def of(cls, array: zarr.Array) -> Layout:
        if array.ndim == 2:
            return cls(None)
        if array.ndim != 3:
            raise ValueError(f"array: expected (y, x), (y, x, c) or (c, y, x), got shape {array.shape}")
        names = getattr(array.metadata, "dimension_names", None)
        if names and "c" in names:
            axis = list(names).index("c")
            if axis not in (0, 2):
                raise ValueError(f"array: channel axis must come first or last, got dimension_names={names}")
            return cls(axis)
        return cls(2)

    @property
    def spatial_axes(self) -> tuple[int, int]:
        return (1, 2) if self.channel == 0 else (0, 1)

    def size(self, array: zarr.Array) -> tuple[int, int]:
        ya, xa = self.spatial_axes
        return array.shape[ya], array.shape[xa]

    def chunks(self, array: zarr.Array) -> tuple[int, int]:
        ya, xa = self.spatial_axes
        return array.chunks[ya], array.chunks[xa]

    def read(self, array: zarr.Array, ys: slice, xs: slice, *, channel: int | None = None) -> np.ndarray:
        """``(h, w, c)`` (or ``(h, w)`` when ``channel`` is given or the array is 2-D) of a region."""
        if self.channel is None:
            return np.asarray(array[ys, xs])
        if self.channel == 0:
            if channel is not None:
                return np.asarray(array[channel, ys, xs])
            return np.asarray(array[:, ys, xs]).transpose(1, 2, 0)
        return np.asarray(array[ys, xs] if channel is None else array[ys, xs, channel])

    def write(self, array: zarr.Array, ys: slice, xs: slice, hwc: np.ndarray) -> None:
        if self.channel == 0:
            array[:, ys, xs] = hwc.transpose(2, 0, 1)
        else:
            array[ys, xs] = hwc

    def create_like(
        self, group: zarr.Group, name: str, *, size: tuple[int, int], chunks: tuple[int, int], channels: int, dtype: str
    ) -> zarr.Array:
        """A new ``channels``-channel array with this layout, spatial ``size`` and ``chunks``; fill value 0."""
        (h, w), (ch, cw) = size, chunks
        if self.channel == 0:
            shape, chunk_shape, names = (channels, h, w), (channels, ch, cw), ("c", "y", "x")
        else:
            shape, chunk_shape, names = (h, w, channels), (ch, cw, channels), ("y", "x", "c")
        return group.create_array(name, shape=shape, chunks=chunk_shape, dtype=dtype, fill_value=0, overwrite=True,
                                  dimension_names=names)
