"""One slide, end to end: tile -> segment -> polygons -> crops -> generators -> G2C -> GeoJSON + overlay.

    >>> entry = run_slide("biopsy.svs", "out", config=JobConfig())  # doctest: +SKIP
    >>> entry["status"], entry["counts"]["glomeruli"]  # doctest: +SKIP
    ('ok', 41)

:func:`run_slide` takes a path and small picklable settings and returns a JSON-able report entry, so it can run
as a Dask task; it never raises for a bad slide (status ``failed``, reason naming the file, traceback in
``OUT/<stem>/job.log``) nor for an empty one (status ``no-tissue``). Layout of ``OUT/<stem>/``::

    slide.zarr/              tiles at the segmentation resolution (+ pyramid), tissue mask
    slide.zarr/seg           (1, H, W) uint8 glomerulus probability x 255, tissue chunks only
    slide.zarr/labels/       OME-NGFF labels: tissue (thumbnail mask), glomeruli (probability >= threshold)
    slide.zarr/virtual/<S>/0 (3, H, W) uint8 virtual stain S (--task translate); virtual/<S> is an NGFF image
    stages/<stage>.done.json completion markers (digest of settings + models + upstream), written last
    stages/polygons.geojson  unclassified glomeruli with segmentation confidence (ids kept downstream; read only
                             when a later run resumes after this stage)
    stages/classes.json      G2C result per glomerulus id (likewise)
    glomeruli.geojson        the QuPath FeatureCollection (DESIGN.md)
    overlay.png              thumbnail with the glomeruli coloured by class
    virtual-<S>.ome.tif      pyramidal JPEG OME-TIFF of virtual stain S (--task translate) on the source's level-0
                             grid as QuPath shows it (translate.tiff_geometry: source), or the tiled grid (store)

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
from typing import Any, TypeVar

import dask

from wsi_pipeline.annotations import GLOMERULUS, Annotation, Feature, as_written, is_glomerulus, read_features, \
    read_geojson, write_geojson
from wsi_pipeline.atomic import atomic_write_json, atomic_write_text, remove_stale_temps
from wsi_pipeline.errors import AnnotationError, NoTissueError, StoreError, WsiPipelineError
from wsi_pipeline.export.tiff import OmeInfo, write_pyramidal_tiff
from wsi_pipeline.infer import TiledInferenceConfig
from wsi_pipeline.stain.recognise import recognise_stain
from wsi_pipeline.tiling import tile_slide, tissue_mask
from wsi_pipeline.weights import WeightsRef, resolve_weights

from . import slide_ops as ops
from .job_config import TASKS, JobConfig
from .report import StageBars
from .slide_plan import ClassifierSettings, SegSettings, SlidePlan, classifier_settings, seg_settings
from .stages import STAGES_DIR, StageBook, StageRecord, Stopwatch, digest_of, file_sha256

T = TypeVar("T")

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
              on_stage: Callable[[str], None] | None = None,
              on_progress: Callable[[str, int, int], None] | None = None) -> dict[str, Any]:
    """Run ``task`` on one slide into ``out_dir/<stem>``; returns its report entry (never raises for bad input).

    ``until="tile"`` stops after tiling (the batch layer runs tiling and the model stages as separate tasks, so
    CPU workers tile while GPU workers infer); ``on_stage(name)`` is called before a stage body runs and
    ``on_progress(stage, done, total)`` after each unit of its work (tile tasks, segmentation / translation blocks,
    glomeruli classified); without it, ``progress=True`` draws a bar with an ETA per stage on the console.
    """
    if task not in TASKS:
        raise ValueError(f"task={task!r}: expected one of {TASKS}")
    if until not in (None, "tile"):
        raise ValueError(f"until={until!r}: expected None or 'tile'")
    path = Path(slide_path)
    stem = stem or slide_stem(path)
    job = _SlideJob(path, Path(out_dir).resolve() / stem, config=config, task=task, mpp_override=mpp_override,
                    annotations=annotations, workers=workers, scheduler=scheduler, progress=progress, until=until,
                    on_stage=on_stage, on_progress=on_progress)
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
    """Decides which stages run (markers) and chains them, passing results in memory; the stage bodies live in
    :mod:`slide_ops`. Each stage writes its files once, for a later run to resume from."""

    def __init__(self, path: Path, slide_dir: Path, *, config: JobConfig, task: str, mpp_override: float | None,
                 annotations: str | None, workers: int | None, scheduler: str | None, progress: bool,
                 until: str | None = None, on_stage: Callable[[str], None] | None = None,
                 on_progress: Callable[[str, int, int], None] | None = None) -> None:
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
        self.on_progress = on_progress if on_progress is not None else (StageBars(path.name) if progress else None)

    def ticker(self, stage: str) -> Callable[[int, int], None] | None:
        """``progress(done, total)`` of one stage, or ``None`` when nobody follows the job."""
        report = self.on_progress
        if report is None:
            return None
        return lambda done, total: report(stage, done, total)

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

    def produce(self, name: str, digest: str, path: Path, compute: Callable[[], tuple[T, dict[str, Any]]], *,
                save: Callable[[Path, T], object], load: Callable[[Path], T]) -> T:
        """A stage whose result the next one needs: computed and kept in memory (and saved once to ``path`` for a
        later run), or, when finished earlier, loaded from ``path``."""
        held: list[T] = []

        def body() -> tuple[list[Path], dict[str, Any]]:
            value, counts = compute()
            save(path, value)
            held.append(value)
            return [path], counts

        self.stage(name, digest, body)
        return held[0] if held else load(path)

    # -- the job -----------------------------------------------------------------------------------------------
    def run(self) -> None:
        # what a killed run of this slide left half-written (hidden .tmp files, zarr .partial chunks): never read,
        # so removed before anything is written (one job per output folder: the batch holds its lock)
        remove_stale_temps(self.slide_dir)
        # opening first fails fast (and cheaply) on unreadable files, before any work; the slide stays open
        with SlidePlan.open(self.path, self.slide_dir, mpp_override=self.mpp_override) as plan:
            self.plan = plan
            self.counts["level0_size"] = list(plan.level0_size)
            if self.task == "classify":
                self.run_classify_file()
            elif self.task == "translate":  # needs the segmentation resolution only (the store is shared)
                tile_digest = self.tile(self.config.segment.mpp or seg_settings(self.config).mpp)
                if self.until != "tile":
                    self.run_translate(tile_digest)
            else:
                self.run_segment()

    def run_segment(self) -> None:
        plan, cfg = self.plan, self.config
        seg = seg_settings(cfg)
        tile_digest = self.tile(seg.mpp)
        self.check_stain(seg.stains, classify=self.task == "full")
        if self.until == "tile":
            return
        seg_digest = digest_of("segment", tile_digest, seg.to_dict(), cfg.device)
        def segment() -> tuple[list[Path], dict[str, Any]]:
            chunks = ops.segment(self.store, seg, tissue=plan.tissue, device=cfg.device, scheduler=self.scheduler,
                                 progress=self.ticker("segment"))
            label = ops.segmentation_label(self.store, plan.info, threshold=seg.threshold)
            return [self.store / "seg", label], {"seg_chunks": chunks}

        self.stage("segment", seg_digest, segment)
        poly_digest = digest_of("polygons", seg_digest, cfg.polygons.to_dict(), seg.min_area_um2)
        shapes = self.produce("polygons", poly_digest, self.slide_dir / STAGES_DIR / "polygons.geojson",
                              lambda: self.find_polygons(seg), save=_save_shapes, load=read_geojson)
        if self.task == "full":
            cls = classifier_settings(cfg.classify, base_dir=cfg.base_dir)
            cls_digest = digest_of("classify", poly_digest, cls.digest_parts, cfg.device)
            results = self.classify(cls_digest, shapes, cls)
            final = [a.classified(results[a.id]["name"], measurements=results[a.id]["measurements"])
                     for a in shapes]
            models = {"segmenter": seg.weights.label, **cls.models}
            export_digest = digest_of("export", cls_digest, cfg.overlay_px, plan.offset)
        else:
            final = [a.classified(GLOMERULUS) for a in shapes]
            models = {"segmenter": seg.weights.label, "virtual_stains": ""}
            export_digest = digest_of("export-segment", poly_digest, cfg.overlay_px, plan.offset)
        self.stage("export", export_digest, lambda: self.export(self.with_tissue(final), models))

    def with_tissue(self, annotations: list[Annotation]) -> list[Annotation]:
        """The glomeruli and the store's tissue outline (class ``Tissue``), read only when the export runs."""
        tissue = ops.tissue_annotation(self.plan.info)
        return [*annotations, tissue] if tissue is not None else annotations

    def tile(self, mpp: float) -> str:
        plan = self.plan
        tcfg = self.config.tile.model_copy(update={"mpp": mpp})  # the job tiles at the segmentation resolution
        digest = digest_of("tile", tcfg.to_dict(), plan.source)

        def body() -> tuple[list[Path], dict[str, Any]]:
            tick = self.ticker("tile")
            kw: dict[str, Any] = {"config": tcfg, "workers": self.workers, "mpp_override": self.mpp_override,
                                  "progress": tick if tick is not None else False}
            try:
                res = tile_slide(plan.slide, self.store, **kw)
            except StoreError:
                # the store belongs to this job: one written with other settings (or a changed slide) is replaced;
                # any other error (a corrupt tile) keeps what was written, for a re-run to resume
                res = tile_slide(plan.slide, self.store, overwrite=True, **kw)
            if res.info is not None:
                plan.set_store(res.info)
            thumb = res.thumbnail if res.thumbnail is not None else plan.slide.thumbnail(1024)
            guess = recognise_stain(thumb, mask=res.tissue_mask if res.thumbnail is not None else None)
            return [self.store], {"tissue_chunks": res.chunks_tissue, "chunks_total": res.chunks_total,
                                  "tiled_shape": list(res.shape), "tiled_mpp": res.mpp, "stain": guess.stain,
                                  "stain_margin": round(guess.margin, 3), "stain_reason": guess.reason}

        self.stage("tile", digest, body)
        self.outputs["store"] = str(self.store)
        return digest

    def check_stain(self, trained: tuple[str, ...], *, classify: bool) -> None:
        """Every stain goes the direct path (the segmenter learnt other stains by stain randomisation); a stain it
        had no labelled data in, or one not recognised, is processed with a warning in the report."""
        stain = str(self.counts.get("stain", "UNKNOWN"))
        self.counts["route"] = "direct"
        warnings = []
        if stain == "UNKNOWN":
            warnings.append(f"stain not recognised ({self.counts.get('stain_reason', '')}); segmented as is")
        elif stain not in trained:
            warnings.append(f"stain {stain}: the segmenter had labelled data in {', '.join(trained)} only; on "
                            f"{stain} it relies on its stain augmentation (check the overlay)")
        if classify and stain != "PAS":
            warnings.append(f"stain {stain}: G2C classes assume PAS input")
        if warnings:
            self.counts["warnings"] = warnings

    def find_polygons(self, seg: SegSettings) -> tuple[list[Annotation], dict[str, Any]]:
        found = ops.polygons(self.store, seg, self.plan.info.geometry, mpp0=self.plan.mpp0,
                             max_area_um2=self.config.polygons.max_area_um2,
                             simplify_px=self.config.polygons.simplify_px, scheduler=self.scheduler,
                             progress=self.ticker("polygons"))
        anns = as_written(Annotation(p, measurements={"seg_confidence": conf}) for p, conf in found)
        return anns, {"glomeruli": len(anns)}

    def classify(self, digest: str, shapes: list[Annotation], cls: ClassifierSettings) -> dict[str, Any]:
        """G2C's result per annotation id (stage ``classify``; ``stages/classes.json`` for a later run)."""
        def compute() -> tuple[dict[str, Any], dict[str, Any]]:
            results = ops.classify(self.plan.slide, [a.geometry for a in shapes], cls, device=self.config.device,
                                   progress=self.ticker("classify"))
            return ({a.id: r for a, r in zip(shapes, results)},
                    {"classes": dict(Counter(r["class"] for r in results))})

        return self.produce("classify", digest, self.slide_dir / STAGES_DIR / "classes.json", compute,
                            save=atomic_write_json, load=_load_json)

    def export(self, items: Sequence[Annotation | Feature], models: dict[str, str]) -> tuple[list[Path], dict[str, Any]]:
        geojson, overlay = self.slide_dir / "glomeruli.geojson", self.slide_dir / "overlay.png"
        slide = self.plan.slide
        meta = {**ops.base_metadata(slide, mpp_override=self.mpp_override, bounds_offset=self.plan.offset), **models,
                "stain": str(self.counts.get("stain", "UNKNOWN"))}
        write_geojson(geojson, items, bounds_offset=self.plan.offset, mpp=self.plan.mpp0, metadata=meta)
        areas = [a for a in items if isinstance(a, Annotation)]
        ops.write_overlay(overlay, slide, areas, max_px=self.config.overlay_px)
        self.outputs.update(geojson=str(geojson), overlay=str(overlay))
        return [geojson, overlay], {"features": len(items)}

    # -- classify mode -----------------------------------------------------------------------------------------
    def annotation_file(self) -> Path:
        path = Path(self.annotations) if self.annotations else self.path.with_name(f"{slide_stem(self.path)}.geojson")
        if not path.is_file():
            raise AnnotationError(f"{path}: annotations to classify not found (put <slide-stem>.geojson next to "
                                  f"{self.path.name} or pass --annotations FILE)")
        return path

    def run_classify_file(self) -> None:
        src = self.annotation_file()
        offset = self.plan.offset
        items = read_features(src, bounds_offset=offset)
        areas = [a for a in items if isinstance(a, Annotation) and is_glomerulus(a.classification)]
        cls = classifier_settings(self.config.classify, base_dir=self.config.base_dir)
        cls_digest = digest_of("classify-file", file_sha256(src), offset, cls.digest_parts, self.config.device)
        results = self.classify(cls_digest, areas, cls)
        final = [a.classified(results[a.id]["name"], measurements=results[a.id]["measurements"])
                 if isinstance(a, Annotation) and a.id in results else a for a in items]
        models = {**cls.models, "annotations_source": src.name}
        self.stage("export", digest_of("export-classify", cls_digest, self.config.overlay_px, offset),
                   lambda: self.export(final, models))

    # -- translate mode ----------------------------------------------------------------------------------------
    def run_translate(self, tile_digest: str) -> None:
        t = self.config.translate
        inference = t.inference(tile=self.config.tile.tile, minimum_window=512)
        for stain in t.stains:
            ref = resolve_weights(t.generators[stain], base_dir=self.config.base_dir)
            digest = digest_of("translate", tile_digest, stain, ref.sha256, inference.to_dict(), t.tiff_tile,
                               t.tiff_quality, t.tiff_geometry, self.plan.offset, self.config.device)
            self.stage(f"translate-{stain}", digest,
                       lambda s=stain, r=ref: self.write_virtual(s, r, inference))  # type: ignore[misc]
            self.outputs[f"virtual_{stain}"] = str(self.slide_dir / f"virtual-{stain}.ome.tif")

    def write_virtual(self, stain: str, ref: WeightsRef,
                      inference: TiledInferenceConfig) -> tuple[list[Path], dict[str, Any]]:
        from wsi_pipeline.infer.translate import virtual_region

        info, tissue, t = self.plan.info, self.plan.tissue, self.config.translate
        geometry = info.geometry
        with Stopwatch() as generator_time:
            arr = ops.translate(self.store, stain, ref, inference, info=info, tissue=tissue,
                                device=self.config.device, scheduler=self.scheduler,
                                progress=self.ticker(f"translate-{stain}"))
        geo = {"origin_level0": list(geometry.origin), "scale_level0": list(geometry.scale), "mpp": geometry.mpp,
               "shape": list(geometry.shape), "generator": ref.label}
        arr.attrs["geometry"] = geo
        tif = self.slide_dir / f"virtual-{stain}.ome.tif"
        h, w = geometry.shape
        with Stopwatch() as tiff_time:
            mask, step = tissue_mask(self.store, info)
            grid = virtual_region(arr, tissue=tissue, tissue_mask=mask, mask_step=step)
            region, size, mpp, ome = self.virtual_geometry(stain, grid, ref)
            write_pyramidal_tiff(tif, region, size=size, mpp=mpp, tile=t.tiff_tile, quality=t.tiff_quality,
                                 flavor="ome", description_extra=f"{slide_stem(self.path)} virtual {stain}", ome=ome)
        return [self.store / "virtual" / stain, tif], {
            f"virtual_{stain}_px": list(size), f"virtual_{stain}_generator_s": round(generator_time.seconds, 3),
            f"virtual_{stain}_tiff_s": round(tiff_time.seconds, 3)}

    def virtual_geometry(self, stain: str, grid: Callable[[int, int, int, int], Any],
                         ref: WeightsRef) -> tuple[Callable[[int, int, int, int], Any], tuple[int, int], float | None,
                                                   OmeInfo]:
        """The virtual stain's TIFF geometry: the source's level 0 as QuPath shows it (``tiff_geometry: source``,
        the tiled grid upsampled, nearest) or the tiled grid itself (``store``: coarser, said in the OME-XML)."""
        from wsi_pipeline.infer.translate import level0_region

        plan, geometry = self.plan, self.plan.info.geometry
        h, w = geometry.shape
        (sx, sy), (bx, by) = geometry.scale, plan.offset
        mpp0 = (plan.mpp0[0] + plan.mpp0[1]) / 2
        power = plan.slide.objective_power
        notes = {"stain": stain, "generator": ref.label, "source": plan.path.name,
                 "generated_um_per_px": f"{geometry.mpp:.6g}" if geometry.mpp else "unknown",
                 "bounds_offset": f"{bx},{by}"}
        if self.config.translate.tiff_geometry == "source":
            size = (plan.slide.bounds[2], plan.slide.bounds[3]) if plan.slide.bounds else plan.level0_size
            region = level0_region(grid, grid_size=(w, h), origin=(geometry.origin[0] - bx, geometry.origin[1] - by),
                                   scale=(sx, sy))
            notes["geometry"] = ("level 0 of the source slide as QuPath shows it: the GeoJSON overlays it as it is; "
                                 f"pixels generated at {sx:.4g}x coarser, upsampled (nearest)")
            return region, (int(size[0]), int(size[1])), mpp0, OmeInfo(f"{stain} (virtual)", power, notes)
        notes["geometry"] = (f"coarser than the source: pixel (x, y) covers source level-0 pixels from "
                             f"({geometry.origin[0] - bx:g} + {sx:.6g} x, {geometry.origin[1] - by:g} + {sy:.6g} y) "
                             "in QuPath coordinates; divide GeoJSON coordinates accordingly")
        notes["level0_downsample"] = f"{sx:.6g},{sy:.6g}"
        return grid, (w, h), geometry.mpp, OmeInfo(f"{stain} (virtual)", power / sx if power else None, notes)


def _save_shapes(path: Path, shapes: list[Annotation]) -> None:
    write_geojson(path, shapes)


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


__all__ = ["run_slide", "slide_stem"]
