"""``wsi-pipeline run INPUT... --out OUT_DIR``: the slide job over files and folders on a Dask cluster.

Every input gets an entry in ``OUT_DIR/report.json`` (status ok|skipped|no-tissue|failed|interrupted, reason naming
the file, timings per stage, counts; rewritten after every finished slide) and a row in ``OUT_DIR/report.md``; a
broken slide never stops the others; the exit code is 1 when any slide failed, 130 when interrupted. Re-running the
same command skips finished slides and stages (see :mod:`workflows.stages`). Slides run as tasks on a local cluster
of worker processes (``--workers``) or on an existing scheduler (``--scheduler``): see :mod:`workflows.batch`.
Every option is checked before a cluster starts; one run at a time writes an output folder (:mod:`workflows.lock`);
Ctrl-C or SIGTERM stops the cluster and marks the slides under way ``interrupted``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from .options import MPP, POSITIVE_SECONDS, existing_inputs, writable_folder


@click.command(name="run")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (one sub-folder per slide + report.json + report.md); created if needed.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              default=None, help="Job YAML [default: configs/default.yaml values, shipped weights].")
@click.option("--task", type=click.Choice(["full", "segment", "classify", "translate"]), default="full",
              show_default=True, help="full = segment + classify; segment = glomeruli without classes; classify = "
                                      "classify a pathologist's annotations; translate = whole-slide virtual stains.")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Existing Dask scheduler (tcp://host:port, tls://host:port) [default: a local cluster].")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Local cluster: worker processes, each running one slide at a time "
                   "[default: min(slides, cores, memory / 4 GiB)]. (Everywhere in wsi-pipeline, --workers counts "
                   "processes and --threads / --threads-per-worker count threads.)")
@click.option("--threads-per-worker", type=click.IntRange(min=1), default=None,
              help="Local cluster: threads each worker's slide uses (PyTorch, tiling) [default: cores / workers].")
@click.option("--slide-timeout", type=POSITIVE_SECONDS, default=21600.0, show_default=True, metavar="SECONDS",
              help="Fail a slide whose tiling or inference task runs longer (its worker is restarted); 0 = none.")
@click.option("--retries", type=click.IntRange(min=0), default=1, show_default=True,
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
@click.option("--mpp-override", type=MPP, default=None, metavar="UM",
              help="Use this level-0 um/px (0.05-20) for every input instead of the files' own (needed for files "
                   "without one, or whose MPP is refused as implausible).")
@click.option("--annotations", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="--task classify: QuPath GeoJSON to classify [default: <slide-stem>.geojson next to the slide].")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="Show the live batch display (slides done, each running slide's stage with units done and "
                   "ETA); without a terminal, one line per stage and per finished slide.")
def command(inputs: tuple[Path, ...], out_dir: Path, config_path: Path | None, task: str, scheduler: str | None,
            workers: int | None, threads_per_worker: int | None, slide_timeout: float, retries: int,
            dashboard: bool, tls_ca_file: str | None, tls_cert: str | None, tls_key: str | None,
            mpp_override: float | None, annotations: Path | None, progress: bool) -> None:
    """Process slide files and folders (recursive): tissue, glomeruli, G2C classes -> QuPath GeoJSON.

    A re-run of the same command resumes: finished slides and stages are skipped. Ctrl-C stops cleanly.
    """
    from rich.console import Console

    from wsi_pipeline.atomic import remove_stale_temps

    from .batch import BatchInterrupted, ClusterOptions, open_cluster, run_batch
    from .job_config import load_job_config
    from .lock import output_lock
    from .report import BatchProgress, discover, print_summary

    # every value is checked here, before a cluster starts
    existing_inputs(inputs)
    writable_folder(out_dir, "--out")
    if annotations is not None and task != "classify":
        raise click.UsageError("--annotations only applies to --task classify")
    if scheduler is not None and (workers is not None or threads_per_worker is not None):
        raise click.UsageError("--workers/--threads-per-worker size the local cluster; not with --scheduler")
    config = load_job_config(config_path)
    options = ClusterOptions(scheduler=scheduler, n_workers=workers, threads_per_worker=threads_per_worker,
                             dashboard=dashboard, tls_ca_file=tls_ca_file, tls_cert=tls_cert, tls_key=tls_key)
    slides = discover(inputs, exclude=[out_dir])
    if not slides:
        raise click.UsageError(f"no slide files found in {', '.join(map(str, inputs))}")
    if annotations is not None and len(slides) != 1:
        raise click.UsageError("--annotations needs exactly one slide")
    # a worker killed while the cluster closes (an interrupted slide) cannot release its multiprocessing
    # semaphore; the resource tracker, started with these warning options, would print a warning about it
    sys.warnoptions.append("ignore:resource_tracker:UserWarning")
    console = Console(stderr=True)
    if not console.is_terminal:  # a log file: one line per message, never wrapped at 80 columns
        console = Console(stderr=True, width=100_000, no_color=True)
    # Ctrl-C and SIGTERM stop the batch alike, also when the command was started with SIGINT ignored (a background
    # job of a script: `wsi-pipeline run ... &` then `kill -INT`); both handlers are restored afterwards
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with output_lock(out_dir):
            remove_stale_temps(out_dir, recursive=False)  # report temps of a killed run (slides clean their own)
            with open_cluster(options, n_slides=len(slides)) as cluster:
                console.print(f"{len(slides)} slides on {cluster.description}", markup=False, highlight=False)
                if cluster.dashboard:
                    console.print(f"dashboard: {cluster.dashboard}", markup=False, highlight=False)
                elif dashboard and scheduler is None:
                    console.print("dashboard: unavailable (the Dask dashboard needs bokeh: pip install 'bokeh>=3.1')")
                notes = [cluster.description, f"dashboard: {cluster.dashboard or 'none'}"]
                display = BatchProgress(console, total=len(slides))
                try:
                    with display if progress else contextlib.nullcontext():
                        entries = run_batch(slides, out_dir, client=cluster.client, config=config, task=task,
                                            mpp_override=mpp_override,
                                            annotations=str(annotations) if annotations else None,
                                            timeout=slide_timeout or None, retries=retries, notes=notes,
                                            on_event=display if progress else None)
                except BatchInterrupted as exc:
                    _quiet_shutdown()  # closing the cluster below is all that is left to do
                    stopped: BatchInterrupted | None = exc
                else:
                    stopped = None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stopped is not None:
        done = sum(e["status"] != "interrupted" for e in stopped.entries)
        click.echo(f"interrupted: {done} of {len(slides)} slides finished, the others are marked interrupted in "
                   f"{out_dir / 'report.md'}; re-run the same command to resume (finished slides and stages are "
                   f"kept)", err=True)
        sys.exit(130)
    print_summary(entries, title=f"wsi-pipeline run --task {task}")
    click.echo(f"report: {out_dir / 'report.json'} ({out_dir / 'report.md'})")
    if any(e["status"] == "failed" for e in entries):
        sys.exit(1)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _quiet_shutdown() -> None:
    """After an interrupt: further Ctrl-C / SIGTERM are ignored while the cluster closes, and Dask's shutdown
    chatter (workers killed mid-task, their semaphores) is not shown."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for name in ("distributed", "tornado", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore")


__all__ = ["command"]
