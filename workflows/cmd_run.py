"""``wsi-pipeline run INPUT... --out OUT_DIR``: the slide job over files and folders on a Dask cluster.

Every input gets an entry in ``OUT_DIR/report.json`` (status ok|skipped|no-tissue|failed, reason naming the file,
timings per stage, counts; rewritten after every finished slide) and a row in ``OUT_DIR/report.md``; a broken slide
never stops the others; the exit code is 1 when any slide failed. Re-running the same command skips finished
slides and stages (see :mod:`workflows.stages`). Slides run as tasks on a local cluster of worker processes
(``--workers``) or on an existing scheduler (``--scheduler``): see :mod:`workflows.batch`.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import click


@click.command(name="run")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (one sub-folder per slide + report.json + report.md).")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Job YAML [default: configs/default.yaml values, shipped weights].")
@click.option("--task", type=click.Choice(["full", "segment", "classify", "translate"]), default="full",
              show_default=True, help="full = segment + classify; classify = classify existing annotations.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Existing Dask scheduler (tcp://host:port, tls://host:port) [default: a local cluster].")
@click.option("--workers", type=int, default=None,
              help="Local cluster: worker processes, each running one slide at a time "
                   "[default: min(slides, cores, memory / 4 GiB)].")
@click.option("--threads-per-worker", type=int, default=None,
              help="Local cluster: threads each worker's slide uses (PyTorch, tiling) [default: cores / workers].")
@click.option("--slide-timeout", type=float, default=21600.0, show_default=True, metavar="SECONDS",
              help="Fail a slide whose tiling or inference task runs longer (its worker is restarted); 0 = none.")
@click.option("--retries", type=int, default=1, show_default=True,
              help="Re-run a slide task that raised. (A task whose worker died is rescheduled anyway, up to "
                   "Dask's distributed.scheduler.allowed-failures, default 3.)")
@click.option("--dashboard/--no-dashboard", default=True, show_default=True,
              help="Local cluster: serve the Dask dashboard on 127.0.0.1 (needs bokeh) and print its link.")
@click.option("--tls-ca-file", type=click.Path(exists=True, dir_okay=False), default=None,
              help="--scheduler over TLS: CA certificate.")
@click.option("--tls-cert", type=click.Path(exists=True, dir_okay=False), default=None,
              help="--scheduler over TLS: client certificate.")
@click.option("--tls-key", type=click.Path(exists=True, dir_okay=False), default=None,
              help="--scheduler over TLS: client private key.")
@click.option("--mpp-override", type=float, default=None, help="Use this level-0 um/px instead of the file's.")
@click.option("--annotations", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="--task classify: QuPath GeoJSON to classify [default: <slide-stem>.geojson next to the slide].")
@click.option("--progress/--no-progress", default=True, show_default=True)
def command(inputs: tuple[Path, ...], out_dir: Path, config_path: Path | None, task: str, scheduler: str | None,
            workers: int | None, threads_per_worker: int | None, slide_timeout: float, retries: int,
            dashboard: bool, tls_ca_file: str | None, tls_cert: str | None, tls_key: str | None,
            mpp_override: float | None, annotations: Path | None, progress: bool) -> None:
    """Process slide files and folders (recursive): tissue, glomeruli, G2C classes -> QuPath GeoJSON."""
    from rich.console import Console

    from .batch import ClusterOptions, open_cluster, run_batch
    from .job_config import load_job_config
    from .report import BatchProgress, discover, summary_table

    if annotations is not None and task != "classify":
        raise click.UsageError("--annotations only applies to --task classify")
    if scheduler is not None and (workers is not None or threads_per_worker is not None):
        raise click.UsageError("--workers/--threads-per-worker size the local cluster; not with --scheduler")
    if retries < 0:
        raise click.UsageError(f"--retries {retries}: must be >= 0")
    config = load_job_config(config_path)
    options = ClusterOptions(scheduler=scheduler, n_workers=workers, threads_per_worker=threads_per_worker,
                             dashboard=dashboard, tls_ca_file=tls_ca_file, tls_cert=tls_cert, tls_key=tls_key)
    out_dir.mkdir(parents=True, exist_ok=True)
    slides = discover(inputs, exclude=[out_dir])
    if not slides:
        raise click.UsageError(f"no slide files found in {', '.join(map(str, inputs))}")
    if annotations is not None and len(slides) != 1:
        raise click.UsageError("--annotations needs exactly one slide")
    console = Console(stderr=True)
    with open_cluster(options, n_slides=len(slides)) as cluster:
        console.print(f"{len(slides)} slides on {cluster.description}", markup=False, highlight=False)
        if cluster.dashboard:
            console.print(f"dashboard: {cluster.dashboard}", markup=False, highlight=False)
        elif dashboard and scheduler is None:
            console.print("dashboard: unavailable (the Dask dashboard needs bokeh: pip install 'bokeh>=3.1')")
        notes = [cluster.description, f"dashboard: {cluster.dashboard or 'none'}"]
        display = BatchProgress(console, total=len(slides))
        with display if progress else contextlib.nullcontext():
            entries = run_batch(slides, out_dir, client=cluster.client, config=config, task=task,
                                mpp_override=mpp_override, annotations=str(annotations) if annotations else None,
                                timeout=slide_timeout or None, retries=retries, notes=notes,
                                on_event=display if progress else None)
    Console().print(summary_table(entries, title=f"wsi-pipeline run --task {task}"))
    click.echo(f"report: {out_dir / 'report.json'} ({out_dir / 'report.md'})")
    if any(e["status"] == "failed" for e in entries):
        sys.exit(1)


__all__ = ["command"]
