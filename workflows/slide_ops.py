"""The slide job's stage bodies: each reads its inputs from disk, runs a library core, writes its outputs.

They are called by :mod:`workflows.slide_job`, which decides what needs to run and records completion. Nothing
here keeps a Slide or a model across calls except through :func:`~wsi_pipeline.infer.cached_predictor`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import zarr
from numpy.typing import NDArray
from shapely.geometry.base import BaseGeometry

from wsi_pipeline import __version__
from wsi_pipeline.annotations import (
    Annotation,
    class_color,
    mean_inside,
    polygons_from_zarr,
    to_feature,
)
from wsi_pipeline.atomic import atomic_write_text
from wsi_pipeline.errors import AnnotationError, WeightsError
from wsi_pipeline.infer import TiledInferenceConfig, predict_zarr
from wsi_pipeline.infer.classify import (
    CropSpec,
    G2CModel,
    class_measurements,
    decide,
    g2c_probabilities,
)
from wsi_pipeline.infer.crops import read_glomerulus_crops
from wsi_pipeline.infer.layout import Layout
from wsi_pipeline.infer.translate import generator_predictor
from wsi_pipeline.overlay import render_overlay, save_png
from wsi_pipeline.slide import Slide
from wsi_pipeline.tiling_store import written_chunks

from .job_config import ClassifySection, JobConfig, SegmentSection, TranslateSection
from .stages import WeightsRef, load_checked, resolve_weights, segmenter_predictor


# -- geometry of the tiled store ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreGeometry:
    """Where tiled pixels lie on the input slide: pixel ``(row, col)`` covers level-0 ``origin + scale * (col, row)``."""

    origin: tuple[float, float]
    scale: tuple[float, float]
    shape: tuple[int, int]  # (height, width)
    tile: int
    mpp: float | None

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> StoreGeometry:
        g = info["geometry"]
        return cls(tuple(g["origin_level0"]), tuple(g["scale_level0"]), tuple(g["shape"]), int(g["tile"]),
                   g.get("mpp"))  # type: ignore[arg-type]


def tissue_chunks(store: Path, geometry: StoreGeometry) -> NDArray[np.bool_]:
    """Bool ``(rows, cols)`` of level-0 chunks that tiling wrote (= tissue), from the shard indexes."""
    h, w = geometry.shape
    t = geometry.tile
    mask = np.zeros((-(-h // t), -(-w // t)), bool)
    for r, c in written_chunks(store, 0):
        mask[r, c] = True
    return mask


# -- resolved settings (record metadata + config) ----------------------------------------------------------------
@dataclass(frozen=True)
class SegSettings:
    """Segmentation settings after merging the config with the segmenter's record."""

    weights: WeightsRef
    mpp: float
    threshold: float
    min_area_um2: float
    inference: TiledInferenceConfig

    def to_dict(self) -> dict[str, Any]:
        return {"weights": self.weights.sha256, "mpp": self.mpp, "threshold": self.threshold,
                "min_area_um2": self.min_area_um2, "inference": self.inference.to_dict()}


def block_window(region: int, *, overlap: int, minimum: int, multiple: int = 32) -> int:
    """The smallest window (>= ``minimum``, a multiple of ``multiple``) tiling a ``region``-px block with
    ``overlap`` in as few windows as ``minimum`` allows, so no ragged last window recomputes most of its pixels.

    A 1024-px block with a 64-px halo is 1152 px: 512-px windows need 3 per side (2.25x the block's pixels
    forwarded), 608-px windows 2 (1.41x); the network is fully convolutional, so only the cost changes.

    >>> block_window(1152, overlap=64, minimum=512), block_window(300, overlap=64, minimum=512)
    (608, 512)
    """
    if region <= minimum:
        return minimum
    n = max(1, (region - overlap) // (minimum - overlap))
    window = -(-(region + (n - 1) * overlap) // n)
    return max(minimum, -(-window // multiple) * multiple)


def seg_settings(section: SegmentSection, config: JobConfig) -> SegSettings:
    """Resolve ``section`` against the segmenter's record (config values win over the record's)."""
    ref = resolve_weights(section.weights, base_dir=config.base_dir)
    _, record = load_checked(ref, arch=("unet_resnet34",))
    meta = record.metadata
    overlap = section.overlap
    window = section.window or block_window(config.tile.tile * section.block_chunks + 2 * overlap, overlap=overlap,
                                            minimum=int(meta.get("window", 512)))
    overlap = min(overlap, window // 2)
    inference = TiledInferenceConfig(window=window, overlap=overlap, margin=min(section.margin, overlap // 2),
                                     batch_size=section.batch_size, weight=section.weight, dtype="uint8",
                                     block_chunks=section.block_chunks)
    return SegSettings(ref, float(section.mpp or meta.get("mpp", 2.0)),
                       float(section.threshold or meta.get("threshold", 0.5)),
                       float(config.polygons.min_area_um2 if config.polygons.min_area_um2 is not None
                             else meta.get("min_area_um2", 2000.0)), inference)


def translate_inference(section: TranslateSection, *, tile: int) -> TiledInferenceConfig:
    """Blending settings of the whole-slide generator pass over ``tile``-px chunks (overlap and margin clamped to
    what the window allows; no window: :func:`block_window` of at least 512 px)."""
    window = section.window or block_window(tile * section.block_chunks + 2 * section.overlap,
                                            overlap=section.overlap, minimum=512)
    overlap = min(section.overlap, window // 2)
    return TiledInferenceConfig(window=window, overlap=overlap, margin=min(section.margin, overlap // 2),
                                batch_size=section.batch_size, weight=section.weight, dtype="uint8",
                                block_chunks=section.block_chunks)


@dataclass(frozen=True)
class ClassifierBundle:
    """A loaded G2C model with its crop settings and provenance (what the GeoJSON metadata records)."""

    model: G2CModel
    spec: CropSpec
    class_names: Mapping[str, str]
    weights: WeightsRef
    generator_refs: Mapping[str, str]  # stain -> label of the generator weights
    digest_parts: dict[str, Any]
    gs_threshold: float | None = None  # decision rule (None: argmax)


def load_classifier(section: ClassifySection, config: JobConfig) -> ClassifierBundle:
    """The G2C model (``g2c`` record: its own generators; ``g2c_classifier``: generators from the config)."""
    ref = resolve_weights(section.weights, base_dir=config.base_dir)
    model, record = load_checked(ref, arch=("g2c", "g2c_classifier"))
    meta = record.metadata
    classes = tuple(meta.get("classes") or ())
    gen_labels: dict[str, str] = {}
    if record.arch == "g2c":
        generators = dict(model.generators.items())
        init = meta.get("generator_sha256") or {}
        for stain in generators:
            how = "fine-tuned jointly" if meta.get("joint", True) else "frozen"
            gen_labels[stain] = f"{ref.path.name} ({how}; initialised from sha256:{str(init.get(stain, '?'))[:16]})"
        classifier = model.classifier
    else:
        stains = tuple(meta.get("stains") or section.generators)
        generators = {}
        for stain in stains:
            if stain not in section.generators:
                raise WeightsError(f"{ref.path}: classifier expects stain {stain!r}; add classify.generators.{stain}")
            gref = resolve_weights(section.generators[stain], base_dir=config.base_dir)
            generators[stain], _ = load_checked(gref, arch=("cyclegan_generator",))
            gen_labels[stain] = gref.label
        classifier = model
    n_out = classifier.fc.out_features
    if not classes and n_out == 3:
        classes = ("noa", "ss", "gs")  # the three-class G2C task's order (wsi_pipeline.train.data_stain)
    if len(classes) != n_out:
        raise WeightsError(f"{ref.path}: record lists classes {list(classes)} but the classifier has {n_out} "
                           f"outputs; add metadata.classes")
    spec = CropSpec(size=int(section.size or meta.get("crop_size", 64)), mpp=float(section.mpp or meta.get("crop_mpp", 2.0)),
                    margin=float(section.margin if section.margin is not None else meta.get("crop_margin", 0.2)))
    names = {c: section.class_names.get(c, f"Glomerulus: {c}") for c in classes}
    temperature = float(section.temperature or meta.get("temperature", 1.0))
    threshold = section.gs_threshold if section.gs_threshold is not None else meta.get("gs_threshold")
    g2c = G2CModel(generators, classifier, classes, provenance=gen_labels, temperature=temperature)
    parts = {"weights": ref.sha256, "generators": {s: gen_labels[s] for s in generators}, "spec": spec.__dict__,
             "names": names, "batch": section.batch_size, "temperature": temperature, "gs_threshold": threshold}
    return ClassifierBundle(g2c, spec, names, ref, gen_labels, parts,
                            None if threshold is None else float(threshold))


# -- stage bodies --------------------------------------------------------------------------------------------------
def segment(store: Path, settings: SegSettings, *, tissue: NDArray[np.bool_], device: str,
            scheduler: str | None) -> int:
    """Blended segmentation of ``store/0`` into ``store/seg`` (uint8 probabilities x 255); returns chunks written."""
    factory = functools.partial(segmenter_predictor, str(settings.weights.path), settings.weights.sha256, device)
    src = zarr.open_array(str(store / "0"), mode="r")
    group = zarr.open_group(str(store), mode="a")
    out = predict_zarr(src, group, predictor_factory=factory, config=settings.inference, out_channels=1,
                       name="seg", chunk_mask=tissue, scheduler=scheduler)
    out.attrs["weights_sha256"] = settings.weights.sha256
    return int(cast(int, out.attrs["chunks_written"]))  # zarr types attrs as any JSON value


def polygons(store: Path, settings: SegSettings, geometry: StoreGeometry, *, mpp0: tuple[float, float],
             max_area_um2: float, simplify_px: float, scheduler: str | None) -> list[tuple[BaseGeometry, float]]:
    """Seam-merged, valid, snapped level-0 glomerulus polygons with their mean segmentation probability."""
    seg = zarr.open_array(str(store / "seg"), mode="r")
    px_area = mpp0[0] * mpp0[1]
    found = polygons_from_zarr(seg, channel=0, threshold=settings.threshold * 255.0, origin=geometry.origin,
                               scale=geometry.scale, min_area_px=settings.min_area_um2 / px_area,
                               max_area_px=max_area_um2 / px_area, simplify_tol=simplify_px, scheduler=scheduler)
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


def classify(slide: Slide, shapes: Sequence[BaseGeometry], bundle: ClassifierBundle, *, batch_size: int,
             device: str) -> list[dict[str, Any]]:
    """``[{"class": code, "name": QuPath class, "measurements": {p_*}}]`` per shape."""
    if not shapes:
        return []
    crops = read_crops(slide, shapes, bundle.spec)
    probs = g2c_probabilities(crops, bundle.model, batch_size=batch_size, device=device)
    classes = bundle.model.classes
    out = []
    for code, m in zip(decide(probs, classes, gs_threshold=bundle.gs_threshold), class_measurements(probs, classes)):
        out.append({"class": code, "name": bundle.class_names[code], "measurements": m})
    return out


def translate(store: Path, stain: str, ref: WeightsRef, inference: TiledInferenceConfig, *,
              tissue: NDArray[np.bool_], device: str, scheduler: str | None) -> zarr.Array:
    """Blended whole-slide generator pass of ``store/0`` into ``store/virtual/<stain>`` ((3, H, W) uint8)."""
    factory = functools.partial(generator_predictor, str(ref.path), ref.sha256, device)
    src = zarr.open_array(str(store / "0"), mode="r")
    group = zarr.open_group(str(store), mode="a").require_group("virtual")
    out = predict_zarr(src, group, predictor_factory=factory, config=inference, out_channels=3, name=stain,
                       chunk_mask=tissue, scheduler=scheduler)
    out.attrs["weights_sha256"] = ref.sha256
    return out


# -- outputs ---------------------------------------------------------------------------------------------------------
def write_features(path: Path, items: Sequence[Annotation | dict[str, Any]], *, bounds_offset: tuple[int, int],
                   mpp: tuple[float, float] | None, metadata: Mapping[str, str]) -> Path:
    """A QuPath FeatureCollection of annotations (DESIGN.md rules) and verbatim pass-through features, atomically.

    Pass-through features (points, lines a pathologist drew) are kept as read, so classify mode returns the whole
    file with only the areas changed.
    """
    import json

    features = []
    for item in items:
        if isinstance(item, Annotation):
            features.append(to_feature(item, bounds_offset=bounds_offset, mpp=mpp, metadata=metadata))
        else:
            features.append(item)
    ids = [f.get("id") for f in features if f.get("id") is not None]
    if len(set(ids)) != len(ids):
        raise AnnotationError(f"{path}: duplicate feature ids")
    text = json.dumps({"type": "FeatureCollection", "features": features}, allow_nan=False, separators=(",", ":"))
    atomic_write_text(path, text)
    return path


def write_overlay(path: Path, slide: Slide, annotations: Sequence[Annotation], *, max_px: int) -> Path:
    """``overlay.png``: the slide's thumbnail with the (level-0) annotations drawn in their class colours."""
    thumb = slide.thumbnail(max_px)
    w0, h0 = slide.dimensions
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


def qupath_offset(bounds: tuple[int, int, int, int] | None) -> tuple[int, int]:
    """What to subtract from openslide level-0 coordinates to get QuPath's: ``(bounds-x, bounds-y)`` or ``(0, 0)``.

    >>> qupath_offset((1024, 512, 9000, 7000)), qupath_offset(None)
    ((1024, 512), (0, 0))
    """
    return (0, 0) if bounds is None else (int(bounds[0]), int(bounds[1]))


__all__ = [
    "ClassifierBundle",
    "SegSettings",
    "StoreGeometry",
    "base_metadata",
    "block_window",
    "classify",
    "load_classifier",
    "polygons",
    "qupath_offset",
    "read_crops",
    "seg_confidence",
    "seg_settings",
    "segment",
    "tissue_chunks",
    "translate",
    "translate_inference",
    "write_features",
    "write_overlay",
]
