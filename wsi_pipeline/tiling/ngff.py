"""OME-NGFF 0.5 metadata of a tiled store: the image's multiscales, its ``labels/`` and the virtual stains.

Coordinates are micrometres (level-0 pixels when the slide has no MPP) in the frame the GeoJSON uses: level-0
pixels of the slide as QuPath shows it (openslide's minus ``bounds-x/y``). Every dataset carries its ``scale`` and a
``translation`` (where the store's pixel (0, 0) lies in that frame: the tiled origin minus the bounds offset), so
``GeoJSON x * mpp`` is the NGFF ``x`` of the same point and the labels overlay the image in napari or ome-zarr-py.

Label images (``image-label``, integer (1, y, x) arrays, one level per image level, same scale and translation):

* ``labels/tissue``: 1 where the thumbnail's tissue mask is set (written when the store is created);
* ``labels/glomeruli``: 1 where the segmentation probability is at least the threshold (written by the job).

    >>> ngff_transforms(factor=4, mpp=0.5, translation=(0.0, -12.0))
    [{'type': 'scale', 'scale': [1.0, 2.0, 2.0]}, {'type': 'translation', 'translation': [0.0, 0.0, -12.0]}]
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from numpy.typing import NDArray
from zarr.codecs import BloscCodec

__all__ = ["GLOMERULI_LABEL", "LABELS", "LABEL_COLOURS", "TISSUE_LABEL", "LabelLevel", "ThresholdedPlane",
           "label_levels", "mask_levels", "ngff_image", "ngff_transforms", "store_translation", "write_label",
           "write_multiscales"]

LABELS = "labels"
TISSUE_LABEL = "tissue"
GLOMERULI_LABEL = "glomeruli"
NGFF_VERSION = "0.5"
#: RGBA of label value 1 per label image (value 0 = background, transparent)
LABEL_COLOURS: dict[str, list[int]] = {TISSUE_LABEL: [255, 200, 0, 96], GLOMERULI_LABEL: [0, 170, 255, 200]}
_LABEL_CODECS = [BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle", typesize=1)]  # core codec, any reader


def ngff_transforms(*, factor: float, mpp: float | None, translation: tuple[float, float]) -> list[dict[str, Any]]:
    """``coordinateTransformations`` of a (c, y, x) dataset ``factor`` times coarser than the store's level "0"
    whose pixels are ``mpp`` um (None: level-0 pixels); ``translation`` is (y, x) in the same unit."""
    base = (mpp if mpp is not None else 1.0) * float(factor)
    return [{"type": "scale", "scale": [1.0, base, base]},
            {"type": "translation", "translation": [0.0, float(translation[0]), float(translation[1])]}]


def _axes(mpp: float | None) -> list[dict[str, str]]:
    space = {"type": "space", **({"unit": "micrometer"} if mpp is not None else {})}
    return [{"name": "c", "type": "channel"}, {"name": "y", **space}, {"name": "x", **space}]


def ngff_image(*, name: str, factors: Sequence[float], mpp: float | None, translation: tuple[float, float],
               channels: Sequence[tuple[str, str]] = (("R", "FF0000"), ("G", "00FF00"), ("B", "0000FF")),
               paths: Sequence[str] | None = None) -> dict[str, Any]:
    """The ``ome`` attribute of an RGB (c, y, x) multiscale image: dataset ``paths[i]`` (default ``"i"``) is
    ``factors[i]`` times coarser than the store's level "0" (``mpp`` um/px); ``translation`` (y, x) as above."""
    paths = list(paths) if paths is not None else [str(i) for i in range(len(factors))]
    return {
        "version": NGFF_VERSION,
        "multiscales": [{
            "name": name, "axes": _axes(mpp),
            "datasets": [{"path": p, "coordinateTransformations": ngff_transforms(factor=f, mpp=mpp,
                                                                                   translation=translation)}
                         for p, f in zip(paths, factors)],
        }],
        "omero": {
            "rdefs": {"model": "color"},
            "channels": [{"label": lab, "color": col, "active": True, "coefficient": 1.0, "family": "linear",
                          "inverted": False, "window": {"min": 0, "max": 255, "start": 0, "end": 255}}
                         for lab, col in channels],
        },
    }


def store_translation(*, origin: tuple[float, float], bounds: Sequence[float] | None,
                      mpp: float | None) -> tuple[float, float]:
    """(y, x) of the store's pixel (0, 0) in the NGFF frame: ``origin`` (level-0 (x, y) on the slide) minus the
    bounds offset QuPath applies, in um (``mpp`` = the slide's level-0 um/px; None: level-0 pixels)."""
    bx, by = (float(bounds[0]), float(bounds[1])) if bounds else (0.0, 0.0)
    unit = mpp if mpp is not None else 1.0
    return ((origin[1] - by) * unit, (origin[0] - bx) * unit)


def write_multiscales(group: zarr.Group, *, name: str, factors: Sequence[float], mpp: float | None,
                      translation: tuple[float, float], channels: Sequence[tuple[str, str]]) -> None:
    """Record ``group`` (holding arrays "0", "1", ...) as an NGFF multiscale image."""
    group.attrs["ome"] = ngff_image(name=name, factors=factors, mpp=mpp, translation=translation, channels=channels)


@dataclass(frozen=True)
class LabelLevel:
    """One level of a label pyramid, made a band of rows at a time: ``rows(r0, r1)`` is rows ``r0:r1`` of the
    ``shape`` (y, x) uint8 level, so a level is never held whole (level 0 of a large slide is hundreds of MPix)."""

    shape: tuple[int, int]
    rows: Callable[[int, int], NDArray[np.uint8]]

    def read(self) -> NDArray[np.uint8]:
        """The whole level (small levels, tests)."""
        return self.rows(0, self.shape[0])


def _fit(sub: NDArray[Any], n_rows: int, width: int) -> NDArray[np.uint8]:
    """``sub`` (nonzero -> 1) cut or padded with 0 to ``(n_rows, width)``."""
    out = np.zeros((n_rows, width), np.uint8)
    sub = sub[:n_rows, :width]
    out[:sub.shape[0], :sub.shape[1]] = sub != 0
    return out


class ThresholdedPlane:
    """The 2-D boolean view ``array[channel] >= threshold`` of a (c, y, x) zarr array, read only where sliced."""

    def __init__(self, array: zarr.Array, *, threshold: float, channel: int = 0) -> None:
        self.array, self.threshold, self.channel = array, threshold, channel

    def __getitem__(self, key: tuple[slice, slice]) -> NDArray[np.bool_]:
        return np.asarray(self.array[(self.channel, *key)]) >= self.threshold


def label_levels(level0: NDArray[Any] | ThresholdedPlane, shapes: Sequence[tuple[int, int]],
                 factors: Sequence[int]) -> list[LabelLevel]:
    """A label pyramid with the image's level shapes: level ``k`` takes every ``factors[k]``-th pixel of
    ``level0`` (nonzero -> 1; labels are never averaged), cut or padded with 0 to ``shapes[k]``. ``level0`` is any
    array that slices with steps (a NumPy array, or a 2-D view of a zarr array: then only a band is ever read).

    >>> [a.read().shape for a in label_levels(np.ones((5, 7), bool), [(5, 7), (3, 4)], [1, 2])]
    [(5, 7), (3, 4)]
    """
    def level(shape: tuple[int, int], f: int) -> LabelLevel:
        return LabelLevel(shape, lambda r0, r1: _fit(np.asarray(level0[r0 * f:r1 * f:f, ::f]), r1 - r0, shape[1]))

    return [level(tuple(shape), int(f)) for shape, f in zip(shapes, factors)]  # type: ignore[arg-type]


def mask_levels(mask: NDArray[np.bool_], *, step: float, shapes: Sequence[tuple[int, int]],
                factors: Sequence[int]) -> list[LabelLevel]:
    """A coarse mask (``step`` level-"0" pixels per mask pixel) sampled onto each image level (nearest).

    >>> [a.read().tolist() for a in mask_levels(np.array([[1, 0]], bool), step=2.0, shapes=[(1, 4), (1, 2)],
    ...                                         factors=[1, 2])]
    [[[1, 1, 0, 0]], [[1, 0]]]
    """
    mh, mw = mask.shape

    def level(shape: tuple[int, int], f: int) -> LabelLevel:
        cols = np.minimum(((np.arange(shape[1]) * f + 0.5) / step).astype(np.intp), mw - 1)

        def rows(r0: int, r1: int) -> NDArray[np.uint8]:
            ys = np.minimum(((np.arange(r0, r1) * f + 0.5) / step).astype(np.intp), mh - 1)
            return mask[np.ix_(ys, cols)].astype(np.uint8)

        return LabelLevel(shape, rows)

    return [level(tuple(shape), int(f)) for shape, f in zip(shapes, factors)]  # type: ignore[arg-type]


def write_label(store: str | os.PathLike[str], name: str, levels: Iterable[LabelLevel], *,
                factors: Sequence[float], mpp: float | None, translation: tuple[float, float], chunk: int,
                properties: Mapping[int, Mapping[str, Any]] | None = None) -> Path:
    """Write label image ``store/labels/<name>`` (``levels``: one :class:`LabelLevel` per image level, written a
    chunk row at a time; ``properties``: label value -> its properties, default ``{1: {"name": name}}``) and list it
    in ``labels/``'s ``ome.labels``. Built under a hidden name, then renamed: never seen half-written."""
    root = Path(store)
    labels = zarr.open_group(root / LABELS, mode="a", zarr_format=3)
    final = root / LABELS / name
    tmp = root / LABELS / f".{name}.partial-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    group = zarr.open_group(tmp, mode="w", zarr_format=3)
    for i, lv in enumerate(levels):
        (h, w), band = lv.shape, min(chunk, lv.shape[0]) or 1
        arr = group.create_array(str(i), shape=(1, h, w), chunks=(1, band, min(chunk, w) or 1), dtype=np.uint8,
                                 fill_value=0, compressors=_LABEL_CODECS, dimension_names=("c", "y", "x"))
        for r0 in range(0, h, band):
            rows = lv.rows(r0, min(r0 + band, h))
            if rows.any():  # an all-zero chunk row stays unwritten (fill value 0)
                arr[0, r0:r0 + rows.shape[0]] = rows
    colour = LABEL_COLOURS.get(name, [255, 0, 255, 160])
    group.attrs["ome"] = {
        "version": NGFF_VERSION,
        "multiscales": [{"name": name, "axes": _axes(mpp),
                         "datasets": [{"path": str(i), "coordinateTransformations": ngff_transforms(
                             factor=f, mpp=mpp, translation=translation)} for i, f in enumerate(factors)]}],
        "image-label": {
            "version": NGFF_VERSION,
            "colors": [{"label-value": 1, "rgba": colour}],
            "properties": [{"label-value": int(k), **dict(v)}
                           for k, v in (properties or {1: {"name": name}}).items()],
            "source": {"image": "../../"},
        },
    }
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    listed = list(dict(labels.attrs.get("ome", {})).get("labels", []))  # type: ignore[arg-type]
    if name not in listed:
        listed.append(name)
    labels.attrs["ome"] = {"version": NGFF_VERSION, "labels": listed}
    return final
