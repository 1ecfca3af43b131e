"""Cross-validation folds and the all-data run of a segmenter recipe, all at once on one GPU host.

    python scripts/gpu_segmenter_runs.py --data PACK --runs RUNS --out OUT [--config C] [--budget S] [--limit S]

Made for a leased GPU machine with its own Python (no ``wsi-pipeline`` console script, no openslide): it trains the
recipe directly with :func:`wsi_pipeline.train.segmentation.train_segmenter`. ``PACK`` is the output of
``scripts/pack_seg_real.py``. Steps: render the phantom scenes once (every run reads the cache), start the
``n_folds`` fold runs (``RUNS/fold-k``) and the all-data run (``RUNS/all``) as processes, each with the recipe's
loader workers, for ``--budget`` seconds of training each; kill what is still running after ``--limit`` seconds; then
copy to ``OUT`` what comes back from such a machine (at most 8 files): ``<run>.safetensors`` per run and
``runs.tar.gz`` with every run's config, metrics and log. Unpack locally with ``scripts/gpu_segmenter_unpack.sh``.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the machine's own Python runs the package from the checkout


def overrides(pack: Path, budget: float) -> list[str]:
    return [f"real.folders=[{pack / 'aidpath-tiles'}]", f"real.crops={pack / 'aidpath-crops'}",
            f"time_budget_s={budget}"]


def train_one(config_path: str, run_dir: Path, sets: list[str]) -> None:
    import json

    from wsi_pipeline.config import load_config
    from wsi_pipeline.train.segmentation import SegmenterTrainConfig, train_segmenter

    config = load_config(config_path, SegmenterTrainConfig, overrides=sets)
    result = train_segmenter(config, run_dir=run_dir, progress=False)
    print(json.dumps(result, default=str), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/train-segmenter-real-gpu.yaml")
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--runs", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--budget", type=float, default=400.0, help="training seconds per run")
    ap.add_argument("--limit", type=float, default=480.0, help="kill runs still going after this many seconds")
    ap.add_argument("--folds", default="all", help="'all', or comma-separated fold indices (a quick check)")
    ap.add_argument("--one", nargs=2, metavar=("RUN_DIR", "FOLD"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    sets = overrides(args.data.resolve(), args.budget)
    if args.one:
        run_dir, fold = args.one
        train_one(args.config, Path(run_dir), sets + ([f"real.fold={fold}"] if fold != "all" else []))
        return

    from wsi_pipeline.config import load_config
    from wsi_pipeline.train.data_seg import load_scenes
    from wsi_pipeline.train.segmentation import SegmenterTrainConfig

    config = load_config(args.config, SegmenterTrainConfig, overrides=sets)
    t0 = time.perf_counter()
    if config.real is not None and config.real.phantom_fraction > 0:
        load_scenes(config.train_seeds, config.stains, config=config.data, cache_dir=config.cache_dir,
                    workers=min(len(config.train_seeds), 12))
    print(f"phantom scenes ready in {time.perf_counter() - t0:.1f} s", flush=True)
    n_folds = config.real.n_folds if config.real is not None else 0
    folds = [str(k) for k in range(n_folds)] if args.folds == "all" else args.folds.split(",")
    names = {f"fold-{k}": k for k in folds} | ({"all": "all"} if args.folds == "all" else {})
    args.runs.mkdir(parents=True, exist_ok=True)
    procs, logs = {}, []
    for name, fold in names.items():
        logs.append(log := open(args.runs / f"{name}.log", "w"))
        procs[name] = subprocess.Popen([sys.executable, __file__, "--config", args.config, "--data", str(args.data),
                                        "--runs", str(args.runs), "--out", str(args.out), "--budget",
                                        str(args.budget), "--one", str(args.runs / name), fold],
                                       stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    deadline = t0 + args.limit
    while any(p.poll() is None for p in procs.values()) and time.perf_counter() < deadline:
        time.sleep(2)
    for name, p in procs.items():
        if p.poll() is None:
            p.kill()
            print(f"{name}: killed at the {args.limit:.0f} s limit", flush=True)
        print(f"{name}: exit {p.wait()}", flush=True)
    for log in logs:
        log.close()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in names:
        weights = args.runs / name / "segmenter.safetensors"
        if weights.exists():
            shutil.copy(weights, args.out / f"{name}.safetensors")
    with tarfile.open(args.out / "runs.tar.gz", "w:gz") as tar:
        for name in names:
            for part in ("config.json", "metrics.json"):
                if (args.runs / name / part).exists():
                    tar.add(args.runs / name / part, arcname=f"{name}/{part}")
            if (args.runs / f"{name}.log").exists():
                tar.add(args.runs / f"{name}.log", arcname=f"{name}/train.log")
    print(f"done in {time.perf_counter() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
