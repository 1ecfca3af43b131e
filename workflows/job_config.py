"""The slide job's configuration: frozen, validated, loaded from ``configs/default.yaml``-style YAML.

Model-dependent settings (segmentation resolution, window and threshold; crop resolution and size; class names)
default to ``None`` and are then taken from the weights' own record, so shipped weights are used exactly as they
were validated; a value given here overrides the record. Weights are referenced by a shipped name
(``segmenter``, ``g2c``, ``generator-PAS-HE``: checked against their ``.sha256`` sidecar in ``wsi_pipeline/weights``)
or by a path (relative paths resolve against the config file's folder).

>>> cfg = JobConfig()
>>> cfg.segment.weights, cfg.classify.weights
('segmenter', 'g2c')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from wsi_pipeline.config import FrozenConfig, load_config
from wsi_pipeline.infer.blend import WeightKind

Task = Literal["segment", "classify", "translate", "full"]
TASKS: tuple[str, ...] = ("full", "segment", "classify", "translate")

#: G2C class codes (the classifier record's ``classes``) -> QuPath class names written to the GeoJSON
DEFAULT_CLASS_NAMES: dict[str, str] = {
    "noa": "Glomerulus: Non-sclerotic",
    "ss": "Glomerulus: Segmental sclerosis",
    "gs": "Glomerulus: Global sclerosis",
}


class TileSection(FrozenConfig):
    """Tiling of the tissue into ``slide.zarr`` (the resolution is the segmentation's)."""

    tile: int = Field(512, ge=64, le=8192)
    task_px: int = Field(2048, ge=64)
    mpp_tolerance: float = Field(0.05, ge=0, lt=0.5)  # TileConfig.mpp_tolerance: copy / whole-factor reduce
    thumbnail_px: int = Field(1024, ge=64)
    min_tissue_um2: float = Field(20_000.0, ge=0)
    pyramid: bool = True


class SegmentSection(FrozenConfig):
    """Blended tiled segmentation; ``None`` values come from the segmenter's record (then the fallbacks)."""

    weights: str = "segmenter"
    mpp: float | None = Field(None, gt=0)  # fallback 2.0
    window: int | None = Field(None, ge=32)  # fallback 512
    overlap: int = Field(64, ge=0)
    margin: int = Field(16, ge=0)
    weight: WeightKind = "gaussian"
    threshold: float | None = Field(None, gt=0, lt=1)  # fallback 0.5
    batch_size: int = Field(4, ge=1)
    block_chunks: int = Field(2, ge=1)


class PolygonSection(FrozenConfig):
    """Probability map -> glomerulus polygons (level 0 of the input slide)."""

    min_area_um2: float | None = Field(None, ge=0)  # None: the segmenter record's, else 2000
    max_area_um2: float = Field(200_000.0, gt=0)
    simplify_px: float = Field(1.0, ge=0)  # in segmentation pixels


class ClassifySection(FrozenConfig):
    """Glomerulus crops -> generated stains -> G2C; ``None`` values come from the classifier's record."""

    weights: str = "g2c"
    # stain -> PAS->stain generator weights; only used with a bare ``g2c_classifier`` (a ``g2c`` record carries
    # its own jointly fine-tuned generators, which are the ones its classifier was trained with)
    generators: dict[str, str] = Field(default_factory=dict)
    mpp: float | None = Field(None, gt=0)  # fallback 2.0
    size: int | None = Field(None, ge=16)  # fallback 64
    margin: float | None = Field(None, ge=0, le=2)  # fallback 0.2
    # calibration and decision rule (None: the record's metadata ``temperature`` / ``gs_threshold``, else 1.0 /
    # plain argmax): p = softmax(logits / temperature); class gs when p_gs >= gs_threshold, else argmax of the rest
    temperature: float | None = Field(None, gt=0)
    gs_threshold: float | None = Field(None, gt=0, lt=1)
    batch_size: int = Field(16, ge=1)
    class_names: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_CLASS_NAMES))


class TranslateSection(FrozenConfig):
    """Whole-slide virtual stains (``--task translate``) at the tiled resolution."""

    stains: tuple[str, ...] = ("HE", "MASSON", "PASM")
    generators: dict[str, str] = Field(default_factory=lambda: {
        "HE": "generator-PAS-HE", "MASSON": "generator-PAS-MASSON", "PASM": "generator-PAS-PASM"})
    # None: the smallest window >= 512 px that tiles a block (+ halo) without a ragged last window (608 px for
    # 512-px chunks: 1.4x the block's pixels forwarded, against 2.3x with 256-px windows)
    window: int | None = Field(None, ge=32)
    overlap: int = Field(64, ge=0)
    margin: int = Field(16, ge=0)
    weight: WeightKind = "gaussian"
    batch_size: int = Field(4, ge=1)
    block_chunks: int = Field(2, ge=1)
    tiff_tile: int = Field(256, ge=16)
    tiff_quality: int = Field(90, ge=1, le=100)

    @model_validator(mode="after")
    def _generators_known(self) -> TranslateSection:
        missing = [s for s in self.stains if s not in self.generators]
        if missing:
            raise ValueError(f"stains {missing} have no entry in generators")
        return self


class JobConfig(FrozenConfig):
    """Everything one slide job needs besides the slide: settings per stage."""

    device: str = "auto"
    tile: TileSection = TileSection()
    segment: SegmentSection = SegmentSection()
    polygons: PolygonSection = PolygonSection()
    classify: ClassifySection = ClassifySection()
    translate: TranslateSection = TranslateSection()
    overlay_px: int = Field(2048, ge=128)  # longest side of overlay.png
    base_dir: str | None = None  # folder relative weight paths resolve against (the config file's)


def load_job_config(path: str | Path | None) -> JobConfig:
    """``path`` (YAML, top level = :class:`JobConfig` fields) or the defaults; relative weights resolve next to it."""
    if path is None:
        return JobConfig()
    cfg = load_config(path, JobConfig)
    if cfg.base_dir is None:
        cfg = cfg.model_copy(update={"base_dir": str(Path(path).resolve().parent)})
    return cfg


def with_updates(config: JobConfig, updates: dict[str, Any], *, source: str = "overrides") -> JobConfig:
    """A copy of ``config`` with nested ``{"segment": {"threshold": 0.4}}``-style updates, validated again."""
    data = config.to_dict()
    for key, value in updates.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return JobConfig.from_dict(data, source=source)


__all__ = ["DEFAULT_CLASS_NAMES", "TASKS", "ClassifySection", "JobConfig", "PolygonSection", "SegmentSection",
           "Task", "TileSection", "TranslateSection", "load_job_config", "with_updates"]
