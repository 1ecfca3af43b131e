"""overlay.png: the slide thumbnail with glomerulus outlines (and a light fill) coloured by class, plus a legend.

Example::

    >>> import numpy as np
    >>> from shapely.geometry import box
    >>> thumb = np.full((64, 96, 3), 255, np.uint8)  # a 3072 x 2048 px slide at downsample 32
    >>> img = render_overlay(thumb, [(box(320, 320, 960, 960), "Glomerulus: Global sclerosis")], downsample=32.0)
    >>> img.shape, img.dtype.name
    ((64, 96, 3), 'uint8')
    >>> save_png(out_dir / "overlay.png", img)  # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Union, cast

import numpy as np
import shapely
import shapely.affinity
from PIL import Image, ImageDraw, ImageFont
from shapely.geometry.base import BaseGeometry

from .annotations.geojson import RGB, Annotation, class_color
from .atomic import atomic_output

UNCLASSIFIED = "Unclassified"
UNCLASSIFIED_COLOR: RGB = (0, 190, 255)

Item = Union[Annotation, tuple[BaseGeometry, "str | None"]]


def _items(polygons_with_classes: Iterable[Item]) -> list[tuple[BaseGeometry, str, RGB | None]]:
    out = []
    for item in polygons_with_classes:
        if isinstance(item, Annotation):
            out.append((item.geometry, item.classification or UNCLASSIFIED, item.color))
        else:
            geom, name = item
            out.append((geom, name or UNCLASSIFIED, None))
    return out


def _rings(geom: BaseGeometry) -> Iterable[tuple[list[tuple[float, float]], bool]]:
    """``(coords, is_hole)`` for every ring of every polygon part."""
    for part in getattr(geom, "geoms", [geom]):
        if part.geom_type != "Polygon" or part.is_empty:
            continue
        yield list(part.exterior.coords), False
        for hole in part.interiors:
            yield list(hole.coords), True


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 ships a scalable default font
    except TypeError:
        return ImageFont.load_default()


def render_overlay(
    thumbnail_rgb: np.ndarray,
    polygons_with_classes: Iterable[Item],
    *,
    downsample: float | tuple[float, float],
    colors: Mapping[str, RGB] | None = None,
    fill_alpha: float = 0.25,
    line_width: int | None = None,
    legend: bool = True,
) -> np.ndarray:
    """Draw level-0 polygons on a thumbnail (``downsample`` = level-0 px per thumbnail px); returns uint8 HxWx3.

    ``polygons_with_classes``: :class:`Annotation` objects or ``(geometry, class_name | None)`` pairs. Colours come
    from ``colors``, then the annotation's own colour, then :func:`class_color`. The input is not modified.
    """
    thumb = np.asarray(thumbnail_rgb)
    if thumb.ndim != 3 or thumb.shape[2] not in (3, 4) or thumb.dtype != np.uint8:
        raise ValueError(f"thumbnail_rgb: expected uint8 HxWx3, got {thumb.dtype} {thumb.shape}")
    # np.isscalar does not narrow the union for mypy: one number or an (x, y) pair both give two floats
    dx, dy = cast("tuple[float, float]", (downsample, downsample) if np.isscalar(downsample) else downsample)
    if dx <= 0 or dy <= 0:
        raise ValueError(f"downsample={downsample!r}: must be > 0")
    colors = dict(colors or {})
    base = Image.fromarray(thumb[:, :, :3].copy()).convert("RGBA")
    w, h = base.size
    width = line_width if line_width is not None else max(2, round(min(w, h) / 350))
    fill_layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    fill_draw = ImageDraw.Draw(fill_layer)
    line_layer = Image.new("RGBA", base.size, (0, 0, 0, 0))
    line_draw = ImageDraw.Draw(line_layer)
    counts: Counter[str] = Counter()
    used: dict[str, RGB] = {}
    alpha = int(round(255 * min(max(fill_alpha, 0.0), 1.0)))
    for geom, name, own in _items(polygons_with_classes):
        rgb = colors.get(name) or own or (UNCLASSIFIED_COLOR if name == UNCLASSIFIED else class_color(name))
        used.setdefault(name, rgb)
        counts[name] += 1
        scaled = shapely.affinity.scale(geom, 1.0 / dx, 1.0 / dy, origin=(0, 0))
        rings = list(_rings(scaled))
        for coords, is_hole in rings:  # exteriors first within a polygon, then its holes cut the fill back out
            fill_draw.polygon(coords, fill=(0, 0, 0, 0) if is_hole else (*rgb, alpha))
        for coords, _ in rings:  # a light under-stroke keeps red outlines readable on pink tissue
            line_draw.line(coords, fill=(255, 255, 255, 170), width=width + 2, joint="curve")
        for coords, _ in rings:
            line_draw.line(coords, fill=(*rgb, 255), width=width, joint="curve")
    out = Image.alpha_composite(Image.alpha_composite(base, fill_layer), line_layer)
    if legend and counts:
        _draw_legend(out, used, counts)
    return np.asarray(out.convert("RGB"))


def _draw_legend(img: Image.Image, used: Mapping[str, RGB], counts: Counter[str]) -> None:
    w, h = img.size
    size = int(np.clip(min(w, h) / 45, 10, 28))
    font = _font(size)
    draw = ImageDraw.Draw(img)
    lines = [(f"{name} ({counts[name]})", used[name]) for name in sorted(used)]
    text_w = max(int(draw.textlength(t, font=font)) for t, _ in lines)
    pad, swatch, row = size // 2, size, int(size * 1.4)
    box = (pad, pad, pad + 3 * pad + swatch + text_w, pad + 2 * pad + row * len(lines) - (row - size))
    panel = Image.new("RGBA", img.size, (0, 0, 0, 0))
    ImageDraw.Draw(panel).rounded_rectangle(box, radius=pad, fill=(255, 255, 255, 215), outline=(80, 80, 80, 255))
    img.alpha_composite(panel)
    for i, (text, rgb) in enumerate(lines):
        y = box[1] + pad + i * row
        draw.rectangle((box[0] + pad, y, box[0] + pad + swatch, y + swatch), fill=(*rgb, 255), outline=(0, 0, 0, 255))
        draw.text((box[0] + 2 * pad + swatch, y + swatch / 2), text, fill=(20, 20, 20, 255), font=font, anchor="lm")


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write ``image`` (uint8 HxWx3 or HxW) as PNG atomically (temp file in the same folder + ``os.replace``)."""
    path = Path(path)
    with atomic_output(path) as tmp:
        Image.fromarray(np.asarray(image)).save(tmp, format="PNG")
    return path
