"""Batch scale benchmark: a folder of phantom slides through the batch layer on local clusters of different shapes.

    python -m workflows.bench.batch --out bench-out/batch [--slides 20] [--size 4096] [--layouts 1x2,2x1]

``--distinct`` seeded PAS phantoms (0.5 um/px, ``--size`` px square) are generated once (cached in
``--out/phantoms``) and copied round-robin into a folder of ``--slides`` slides. Each layout ``WxT`` (W worker
processes x T threads per slide) processes the whole folder cold (fresh output folder, fresh cluster) with the
default job (shipped weights, ``--task full``) through :func:`workflows.batch.run_batch`, exactly as
``wsi-pipeline run`` does. Measured: batch wall time (cluster start excluded, reported apart), slides/hour, peak
RSS of every worker process (its kernel high-water mark, ``VmHWM``, read on the worker after the batch), the
client's peak RSS, and the host load average sampled every 5 s (other processes share the CPUs). With
``--repeat N`` the layouts run interleaved N times (A B C A B C ...) and the table shows each layout's best run
(least disturbed by the other load) next to all its wall times. The speed-up is the first layout's wall time over
each other layout's. Results: ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

from .common import peak_rss_mib


def make_folder(out: Path, *, slides: int, size: int, distinct: int, seed: int) -> Path:
    """``out/slides-<size>/slide-NN.svs``: ``distinct`` phantoms (cached) copied round-robin ``slides`` times."""
    from wsi_pipeline.synth import write_phantom

    sources = []
    for i in range(distinct):
        folder = out / "phantoms" / str(size)
        path = folder / f"phantom-s{seed + i}-PAS.svs"
        if not path.exists():
            t0 = time.perf_counter()
            write_phantom(folder, size=size, stains=("PAS",), seed=seed + i)
            print(f"phantom seed {seed + i} ({size} px): {time.perf_counter() - t0:.0f} s", flush=True)
        sources.append(path)
    target = out / f"slides-{size}"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for n in range(slides):
        shutil.copy(sources[n % distinct], target / f"slide-{n:02d}.svs")
    return target


class LoadSampler:
    """The host's 1-minute load average every ``every`` seconds, in a thread."""

    def __init__(self, every: float = 5.0) -> None:
        self.every, self.samples = every, [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:  # noqa: PYI034  (final class)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(os.getloadavg()[0])


def run_layout(folder: Path, out: Path, *, workers: int, threads: int, task: str) -> dict[str, Any]:
    """One cold batch of ``folder`` on a local cluster of ``workers`` processes x ``threads``."""
    from workflows.batch import ClusterOptions, open_cluster, run_batch
    from workflows.job_config import JobConfig
    from workflows.report import discover

    slides = discover([folder])
    if out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    options = ClusterOptions(n_workers=workers, threads_per_worker=threads, dashboard=False)
    with open_cluster(options, n_slides=len(slides)) as cluster, LoadSampler() as load:
        started = time.perf_counter()
        entries = run_batch(slides, out, client=cluster.client, config=JobConfig(), task=task,
                            notes=[cluster.description])
        wall = time.perf_counter() - started
        worker_rss = cluster.client.run(peak_rss_mib)
    statuses = sorted({e["status"] for e in entries})
    stage_s: dict[str, list[float]] = {}
    for e in entries:
        for stage, seconds in e["timings"].items():
            stage_s.setdefault(stage, []).append(seconds)
    return {"layout": f"{workers}x{threads}", "workers": workers, "threads_per_worker": threads,
            "slides": len(slides), "statuses": statuses, "cluster_start_s": round(started - t0, 2),
            "wall_s": round(wall, 2), "slides_per_hour": round(len(slides) * 3600 / wall, 1),
            "worker_peak_rss_mib": {a: round(v) for a, v in sorted(worker_rss.items())},
            "client_peak_rss_mib": round(peak_rss_mib()),
            "load_avg_1m": {"min": min(load.samples), "mean": round(statistics.mean(load.samples), 2),
                            "max": max(load.samples)},
            "median_stage_s": {k: round(statistics.median(v), 2) for k, v in stage_s.items()},
            "glomeruli": sum(e["counts"].get("glomeruli", 0) for e in entries)}


def best_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each layout's fastest run (in first-seen order), with every wall time of that layout attached."""
    by_layout: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        by_layout.setdefault(r["layout"], []).append(r)
    return [{**min(rs, key=lambda r: r["wall_s"]), "all_wall_s": [r["wall_s"] for r in rs]}
            for rs in by_layout.values()]


def markdown(results: dict[str, Any]) -> str:
    rows = best_runs(results["layouts"])
    base = rows[0]["wall_s"]
    title = (f"# Batch scale: {rows[0]['slides']} phantom slides of {results['size']} x {results['size']} px "
             f"(0.5 um/px), --task {results['task']}")
    host = (f"Host: {results['host']['cpus']} CPUs, shared with other developers (load average sampled every 5 s "
            "during each batch). Peak RSS: each worker process's kernel high-water mark.")
    lines = [title, "", host, "",
             "| layout (workers x threads) | wall s (best) | all runs s | slides/hour | speed-up vs " + rows[0]["layout"]
             + " | peak RSS per worker (MB) | client RSS (MB) | cluster start s | load avg (min/mean/max) | statuses |",
             "|---|---:|---|---:|---:|---|---:|---:|---|---|"]
    for r in rows:
        rss = ", ".join(str(v) for v in r["worker_peak_rss_mib"].values())
        load = r["load_avg_1m"]
        runs = ", ".join(f"{w:.0f}" for w in r["all_wall_s"])
        lines.append(f"| {r['layout']} | {r['wall_s']:.0f} | {runs} | {r['slides_per_hour']:.0f} | {base / r['wall_s']:.2f} "
                     f"| {rss} | {r['client_peak_rss_mib']} | {r['cluster_start_s']:.1f} "
                     f"| {load['min']:.1f} / {load['mean']:.1f} / {load['max']:.1f} | {', '.join(r['statuses'])} |")
    lines += ["", "Median stage seconds per slide:", ""]
    stages = list(rows[0]["median_stage_s"])
    lines += ["| layout | " + " | ".join(stages) + " |", "|---|" + "---:|" * len(stages)]
    lines += [f"| {r['layout']} | " + " | ".join(f"{r['median_stage_s'].get(s, 0):.2f}" for s in stages) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


@click.command(name="batch")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-out/batch"),
              show_default=True, help="Output folder (slides, runs, results.json, results.md).")
@click.option("--slides", type=click.IntRange(min=1), default=20, show_default=True, help="Slides in the folder.")
@click.option("--size", type=click.IntRange(min=1024), default=4096, show_default=True,
              help="Phantom side in level-0 px (0.5 um/px).")
@click.option("--distinct", type=click.IntRange(min=1), default=4, show_default=True,
              help="Distinct phantoms (the others are copies).")
@click.option("--layouts", default="1x2,2x1", show_default=True,
              help="Local clusters to compare, as WORKERSxTHREADS (worker processes x threads each), comma-"
                   "separated; the first is the speed-up base.")
@click.option("--task", default="full", show_default=True, type=click.Choice(["full", "segment"]),
              help="The job's task.")
@click.option("--seed", type=int, default=21, show_default=True, help="First layout seed of the phantoms.")
@click.option("--repeat", type=click.IntRange(min=1), default=1, show_default=True,
              help="Run the layouts interleaved this many times.")
def command(**kw: Any) -> None:
    """A folder of phantom slides through local clusters of different layouts: slides/hour, speed-up, RSS."""
    args = SimpleNamespace(**kw)
    for layout in args.layouts.split(","):
        parts = layout.lower().split("x")
        if len(parts) != 2 or not all(x.isdigit() and int(x) > 0 for x in parts):
            raise click.BadParameter(f"{layout!r}: expected WORKERSxTHREADS, e.g. 2x1", param_hint="--layouts")
    _run(args)


def main(argv: list[str] | None = None) -> None:
    command.main(args=argv, prog_name="wsi-pipeline bench batch")


def _run(args: Any) -> None:
    out = args.out.resolve()
    folder = make_folder(out, slides=args.slides, size=args.size, distinct=args.distinct, seed=args.seed)
    results: dict[str, Any] = {"host": {"cpus": os.cpu_count()}, "size": args.size, "task": args.task,
                               "distinct_phantoms": args.distinct, "repeat": args.repeat, "layouts": []}
    for layout in args.layouts.split(",") * args.repeat:
        workers, threads = (int(x) for x in layout.lower().split("x"))
        res = run_layout(folder, out / "runs" / layout, workers=workers, threads=threads, task=args.task)
        results["layouts"].append(res)
        print(json.dumps(res), flush=True)
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
