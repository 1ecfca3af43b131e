"""The tiled store's format: what ``slide.zarr`` records about itself, written and read only here.

A store is a zarr v3 group (layout and chunk I/O: :mod:`wsi_pipeline.tiling.shards`) whose ``wsi_pipeline``
attribute records the settings digest, the source slide, the geometry of level "0" on the slide, the pyramid and
the tissue. Readers get a typed :class:`StoreInfo` (parsed once) and ask it questions: where a tiled pixel lies on
the slide (:class:`StoreGeometry`), which chunks hold tissue (:func:`tissue_chunks`), the tissue mask.

    >>> info = read_store_info("out/biopsy/slide.zarr")  # doctest: +SKIP
    >>> info.geometry.mpp, info.geometry.shape  # doctest: +SKIP
    (2.0, (1024, 1536))
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr
from numpy.typing import NDArray

from .. import __version__
from ..config import digest_of
from ..errors import StoreError
from ..tissue import TissueResult
from .plan import TilePlan
from .ngff import TISSUE_LABEL, LabelLevel, mask_levels, ngff_image, store_translation, write_label
from .shards import DONE_ARRAY, MASK_ARRAY, JpegChunks, StoreLevel, create_done_array, create_image_array, \
    written_chunks

__all__ = ["STORE_FORMAT", "LevelInfo", "StoreGeometry", "StoreInfo", "TissueInfo", "create_arrays", "finish_store",
           "new_store_info", "ngff_translation", "open_or_create", "read_store_info", "settings_digest",
           "tissue_chunks", "tissue_mask", "write_ngff_label"]

STORE_FORMAT = 3  # 2: per-level chunk codecs (copied JPEG tiles), any power-of-two levels; 3: NGFF labels, translation
ATTR = "wsi_pipeline"


@dataclass(frozen=True)
class StoreGeometry:
    """Where tiled pixels lie on the input slide: pixel ``(row, col)`` covers level-0 ``origin + scale * (col, row)``."""

    origin: tuple[float, float]
    scale: tuple[float, float]
    shape: tuple[int, int]  # (height, width)
    tile: int
    mpp: float | None
    block: int = 0  # chunks per task block side (level "0")
    source_level: int = 0
    resampled: bool = False

    @property
    def grid(self) -> tuple[int, int]:
        """Chunks per column and row of level "0"."""
        h, w = self.shape
        return -(-h // self.tile), -(-w // self.tile)


@dataclass(frozen=True)
class LevelInfo:
    """One pyramid level: its shape, its factor to level "0", the slide level it copies and its chunk kind."""

    shape: tuple[int, int]
    factor: int
    copied_from_level: int | None
    chunks: Mapping[str, Any]  # {"kind": "jpeg" | "raw", codec settings}
    shard_chunks: int  # chunks per shard side


@dataclass(frozen=True)
class TissueInfo:
    mask_array: str
    mask_downsample_level0: float  # level-0 pixels per mask pixel
    threshold_od: float
    area_level0_px: float
    chunks: int
    polygons_level0: Mapping[str, Any] | None  # GeoJSON MultiPolygon, once the store is complete


@dataclass(frozen=True)
class StoreInfo:
    """What a tiled store says about itself (its ``wsi_pipeline`` attribute, typed)."""

    version: str
    settings_digest: str
    settings: Mapping[str, Any]
    complete: bool
    source: Mapping[str, Any]  # path, mpp, mpp_source, vendor, level_dimensions, level_downsamples, bounds
    geometry: StoreGeometry
    pyramid: tuple[LevelInfo, ...]
    tissue: TissueInfo

    def to_attrs(self) -> dict[str, Any]:
        g = self.geometry
        return {
            "version": self.version, "settings_digest": self.settings_digest, "settings": dict(self.settings),
            "complete": self.complete, "source": dict(self.source),
            "geometry": {
                "origin_level0": list(g.origin),  # level-0 (x, y) of output pixel (0, 0)'s top-left corner
                "scale_level0": list(g.scale),  # level-0 pixels per output pixel (x, y)
                "source_level": g.source_level, "resampled": g.resampled, "mpp": g.mpp, "shape": list(g.shape),
                "tile": g.tile, "block": g.block,
                "shard_chunks": [lv.shard_chunks for lv in self.pyramid]},
            "pyramid": [{"shape": list(lv.shape), "factor": lv.factor, "copied_from_level": lv.copied_from_level,
                         "chunks": dict(lv.chunks)} for lv in self.pyramid],
            "tissue": {**asdict(self.tissue)},
            "done_array": DONE_ARRAY,
        }

    @classmethod
    def from_attrs(cls, meta: Mapping[str, Any]) -> StoreInfo:
        g, t = meta["geometry"], meta["tissue"]
        geometry = StoreGeometry((float(g["origin_level0"][0]), float(g["origin_level0"][1])),
                                 (float(g["scale_level0"][0]), float(g["scale_level0"][1])),
                                 (int(g["shape"][0]), int(g["shape"][1])), int(g["tile"]), g.get("mpp"),
                                 int(g.get("block", 0)), int(g.get("source_level", 0)), bool(g.get("resampled")))
        shards = g.get("shard_chunks") or [0] * len(meta["pyramid"])
        return cls(str(meta["version"]), str(meta["settings_digest"]), dict(meta["settings"]),
                   bool(meta.get("complete")), dict(meta["source"]), geometry,
                   tuple(LevelInfo((int(lv["shape"][0]), int(lv["shape"][1])), int(lv["factor"]),
                                   lv.get("copied_from_level"), dict(lv["chunks"]), int(n))
                         for lv, n in zip(meta["pyramid"], shards)),
                   TissueInfo(str(t["mask_array"]), float(t["mask_downsample_level0"]), float(t["threshold_od"]),
                              float(t["area_level0_px"]), int(t["chunks"]), t.get("polygons_level0")))


def settings_digest(settings: Mapping[str, Any]) -> str:
    """The digest a store records for the settings (format, tiling config, source) it was written with."""
    return digest_of(dict(settings))


def new_store_info(*, plan: TilePlan, levels: Sequence[StoreLevel], tissue: TissueResult,
                   settings: Mapping[str, Any], source: Mapping[str, Any], mpp0: float | None,
                   chunks: int) -> StoreInfo:
    """The record of a store about to be written (``complete=False``, no tissue outline yet)."""
    geometry = StoreGeometry((0.0, 0.0), (plan.downsample0, plan.downsample0), (plan.height, plan.width), plan.tile,
                             mpp0 * plan.downsample0 if mpp0 is not None else None, plan.block, plan.level,
                             plan.resampled)
    pyramid = tuple(LevelInfo(lv.shape, lv.factor, lv.copy_from,
                              {"kind": "jpeg" if isinstance(lv.codec, JpegChunks) else "raw", **asdict(lv.codec)},
                              lv.per_side)
                    for lv in levels)
    return StoreInfo(__version__, settings_digest(settings), dict(settings), False, dict(source), geometry, pyramid,
                     TissueInfo(MASK_ARRAY, float(tissue.downsample), float(tissue.threshold),
                                float(tissue.area_level0_px), chunks, None))


def read_store_info(store_path: str | os.PathLike[str], *, complete: bool = True) -> StoreInfo:
    """The record of a tiled store; ``StoreError`` if it is not one or (``complete``) is unfinished."""
    store = Path(store_path)
    meta = _attrs(store)
    if meta is None:
        raise StoreError(f"{store}: not a wsi-pipeline tiled store")
    try:
        info = StoreInfo.from_attrs(meta)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise StoreError(f"{store}: not a wsi-pipeline tiled store ({type(exc).__name__}: {exc})") from None
    if complete and not info.complete:
        raise StoreError(f"{store}: tiling did not finish (re-run `wsi-pipeline tile` to resume)")
    return info


def _attrs(store: Path) -> Mapping[str, Any] | None:
    try:
        return dict(cast("Mapping[str, Any]", zarr.open_group(store, mode="r").attrs[ATTR]))
    except (FileNotFoundError, KeyError, ValueError, TypeError, zarr.errors.NodeTypeValidationError):
        return None


def open_or_create(store: Path, info: StoreInfo, *, overwrite: bool,
                   create: Callable[[zarr.Group], None]) -> StoreInfo:
    """The store's record: the existing one when it was written with the same settings (complete or to resume),
    else a new store (``create`` fills its arrays) built under a temp name, then renamed.

    ``StoreError`` when ``store`` holds something else, unless ``overwrite``.
    """
    if store.exists():
        meta = _attrs(store)
        found = meta.get("settings_digest") if meta else None
        if found == info.settings_digest and not overwrite:
            return read_store_info(store, complete=False)
        if not overwrite:
            what = "another slide or other settings" if found else "something that is not a wsi-pipeline store"
            raise StoreError(f"{store}: holds {what} (settings digest {str(found)[:12]} != "
                             f"{info.settings_digest[:12]}); pass overwrite=True / --overwrite to replace it")
        shutil.rmtree(store) if store.is_dir() else store.unlink()
    tmp = store.with_name(f".{store.name}.creating-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    store.parent.mkdir(parents=True, exist_ok=True)
    group = zarr.open_group(tmp, mode="w", zarr_format=3)
    create(group)
    factors = [lv.factor for lv in info.pyramid]
    group.attrs["ome"] = ngff_image(name=Path(str(info.source["path"])).stem, factors=factors,
                                    mpp=info.geometry.mpp, translation=ngff_translation(info))
    if MASK_ARRAY in group:  # the tissue mask as an NGFF label image on the pyramid
        mask = np.asarray(zarr.open_array(tmp / MASK_ARRAY, mode="r")[:]) > 0
        step = info.tissue.mask_downsample_level0 / info.geometry.scale[0]
        shapes = [lv.shape for lv in info.pyramid]
        write_ngff_label(tmp, info, TISSUE_LABEL, mask_levels(mask, step=step, shapes=shapes, factors=factors))
    group.attrs[ATTR] = info.to_attrs()
    os.replace(tmp, store)
    return info


def ngff_translation(info: StoreInfo) -> tuple[float, float]:
    """(y, x) of the store's pixel (0, 0) in its NGFF frame (um in QuPath's level-0 frame; see :mod:`.ngff`)."""
    mpp = info.source.get("mpp")
    mpp0 = (float(mpp[0]) + float(mpp[1])) / 2 if mpp else None
    return store_translation(origin=info.geometry.origin, bounds=info.source.get("bounds"), mpp=mpp0)


def write_ngff_label(store: str | os.PathLike[str], info: StoreInfo, name: str,
                     levels: Iterable[LabelLevel]) -> Path:
    """Label image ``store/labels/<name>`` on the store's pyramid (``levels``: one per image level)."""
    return write_label(store, name, levels, factors=[lv.factor for lv in info.pyramid], mpp=info.geometry.mpp,
                       translation=ngff_translation(info), chunk=info.geometry.tile)


def create_arrays(group: zarr.Group, *, plan: TilePlan, levels: Sequence[StoreLevel],
                  tissue_mask: NDArray[np.bool_]) -> None:
    """The empty pyramid levels, the per-block done markers and the tissue mask of a new store."""
    for i, lv in enumerate(levels):
        create_image_array(group, str(i), shape=lv.shape, tile=plan.tile, shard=lv.per_side * plan.tile,
                           codec=lv.codec)
    create_done_array(group, block_grid=plan.block_grid)
    mask = group.create_array(MASK_ARRAY, shape=tissue_mask.shape, chunks=tissue_mask.shape, dtype="uint8",
                              fill_value=0)
    mask[:] = tissue_mask.astype(np.uint8)


def finish_store(store: Path, info: StoreInfo, *, polygons_level0: Mapping[str, Any]) -> StoreInfo:
    """Record the tissue outline and mark the store complete (the last write: readers trust it from here on)."""
    done = replace(info, complete=True, tissue=replace(info.tissue, polygons_level0=dict(polygons_level0)))
    zarr.open_group(store, mode="r+").attrs[ATTR] = done.to_attrs()
    return done


def tissue_chunks(store: str | os.PathLike[str], info: StoreInfo) -> NDArray[np.bool_]:
    """Bool ``(rows, cols)`` of level-"0" chunks that tiling wrote (= tissue), from the shard indexes."""
    mask = np.zeros(info.geometry.grid, bool)
    for r, c in written_chunks(Path(store), 0):
        mask[r, c] = True
    return mask


def tissue_mask(store: str | os.PathLike[str], info: StoreInfo) -> tuple[NDArray[np.bool_], float]:
    """The store's thumbnail tissue mask (bool) and how many level-"0" pixels of the store one mask pixel spans."""
    arr = zarr.open_array(str(Path(store) / info.tissue.mask_array), mode="r")
    return np.asarray(arr[:]) > 0, info.tissue.mask_downsample_level0 / info.geometry.scale[0]
