"""``wsi-pipeline demo``: the README's main job on a synthetic slide, scored against its ground truth.

Synthesizes a seeded PAS kidney phantom (small enough for the whole job to finish in a few minutes on two CPU
cores), runs the default slide job on it with the shipped weights, matches the resulting GeoJSON against the
phantom's truth GeoJSON (:func:`wsi_pipeline.annotations.evaluate_geojson`: detection F1 at IoU 0.5, class
accuracy of the matched glomeruli) and prints a summary
table with the output paths. Missing shipped weights are reported, never replaced: without the segmenter the demo
stops after tiling; without G2C it segments but does not classify.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from .options import legacy_workers, writable_folder


def _missing_weights() -> dict[str, str]:
    from wsi_pipeline.errors import WeightsError
    from wsi_pipeline.weights import default_weights

    missing = {}
    for name in ("segmenter", "g2c"):
        try:
            default_weights(name)
        except WeightsError as exc:
            missing[name] = str(exc)
    return missing


@click.command(name="demo")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-out"),
              show_default=True, help="Output folder (slides/, the slide's results, report.json, report.md).")
@click.option("--size", type=click.IntRange(1024, 65536), default=4096, show_default=True, metavar="PX",
              help="Phantom slide side in pixels (level 0, 0.5 um/px).")
@click.option("--seed", type=int, default=31, show_default=True,
              help="Layout seed (31: held out from every shipped model's training and validation seeds).")
@click.option("--threads", type=click.IntRange(min=1), default=2, show_default=True,
              help="Threads the slide job uses (Dask's threaded scheduler and PyTorch), in this process.")
@click.option("--workers", "legacy_workers_", type=click.IntRange(min=1), default=None, hidden=True,
              help="Old name of --threads.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Job YAML [default: shipped weights, configs/default.yaml values].")
def command(out_dir: Path, size: int, seed: int, threads: int, legacy_workers_: int | None,
            config_path: Path | None) -> None:
    """Synthesize a PAS kidney slide, run the default job with shipped weights, score it against the truth.

    Each stage shows a progress bar with its ETA; the results and report.md land in --out.
    """
    from rich.console import Console

    from .job_config import load_job_config
    from .lock import output_lock

    workers = legacy_workers(threads, legacy_workers_, default=2)
    writable_folder(out_dir, "--out")
    console = Console()
    config = load_job_config(config_path)
    missing = {} if config_path else _missing_weights()
    with output_lock(out_dir):
        _demo(out_dir, size=size, seed=seed, workers=workers, config=config, config_path=config_path,
              missing=missing, console=console)


def _demo(out_dir: Path, *, size: int, seed: int, workers: int | None, config: Any, config_path: Path | None,
          missing: dict[str, str], console: Any) -> None:
    from rich.table import Table

    from wsi_pipeline.annotations import evaluate_geojson
    from wsi_pipeline.synth import write_phantom
    from wsi_pipeline.tiling import TileConfig, tile_slide

    from .report import write_markdown, write_report
    from .slide_job import run_slide, slide_stem

    t0 = time.perf_counter()
    # written once per (size, seed, renderer): a re-run reuses it, and the job's stage markers make it resume
    phantom = write_phantom(out_dir / "slides", size=size, stains=("PAS",), seed=seed, progress=True, reuse=True)
    t_synth = time.perf_counter() - t0
    synth = f"synth {t_synth:.1f} s" + (" (reused)" if phantom.reused else "")
    pas = phantom.slides["PAS"]
    table = Table(title="wsi-pipeline demo")
    table.add_column("what")
    table.add_column("value / where", overflow="fold")
    table.add_row("phantom slide", f"{pas} ({size} x {size} px at 0.5 um/px, {len(phantom.glomeruli)} glomeruli)")
    table.add_row("truth GeoJSON", str(phantom.truth_geojson))

    if "segmenter" in missing:
        res = tile_slide(pas, out_dir / slide_stem(pas) / "slide.zarr", config=TileConfig(mpp=2.0), workers=workers)
        table.add_row("tiled store", f"{res.store_path} ({res.chunks_tissue} tissue chunks)")
        table.add_row("time", f"{synth}, tile {res.seconds:.1f} s")
        console.print(table)
        for text in missing.values():
            console.print(f"[red]missing shipped weights:[/] {text}")
        console.print("[yellow]Stopped after tiling: no segmentation or classification without shipped weights "
                      "(no results are made up).[/]")
        return

    task = "segment" if "g2c" in missing else "full"
    entry = run_slide(pas, out_dir, config=config, task=task, workers=workers, progress=True)
    write_report(out_dir, [entry], task=task, config=config.to_dict())
    write_markdown(out_dir, [entry], task=task, notes=[f"wsi-pipeline demo: phantom seed {seed}, {size} px, "
                                                       f"{workers} threads"])
    if entry["status"] not in ("ok", "skipped"):  # skipped: every stage already done in this folder (a re-run)
        console.print(table)
        raise click.ClickException(f"the job ended with status {entry['status']}: {entry['reason']}")
    slide_dir = Path(entry["output"])
    scores = evaluate_geojson(slide_dir / "glomeruli.geojson", phantom.truth_geojson)
    counts = entry["counts"]
    classes = ", ".join(f"{k} {v}" for k, v in sorted((counts.get("classes") or {}).items()))
    table.add_row("glomeruli found", f"{counts.get('glomeruli')}" + (f" ({classes})" if classes else ""))
    table.add_row("detection (IoU >= 0.5)", f"F1 {scores['f1']:.3f}, precision {scores['precision']:.3f}, recall "
                  f"{scores['recall']:.3f} (TP {scores['tp']}, FP {scores['fp']}, FN {scores['fn']}, mean IoU "
                  f"{scores['mean_iou']:.3f}); area Dice {scores['dice']:.3f}")
    acc = scores["class_accuracy"]
    table.add_row("class accuracy (matched)", "not classified" if acc is None else
                  f"{acc:.3f} over {scores['classified']} glomeruli")
    table.add_row("GeoJSON (QuPath)", str(slide_dir / "glomeruli.geojson"))
    table.add_row("overlay", str(slide_dir / "overlay.png"))
    table.add_row("tiled store", str(slide_dir / "slide.zarr"))
    table.add_row("report", f"{out_dir / 'report.json'} ({out_dir / 'report.md'})")
    stage_times = ", ".join(f"{k} {v:.1f} s" for k, v in entry["timings"].items())
    table.add_row("time", f"{synth}; job {entry['seconds']:.1f} s ({stage_times or 'all skipped'})")
    console.print(table)
    if missing:
        for text in missing.values():
            console.print(f"[red]missing shipped weights:[/] {text}")
        console.print("[yellow]Segmented only: G2C classification needs the shipped g2c weights.[/]")


__all__ = ["command"]
