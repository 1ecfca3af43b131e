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
from typing import Literal

from pydantic import Field, model_validator

from wsi_pipeline.annotations.geojson import CLASS_NAMES
from wsi_pipeline.config import FrozenConfig, load_config
from wsi_pipeline.infer.blend import WeightKind
from wsi_pipeline.infer.tiled import TiledInferenceConfig
from wsi_pipeline.infer.tta import TTA
from wsi_pipeline.tiling.plan import TileConfig

Task = Literal["segment", "classify", "translate", "full"]
TASKS: tuple[str, ...] = ("full", "segment", "classify", "translate")

#: G2C class codes (the classifier record's ``classes``) -> QuPath class names written to the GeoJSON (the
#: library's one set, shared with the phantom's truth files)
DEFAULT_CLASS_NAMES: dict[str, str] = dict(CLASS_NAMES)


class BlendSection(FrozenConfig):
    """Blending of a tiled model pass over the store (segmentation, virtual stains): the job-level form of
    :class:`~wsi_pipeline.infer.TiledInferenceConfig`, whose window may be left to :func:`block_window`."""

    window: int | None = Field(None, ge=32)
    overlap: int = Field(64, ge=0)
    margin: int = Field(16, ge=0)
    weight: WeightKind = "gaussian"
    batch_size: int = Field(4, ge=1)
    block_chunks: int = Field(2, ge=1)

    def inference(self, *, tile: int, minimum_window: int) -> TiledInferenceConfig:
        """The tiled-inference settings over ``tile``-px chunks: the configured window, else the smallest one of at
        least ``minimum_window`` that tiles a block (+ halo) without a ragged last window; overlap and margin
        clamped to what the window allows."""
        window = self.window or block_window(tile * self.block_chunks + 2 * self.overlap, overlap=self.overlap,
                                             minimum=minimum_window)
        overlap = min(self.overlap, window // 2)
        return TiledInferenceConfig(window=window, overlap=overlap, margin=min(self.margin, overlap // 2),
                                    batch_size=self.batch_size, weight=self.weight, dtype="uint8",
                                    block_chunks=self.block_chunks)


def block_window(region: int, *, overlap: int, minimum: int, multiple: int = 32) -> int:
    """The smallest window (>= ``minimum``, a multiple of ``multiple``) tiling a ``region``-px block with
    ``overlap`` in as few windows as ``minimum`` allows, so no ragged last window recomputes most of its pixels.

    The job passes a 2 x 2-chunk block plus the overlap on each side (1152 px for 512-px chunks), which gives 608 px:
    tiled inference lays one grid of these over the tissue (:func:`~wsi_pipeline.infer.plan_windows`), where
    608-px windows forward about 1.25x the tissue's pixels (512 px: 1.27x); the network is fully convolutional.

    >>> block_window(1152, overlap=64, minimum=512), block_window(300, overlap=64, minimum=512)
    (608, 512)
    """
    if region <= minimum:
        return minimum
    n = max(1, (region - overlap) // (minimum - overlap))
    window = -(-(region + (n - 1) * overlap) // n)
    return max(minimum, -(-window // multiple) * multiple)


class SegmentSection(BlendSection):
    """Blended tiled segmentation; ``None`` values come from the segmenter's record (then the fallbacks)."""

    weights: str = "segmenter"
    mpp: float | None = Field(None, gt=0)  # fallback 2.0; also the tiling resolution unless tile.mpp is set
    threshold: float | None = Field(None, gt=0, lt=1)  # fallback 0.5
    # test-time augmentation: probabilities averaged over 4 flips / 8 flips+turns (4x / 8x the model's time)
    tta: TTA = "none"


class PolygonSection(FrozenConfig):
    """Probability map -> glomerulus polygons (level 0 of the input slide)."""

    min_area_um2: float | None = Field(None, ge=0)  # None: the segmenter record's, else 2000
    # 100,000 um^2 = 357 um equivalent diameter, above any human glomerulus (about 100-300 um across): larger
    # objects are tissue the segmenter over-calls (seen on IHC and silver patches), not glomeruli
    max_area_um2: float = Field(100_000.0, gt=0)
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


class TranslateSection(BlendSection):
    """Whole-slide virtual stains (``--task translate``) at the tiled resolution; no window: 608 px for 512-px
    chunks (one grid over the tissue, about 1.25x its pixels forwarded)."""

    stains: tuple[str, ...] = ("HE", "MASSON", "PASM")
    generators: dict[str, str] = Field(default_factory=lambda: {
        "HE": "generator-PAS-HE", "MASSON": "generator-PAS-MASSON", "PASM": "generator-PAS-PASM"})
    tiff_tile: int = Field(256, ge=16)
    tiff_quality: int = Field(90, ge=1, le=100)
    # source: the TIFF has the source slide's level-0 geometry (as QuPath shows it, bounds applied), the generated
    # pixels upsampled (nearest), so it overlays the slide and the GeoJSON as they are; store: the tiled grid
    # (segmentation resolution, 16x fewer pixels at 4x), coarser than the source, which its OME-XML says
    tiff_geometry: Literal["source", "store"] = "source"

    @model_validator(mode="after")
    def _generators_known(self) -> TranslateSection:
        missing = [s for s in self.stains if s not in self.generators]
        if missing:
            raise ValueError(f"stains {missing} have no entry in generators")
        return self


class JobConfig(FrozenConfig):
    """Everything one slide job needs besides the slide: settings per stage."""

    device: str = "auto"
    tile: TileConfig = TileConfig()  # mpp None: the segmentation's
    segment: SegmentSection = SegmentSection()
    polygons: PolygonSection = PolygonSection()
    classify: ClassifySection = ClassifySection()
    translate: TranslateSection = TranslateSection()
    overlay_px: int = Field(2048, ge=128)  # longest side of overlay.png
    base_dir: str | None = None  # folder relative weight paths resolve against (the config file's)

    @model_validator(mode="after")
    def _tile_at_segmentation_mpp(self) -> JobConfig:
        if self.tile.mpp is not None:
            raise ValueError("tile.mpp must be null: the job tiles at the segmentation resolution (set segment.mpp)")
        return self


def load_job_config(path: str | Path | None) -> JobConfig:
    """``path`` (YAML, top level = :class:`JobConfig` fields) or the defaults; relative weights resolve next to it."""
    if path is None:
        return JobConfig()
    cfg = load_config(path, JobConfig)
    if cfg.base_dir is None:
        cfg = cfg.model_copy(update={"base_dir": str(Path(path).resolve().parent)})
    return cfg


__all__ = ["DEFAULT_CLASS_NAMES", "TASKS", "BlendSection", "ClassifySection", "JobConfig", "PolygonSection",
           "SegmentSection", "Task", "TranslateSection", "block_window", "load_job_config"]
