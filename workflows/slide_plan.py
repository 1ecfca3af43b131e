"""One slide, planned once: what the job knows about a slide and its settings before any stage runs.

:class:`SlidePlan` opens the slide once (kept open for the whole job: crops and the overlay read from the same
handle), records its level-0 size, bounds, MPP and source identity, and carries the settings resolved against the
weights' records (:func:`seg_settings`, :func:`classifier_settings`: header reads, nothing built, each file hashed
once per process). The tiled store's record comes from the tile stage in memory, or is read once on resume.

    >>> with SlidePlan.open("biopsy.svs", slide_dir, config=JobConfig()) as plan:  # doctest: +SKIP
    ...     plan.mpp0, plan.seg.mpp, plan.offset
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from wsi_pipeline.errors import SlideError, WeightsError
from wsi_pipeline.infer import TiledInferenceConfig
from wsi_pipeline.infer.classify import CropSpec, G2CModel
from wsi_pipeline.infer.loaders import G2C_ARCH, GENERATOR_ARCH, SEGMENTER_ARCH, load_g2c
from wsi_pipeline.infer.tta import TTA
from wsi_pipeline.slide import Slide, check_scale, open_slide
from wsi_pipeline.tiling import StoreInfo, read_store_info, tissue_chunks
from wsi_pipeline.weights import WeightsRef, checked_record, resolve_weights

from .job_config import ClassifySection, JobConfig

__all__ = ["ClassifierSettings", "SegSettings", "SlidePlan", "classifier_settings", "qupath_offset", "seg_settings"]


# -- settings resolved against the weights' records ----------------------------------------------------------------
@dataclass(frozen=True)
class SegSettings:
    """Segmentation settings after merging the config with the segmenter's record."""

    weights: WeightsRef
    mpp: float
    threshold: float
    min_area_um2: float
    inference: TiledInferenceConfig
    stains: tuple[str, ...] = ("PAS",)  # the stains the segmenter had labelled training data in (its record)
    tta: TTA = "none"

    def to_dict(self) -> dict[str, Any]:
        out = {"weights": self.weights.sha256, "mpp": self.mpp, "threshold": self.threshold,
               "min_area_um2": self.min_area_um2, "inference": self.inference.to_dict()}
        return out if self.tta == "none" else {**out, "tta": self.tta}  # digests of earlier runs stay valid


def seg_settings(config: JobConfig) -> SegSettings:
    """Resolve ``config.segment`` against the segmenter's record (config values win over the record's)."""
    section = config.segment
    ref = resolve_weights(section.weights, base_dir=config.base_dir)
    meta = checked_record(ref, arch=SEGMENTER_ARCH).metadata
    inference = section.inference(tile=config.tile.tile, minimum_window=int(meta.get("window", 512)))
    min_area = config.polygons.min_area_um2
    return SegSettings(ref, float(section.mpp or meta.get("mpp", 2.0)),
                       float(section.threshold or meta.get("threshold", 0.5)),
                       float(min_area if min_area is not None else meta.get("min_area_um2", 2000.0)), inference,
                       tuple(str(x).upper() for x in meta.get("stains", ["PAS"])), section.tta)


@dataclass(frozen=True)
class ClassifierSettings:
    """G2C's crop settings, classes and provenance, from its record (and its generators'): nothing built yet."""

    weights: WeightsRef
    generators: Mapping[str, WeightsRef]  # a bare g2c_classifier's; empty for a g2c record (its own generators)
    stains: tuple[str, ...]
    classes: tuple[str, ...]
    spec: CropSpec
    class_names: Mapping[str, str]
    generator_labels: Mapping[str, str]  # stain -> label of the generator weights
    batch_size: int
    temperature: float = 1.0  # calibration: p = softmax(logits / temperature)
    gs_threshold: float | None = None  # decision rule: gs when p_gs >= this, else argmax of the rest (None: argmax)

    @property
    def digest_parts(self) -> dict[str, Any]:
        return {"weights": self.weights.sha256, "generators": dict(self.generator_labels),
                "spec": self.spec.__dict__, "names": dict(self.class_names), "batch": self.batch_size,
                "temperature": self.temperature, "gs_threshold": self.gs_threshold}

    @property
    def models(self) -> dict[str, str]:
        """GeoJSON metadata: which weights classified."""
        return {"classifier": self.weights.label, "virtual_stains": ",".join(self.stains),
                **{f"generator_{s}": v for s, v in self.generator_labels.items()}}

    def load(self) -> G2CModel:
        """The G2C model (built once per process for these files)."""
        return load_g2c(self.weights, generators=self.generators, classes=self.classes,
                        provenance=self.generator_labels, temperature=self.temperature)


def classifier_settings(section: ClassifySection, *, base_dir: str | None) -> ClassifierSettings:
    """``g2c`` record: its own jointly fine-tuned generators; ``g2c_classifier``: generators from the config."""
    ref = resolve_weights(section.weights, base_dir=base_dir)
    record = checked_record(ref, arch=G2C_ARCH)
    meta = record.metadata
    classes = tuple(meta.get("classes") or ())
    generators: dict[str, WeightsRef] = {}
    labels: dict[str, str] = {}
    if record.arch == "g2c":
        stains = tuple(record.config.stains)
        n_out = int(record.config.classifier.num_classes)
        init = meta.get("generator_sha256") or {}
        for stain in stains:
            how = "fine-tuned jointly" if meta.get("joint", True) else "frozen"
            labels[stain] = f"{ref.path.name} ({how}; initialised from sha256:{str(init.get(stain, '?'))[:16]})"
    else:
        stains = tuple(meta.get("stains") or section.generators)
        n_out = int(record.config.num_classes)
        for stain in stains:
            if stain not in section.generators:
                raise WeightsError(f"{ref.path}: classifier expects stain {stain!r}; add classify.generators.{stain}")
            gref = resolve_weights(section.generators[stain], base_dir=base_dir)
            checked_record(gref, arch=GENERATOR_ARCH)
            generators[stain], labels[stain] = gref, gref.label
    if not classes and n_out == 3:
        classes = ("noa", "ss", "gs")  # the three-class G2C task's order (wsi_pipeline.train.data_stain)
    if len(classes) != n_out:
        raise WeightsError(f"{ref.path}: record lists classes {list(classes)} but the classifier has {n_out} "
                           f"outputs; add metadata.classes")
    spec = CropSpec(size=int(section.size or meta.get("crop_size", 64)),
                    mpp=float(section.mpp or meta.get("crop_mpp", 2.0)),
                    margin=float(section.margin if section.margin is not None else meta.get("crop_margin", 0.2)))
    names = {c: section.class_names.get(c, f"Glomerulus: {c}") for c in classes}
    temperature = float(section.temperature or meta.get("temperature", 1.0))
    threshold = section.gs_threshold if section.gs_threshold is not None else meta.get("gs_threshold")
    return ClassifierSettings(ref, generators, stains, classes, spec, names, labels, section.batch_size,
                              temperature, None if threshold is None else float(threshold))


def qupath_offset(bounds: tuple[int, int, int, int] | None) -> tuple[int, int]:
    """What to subtract from openslide level-0 coordinates to get QuPath's: ``(bounds-x, bounds-y)`` or ``(0, 0)``.

    >>> qupath_offset((1024, 512, 9000, 7000)), qupath_offset(None)
    ((1024, 512), (0, 0))
    """
    return (0, 0) if bounds is None else (int(bounds[0]), int(bounds[1]))


# -- the plan ------------------------------------------------------------------------------------------------------
@dataclass
class SlidePlan:
    """One slide for the whole job: the open slide, its geometry and identity, and the tiled store's record."""

    path: Path
    slide: Slide
    store: Path
    mpp_override: float | None
    mpp0: tuple[float, float]
    offset: tuple[int, int]  # QuPath coordinates = level-0 minus this
    source: dict[str, Any]  # what identifies the input (path, size, mtime, mpp_override): part of the tile digest
    _info: StoreInfo | None = field(default=None, repr=False)
    _tissue: NDArray[np.bool_] | None = field(default=None, repr=False)

    @classmethod
    def open(cls, path: str | os.PathLike[str], slide_dir: Path, *, mpp_override: float | None) -> SlidePlan:
        """Open the slide (``SlideError`` naming the file when it cannot be read, has no MPP or an implausible one:
        :func:`~wsi_pipeline.slide.check_scale`)."""
        p = Path(path)
        slide = open_slide(p, mpp_override=mpp_override)
        try:
            if slide.mpp is None:
                raise SlideError(p, "no microns-per-pixel in the file; pass --mpp-override UM")
            check_scale(slide)  # a dpi-style tag or an implausible MPP: refused before any work
            st = p.stat()
            source = {"path": str(p.resolve()), "size": st.st_size, "mtime": st.st_mtime_ns,
                      "mpp_override": mpp_override}
            return cls(p, slide, slide_dir / "slide.zarr", mpp_override, slide.mpp, qupath_offset(slide.bounds),
                       source)
        except BaseException:
            slide.close()
            raise

    def close(self) -> None:
        self.slide.close()

    def __enter__(self) -> SlidePlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def level0_size(self) -> tuple[int, int]:
        return self.slide.dimensions

    # -- the tiled store -------------------------------------------------------------------------------------------
    def set_store(self, info: StoreInfo) -> None:
        """The store's record as the tile stage wrote it (no read back)."""
        self._info, self._tissue = info, None

    @property
    def info(self) -> StoreInfo:
        """The store's record: from the tile stage on a fresh run, read once on resume."""
        if self._info is None:
            self._info = read_store_info(self.store)
        return self._info

    @property
    def tissue(self) -> NDArray[np.bool_]:
        """Level-"0" chunks of the store that hold tissue (read once from the shard indexes)."""
        if self._tissue is None:
            self._tissue = tissue_chunks(self.store, self.info)
        return self._tissue
