"""The one ``Slide`` interface every backend implements (openslide-like, RGB uint8 out)."""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class TileGrid:
    """Geometry of the stored tiles of one pyramid level (for direct tile decode)."""

    level: int
    width: int  # level width in pixels
    height: int
    tile_width: int
    tile_height: int

    @property
    def columns(self) -> int:
        return -(-self.width // self.tile_width)

    @property
    def rows(self) -> int:
        return -(-self.height // self.tile_height)


class TileDecoder(Protocol):
    """Direct access to a tiled TIFF level's compressed tiles, bypassing ``read_region``."""

    grid: TileGrid

    def read_raw(self, row: int, col: int) -> bytes:
        """Compressed bytes of one stored tile (JPEG tables already merged where needed)."""

    def decode(self, raw: bytes) -> np.ndarray:
        """Decode one tile to ``tile_height x tile_width x 3`` uint8 RGB (full stored tile, edge padding kept)."""

    def read_tiles(self, indices: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Read and decode many ``(row, col)`` tiles; raises ``SlideError`` on damaged data."""


class Slide(abc.ABC):
    """An opened whole-slide image. Coordinates are level-0 pixels, ``(x, y)``; sizes are ``(width, height)``.

    Open slides inside each worker (``open_slide(path)``); never pickle a ``Slide``.
    """

    path: Path

    @property
    @abc.abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]: ...

    @property
    @abc.abstractmethod
    def level_downsamples(self) -> tuple[float, ...]: ...

    @property
    @abc.abstractmethod
    def mpp(self) -> tuple[float, float] | None:
        """Microns per pixel at level 0 ``(x, y)``, or ``None`` when the file does not say (never guessed)."""

    @property
    @abc.abstractmethod
    def objective_power(self) -> float | None: ...

    @property
    @abc.abstractmethod
    def bounds(self) -> tuple[int, int, int, int] | None:
        """``openslide.bounds-{x,y,width,height}`` when the file defines them, else ``None``."""

    @property
    @abc.abstractmethod
    def vendor(self) -> str | None: ...

    @property
    @abc.abstractmethod
    def properties(self) -> Mapping[str, str]: ...

    @abc.abstractmethod
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """``size[1] x size[0] x 3`` uint8 RGB; transparent or out-of-slide areas are white."""

    def tile_decoder(self, level: int) -> TileDecoder | None:
        """A direct tile decoder for ``level``, or ``None`` when the level is not a decodable tiled TIFF page."""
        return None

    @abc.abstractmethod
    def close(self) -> None: ...

    # -- derived helpers shared by every backend ------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The highest-resolution-losing level whose downsample does not exceed ``downsample``."""
        best = 0
        for i, d in enumerate(self.level_downsamples):
            if d <= downsample * (1 + 1e-6):
                best = i
        return best

    def thumbnail(self, max_px: int = 1024) -> np.ndarray:
        """Whole slide, longest side ``<= max_px``, as uint8 RGB (read from the best level, then resized)."""
        from PIL import Image

        w, h = self.dimensions
        scale = max(w, h) / max_px
        level = self.best_level_for_downsample(max(scale, 1.0))
        lw, lh = self.level_dimensions[level]
        region = self.read_region((0, 0), level, (lw, lh))
        tw, th = max(1, round(w / max(scale, 1.0))), max(1, round(h / max(scale, 1.0)))
        if (tw, th) == (lw, lh):
            return region
        return np.asarray(Image.fromarray(region).resize((tw, th), Image.Resampling.BOX))

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self):
        raise TypeError(f"{type(self).__name__} must not be pickled: pass the path and open it in the worker")
