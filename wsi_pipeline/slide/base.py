"""The one ``Slide`` interface every backend implements (openslide-like, RGB uint8 out)."""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


# largest level area (pixels) thumbnail() reads in one call; bigger levels are read in strips of this size
_THUMB_STRIP_PIXELS = 16 * 1024 * 1024


def resolve_mpp(
    file_mpp: tuple[float, float] | None, override: float | None
) -> tuple[tuple[float, float] | None, str | None]:
    """``(mpp, mpp_source)``: the override wins and is recorded; a missing or non-positive file value is ``None``.

    >>> resolve_mpp((0.5, 0.5), 0.25)
    ((0.25, 0.25), 'override')
    """
    if override is not None:
        if not (isinstance(override, (int, float)) and math.isfinite(override) and override > 0):
            raise ValueError(f"mpp_override={override!r} must be a positive number of microns per pixel")
        return (float(override), float(override)), "override"
    if file_mpp is None or not all(math.isfinite(v) and v > 0 for v in file_mpp):
        return None, None
    return (float(file_mpp[0]), float(file_mpp[1])), "file"


def check_region_args(location: tuple[int, int], size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Validated integer ``(location, size)`` for ``read_region``; ``ValueError`` names the bad argument."""
    try:
        x, y = (int(v) for v in location)
        w, h = (int(v) for v in size)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"location={location!r}, size={size!r} must be pairs of integers") from exc
    if (x, y) != tuple(location) or (w, h) != tuple(size):
        raise ValueError(f"location={location!r}, size={size!r} must be integers")
    if w < 0 or h < 0:
        raise ValueError(f"size={size!r} must be non-negative")
    return (x, y), (w, h)


def mean_downsamples(level_dimensions: Sequence[tuple[int, int]]) -> tuple[float, ...]:
    """openslide's level downsamples: the mean of the two axis ratios to level 0.

    >>> mean_downsamples([(100, 50), (50, 25)])
    (1.0, 2.0)
    """
    w0, h0 = level_dimensions[0]
    return tuple((w0 / w + h0 / h) / 2 for w, h in level_dimensions)


def level_window(location: tuple[int, int], size: tuple[int, int], *, downsample: float,
                 level_size: tuple[int, int]) -> tuple[int, int, tuple[int, int, int, int] | None]:
    """Where a ``read_region`` request lies on its level: the top-left ``(lx, ly)`` in level pixels (level-0
    ``location / downsample``, floored, as openslide's tiled readers anchor) and the part inside the level
    ``(x0, y0, x1, y1)``, None when the request misses the level.

    >>> level_window((10, 10), (8, 8), downsample=2.0, level_size=(8, 8))
    (5, 5, (5, 5, 8, 8))
    """
    (x, y), (w, h) = check_region_args(location, size)
    lx, ly = math.floor(x / downsample), math.floor(y / downsample)
    lw, lh = level_size
    x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
    return lx, ly, ((x0, y0, x1, y1) if x0 < x1 and y0 < y1 else None)


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

    def decode(self, raw: bytes, *, out: np.ndarray | None = None) -> np.ndarray:
        """Decode one tile to ``tile_height x tile_width x 3`` uint8 RGB (full stored tile, edge padding kept),
        into ``out`` (C-contiguous, that shape) when given, so hot loops reuse one buffer."""

    def read_tiles(self, indices: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Read and decode many ``(row, col)`` tiles; raises ``SlideError`` on damaged data."""


class Slide(abc.ABC):
    """An opened whole-slide image. Coordinates are level-0 pixels, ``(x, y)``; sizes are ``(width, height)``.

    Open slides inside each worker (``open_slide(path)``); never pickle a ``Slide``.
    """

    path: Path
    #: where ``mpp`` came from: ``"file"``, ``"override"`` (``mpp_override`` given) or ``None`` (unknown)
    mpp_source: str | None = None
    #: when the file's MPP is a TIFF resolution tag (generic TIFF, NDPI): that tag in dots per inch, else ``None``
    mpp_tag_dpi: float | None = None

    @property
    @abc.abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]: ...

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Each level's downsample, openslide's way (the mean of the two axis ratios); a backend whose library
        reports its own overrides this."""
        return mean_downsamples(self.level_dimensions)

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

    def _level_canvas(self, location: tuple[int, int], level: int, size: tuple[int, int]
                      ) -> tuple[np.ndarray, int, int, tuple[int, int, int, int] | None]:
        """A white ``size`` canvas for a ``read_region`` at ``level`` and where the request lies on that level
        (``lx, ly, box``: see :func:`level_window`); a reader paints the part inside ``box`` into it."""
        lx, ly, box = level_window(location, size, downsample=self.level_downsamples[level],
                                   level_size=self.level_dimensions[level])
        return np.full((int(size[1]), int(size[0]), 3), 255, np.uint8), lx, ly, box

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
        """Whole slide, longest side ``<= max_px``, as uint8 RGB; memory stays bounded on gigapixel levels.

        >>> open_slide("small.svs").thumbnail(8).shape  # doctest: +SKIP
        (8, 8, 3)
        """
        from PIL import Image

        if max_px < 1:
            raise ValueError(f"max_px={max_px} must be >= 1")
        w, h = self.dimensions
        scale = max(max(w, h) / max_px, 1.0)
        level = self.best_level_for_downsample(scale)
        lw, lh = self.level_dimensions[level]
        tw, th = max(1, round(w / scale)), max(1, round(h / scale))
        level_ds = self.level_downsamples[level]
        if lw * lh <= _THUMB_STRIP_PIXELS:
            region = self.read_region((0, 0), level, (lw, lh))
            if (tw, th) == (lw, lh):
                return region
            return np.asarray(Image.fromarray(region).resize((tw, th), Image.Resampling.BOX))
        # Big level: read horizontal strips whose height maps to whole output rows, shrink each strip with a box
        # filter, then stack. Peak memory is one strip plus the small output, never the whole level.
        fy = lh / th  # level rows per output row
        rows_per_strip = max(1, int(_THUMB_STRIP_PIXELS // max(1, lw) / max(fy, 1.0)))
        parts = []
        for oy0 in range(0, th, rows_per_strip):
            oy1 = min(th, oy0 + rows_per_strip)
            ly0, ly1 = round(oy0 * fy), max(round(oy1 * fy), round(oy0 * fy) + 1)
            strip = self.read_region((0, math.ceil(ly0 * level_ds)), level, (lw, ly1 - ly0))
            parts.append(np.asarray(Image.fromarray(strip).resize((tw, oy1 - oy0), Image.Resampling.BOX)))
        return np.concatenate(parts, axis=0)

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self):
        raise TypeError(f"{type(self).__name__} must not be pickled: pass the path and open it in the worker")
