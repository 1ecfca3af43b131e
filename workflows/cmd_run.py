"""``wsi-pipeline run INPUT... --out OUT_DIR``: the slide job over files and folders, one slide after another.

Every input gets an entry in ``OUT_DIR/report.json`` (status ok|skipped|no-tissue|failed, reason naming the file,
timings per stage, counts); a broken slide never stops the others; the exit code is 1 when any slide failed.
Re-running the same command skips finished stages (see :mod:`workflows.stages`). Distributing slides over a Dask
cluster is the batch layer's job (issue 7): :func:`workflows.slide_job.run_slide` is already a picklable task.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command(name="run")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (one sub-folder per slide + report.json).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Job YAML [default: configs/default.yaml values, shipped weights].")
@click.option("--task", type=click.Choice(["full", "segment", "classify", "translate"]), default="full",
              show_default=True, help="full = segment + classify; classify = classify existing annotations.")
@click.option("--workers", type=int, default=None, help="Dask worker threads per slide [default: all cores].")
@click.option("--mpp-override", type=float, default=None, help="Use this level-0 um/px instead of the file's.")
@click.option("--annotations", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="--task classify: QuPath GeoJSON to classify [default: <slide-stem>.geojson next to the slide].")
@click.option("--progress/--no-progress", default=True, show_default=True)
def command(inputs: tuple[Path, ...], out_dir: Path, config_path: Path | None, task: str, workers: int | None,
            mpp_override: float | None, annotations: Path | None, progress: bool) -> None:
    """Process slide files and folders (recursive): tissue, glomeruli, G2C classes -> QuPath GeoJSON."""
    from rich.console import Console

    from .job_config import load_job_config
    from .report import discover, summary_table, unique_stems, write_report
    from .slide_job import run_slide, slide_stem

    if annotations is not None and task != "classify":
        raise click.UsageError("--annotations only applies to --task classify")
    config = load_job_config(config_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    slides = discover(inputs, exclude=[out_dir])
    if not slides:
        raise click.UsageError(f"no slide files found in {', '.join(map(str, inputs))}")
    if annotations is not None and len(slides) != 1:
        raise click.UsageError("--annotations needs exactly one slide")
    console = Console(stderr=True)
    entries = []
    for i, (slide, stem) in enumerate(zip(slides, unique_stems(slides, slide_stem)), 1):
        if progress:
            console.print(f"[bold]({i}/{len(slides)})[/] {slide}")
        entry = run_slide(slide, out_dir, config=config, task=task, mpp_override=mpp_override,
                          annotations=str(annotations) if annotations else None, workers=workers,
                          progress=progress, stem=stem)
        entries.append(entry)
        write_report(out_dir, entries, task=task, config=config.to_dict())  # after every slide: a crash keeps it
        if progress and entry["status"] == "failed":
            console.print(f"  [red]failed[/]: {entry['reason']}")
    report = write_report(out_dir, entries, task=task, config=config.to_dict())
    Console().print(summary_table(entries, title=f"wsi-pipeline run --task {task}"))
    click.echo(f"report: {report}")
    if any(e["status"] == "failed" for e in entries):
        sys.exit(1)


__all__ = ["command"]
