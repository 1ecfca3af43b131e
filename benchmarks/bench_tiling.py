"""Tiling benchmark: our tiling vs the raw JPEG-decode floor vs a plain openslide ``read_region`` loop.

    python -m benchmarks.bench_tiling --out bench-out/tiling [--sizes 10000,20000,40000] [--phantom-size 20000]

Slides are generated once and cached in ``--out/slides``: a phantom (``wsi_pipeline.synth``) and square slides
built from the real PAS patch (mirrored into a seamless texture, cut to the phantom's biopsy-core outline, glass
elsewhere). Every measurement runs in a fresh subprocess (peak RSS = its ``ru_maxrss``) over the same pixels:
the level-0 chunks the tissue detector selects. Results: ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import argparse
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

import numpy as np

PAS = Path(__file__).resolve().parents[2] / "shared" / "data" / "kidney-stains" / "orig_patch_stain_02.png"
MPP = 0.25


# -- slide generation (cached) ------------------------------------------------------------------------------
def pas_slide(out: Path, size: int) -> Path:
    """A ``size``-square Aperio SVS: real PAS texture inside the phantom's core outline, glass outside."""
    path = out / f"pas-{size}.svs"
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

    return write_pyramidal_tiff(path, region, size=(size, size), mpp=MPP, tile=256, quality=90, progress=True)


def phantom_slide(out: Path, size: int) -> Path:
    path = out / f"phantom-{size}" / "PAS.svs"
    found = sorted(path.parent.glob("*.svs"))
    if found:
        return found[0]
    from wsi_pipeline.synth.phantom import write_phantom

    res = write_phantom(path.parent, size=size, stains=("PAS",), seed=0, mpp=MPP)
    return res.slides["PAS"]


# -- measurements (each in its own process) -----------------------------------------------------------------
def _tissue_chunks(slide_path: Path, tile: int) -> tuple[list[tuple[int, int, int, int]], int]:
    """Level-0 (x, y, w, h) of the chunks tiling writes, and their pixel count."""
    from wsi_pipeline.slide import open_slide
    from wsi_pipeline.tiling import TileConfig, _detect
    from wsi_pipeline.tiling_core import chunk_tissue_map, plan_tiling

    cfg = TileConfig(tile=tile)
    with open_slide(slide_path) as slide:
        plan = plan_tiling(slide.level_dimensions, slide.level_downsamples, MPP, target_mpp=None, tile=tile,
                           task_px=cfg.task_px)
        tissue, ds = _detect(slide, config=cfg, mpp0=MPP)
    cmap = chunk_tissue_map(tissue.mask, mask_downsample=ds, plan=plan)
    boxes = []
    for r, c in zip(*np.nonzero(cmap)):
        x, y = int(c) * tile, int(r) * tile
        boxes.append((x, y, min(tile, plan.width - x), min(tile, plan.height - y)))
    return boxes, sum(w * h for _, _, w, h in boxes)


def measure(kind: str, slide_path: Path, *, tile: int, workers: int, scratch: Path) -> dict[str, Any]:
    import dask.threaded  # noqa: F401  (imports are process start-up, not per-slide work: load them untimed)
    import tqdm.auto  # noqa: F401

    boxes, pixels = _tissue_chunks(slide_path, tile)
    t0 = time.perf_counter()
    if kind in ("tile", "tile-level0"):
        from wsi_pipeline.tiling import TileConfig, tile_slide

        store = scratch / "bench.zarr"
        shutil.rmtree(store, ignore_errors=True)
        cfg = TileConfig(tile=tile, pyramid=kind == "tile")
        t0 = time.perf_counter()
        res = tile_slide(slide_path, store, config=cfg, workers=workers, progress=False)
        extra = {"chunks_written": res.chunks_written}
        shutil.rmtree(store, ignore_errors=True)
    elif kind == "tile-processes":
        from distributed import Client, LocalCluster

        from wsi_pipeline.tiling import TileConfig, tile_slide

        store = scratch / "bench-p.zarr"
        shutil.rmtree(store, ignore_errors=True)
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cl, \
                Client(cl) as client:
            t0 = time.perf_counter()
            res = tile_slide(slide_path, store, config=TileConfig(tile=tile), client=client, progress=False)
            seconds = time.perf_counter() - t0
        extra = {"chunks_written": res.chunks_written, "seconds_override": seconds}
        shutil.rmtree(store, ignore_errors=True)
    elif kind == "floor":
        from wsi_pipeline.slide import open_slide
        from wsi_pipeline.tiling import _worker_decoder

        with open_slide(slide_path) as slide:
            dec = _worker_decoder(slide, 0)
            assert dec is not None, f"{slide_path}: no direct tile decoder"
            g = dec.grid
            needed = sorted({(ty, tx) for x, y, w, h in boxes
                             for ty in range(y // g.tile_height, (y + h - 1) // g.tile_height + 1)
                             for tx in range(x // g.tile_width, (x + w - 1) // g.tile_width + 1)})
            raws = None
            batches = [needed[i:i + 64] for i in range(0, len(needed), 64)]
            t0 = time.perf_counter()

            def run(batch: list[tuple[int, int]]) -> int:
                for idx in batch:
                    dec.decode(dec.read_raw(*idx))
                return len(batch)

            with ThreadPoolExecutor(workers) as pool:
                n = sum(pool.map(run, batches))
        extra = {"tiles_decoded": n}
        del raws
    elif kind == "openslide":
        import openslide

        osr = openslide.OpenSlide(str(slide_path))
        t0 = time.perf_counter()
        for x, y, w, h in boxes:
            osr.read_region((x, y), 0, (w, h))
        osr.close()
        extra = {"threads": 1}
    else:
        raise ValueError(f"kind={kind!r}")
    seconds = extra.pop("seconds_override", None) or (time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    rss_children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"kind": kind, "slide": slide_path.name, "mpix": pixels / 1e6, "seconds": seconds,
            "mpix_per_s": pixels / 1e6 / seconds, "peak_rss_mib": max(rss, rss_children), **extra}


def _subprocess(kind: str, slide: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.bench_tiling", "--measure", kind, "--slide", str(slide),
           "--tile", str(args.tile), "--workers", str(args.workers), "--out", str(args.out),
           "--store-dir", str(args.store_dir or args.out / "scratch")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} on {slide.name} failed:\n{proc.stderr[-3000:]}")
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {kind:15s} {row['slide']:22s} {row['mpix_per_s']:8.1f} MPix/s  {row['seconds']:7.2f} s  "
          f"peak RSS {row['peak_rss_mib']:7.0f} MiB", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--sizes", default="10000,20000,40000", help="square PAS slides for the scaling rows")
    ap.add_argument("--compare-size", type=int, default=20000,
                    help="PAS slide used for the comparison rows (0 to skip)")
    ap.add_argument("--slides-dir", type=Path, default=None, help="generated-slide cache [default: OUT/slides]")
    ap.add_argument("--phantom-size", type=int, default=20000, help="0 to skip the phantom")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--store-dir", type=Path, default=None,
                    help="where the measured zarr stores go (default OUT/scratch; /dev/shm isolates disk writes)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    ap.add_argument("--slide", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        scratch = (args.store_dir or args.out / "scratch") / f"tiling-bench-{os.getpid()}"
        scratch.mkdir(parents=True, exist_ok=True)
        try:
            print(json.dumps(measure(args.measure, args.slide, tile=args.tile, workers=args.workers,
                                     scratch=scratch)))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return

    slides_dir = args.slides_dir or args.out / "slides"
    slides_dir.mkdir(parents=True, exist_ok=True)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results: dict[str, Any] = {"workers": args.workers, "tile": args.tile, "cpu_count": os.cpu_count(),
                               "store_dir": str(args.store_dir or args.out / "scratch"),
                               "load_avg_start": os.getloadavg(), "compare": [], "scaling": []}
    compare = [("PAS patch", pas_slide(slides_dir, args.compare_size))] if args.compare_size else []
    if args.phantom_size:
        compare.append(("phantom", phantom_slide(slides_dir, args.phantom_size)))
    for label, slide in compare:
        print(f"{label}: {slide}", flush=True)
        rows = {k: _subprocess(k, slide, args) for k in ("floor", "tile", "tile-level0", "tile-processes",
                                                          "openslide")}
        results["compare"].append({"label": label, **{k: v for k, v in rows.items()},
                                   "tile_over_floor": rows["tile"]["mpix_per_s"] / rows["floor"]["mpix_per_s"],
                                   "level0_over_floor": rows["tile-level0"]["mpix_per_s"]
                                   / rows["floor"]["mpix_per_s"],
                                   "tile_over_openslide": rows["tile"]["mpix_per_s"]
                                   / rows["openslide"]["mpix_per_s"]})
    for size in sizes:
        slide = pas_slide(slides_dir, size)
        print(f"scaling {size}: {slide}", flush=True)
        results["scaling"].append({"size": size, "tile": _subprocess("tile", slide, args)})
    results["load_avg_end"] = os.getloadavg()
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    md = _markdown(results)
    (args.out / "results.md").write_text(md)
    print(md)


def _markdown(res: dict[str, Any]) -> str:
    lines = [f"Tiling benchmark: {res['workers']} workers, tile {res['tile']} px, {res['cpu_count']} CPUs, "
             f"load average at start {res['load_avg_start'][0]:.1f} (shared machine: timings are noisy); "
             f"stores written to {res['store_dir']}", "",
             "| slide | tissue MPix | floor MPix/s | tiling (threads) MPix/s | tiling, no pyramid MPix/s "
             "| tiling (processes) MPix/s | openslide loop (1 thread) MPix/s | tiling/floor | no pyramid/floor "
             "| tiling/openslide | peak RSS tiling MiB |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in res["compare"]:
        lines.append(f"| {row['label']} ({row['tile']['slide']}) | {row['tile']['mpix']:.0f} "
                     f"| {row['floor']['mpix_per_s']:.1f} | {row['tile']['mpix_per_s']:.1f} "
                     f"| {row['tile-level0']['mpix_per_s']:.1f} "
                     f"| {row['tile-processes']['mpix_per_s']:.1f} | {row['openslide']['mpix_per_s']:.1f} "
                     f"| {row['tile_over_floor']:.2f} | {row['level0_over_floor']:.2f} "
                     f"| {row['tile_over_openslide']:.1f}x "
                     f"| {row['tile']['peak_rss_mib']:.0f} |")
    lines += ["", "| size | tissue MPix | seconds | MPix/s | peak RSS MiB |", "|---|---|---|---|---|"]
    for row in res["scaling"]:
        t = row["tile"]
        lines.append(f"| {row['size']} | {t['mpix']:.0f} | {t['seconds']:.1f} | {t['mpix_per_s']:.1f} "
                     f"| {t['peak_rss_mib']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
