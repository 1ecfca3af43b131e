"""Tiling benchmark: our tiling vs the raw JPEG-decode floor vs a plain openslide ``read_region`` loop.

    python -m workflows.bench.tiling --out bench-out/tiling [--sizes 10000,20000,40000] [--phantom-size 20000]
    wsi-pipeline bench tiling --out bench-out/tiling ...      (the same, from the CLI)

Slides are generated once and cached in ``--out/slides``: a phantom (``wsi_pipeline.synth``) and square slides
built from the real PAS patch (mirrored into a seamless texture, cut to the phantom's biopsy-core outline, glass
elsewhere). Every measurement runs in a fresh subprocess (peak RSS = its own high-water mark, ``VmHWM``) over the same pixels:
the level-0 chunks the tissue detector selects. Results: ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import click
import numpy as np

from .common import namespace, peak_rss_mib, threads_options

PAS = Path(__file__).resolve().parents[3] / "shared" / "data" / "kidney-stains" / "orig_patch_stain_02.png"
MPP = 0.25
SCANNER_MPP = 0.2528  # an Aperio AT2 at 40x


# -- slide generation (cached) ------------------------------------------------------------------------------
def pas_slide(out: Path, size: int, *, mpp: float = MPP, level_step: int = 2) -> Path:
    """A ``size``-square Aperio SVS: real PAS texture inside the phantom's core outline, glass outside.

    ``mpp=SCANNER_MPP, level_step=4`` is laid out as a 40x Aperio scanner writes it (1x, 4x, 16x levels, an MPP
    that is not round).
    """
    path = out / (f"pas-{size}.svs" if (mpp, level_step) == (MPP, 2) else f"pas-{size}-{mpp:g}um-{level_step}x.svs")
    if path.exists():
        return path
    from PIL import Image

    from wsi_pipeline.export.tiff import write_pyramidal_tiff
    from wsi_pipeline.synth import make_layout

    patch = np.asarray(Image.open(PAS).convert("RGB"))
    texture = np.concatenate([np.concatenate([patch, patch[:, ::-1]], 1),
                              np.concatenate([patch[::-1], patch[::-1, ::-1]], 1)], 0)  # 2000^2, seamless
    layout = make_layout(size, seed=11, mpp=MPP)
    step = 16  # tissue outline evaluated on a 16-px grid: cheap, and tissue edges are that coarse anyway

    def region(x: int, y: int, w: int, h: int) -> np.ndarray:
        rows, cols = np.arange(y, y + h) % 2000, np.arange(x, x + w) % 2000
        img = texture[rows[:, None], cols[None, :]]
        gy = np.arange(y // step, (y + h - 1) // step + 1) * step + step / 2
        gx = np.arange(x // step, (x + w - 1) // step + 1) * step + step / 2
        inside = layout.core_distance(gx[None, :], gy[:, None]) < 0
        inside = inside.repeat(step, 0).repeat(step, 1)
        oy, ox = y - (y // step) * step, x - (x // step) * step
        img[~inside[oy:oy + h, ox:ox + w]] = (244, 243, 245)
        return img

    return write_pyramidal_tiff(path, region, size=(size, size), mpp=mpp, tile=256, quality=90, progress=True,
                                level_step=level_step)


def phantom_slide(out: Path, size: int) -> Path:
    path = out / f"phantom-{size}" / "PAS.svs"
    found = sorted(path.parent.glob("*.svs"))
    if found:
        return found[0]
    from wsi_pipeline.synth.phantom import write_phantom

    res = write_phantom(path.parent, size=size, stains=("PAS",), seed=0, mpp=MPP)
    return res.slides["PAS"]


# -- measurements (each in its own process) -----------------------------------------------------------------
def _work(slide_path: Path, tile: int, mpp: float | None) -> dict[str, Any]:
    """What tiling at ``mpp`` reads: the tissue chunks' source boxes on the chosen level, and their pixel count."""
    from wsi_pipeline.slide import open_slide
    from wsi_pipeline.tiling import TileConfig
    from wsi_pipeline.tiling.run import _detect
    from wsi_pipeline.tiling.plan import chunk_tissue_map, plan_tiling, source_span

    cfg = TileConfig(tile=tile, mpp=mpp)
    with open_slide(slide_path) as slide:
        assert slide.mpp is not None, f"{slide_path}: no MPP"
        mpp0 = (slide.mpp[0] + slide.mpp[1]) / 2
        plan = plan_tiling(slide.level_dimensions, slide.level_downsamples, mpp0, target_mpp=mpp, tile=tile,
                           task_px=cfg.task_px, mpp_rtol=cfg.mpp_tolerance)
        t0 = time.perf_counter()
        tissue, ds, _ = _detect(slide, config=cfg, mpp0=mpp0)
        detect_s = time.perf_counter() - t0
    cmap = chunk_tissue_map(tissue.mask, mask_downsample=ds, plan=plan)
    lw, lh = plan.level_size
    boxes = []  # (x, y, w, h) on the source level
    for r, c in zip(*np.nonzero(cmap)):
        y0, y1 = source_span(int(r) * tile, min((int(r) + 1) * tile, plan.height), scale=plan.scale, limit=lh)
        x0, x1 = source_span(int(c) * tile, min((int(c) + 1) * tile, plan.width), scale=plan.scale, limit=lw)
        boxes.append((x0, y0, x1 - x0, y1 - y0))
    return {"plan": plan, "boxes": boxes, "pixels": sum(w * h for _, _, w, h in boxes), "chunk_map": cmap,
            "detect_s": detect_s}


def _cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def measure(kind: str, slide_path: Path, *, tile: int, workers: int, scratch: Path,
            mpp: float | None = None) -> dict[str, Any]:
    import dask.threaded  # noqa: F401  (imports are process start-up, not per-slide work: load them untimed)
    import tqdm.auto  # noqa: F401

    work = _work(slide_path, tile, mpp)
    plan, boxes, pixels = work["plan"], work["boxes"], work["pixels"]
    # start every measurement with no dirty page cache left by the previous one (untimed): otherwise the kernel
    # throttles this run's writes to flush the last run's, and whichever kind runs after a tiling run pays for it
    os.sync()
    extra: dict[str, Any] = {"level": plan.level, "scale": plan.scale, "detect_s": work["detect_s"]}
    cpu0 = _cpu_seconds()
    t0 = time.perf_counter()
    if kind in ("tile", "tile-jpeg", "tile-level0", "tile-raw"):
        from wsi_pipeline.tiling import TileConfig, tile_slide

        store = scratch / "bench.zarr"
        shutil.rmtree(store, ignore_errors=True)
        compressor = {"tile-raw": "none", "tile-jpeg": "jpeg"}.get(kind, TileConfig().compressor)
        cfg = TileConfig(tile=tile, mpp=mpp, pyramid=kind != "tile-level0", compressor=compressor)
        t0 = time.perf_counter()
        res = tile_slide(slide_path, store, config=cfg, workers=workers, progress=False)
        seconds = time.perf_counter() - t0
        extra.update(chunks_written=res.chunks_written, copied=res.copied,
                     store_mb=sum(p.stat().st_size for p in store.rglob("*") if p.is_file()) / 1e6)
        shutil.rmtree(store, ignore_errors=True)
    elif kind == "tile-processes":
        from distributed import Client, LocalCluster

        from wsi_pipeline.tiling import TileConfig, tile_slide

        store = scratch / "bench-p.zarr"
        shutil.rmtree(store, ignore_errors=True)
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
                Client(cl) as client:
            t0 = time.perf_counter()
            res = tile_slide(slide_path, store, config=TileConfig(tile=tile, mpp=mpp), client=client,
                             progress=False)
            seconds = time.perf_counter() - t0
        extra["chunks_written"] = res.chunks_written
        shutil.rmtree(store, ignore_errors=True)
    elif kind == "floor":
        import threading

        from wsi_pipeline.slide import open_slide
        from wsi_pipeline.tiling.tasks import worker_decoder

        with open_slide(slide_path) as slide:
            dec = worker_decoder(slide, plan.level)
            assert dec is not None, f"{slide_path}: no direct tile decoder"
            g = dec.grid
            needed = sorted({(ty, tx) for x, y, w, h in boxes
                             for ty in range(y // g.tile_height, (y + h - 1) // g.tile_height + 1)
                             for tx in range(x // g.tile_width, (x + w - 1) // g.tile_width + 1)})
            batches = [needed[i:i + 64] for i in range(0, len(needed), 64)]
            local = threading.local()

            def run(batch: list[tuple[int, int]]) -> int:
                # read + decode only, into one reused buffer per thread: the fastest decode there is
                buf = getattr(local, "buf", None)
                if buf is None:
                    buf = local.buf = np.empty((g.tile_height, g.tile_width, 3), np.uint8)
                for idx in batch:
                    dec.decode(dec.read_raw(*idx), out=buf)
                return len(batch)

            t0 = time.perf_counter()
            with ThreadPoolExecutor(workers) as pool:
                n = sum(pool.map(run, batches))
            seconds = time.perf_counter() - t0
        extra["tiles_decoded"] = n
    elif kind == "openslide":
        import openslide

        osr = openslide.OpenSlide(str(slide_path))
        t0 = time.perf_counter()
        d = osr.level_downsamples[plan.level]
        for x, y, w, h in boxes:
            osr.read_region((round(x * d), round(y * d)), plan.level, (w, h))
        seconds = time.perf_counter() - t0
        osr.close()
        extra["threads"] = 1
    else:
        raise ValueError(f"kind={kind!r}")
    extra["cpu_s"] = _cpu_seconds() - cpu0  # user + system, all threads (less load-sensitive than wall time)
    return {"kind": kind, "slide": slide_path.name, "mpp": mpp, "mpix": pixels / 1e6, "seconds": seconds,
            "mpix_per_s": pixels / 1e6 / seconds, "peak_rss_mib": peak_rss_mib(),
            "load_avg_1min": os.getloadavg()[0], **extra}


def _subprocess(kind: str, slide: Path, args: Any, mpp: float | None = None) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "workflows.bench.tiling", "--measure", kind, "--slide", str(slide),
           "--tile", str(args.tile), "--threads", str(args.workers), "--out", str(args.out),
           "--store-dir", str(args.store_dir or args.out / "scratch")]
    cmd += ["--mpp", str(mpp or 0)]  # 0 = level 0 (the option's default is for the driver's extra rows)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2])
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} on {slide.name} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {kind:15s} {row['slide']:22s} mpp={mpp} {row['mpix_per_s']:8.1f} MPix/s  {row['seconds']:7.2f} s  "
          f"peak RSS {row['peak_rss_mib']:7.0f} MiB  load {row['load_avg_1min']:.1f}", flush=True)
    return row


def _best_of(kinds: list[str], slide: Path, args: Any, *, mpp: float | None = None,
             reps: int) -> dict[str, Any]:
    """Run each kind ``reps`` times, interleaved (a, b, c, a, b, c, ...); keep every run, report the fastest."""
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
    for _ in range(reps):
        for k in kinds:
            runs[k].append(_subprocess(k, slide, args, mpp))
    best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
    out: dict[str, Any] = {k: {**best[k], "runs_seconds": [r["seconds"] for r in v],
                               "runs_load_avg": [r["load_avg_1min"] for r in v],
                               "runs_cpu_s": [r["cpu_s"] for r in v],
                               "peak_rss_mib_max": max(r["peak_rss_mib"] for r in v)} for k, v in runs.items()}
    if "floor" in best:
        for k in kinds:
            if k != "floor":
                out[f"{k}_over_floor"] = best["floor"]["seconds"] / best[k]["seconds"]
    if "floor" in best and "tile" in best:  # the same ratio in CPU seconds (all threads, user + system)
        out["tile_over_floor_cpu"] = min(r["cpu_s"] for r in runs["floor"]) / min(r["cpu_s"] for r in runs["tile"])
    if "openslide" in best:
        for k in kinds:
            if k not in ("openslide", "floor"):
                out[f"{k}_over_openslide"] = best["openslide"]["seconds"] / best[k]["seconds"]
    return out


METHODOLOGY = (
    "Each measurement runs in a fresh subprocess (peak RSS = its own high-water mark, VmHWM; imports, slide opening and the tissue "
    "detection that defines the work are untimed set-up, except that the tiling kinds time the whole tile_slide "
    "call, tissue detection and store creation included). All kinds process the same pixels: the source-level "
    "boxes of the tissue chunks. floor = read + decode every stored tile those boxes touch (imagecodecs, into a "
    "reused buffer per thread, WORKERS threads, nothing else); tile = tile_slide with the pyramid and the default "
    "compressor 'zstd' (every tile decoded, lossless, blosc-zstd chunks: zarr v3 core codecs, any reader); "
    "tile-jpeg = compressor 'jpeg' (the slide's JPEG tiles copied into the chunks where they line up, nothing "
    "decoded, JPEG-encoded otherwise: codec wsi_pipeline.jpeg, the default before issue 15); tile-level0 = "
    "the default without the pyramid; tile-raw = compressor 'none' (lossless, uncompressed); openslide = "
    "one-thread read_region loop over the boxes. os.sync() (untimed) before each measurement. Kinds are "
    "interleaved (floor, tile, tile-jpeg, tile-level0, tile-raw, openslide, floor, ...) REPS times; the table "
    "gives the fastest run of each kind "
    "and ratios of those bests, with the 1-minute load average range seen during the runs (the machine is shared: "
    "other processes compete for the same cores). CPU s = user + system seconds of the timed part (all threads), "
    "the least of the runs: less sensitive to load than wall time. store MB = bytes tiling wrote.")


@click.command(name="tiling")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder (slides cache, scratch stores, results.json, results.md).")
@click.option("--sizes", default="10000,20000,40000", show_default=True,
              help="Square PAS slides for the scaling rows (level-0 px, comma-separated).")
@click.option("--compare-size", type=click.IntRange(min=0), default=20000, show_default=True,
              help="PAS slide used for the comparison rows (0 to skip).")
@click.option("--slides-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Generated-slide cache [default: OUT/slides].")
@click.option("--phantom-size", type=click.IntRange(min=0), default=20000, show_default=True,
              help="Phantom slide side for the comparison rows (0 to skip the phantom).")
@click.option("--tile", type=click.IntRange(16, 8192), default=512, show_default=True, help="Chunk edge in px.")
@threads_options(2, "Threads of each measured tiling run and of the decode floor.")
@click.option("--reps", type=click.IntRange(min=1), default=3, show_default=True,
              help="Interleaved repetitions per measurement (the best is kept).")
@click.option("--scaling-reps", type=click.IntRange(min=1), default=2, show_default=True,
              help="Repetitions of the scaling rows.")
@click.option("--mpp", default="2.0,1.5", show_default=True,
              help="Target MPPs of the extra 'coarser resolution' rows, comma-separated ('' to skip): on the "
                   "0.25 um/px slides 2.0 copies pyramid level 3 exactly, 1.5 resamples level 2 by 1.5.")
@click.option("--scanner-size", type=click.IntRange(min=0), default=20000, show_default=True,
              help=f"A PAS slide laid out as a 40x scanner writes it ({SCANNER_MPP} um/px, 4x levels), tiled at "
                   "--scanner-mpp (0 to skip).")
@click.option("--scanner-mpp", default="2.0,1.0", show_default=True,
              help="On the scanner-like slide 2.0 reduces the 4x level by 2 (2.02 um/px), 1.0 copies it.")
@click.option("--processes", is_flag=True, help="Also time tiling on a distributed process cluster.")
@click.option("--store-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where the measured zarr stores go [default: OUT/scratch; /dev/shm isolates disk writes].")
@click.option("--measure", default=None, hidden=True, help="One measurement in this process (internal).")
@click.option("--slide", type=click.Path(path_type=Path), default=None, hidden=True,
              help="The slide of --measure (internal).")
def command(**kw: Any) -> None:
    """Tiling vs the JPEG-decode floor vs an openslide read_region loop, on generated PAS and phantom slides
    (each measurement in a fresh process: time, CPU, peak RSS)."""
    _run(namespace(kw))


def main(argv: list[str] | None = None) -> None:
    command.main(args=argv, prog_name="wsi-pipeline bench tiling")


def _run(args: Any) -> None:
    if args.measure:
        scratch = (args.store_dir or args.out / "scratch") / f"tiling-bench-{os.getpid()}"
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            print(json.dumps(measure(args.measure, args.slide, tile=args.tile, workers=args.workers,
                                     scratch=scratch, mpp=float(args.mpp) or None)))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return

    slides_dir = args.slides_dir or args.out / "slides"
    slides_dir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results: dict[str, Any] = {"workers": args.workers, "tile": args.tile, "cpu_count": os.cpu_count(),
                               "reps": args.reps, "scaling_reps": args.scaling_reps,
                               "methodology": METHODOLOGY.replace("WORKERS", str(args.workers))
                               .replace("REPS", str(args.reps)),
                               "store_dir": str(args.store_dir or args.out / "scratch"),
                               "load_avg_start": os.getloadavg(), "compare": [], "resampled": [], "scaling": []}
    compare = [("PAS patch", pas_slide(slides_dir, args.compare_size))] if args.compare_size else []
    if args.phantom_size:
        compare.insert(0, ("phantom", phantom_slide(slides_dir, args.phantom_size)))
    kinds = ["floor", "tile", "tile-jpeg", "tile-level0", "tile-raw", "openslide"]
    kinds += ["tile-processes"] if args.processes else []
    for label, slide in compare:
        print(f"{label}: {slide}", flush=True)
        results["compare"].append({"label": label, **_best_of(kinds, slide, args, reps=args.reps)})
    for mpp in [float(m) for m in args.mpp.split(",") if m]:
        for label, slide in compare:
            print(f"{label} at {mpp} um/px: {slide}", flush=True)
            results["resampled"].append({"label": label, "mpp": mpp,
                                         **_best_of(["floor", "tile", "tile-jpeg", "openslide"], slide, args, mpp=mpp,
                                                    reps=args.reps)})
    if args.scanner_size:
        scanner = pas_slide(slides_dir, args.scanner_size, mpp=SCANNER_MPP, level_step=4)
        for mpp in [float(m) for m in args.scanner_mpp.split(",") if m]:
            print(f"scanner-like PAS at {mpp} um/px: {scanner}", flush=True)
            results["resampled"].append({"label": "scanner-like PAS", "mpp": mpp,
                                         **_best_of(["floor", "tile", "tile-jpeg", "openslide"], scanner, args, mpp=mpp,
                                                    reps=args.reps)})
    for size in sizes:
        slide = pas_slide(slides_dir, size)
        print(f"scaling {size}: {slide}", flush=True)
        results["scaling"].append({"size": size, **_best_of(["floor", "tile", "tile-jpeg"], slide, args,
                                                            reps=args.scaling_reps)})
    results["load_avg_end"] = os.getloadavg()
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    md = _markdown(results)
    (args.out / "results.md").write_text(md)
    print(md)


def _loads(row: dict[str, Any]) -> str:
    vals = [v for k, r in row.items() if isinstance(r, dict) for v in r.get("runs_load_avg", [])]
    return f"{min(vals):.1f}-{max(vals):.1f}" if vals else "?"


def _cpu(row: dict[str, Any]) -> str:
    f, t = min(row["floor"]["runs_cpu_s"]), min(row["tile"]["runs_cpu_s"])
    return f"{f:.1f} / {t:.1f} = {f / t:.2f}"


def _markdown(res: dict[str, Any]) -> str:
    lines = [f"Tiling benchmark: {res['workers']} workers, tile {res['tile']} px, {res['cpu_count']} CPUs, "
             f"best of {res['reps']} interleaved runs (scaling: best of {res['scaling_reps']}); load average "
             f"{res['load_avg_start'][0]:.1f} at start, {res['load_avg_end'][0]:.1f} at end; stores written to "
             f"{res['store_dir']}", "", "Method: " + res["methodology"], "",
             "| slide | tissue MPix | floor (decode) MPix/s | tiling MPix/s | tiling, no pyramid MPix/s "
             "| tiling JPEG copy MPix/s | tiling raw (uncompressed) MPix/s | openslide loop (1 thread) MPix/s "
             "| tiling/floor | JPEG copy/floor | no pyramid/floor | raw/floor | tiling/openslide "
             "| CPU s floor / tiling "
             "| store MB tiling / JPEG copy / raw | peak RSS tiling MiB | load avg (1 min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in res["compare"]:
        t = row["tile"]
        lines.append(f"| {row['label']} ({t['slide']}) | {t['mpix']:.0f} "
                     f"| {row['floor']['mpix_per_s']:.1f} | {t['mpix_per_s']:.1f} "
                     f"| {row['tile-level0']['mpix_per_s']:.1f} | {row['tile-jpeg']['mpix_per_s']:.1f} "
                     f"| {row['tile-raw']['mpix_per_s']:.1f} | {row['openslide']['mpix_per_s']:.1f} "
                     f"| {row['tile_over_floor']:.2f} | {row['tile-jpeg_over_floor']:.2f} "
                     f"| {row['tile-level0_over_floor']:.2f} "
                     f"| {row['tile-raw_over_floor']:.2f} | {row['tile_over_openslide']:.1f}x | {_cpu(row)} "
                     f"| {t['store_mb']:.1f} / {row['tile-jpeg']['store_mb']:.1f} / {row['tile-raw']['store_mb']:.1f} "
                     f"| {t['peak_rss_mib_max']:.0f} | {_loads(row)} |")
    if res["resampled"]:
        lines += ["", "At a coarser target resolution (MPix = source-level pixels read: the tissue chunks' source "
                  "boxes on the pyramid level tiling picks; floor = decoding that level's tiles; copied = the JPEG "
                  "copy (tile-jpeg) copies that level's JPEG tiles, no resampling):", "",
                  "| slide | target um/px | source level (scale) | copied | source MPix | floor MPix/s "
                  "| tiling MPix/s | JPEG copy MPix/s | openslide loop MPix/s | tiling/floor | tiling/openslide "
                  "| store MB tiling / JPEG copy | tissue detection s (in tiling) | peak RSS MiB | load avg |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for row in res["resampled"]:
            t = row["tile"]
            lines.append(f"| {row['label']} ({t['slide']}) | {row['mpp']} | {t['level']} ({t['scale']:.3g}) "
                         f"| {'yes' if row['tile-jpeg'].get('copied') else 'no'} "
                         f"| {t['mpix']:.0f} | {row['floor']['mpix_per_s']:.1f} | {t['mpix_per_s']:.1f} "
                         f"| {row['tile-jpeg']['mpix_per_s']:.1f} "
                         f"| {row['openslide']['mpix_per_s']:.1f} | {row['tile_over_floor']:.2f} "
                         f"| {row['tile_over_openslide']:.1f}x "
                         f"| {t['store_mb']:.1f} / {row['tile-jpeg']['store_mb']:.1f} "
                         f"| {t.get('detect_s', float('nan')):.2f} "
                         f"| {t['peak_rss_mib_max']:.0f} | {_loads(row)} |")
    lines += ["", "| size | tissue MPix | tiling s | tiling MPix/s | floor MPix/s | tiling/floor "
              "| CPU s floor / tiling | JPEG copy s | store MB tiling / JPEG copy | peak RSS MiB | load avg |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in res["scaling"]:
        t = row["tile"]
        lines.append(f"| {row['size']} | {t['mpix']:.0f} | {t['seconds']:.2f} | {t['mpix_per_s']:.1f} "
                     f"| {row['floor']['mpix_per_s']:.1f} | {row['tile_over_floor']:.2f} | {_cpu(row)} "
                     f"| {row['tile-jpeg']['seconds']:.2f} | {t['store_mb']:.1f} / {row['tile-jpeg']['store_mb']:.1f} "
                     f"| {t['peak_rss_mib_max']:.0f} | {_loads(row)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
