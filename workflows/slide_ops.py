"""The slide job's stage bodies: each takes what earlier stages produced (in memory), runs a library core and
returns its result; :mod:`workflows.slide_job` decides what runs, writes the files once and records completion.

Models are built inside :func:`~wsi_pipeline.infer.cached_predictor` (tiled passes) or
:meth:`~workflows.slide_plan.ClassifierSettings.load` (G2C): once per process, reused across slides.
"""

from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr
from numpy.typing import NDArray
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry

from wsi_pipeline import __version__
from wsi_pipeline.annotations import TISSUE, Annotation, class_color, is_glomerulus, mean_inside, polygons_from_zarr
from wsi_pipeline.infer import TiledInferenceConfig, predict_zarr
from wsi_pipeline.infer.classify import CropSpec, class_measurements, decide, g2c_probabilities
from wsi_pipeline.infer.crops import read_glomerulus_crops
from wsi_pipeline.infer.layout import Layout
from wsi_pipeline.infer.loaders import generator_predictor, segmenter_predictor
from wsi_pipeline.overlay import render_overlay, save_png
from wsi_pipeline.slide import Slide
from wsi_pipeline.tiling import StoreGeometry, StoreInfo
from wsi_pipeline.tiling.ngff import GLOMERULI_LABEL, ThresholdedPlane, label_levels, write_multiscales
from wsi_pipeline.tiling.store import ngff_translation, write_ngff_label
from wsi_pipeline.weights import WeightsRef

from .slide_plan import ClassifierSettings, SegSettings


# -- stage bodies --------------------------------------------------------------------------------------------------
#: a stage's progress: ``progress(done, total)`` after each unit of work (tile tasks, blocks, glomeruli)
Progress = Callable[[int, int], None]


def segment(store: Path, settings: SegSettings, *, tissue: NDArray[np.bool_], device: str,
            scheduler: str | None, progress: Progress | None = None) -> int:
    """Blended segmentation of ``store/0`` into ``store/seg`` (uint8 probabilities x 255); returns chunks written."""
    factory = functools.partial(segmenter_predictor, str(settings.weights.path), settings.weights.sha256, device,
                                settings.tta)
    src = zarr.open_array(str(store / "0"), mode="r")
    group = zarr.open_group(str(store), mode="a")
    out = predict_zarr(src, group, predictor_factory=factory, config=settings.inference, out_channels=1,
                       name="seg", chunk_mask=tissue, scheduler=scheduler, progress=progress)
    out.attrs["weights_sha256"] = settings.weights.sha256
    return int(cast(int, out.attrs["chunks_written"]))  # zarr types attrs as any JSON value


def segmentation_label(store: Path, info: StoreInfo, *, threshold: float) -> Path:
    """OME-NGFF label image ``labels/glomeruli`` of ``store/seg``: 1 where the probability reaches ``threshold``
    (the polygons' rule), on every level of the image pyramid."""
    seg = zarr.open_array(str(store / "seg"), mode="r")
    level0 = ThresholdedPlane(seg, threshold=threshold * 255.0)  # read a chunk row at a time, never whole
    levels = label_levels(level0, [lv.shape for lv in info.pyramid], [lv.factor for lv in info.pyramid])
    return write_ngff_label(store, info, GLOMERULI_LABEL, levels)


def polygons(store: Path, settings: SegSettings, geometry: StoreGeometry, *, mpp0: tuple[float, float],
             max_area_um2: float, simplify_px: float, scheduler: str | None,
             progress: Callable[[int, int], None] | None = None) -> list[tuple[BaseGeometry, float]]:
    """Seam-merged, valid, snapped level-0 glomerulus polygons with their mean segmentation probability."""
    seg = zarr.open_array(str(store / "seg"), mode="r")
    px_area = mpp0[0] * mpp0[1]
    found = polygons_from_zarr(seg, channel=0, threshold=settings.threshold * 255.0, origin=geometry.origin,
                               scale=geometry.scale, min_area_px=settings.min_area_um2 / px_area,
                               max_area_px=max_area_um2 / px_area, simplify_tol=simplify_px, scheduler=scheduler,
                               progress=progress)
    return [(p, seg_confidence(seg, p, geometry)) for p in found]


def seg_confidence(seg: zarr.Array, polygon: BaseGeometry, geometry: StoreGeometry) -> float:
    """Mean probability inside ``polygon``, reading only its bounding window of the probability map."""
    (ox, oy), (sx, sy) = geometry.origin, geometry.scale
    minx, miny, maxx, maxy = polygon.bounds
    h, w = geometry.shape
    c0, c1 = max(math.floor((minx - ox) / sx), 0), min(math.ceil((maxx - ox) / sx), w)
    r0, r1 = max(math.floor((miny - oy) / sy), 0), min(math.ceil((maxy - oy) / sy), h)
    if c1 <= c0 or r1 <= r0:
        return float("nan")
    window = Layout.of(seg).read(seg, slice(r0, r1), slice(c0, c1), channel=0).astype(np.float32) / 255.0
    value = mean_inside(window, polygon, origin=(ox + c0 * sx, oy + r0 * sy), scale=(sx, sy))
    return round(value, 4) if math.isfinite(value) else value


def read_crops(slide: Slide, shapes: Sequence[BaseGeometry], spec: CropSpec) -> NDArray[np.uint8]:
    """``(N, size, size, 3)`` crops of ``shapes`` (level-0): the crop function G2C's training data are read with."""
    return read_glomerulus_crops(slide, shapes, spec)


def classify(slide: Slide, shapes: Sequence[BaseGeometry], settings: ClassifierSettings, *,
             device: str, progress: Progress | None = None) -> list[dict[str, Any]]:
    """``[{"class": code, "name": QuPath class, "measurements": {p_*}}]`` per shape (G2C is loaded only when there
    is something to classify)."""
    if not shapes:
        return []
    crops = read_crops(slide, shapes, settings.spec)
    model = settings.load()
    probs = g2c_probabilities(crops, model, batch_size=settings.batch_size, device=device, progress=progress)
    classes = model.classes
    out = []
    for code, m in zip(decide(probs, classes, gs_threshold=settings.gs_threshold), class_measurements(probs, classes)):
        out.append({"class": code, "name": settings.class_names[code], "measurements": m})
    return out


def translate(store: Path, stain: str, ref: WeightsRef, inference: TiledInferenceConfig, *, info: StoreInfo,
              tissue: NDArray[np.bool_], device: str, scheduler: str | None,
              progress: Progress | None = None) -> zarr.Array:
    """Blended whole-slide generator pass of ``store/0`` into ``store/virtual/<stain>/0`` ((3, H, W) uint8), the
    group ``virtual/<stain>`` an OME-NGFF image on the store's level-"0" grid."""
    factory = functools.partial(generator_predictor, str(ref.path), ref.sha256, device)
    src = zarr.open_array(str(store / "0"), mode="r")
    group = zarr.open_group(str(store), mode="a").require_group(f"virtual/{stain}")
    out = predict_zarr(src, group, predictor_factory=factory, config=inference, out_channels=3, name="0",
                       chunk_mask=tissue, scheduler=scheduler, progress=progress)
    out.attrs["weights_sha256"] = ref.sha256
    write_multiscales(group, name=f"virtual {stain}", factors=[1], mpp=info.geometry.mpp,
                      translation=ngff_translation(info), channels=(("R", "FF0000"), ("G", "00FF00"), ("B", "0000FF")))
    return out


# -- outputs ---------------------------------------------------------------------------------------------------------
def tissue_annotation(info: StoreInfo) -> Annotation | None:
    """The tissue outline tiling found (level-0) as its own annotation of class ``Tissue``; its id is derived from
    the store's settings digest, so a re-run writes the same feature."""
    outline = info.tissue.polygons_level0
    geom = shape(outline) if outline else None
    if geom is None or geom.is_empty:
        return None
    uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"wsi-pipeline:tissue:{info.settings_digest}"))
    return Annotation(geom, id=uid, classification=TISSUE, properties={"name": "Tissue"})



def write_overlay(path: Path, slide: Slide, annotations: Sequence[Annotation], *, max_px: int) -> Path:
    """``overlay.png``: the slide's thumbnail with the (level-0) annotations drawn in their class colours."""
    thumb = slide.thumbnail(max_px)
    w0, h0 = slide.dimensions
    annotations = [a for a in annotations if is_glomerulus(a.classification)]  # the tissue outline is not drawn
    items = [(a.geometry, a.classification) for a in annotations]
    colours = {a.classification: (a.color or class_color(a.classification)) for a in annotations
               if a.classification is not None}
    img = render_overlay(thumb, items, downsample=(w0 / thumb.shape[1], h0 / thumb.shape[0]), colors=colours)
    return save_png(path, img)


def base_metadata(slide: Slide, *, mpp_override: float | None, bounds_offset: tuple[int, int]) -> dict[str, str]:
    """Metadata strings every feature carries: pipeline, resolution provenance, coordinate convention."""
    mpp = slide.mpp
    return {"pipeline": f"wsi-pipeline {__version__}",
            "source": Path(slide.path).name,
            "mpp": f"{mpp[0]:.6g},{mpp[1]:.6g}" if mpp else "unknown",
            "mpp_source": str(slide.mpp_source),
            "mpp_override": "none" if mpp_override is None else f"{mpp_override:.6g}",
            "bounds_offset": f"{bounds_offset[0]},{bounds_offset[1]}"}


__all__ = ["base_metadata", "classify", "polygons", "read_crops", "seg_confidence", "segment", "segmentation_label",
           "tissue_annotation", "translate", "write_overlay"]
