"""Slide-job benchmark: end-to-end time, peak RSS and stage split per slide size; model overhead in the pipeline.

    python -m workflows.bench.pipeline --out bench-out/pipeline [--sizes 2048,3072,4096] [--workers 1]

Phantom PAS slides (0.5 um/px) are generated once and cached in ``--out/slides``. Every job runs in a fresh
subprocess (peak RSS = its own high-water mark, ``VmHWM``; nothing warm is shared between sizes). Then, on the largest slide,
the overhead of the pipeline over the bare model forward on the same batches:

* segmenter and whole-slide generator (tiled inference): the model calls inside the stage are timed, so forward
  and everything else (reading, blending, writing, Dask) come from the same run; a separate bare loop over the
  same windows (read into memory first) is reported next to it;
* G2C (generators + classifier on crops): the ``classify`` stage body vs the bare forward on the same crops,
  alternating, best of 2.

Overhead = stage / forward - 1. The window redundancy (pixels forwarded / tissue pixels: overlaps and the last
windows of the grid) is reported apart, since "same batches" excludes it.

``--model-stage`` runs only the side-by-side comparison of :mod:`workflows.bench.model_stage` (our model stage vs
MONAI's ``sliding_window_inference`` vs a bare forward, same model, input, window and overlap); the full run ends
with it too (``--no-model-stage`` leaves it out).
Models: the shipped weights where present; otherwise a model of the *shipped architecture* with random weights,
which costs the same compute (labelled ``random`` in the results). Results: ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import functools
import json
import multiprocessing as mp
import os
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from .common import namespace, peak_rss_mib, threads_options

SHIPPED_ARCH: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {  # the shipped recipes' architectures (configs/train-*.yaml), for stand-ins with random weights
    "g2c": ("g2c", {"stains": ["HE", "MASSON", "PASM"], "generator": {"ngf": 16, "n_blocks": 6},
                    "classifier": {"num_stains": 4, "num_classes": 3, "stem_width": 16, "widths": [32, 64, 128],
                                   "blocks_per_unit": 2}},
            {"classes": ["noa", "ss", "gs"], "crop_size": 64, "crop_mpp": 2.0, "crop_margin": 0.2}),
    "generator-PAS-HE": ("cyclegan_generator", {"ngf": 16, "n_blocks": 6}, {"mpp": 2.0}),
}


def weights_for(name: str, folder: Path) -> tuple[str, str]:
    """``(reference, provenance)``: the shipped weights, else random weights of the shipped architecture."""
    from wsi_pipeline.errors import WeightsError
    from wsi_pipeline.weights import default_weights

    try:
        return str(default_weights(name)), "shipped"
    except WeightsError:
        if name not in SHIPPED_ARCH:
            raise
    import torch

    from wsi_pipeline.models.registry import define, save_model

    arch, cfg, meta = SHIPPED_ARCH[name]
    path = folder / f"{name}-random.safetensors"
    if not path.exists():
        torch.manual_seed(0)
        save_model(define(arch, cfg), path, arch=arch, config=cfg, metadata=meta)
    return str(path), "random (shipped architecture)"


def _job(queue: Any, slide: str, out: str, config: dict[str, Any], task: str, workers: int) -> None:
    from workflows.job_config import JobConfig
    from workflows.slide_job import run_slide

    entry = run_slide(slide, out, config=JobConfig.from_dict(config), task=task, workers=workers)
    entry["peak_rss_mb"] = peak_rss_mib()
    queue.put(entry)


def run_job(slide: Path, out: Path, config: dict[str, Any], task: str, workers: int) -> dict[str, Any]:
    """The slide job in a fresh process; its report entry plus peak RSS."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_job, args=(queue, str(slide), str(out), config, task, workers))
    t0 = time.perf_counter()
    proc.start()
    entry = queue.get()
    proc.join()
    entry["wall_s"] = time.perf_counter() - t0  # includes interpreter + torch import
    return entry


def windows_of(store: Path, settings: Any) -> tuple[list[np.ndarray], int, int]:
    """The exact window batches a tiled-inference stage runs over ``store/0`` (its window grid over the tissue
    chunks, batched per window row and width), read into memory.

    Returns ``(batches, pixels forwarded, tissue pixels)``; the plan is :func:`wsi_pipeline.infer.plan_windows`.
    """
    import zarr

    from wsi_pipeline.infer import plan_windows
    from wsi_pipeline.infer.layout import Layout
    from wsi_pipeline.tiling import read_store_info, tissue_chunks

    info = read_store_info(store)
    geometry, tissue = info.geometry, tissue_chunks(store, info)
    src = zarr.open_array(str(store / "0"), mode="r")
    layout = Layout.of(src)
    plan = plan_windows(geometry.shape, (geometry.tile, geometry.tile), settings, tissue)
    batches = []
    for y, h, kept in plan.rows:
        region = layout.read(src, slice(y, y + h), slice(kept[0][0], kept[-1][0] + kept[-1][1])).transpose(2, 0, 1)
        by_width: dict[int, list[int]] = {}
        for x, w in kept:
            by_width.setdefault(w, []).append(x - kept[0][0])
        for w, xs in by_width.items():
            for i in range(0, len(xs), settings.batch_size):
                batches.append(np.ascontiguousarray(np.stack([region[:, :, x:x + w]
                                                              for x in xs[i:i + settings.batch_size]])))
    return batches, plan.forwarded_px, plan.tissue_px


def in_worker_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run ``fn`` on a pool thread, as Dask's threaded scheduler runs the pipeline's model calls.

    Torch's intra-op threading differs between the main thread and pool threads (on a loaded 2-core host the main
    thread's OpenMP team spin-waits and runs ~2x slower), so the bare forward is timed where the pipeline runs it.
    """
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn, *args, **kwargs).result()


def bare_seconds(factory: Any, batches: list[np.ndarray]) -> tuple[float, float]:
    """``(one-time s, forward s)``: building the predictor (in this thread, as ``predict_zarr`` builds it) + a
    1-window warm-up, then all batches timed on a pool thread (where the pipeline's forwards run)."""
    t0 = time.perf_counter()
    predictor = factory()

    def loop() -> tuple[float, float]:
        t1 = time.perf_counter()
        if batches:
            predictor(batches[0][:1])
        t2 = time.perf_counter()
        for b in batches:
            predictor(b)
        return t1 - t0 + (t2 - t1), time.perf_counter() - t2

    return in_worker_thread(loop)  # type: ignore[no-any-return]


def alternate(stage: Any, bare: Any, *, repeats: int = 2) -> tuple[float, float]:
    """Best-of-``repeats`` wall times of ``stage()`` and ``bare()``, run alternately (a loaded host drifts)."""
    ts, tb = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        stage()
        ts.append(time.perf_counter() - t0)
        tb.append(bare())
    return min(ts), min(tb)


class TimedFactory:
    """A predictor factory whose model calls add their wall time to ``self.inside`` (the pipeline's bare forward)."""

    def __init__(self, predictor: Any, key: str) -> None:
        self.predictor, self.cache_key = predictor, f"bench-{key}-{id(self)}"
        self.inside, self.windows = 0.0, 0

    def __call__(self) -> Any:
        def fn(batch: np.ndarray) -> np.ndarray:
            t0 = time.perf_counter()
            out = self.predictor(batch)
            self.inside += time.perf_counter() - t0
            self.windows += len(batch)
            return out

        return fn


def inline_overhead(store: Path, predictor: Any, inference: Any, *, tissue: np.ndarray, out_channels: int,
                    name: str, workers: int) -> dict[str, float]:
    """Run the stage's tiled inference twice with a timed predictor; the second (steady) run's split of wall time
    into model forward vs everything else (reading, blending, writing, Dask), measured in the same run."""
    import dask
    import zarr

    from wsi_pipeline.infer import predict_zarr

    src = zarr.open_array(str(store / "0"), mode="r")
    group = zarr.open_group(str(store), mode="a").require_group("bench")
    for _ in range(2):
        factory = TimedFactory(predictor, name)
        with dask.config.set(num_workers=workers):
            t0 = time.perf_counter()
            predict_zarr(src, group, predictor_factory=factory, config=inference, out_channels=out_channels,
                         name=name, chunk_mask=tissue, scheduler="threads")
            total = time.perf_counter() - t0
    return {"stage_s": total, "bare_forward_s": factory.inside, "overhead": total / factory.inside - 1,
            "windows": float(factory.windows)}


def overheads(slide_dir: Path, slide: Path, config: Any, *, workers: int, classify: bool) -> dict[str, Any]:
    """Pipeline stage vs the bare model forward on the same batches (segmenter, G2C, generator).

    Tiled inference (segmenter, whole-slide generator) is split inline: the model calls inside the stage are timed,
    so the forward and the rest come from the same run (a loaded host drifts by tens of percent between runs); a
    separate bare loop over the same windows, read into memory first, is reported next to it. G2C (no Dask) is
    compared best-of-2, alternating, against the bare forward on the same crops.
    """
    import json as _json

    from shapely.geometry import shape

    from workflows import slide_ops as ops
    from workflows.slide_plan import classifier_settings, seg_settings
    from wsi_pipeline.infer.classify import g2c_probabilities
    from wsi_pipeline.infer.loaders import generator_predictor, segmenter_predictor
    from wsi_pipeline.slide import open_slide
    from wsi_pipeline.tiling import read_store_info, tissue_chunks
    from wsi_pipeline.weights import resolve_weights

    out: dict[str, Any] = {}
    store = slide_dir / "slide.zarr"
    tissue = tissue_chunks(store, read_store_info(store))
    seg = seg_settings(config)
    factory = functools.partial(segmenter_predictor, str(seg.weights.path), seg.weights.sha256, config.device)
    batches, forwarded, owned = windows_of(store, seg.inference)
    once, loop = bare_seconds(factory, batches)
    res = inline_overhead(store, factory(), seg.inference, tissue=tissue, out_channels=1, name="seg",
                          workers=workers)
    out["segmenter"] = {**res, "separate_bare_loop_s": loop, "one_time_s": once, "window_px": seg.inference.window,
                        "redundancy": forwarded / max(owned, 1), "mpix_per_s_pipeline": owned / 1e6 / res["stage_s"]}
    if classify:
        cls = classifier_settings(config.classify, base_dir=config.base_dir)
        model = cls.load()
        feats = _json.loads((slide_dir / "stages" / "polygons.geojson").read_text())["features"]
        shapes = [shape(f["geometry"]) for f in feats]
        with open_slide(slide) as s:
            crops = ops.read_crops(s, shapes, cls.spec)
            g2c_probabilities(crops[:1], model, device=config.device)  # warm-up

            stage, bare = alternate(
                lambda: ops.classify(s, shapes, cls, device=config.device),
                lambda: _timed(g2c_probabilities, crops, model, batch_size=cls.batch_size, device=config.device))
        out["g2c"] = {"stage_s": stage, "bare_forward_s": bare, "overhead": stage / bare - 1, "crops": len(crops),
                      "crops_per_s_pipeline": len(crops) / stage, "note": "stage includes reading the crops"}
    t = config.translate
    inference = t.inference(tile=config.tile.tile, minimum_window=512)
    ref = resolve_weights(t.generators[t.stains[0]], base_dir=config.base_dir)
    factory = functools.partial(generator_predictor, str(ref.path), ref.sha256, config.device)
    batches, forwarded, owned = windows_of(store, inference)
    once, loop = bare_seconds(factory, batches)
    res = inline_overhead(store, factory(), inference, tissue=tissue, out_channels=3, name="gen", workers=workers)
    out["generator_whole_slide"] = {**res, "separate_bare_loop_s": loop, "one_time_s": once,
                                    "redundancy": forwarded / max(owned, 1),
                                    "note": "generator pass only (the OME-TIFF is timed in the translate job)"}
    return out


def _timed(fn: Any, *args: Any, **kwargs: Any) -> float:
    t0 = time.perf_counter()
    fn(*args, **kwargs)
    return time.perf_counter() - t0


def _overheads_job(queue: Any, slide_dir: str, slide: str, config: dict[str, Any], workers: int,
                   classify: bool) -> None:
    from workflows.job_config import JobConfig

    queue.put(overheads(Path(slide_dir), Path(slide), JobConfig.from_dict(config), workers=workers,
                        classify=classify))


@click.command(name="pipeline")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-out/pipeline"),
              show_default=True, help="Output folder (slides, jobs, results.json, results.md).")
@click.option("--sizes", default="2048,3072,4096", show_default=True,
              help="Phantom sides in level-0 px (0.5 um/px), comma-separated.")
@threads_options(1, "Threads of each slide job (1: no oversubscription on 2 cores).")
@click.option("--seed", type=int, default=11, show_default=True, help="Phantom layout seed.")
@click.option("--model-stage", is_flag=True, help="Only the side-by-side model-stage comparison (ours vs MONAI vs "
              "a bare forward).")
@click.option("--no-model-stage", is_flag=True, help="Leave the side-by-side model-stage comparison out.")
@click.option("--side", type=click.IntRange(min=512), default=4096, show_default=True,
              help="Model-stage input side (px at 2 um/px).")
@click.option("--rounds", type=click.IntRange(min=1), default=3, show_default=True,
              help="Model-stage rounds (interleaved; the median is reported).")
@click.option("--model-threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="Torch threads of each model-stage variant.")
def command(**kw: Any) -> None:
    """The end-to-end slide job on synthetic slides: time per stage, peak RSS, overhead over the model passes."""
    args = namespace(kw)
    try:
        if not all(int(s) >= 256 for s in args.sizes.split(",")):
            raise ValueError
    except ValueError:
        raise click.BadParameter(f"{args.sizes!r}: expected sides >= 256 px, e.g. 2048,4096",
                                 param_hint="--sizes") from None
    _run(args)


def main(argv: list[str] | None = None) -> None:
    command.main(args=argv, prog_name="wsi-pipeline bench pipeline")


def _run(args: Any) -> None:
    if args.model_stage:
        side_by_side(args.out.resolve(), side=args.side, rounds=args.rounds, threads=args.model_threads)
        return
    from workflows.job_config import JobConfig
    from workflows.slide_job import slide_stem
    from wsi_pipeline.synth import write_phantom

    out = args.out.resolve()
    (out / "models").mkdir(parents=True, exist_ok=True)
    g2c, g2c_src = weights_for("g2c", out / "models")
    gen, gen_src = weights_for("generator-PAS-HE", out / "models")
    config = JobConfig.from_dict({**JobConfig().to_dict(), "classify": {**JobConfig().classify.to_dict(), "weights": g2c},
                                  "translate": {**JobConfig().translate.to_dict(), "stains": ["HE"],
                                                "generators": {"HE": gen}}})
    sizes = [int(s) for s in args.sizes.split(",")]
    results: dict[str, Any] = {"host": {"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0]},
                               "models": {"segmenter": "shipped", "g2c": g2c_src, "generator": gen_src},
                               "workers": args.workers, "slides": []}
    slides = {}
    for size in sizes:
        folder = out / "slides" / str(size)
        existing = folder / f"phantom-s{args.seed}-PAS.svs"
        if not existing.exists():
            write_phantom(folder, size=size, stains=("PAS",), seed=args.seed)
        slides[size] = existing
    for size in sizes:
        job_out = out / "jobs" / str(size)
        if job_out.exists():
            import shutil

            shutil.rmtree(job_out)  # cold run every time
        entry = run_job(slides[size], job_out, config.to_dict(), "full", args.workers)
        mpix = size * size / 1e6
        results["slides"].append({"size": size, "level0_mpix": mpix, "status": entry["status"],
                                  "reason": entry["reason"], "job_s": entry["seconds"], "wall_s": entry["wall_s"],
                                  "peak_rss_mb": entry["peak_rss_mb"], "stages": entry["timings"],
                                  "glomeruli": entry["counts"].get("glomeruli")})
        print(f"size {size}: {entry['status']} job {entry['seconds']:.1f} s, RSS {entry['peak_rss_mb']:.0f} MB, "
              f"stages {entry['timings']}", flush=True)
    biggest = sizes[-1]
    job_out = out / "jobs" / str(biggest)
    translate = run_job(slides[biggest], job_out, config.to_dict(), "translate", args.workers)
    results["translate"] = {"size": biggest, "status": translate["status"], "stages": translate["timings"],
                            "counts": translate["counts"],
                            "peak_rss_mb": translate["peak_rss_mb"]}
    entry = next(s for s in results["slides"] if s["size"] == biggest)
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_overheads_job, args=(queue, str(job_out / slide_stem(slides[biggest])),
                                                    str(slides[biggest]), config.to_dict(), args.workers,
                                                    "classify" in entry["stages"]))
    proc.start()
    results["overhead"] = queue.get()
    proc.join()
    results["host"]["load_avg_1m_end"] = os.getloadavg()[0]
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(to_markdown(results))
    print(to_markdown(results))
    if not args.no_model_stage:
        side_by_side(out, side=args.side, rounds=args.rounds, threads=args.model_threads)


def side_by_side(out: Path, *, side: int, rounds: int, threads: int) -> dict[str, Any]:
    """The model-stage comparison into ``out/model-stage.json`` and ``.md``."""
    from .model_stage import compare
    from .model_stage import to_markdown as model_stage_markdown

    folder = out / "model-stage"
    folder.mkdir(parents=True, exist_ok=True)
    res = compare(folder, side=side, rounds=rounds, threads=threads)
    (out / "model-stage.json").write_text(json.dumps(res, indent=2))
    text = model_stage_markdown(res)
    (out / "model-stage.md").write_text(text)
    print(text)
    return res


def to_markdown(r: dict[str, Any]) -> str:
    title = (f"# Slide-job benchmark ({r['host']['cpus']} CPUs, load {r['host']['load_avg_1m']:.1f} -> "
             f"{r['host'].get('load_avg_1m_end', 0):.1f}; models {r['models']})")
    lines = [title, "",
             "| size (px) | MPix | status | job s | peak RSS MB | tile | segment | polygons | classify | export |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in r["slides"]:
        st = s["stages"]
        lines.append(f"| {s['size']} | {s['level0_mpix']:.1f} | {s['status']} | {s['job_s']:.1f} | "
                     f"{s['peak_rss_mb']:.0f} | " + " | ".join(f"{st.get(k, 0):.2f}" for k in
                                                          ("tile", "segment", "polygons", "classify", "export")) + " |")
    tr = r.get("translate")
    if tr:
        text = (f"`--task translate` (1 stain) on the {tr['size']} px slide: {tr['status']}, stages "
                f"{tr['stages']}, counts {tr['counts']}, peak RSS {tr['peak_rss_mb']:.0f} MB")
        lines += ["", text]
    lines += ["", "| model | stage s | bare forward s (same batches) | overhead | notes |",
              "|---|---|---|---|---|"]
    for name, o in r.get("overhead", {}).items():
        notes = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in o.items()
                          if k not in ("stage_s", "bare_forward_s", "overhead"))
        lines.append(f"| {name} | {o['stage_s']:.2f} | {o['bare_forward_s']:.2f} | {o['overhead']:+.1%} | {notes} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
