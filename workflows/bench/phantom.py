"""Phantom writer benchmark: MPix/s of ``write_phantom`` and the demo's wall time, this tree vs another checkout.

    python -m workflows.bench.phantom --out bench-out/phantom [--sizes 1024,2048] [--baseline DIR] [--demo]
    wsi-pipeline bench phantom ...                                   (the same, from the CLI)

Each measurement runs in a fresh Python process whose ``PYTHONPATH`` is the tree measured: this checkout, and
with ``--baseline DIR`` an older one (e.g. ``git worktree add /tmp/base <commit>``), interleaved round by round
(base, ours, base, ours, ...) so both see the same host load. Measured per run: wall seconds, the process's CPU
seconds, level-0 MPix/s (wall) and MPix/CPU-s. ``--demo`` also times ``wsi-pipeline demo`` end to end (fresh output
folder; for this tree also a second run into the same folder, which reuses the recorded phantom and the job's
stage markers). The table keeps each variant's best round (least disturbed by other load) and lists all of them.
Results: ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import click

from .common import save_results

# run in the measured tree's own interpreter state: only its wsi_pipeline is imported
_WRITE = """
import inspect, json, os, resource, sys, time
from wsi_pipeline.synth import write_phantom
out, size, stains, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
kwargs = {"threads": threads} if threads and "threads" in inspect.signature(write_phantom).parameters else {}
t0, c0 = time.perf_counter(), time.process_time()
write_phantom(out, size=size, stains=stains, seed=31, **kwargs)
print(json.dumps({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                  "threads_option": bool(kwargs)}))
"""


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree)}


def write_once(tree: Path, out: Path, *, size: int, stains: str, threads: int) -> dict[str, Any]:
    """One ``write_phantom`` in a fresh process importing ``tree``; the output folder is removed afterwards."""
    if out.exists():
        shutil.rmtree(out)
    proc = subprocess.run([sys.executable, "-c", _WRITE, str(out), str(size), stains, str(threads)],
                          env=_env(tree), cwd=tree, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: write_phantom failed:\n{proc.stderr[-2000:]}")
    row: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    n_stains = len(stains.split(","))
    mpix = size * size * n_stains / 1e6
    row.update(mpix=mpix, mpix_per_s=mpix / row["wall_s"], mpix_per_cpu_s=mpix / row["cpu_s"],
               load_avg_1m=os.getloadavg()[0])
    shutil.rmtree(out, ignore_errors=True)
    return row


def demo_once(tree: Path, out: Path, *, size: int, fresh: bool = True) -> dict[str, Any]:
    """Wall seconds of ``wsi-pipeline demo --out OUT --size SIZE`` run from ``tree``."""
    if fresh and out.exists():
        shutil.rmtree(out)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "workflows.cli", "demo", "--out", str(out), "--size", str(size)],
                          env=_env(tree), cwd=tree, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: demo failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return {"wall_s": wall, "load_avg_1m": os.getloadavg()[0]}


def _best(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return min(rows, key=lambda r: r["wall_s"])


def markdown(results: dict[str, Any]) -> str:
    lines = [f"# Phantom writer ({results['stains']}, seed 31, {results['cpus']} CPUs, load average "
             f"{results['load_avg_start']:.1f} at the start, {results['load_avg_end']:.1f} at the end)", "",
             "| tree | size px | threads | best wall s | MPix/s | CPU s | MPix per CPU-s | all wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for row in results["write"]:
        best = _best(row["runs"])
        lines.append(f"| {row['tree']} | {row['size']} | {row['threads'] or 'default'} | {best['wall_s']:.2f} | "
                     f"{best['mpix_per_s']:.2f} | {best['cpu_s']:.2f} | {best['mpix_per_cpu_s']:.2f} | "
                     + ", ".join(f"{r['wall_s']:.1f}" for r in row["runs"]) + " |")
    ratios = results.get("speedup")
    if ratios:
        lines += ["", "Speed-up over the baseline (best wall / best wall): "
                  + ", ".join(f"{k}: **{v:.2f}x**" for k, v in ratios.items()) + "."]
    if results.get("demo"):
        lines += ["", "| demo run | size px | wall s |", "|---|---|---|"]
        for row in results["demo"]:
            lines.append(f"| {row['what']} | {row['size']} | " + ", ".join(f"{r['wall_s']:.1f}" for r in row["runs"])
                         + " |")
    return "\n".join(lines) + "\n"


@click.command(name="phantom")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-out/phantom"),
              show_default=True, help="Results folder (results.json, results.md) and scratch slides.")
@click.option("--sizes", default="1024,2048", show_default=True, help="Square phantom sides in level-0 px.")
@click.option("--stains", default="PAS", show_default=True, help="Stains of each phantom, comma-separated.")
@click.option("--threads", default="0", show_default=True,
              help="Render threads to try, e.g. 1,2 (0: the writer's default).")
@click.option("--rounds", type=click.IntRange(min=1), default=2, show_default=True,
              help="Interleaved rounds per variant.")
@click.option("--baseline", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Another checkout of wsi-pipeline to measure the same way.")
@click.option("--demo", is_flag=True, help="Also time `wsi-pipeline demo` end to end.")
@click.option("--demo-size", type=click.IntRange(min=1024), default=4096, show_default=True,
              help="Phantom side of the timed demo (level-0 px).")
def command(**kw: Any) -> None:
    """Phantom writer MPix/s and the demo's wall time, this tree vs another checkout, each in a fresh process."""
    _run(SimpleNamespace(**kw))


def main(argv: list[str] | None = None) -> None:
    command.main(args=argv, prog_name="wsi-pipeline bench phantom")


def _run(args: Any) -> None:
    ours = Path(__file__).resolve().parents[2]
    trees = ([("baseline", args.baseline.resolve())] if args.baseline else []) + [("this tree", ours)]
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"stains": args.stains, "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()[0],
                               "trees": {name: str(tree) for name, tree in trees}, "write": [], "demo": []}
    for size in (int(s) for s in args.sizes.split(",")):
        variants = [(name, tree, int(t)) for name, tree in trees
                    for t in (args.threads.split(",") if name == "this tree" else ["0"])]
        rows = {v: {"tree": v[0], "size": size, "threads": v[2], "runs": []} for v in variants}
        for _ in range(args.rounds):
            for v in variants:
                run = write_once(v[1], out / "scratch", size=size, stains=args.stains, threads=v[2])
                rows[v]["runs"].append(run)  # type: ignore[attr-defined]
                print(f"{v[0]} {size} px threads {v[2] or 'default'}: {run['wall_s']:.2f} s "
                      f"({run['mpix_per_s']:.2f} MPix/s, CPU {run['cpu_s']:.2f} s)", flush=True)
        results["write"] += list(rows.values())
    if args.baseline:
        base = {r["size"]: _best(r["runs"])["wall_s"] for r in results["write"] if r["tree"] == "baseline"}
        results["speedup"] = {f"{r['size']} px, threads {r['threads'] or 'default'}":
                              base[r["size"]] / _best(r["runs"])["wall_s"]
                              for r in results["write"] if r["tree"] == "this tree"}
    if args.demo:
        for name, tree in trees:
            folder = out / f"demo-{'base' if name == 'baseline' else 'ours'}"
            first = demo_once(tree, folder, size=args.demo_size)
            print(f"demo {name} first run: {first['wall_s']:.1f} s", flush=True)
            results["demo"].append({"what": f"{name}, fresh folder", "size": args.demo_size, "runs": [first]})
            if name == "this tree":
                again = demo_once(tree, folder, size=args.demo_size, fresh=False)
                print(f"demo {name} second run: {again['wall_s']:.1f} s", flush=True)
                results["demo"].append({"what": f"{name}, same folder again (phantom reused, job resumed)",
                                        "size": args.demo_size, "runs": [again]})
    results["load_avg_end"] = os.getloadavg()[0]
    save_results(out, results, markdown(results))


if __name__ == "__main__":
    main()
