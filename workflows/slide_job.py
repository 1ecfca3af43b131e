"""One slide, end to end: tile -> segment -> polygons -> crops -> generators -> G2C -> GeoJSON + overlay.

    >>> entry = run_slide("biopsy.svs", "out", config=JobConfig())  # doctest: +SKIP
    >>> entry["status"], entry["counts"]["glomeruli"]  # doctest: +SKIP
    ('ok', 41)

:func:`run_slide` takes a path and small picklable settings and returns a JSON-able report entry, so it can run
as a Dask task; it never raises for a bad slide (status ``failed``, reason naming the file, traceback in
``OUT/<stem>/job.log``) nor for an empty one (status ``no-tissue``). Layout of ``OUT/<stem>/``::

    slide.zarr/              tiles at the segmentation resolution (+ pyramid), tissue mask
    slide.zarr/seg           (1, H, W) uint8 glomerulus probability x 255, tissue chunks only
    slide.zarr/virtual/<S>   (3, H, W) uint8 virtual stain S (--task translate)
    stages/<stage>.done.json completion markers (digest of settings + models + upstream), written last
    stages/polygons.geojson  unclassified glomeruli with segmentation confidence (ids kept downstream)
    stages/classes.json      G2C result per glomerulus id
    glomeruli.geojson        the QuPath FeatureCollection (DESIGN.md)
    overlay.png              thumbnail with the glomeruli coloured by class
    virtual-<S>.ome.tif      pyramidal JPEG OME-TIFF of virtual stain S on the tiled grid (--task translate)

Tasks: ``full`` (default), ``segment`` (no classification), ``classify`` (areas from ``<stem>.geojson`` next to the
slide or ``annotations``), ``translate`` (whole-slide virtual stains).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask
import numpy as np

from wsi_pipeline.annotations import Annotation, parse_geojson, read_geojson
from wsi_pipeline.atomic import atomic_write_json, atomic_write_text
from wsi_pipeline.errors import (
    AnnotationError,
    NoTissueError,
    SlideError,
    WsiPipelineError,
)
from wsi_pipeline.export.tiff import write_pyramidal_tiff
from wsi_pipeline.infer import TiledInferenceConfig
from wsi_pipeline.slide import Slide, open_slide
from wsi_pipeline.tiling import TileConfig, read_store_info, tile_slide

from . import slide_ops as ops
from .job_config import TASKS, JobConfig
from .stages import (
    StageBook,
    StageRecord,
    Stopwatch,
    digest_of,
    file_sha256,
    resolve_weights,
)

#: suffixes tried for ``<stem>`` (multi-part first)
_MULTI_SUFFIXES = (".ome.tiff", ".ome.tif")


def slide_stem(path: str | os.PathLike[str]) -> str:
    """``biopsy.ome.tif`` -> ``biopsy``; ``a.svs`` -> ``a`` (the output folder's name)."""
    name = Path(path).name
    for suffix in _MULTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def run_slide(slide_path: str | os.PathLike[str], out_dir: str | os.PathLike[str], *, config: JobConfig,
              task: str = "full", mpp_override: float | None = None, annotations: str | None = None,
              workers: int | None = None, scheduler: str | None = "threads", progress: bool = False,
              stem: str | None = None, until: str | None = None,
              on_stage: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``task`` on one slide into ``out_dir/<stem>``; returns its report entry (never raises for bad input).

    ``until="tile"`` stops after tiling (the batch layer runs tiling and the model stages as separate tasks, so
    CPU workers tile while GPU workers infer); ``on_stage(name)`` is called before a stage body runs.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}: expected one of {TASKS}")
    if until not in (None, "tile"):
        raise ValueError(f"until={until!r}: expected None or 'tile'")
    path = Path(slide_path)
    stem = stem or slide_stem(path)
    job = _SlideJob(path, Path(out_dir).resolve() / stem, config=config, task=task, mpp_override=mpp_override,
                    annotations=annotations, workers=workers, scheduler=scheduler, progress=progress, until=until,
                    on_stage=on_stage)
    t0 = time.perf_counter()
    entry: dict[str, Any] = {"input": str(path), "output": str(job.slide_dir), "task": task}
    try:
        with dask.config.set(num_workers=workers) if workers else contextlib.nullcontext():
            job.run()
        status, reason = ("skipped" if not job.ran else "ok"), None
    except NoTissueError as exc:
        status, reason = "no-tissue", str(exc)
    except Exception as exc:  # noqa: BLE001  (one bad slide must not stop a batch: report it, keep the traceback)
        status, reason = "failed", _reason(exc, path)
        _log_traceback(job.slide_dir, path)
    entry.update(status=status, reason=reason, seconds=round(time.perf_counter() - t0, 3),
                 timings={k: round(v, 3) for k, v in job.timings.items()}, stages_run=job.ran,
                 stages_skipped=job.skipped, counts=job.counts, outputs=job.outputs)
    return entry


def _reason(exc: BaseException, path: Path) -> str:
    text = str(exc) or type(exc).__name__
    if not isinstance(exc, WsiPipelineError):
        text = f"{type(exc).__name__}: {text}"
    return text if str(path) in text or path.name in text else f"{path}: {text}"


def _log_traceback(slide_dir: Path, path: Path) -> None:
    try:
        atomic_write_text(slide_dir / "job.log", f"{path}\n{traceback.format_exc()}")
    except OSError:
        pass  # the report still names the failure


class _SlideJob:
    """Decides which stages run (markers) and chains them; the stage bodies live in :mod:`slide_ops`."""

    def __init__(self, path: Path, slide_dir: Path, *, config: JobConfig, task: str, mpp_override: float | None,
                 annotations: str | None, workers: int | None, scheduler: str | None, progress: bool,
                 until: str | None = None, on_stage: Callable[[str], None] | None = None) -> None:
        self.path, self.slide_dir, self.config, self.task = path, slide_dir, config, task
        self.mpp_override, self.annotations = mpp_override, annotations
        self.workers, self.scheduler, self.progress = workers, scheduler, progress
        self.store = slide_dir / "slide.zarr"
        self.book = StageBook(slide_dir)
        self.timings: dict[str, float] = {}
        self.counts: dict[str, Any] = {}
        self.outputs: dict[str, str] = {}
        self.ran: list[str] = []
        self.skipped: list[str] = []
        self.until, self.on_stage = until, on_stage

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def stage(self, name: str, digest: str, body: Callable[[], tuple[list[Path], dict[str, Any]]]) -> StageRecord:
        """Skip ``name`` when finished with ``digest``; else run ``body`` (-> outputs, counts) and mark it done."""
        done = self.book.done(name, digest)
        if done is not None:
            self.skipped.append(name)
            self.counts.update(done.counts)
            return done
        self.book.forget(name)
        if self.on_stage is not None:
            self.on_stage(name)
        with Stopwatch() as sw:
            outputs, counts = body()
        self.timings[name] = sw.seconds
        self.ran.append(name)
        self.counts.update(counts)
        return self.book.mark(name, digest, seconds=sw.seconds, outputs=outputs, counts=counts)

    def open(self) -> Slide:
        return open_slide(self.path, mpp_override=self.mpp_override)

    # -- the job -----------------------------------------------------------------------------------------------
    def run(self) -> None:
        with self.open() as slide:  # fail fast (and cheaply) on unreadable files, before any work
            dims, bounds, slide_mpp = slide.dimensions, slide.bounds, slide.mpp
            source = {"path": str(self.path.resolve()), "size": self.path.stat().st_size,
                      "mtime": self.path.stat().st_mtime_ns, "mpp_override": self.mpp_override}
        self.offset = ops.qupath_offset(bounds)
        self.counts["level0_size"] = list(dims)
        self.source = source
        if slide_mpp is None:
            raise SlideError(self.path, "no microns-per-pixel in the file; pass --mpp-override UM")
        self.mpp0 = slide_mpp
        if self.task == "classify":
            self.run_classify_file()
            return
        if self.task == "translate":  # needs the segmentation resolution only (the store is shared)
            mpp = self.config.segment.mpp or ops.seg_settings(self.config.segment, self.config).mpp
            tile_digest = self.tile(mpp)
            if self.until != "tile":
                self.run_translate(tile_digest)
            return
        seg = ops.seg_settings(self.config.segment, self.config)
        tile_digest = self.tile(seg.mpp)
        if self.until == "tile":
            return
        seg_digest = digest_of("segment", tile_digest, seg.to_dict(), self.config.device)
        geometry = self.geometry()
        self.stage("segment", seg_digest, lambda: ([self.store / "seg"], {
            "seg_chunks": ops.segment(self.store, seg, tissue=self.tissue(geometry), device=self.config.device,
                                      scheduler=self.scheduler)}))
        poly_path = self.slide_dir / "stages" / "polygons.geojson"
        poly_digest = digest_of("polygons", seg_digest, self.config.polygons.to_dict(), seg.min_area_um2)
        self.stage("polygons", poly_digest, lambda: self.write_polygons(poly_path, seg, geometry))
        shapes = read_geojson(poly_path)
        if self.task == "full":
            bundle = ops.load_classifier(self.config.classify, self.config)
            cls_path = self.slide_dir / "stages" / "classes.json"
            cls_digest = digest_of("classify", poly_digest, bundle.digest_parts, self.config.device)
            self.stage("classify", cls_digest, lambda: self.write_classes(cls_path, shapes, bundle))
            results = json.loads(cls_path.read_text(encoding="utf-8"))
            final = [self.apply_class(a, results[a.id]) for a in shapes]
            stains = ",".join(bundle.model.stains)
            models = {"segmenter": seg.weights.label, "classifier": bundle.weights.label, "virtual_stains": stains,
                      **{f"generator_{s}": v for s, v in bundle.generator_refs.items()}}
            export_digest = digest_of("export", cls_digest, self.config.overlay_px, self.offset)
        else:
            final = [a.classified("Glomerulus") for a in shapes]
            models = {"segmenter": seg.weights.label, "virtual_stains": ""}
            export_digest = digest_of("export-segment", poly_digest, self.config.overlay_px, self.offset)
        self.stage("export", export_digest, lambda: self.export(final, models))
        self.outputs.update(geojson=str(self.slide_dir / "glomeruli.geojson"),
                            overlay=str(self.slide_dir / "overlay.png"))

    def tile(self, mpp: float) -> str:
        t = self.config.tile
        tcfg = TileConfig(mpp=mpp, tile=t.tile, task_px=t.task_px, thumbnail_px=t.thumbnail_px,
                          min_tissue_um2=t.min_tissue_um2, pyramid=t.pyramid, mpp_tolerance=t.mpp_tolerance)
        digest = digest_of("tile", tcfg.to_dict(), self.source)

        def body() -> tuple[list[Path], dict[str, Any]]:
            kw = {"config": tcfg, "workers": self.workers, "mpp_override": self.mpp_override, "progress": self.progress}
            try:
                res = tile_slide(self.path, self.store, **kw)  # type: ignore[arg-type]
            except WsiPipelineError as exc:
                if not self.store.exists() or isinstance(exc, NoTissueError):
                    raise
                # the store belongs to this job: one written with other settings (or a changed slide) is replaced
                res = tile_slide(self.path, self.store, overwrite=True, **kw)  # type: ignore[arg-type]
            return [self.store], {"tissue_chunks": res.chunks_tissue, "chunks_total": res.chunks_total,
                                  "tiled_shape": list(res.shape), "tiled_mpp": res.mpp}

        self.stage("tile", digest, body)
        self.outputs["store"] = str(self.store)
        return digest

    def geometry(self) -> ops.StoreGeometry:
        return ops.StoreGeometry.from_info(read_store_info(self.store))

    def tissue(self, geometry: ops.StoreGeometry) -> Any:
        return ops.tissue_chunks(self.store, geometry)

    def tissue_mask(self, geometry: ops.StoreGeometry) -> tuple[Any, float]:
        """The store's thumbnail tissue mask (bool) and how many tiled pixels one mask pixel spans."""
        import zarr

        info = read_store_info(self.store)
        mask = np.asarray(zarr.open_array(str(self.store / info["tissue"]["mask_array"]), mode="r")[:]) > 0
        return mask, float(info["tissue"]["mask_downsample_level0"]) / geometry.scale[0]

    def write_polygons(self, path: Path, seg: ops.SegSettings,
                       geometry: ops.StoreGeometry) -> tuple[list[Path], dict[str, Any]]:
        found = ops.polygons(self.store, seg, geometry, mpp0=self.mpp0, max_area_um2=self.config.polygons.max_area_um2,
                             simplify_px=self.config.polygons.simplify_px, scheduler=self.scheduler)
        anns = [Annotation(p, measurements={"seg_confidence": conf}) for p, conf in found]
        ops.write_features(path, anns, bounds_offset=(0, 0), mpp=self.mpp0, metadata={})
        return [path], {"glomeruli": len(anns)}

    def write_classes(self, path: Path, shapes: list[Annotation],
                      bundle: ops.ClassifierBundle) -> tuple[list[Path], dict[str, Any]]:
        with self.open() as slide:
            results = ops.classify(slide, [a.geometry for a in shapes], bundle,
                                   batch_size=self.config.classify.batch_size, device=self.config.device)
        atomic_write_json(path, {a.id: r for a, r in zip(shapes, results)})
        return [path], {"classes": dict(Counter(r["class"] for r in results))}

    @staticmethod
    def apply_class(annotation: Annotation, result: dict[str, Any]) -> Annotation:
        return annotation.classified(result["name"], measurements=result["measurements"])

    def export(self, annotations: Sequence[Annotation | dict[str, Any]],
               models: dict[str, str]) -> tuple[list[Path], dict[str, Any]]:
        geojson, overlay = self.slide_dir / "glomeruli.geojson", self.slide_dir / "overlay.png"
        with self.open() as slide:
            meta = {**ops.base_metadata(slide, mpp_override=self.mpp_override, bounds_offset=self.offset), **models}
            ops.write_features(geojson, annotations, bounds_offset=self.offset, mpp=self.mpp0, metadata=meta)
            areas = [a for a in annotations if isinstance(a, Annotation)]
            ops.write_overlay(overlay, slide, areas, max_px=self.config.overlay_px)
        return [geojson, overlay], {"features": len(annotations)}

    # -- classify mode -----------------------------------------------------------------------------------------
    def annotation_file(self) -> Path:
        path = Path(self.annotations) if self.annotations else self.path.with_name(f"{slide_stem(self.path)}.geojson")
        if not path.is_file():
            raise AnnotationError(f"{path}: annotations to classify not found (put <slide-stem>.geojson next to "
                                  f"{self.path.name} or pass --annotations FILE)")
        return path

    def run_classify_file(self) -> None:
        src = self.annotation_file()
        items = read_items(src, bounds_offset=self.offset)
        areas = [a for a in items if isinstance(a, Annotation)]
        bundle = ops.load_classifier(self.config.classify, self.config)
        cls_path = self.slide_dir / "stages" / "classes.json"
        cls_digest = digest_of("classify-file", file_sha256(src), self.offset, bundle.digest_parts, self.config.device)
        self.stage("classify", cls_digest, lambda: self.write_classes(cls_path, areas, bundle))
        results = json.loads(cls_path.read_text(encoding="utf-8"))
        final = [self.apply_class(a, results[a.id]) if isinstance(a, Annotation) else a for a in items]
        models = {"classifier": bundle.weights.label, "virtual_stains": ",".join(bundle.model.stains),
                  "annotations_source": src.name,
                  **{f"generator_{s}": v for s, v in bundle.generator_refs.items()}}
        self.stage("export", digest_of("export-classify", cls_digest, self.config.overlay_px, self.offset),
                   lambda: self.export(final, models))
        self.outputs.update(geojson=str(self.slide_dir / "glomeruli.geojson"),
                            overlay=str(self.slide_dir / "overlay.png"))

    # -- translate mode ----------------------------------------------------------------------------------------
    def run_translate(self, tile_digest: str) -> None:
        t = self.config.translate
        geometry = self.geometry()
        inference = ops.translate_inference(t, tile=self.config.tile.tile)
        for stain in t.stains:
            ref = resolve_weights(t.generators[stain], base_dir=self.config.base_dir)
            digest = digest_of("translate", tile_digest, stain, ref.sha256, inference.to_dict(), t.tiff_tile,
                               t.tiff_quality, self.config.device)
            self.stage(f"translate-{stain}", digest,
                       lambda s=stain, r=ref: self.write_virtual(s, r, inference, geometry))  # type: ignore[misc]
            self.outputs[f"virtual_{stain}"] = str(self.slide_dir / f"virtual-{stain}.ome.tif")

    def write_virtual(self, stain: str, ref: Any, inference: TiledInferenceConfig,
                      geometry: ops.StoreGeometry) -> tuple[list[Path], dict[str, Any]]:
        from wsi_pipeline.infer.translate import virtual_region

        tissue = self.tissue(geometry)
        with Stopwatch() as generator_time:
            arr = ops.translate(self.store, stain, ref, inference, tissue=tissue, device=self.config.device,
                                scheduler=self.scheduler)
        geo = {"origin_level0": list(geometry.origin), "scale_level0": list(geometry.scale), "mpp": geometry.mpp,
               "shape": list(geometry.shape), "generator": ref.label}
        arr.attrs["geometry"] = geo
        tif = self.slide_dir / f"virtual-{stain}.ome.tif"
        h, w = geometry.shape
        with Stopwatch() as tiff_time:
            mask, step = self.tissue_mask(geometry)
            region = virtual_region(arr, tissue=tissue, tissue_mask=mask, mask_step=step)
            write_pyramidal_tiff(tif, region, size=(w, h), mpp=geometry.mpp,
                                 tile=self.config.translate.tiff_tile, quality=self.config.translate.tiff_quality,
                                 flavor="ome", description_extra=f"{slide_stem(self.path)} virtual {stain}")
        return [self.store / "virtual" / stain, tif], {
            f"virtual_{stain}_px": [w, h], f"virtual_{stain}_generator_s": round(generator_time.seconds, 3),
            f"virtual_{stain}_tiff_s": round(tiff_time.seconds, 3)}


def read_items(path: Path, *, bounds_offset: tuple[int, int]) -> list[Annotation | dict[str, Any]]:
    """A QuPath GeoJSON file in any accepted form: area features as annotations (level-0 openslide coordinates),
    every other feature (points, lines) kept verbatim so it is written back unchanged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot read GeoJSON: {exc}") from None
    items: list[Annotation | dict[str, Any]] = []
    for i, feat in enumerate(_features(data, path)):
        geometry = feat.get("geometry") if feat.get("type") == "Feature" else feat
        if isinstance(geometry, dict) and geometry.get("type") in ("Polygon", "MultiPolygon"):
            items.extend(parse_geojson(feat, source=f"{path}: feature {i}", bounds_offset=bounds_offset))
        else:
            items.append(feat)
    return items


def _features(data: Any, path: Path) -> list[dict[str, Any]]:
    """The features of QuPath's accepted forms: a FeatureCollection, a bare array, one feature or one geometry."""
    if isinstance(data, dict) and isinstance(data.get("features"), list):
        feats = data["features"]
    elif isinstance(data, list):
        feats = data
    elif isinstance(data, dict) and "type" in data:
        feats = [data]
    else:
        raise AnnotationError(f"{path}: expected a FeatureCollection, a feature array or a feature")
    bad = [i for i, f in enumerate(feats) if not isinstance(f, dict)]
    if bad:
        raise AnnotationError(f"{path}: feature {bad[0]} is not an object")
    return feats


__all__ = ["read_items", "run_slide", "slide_stem"]
