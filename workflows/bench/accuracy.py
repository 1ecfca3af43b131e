"""Accuracy benchmark: the default slide job on held-out phantom slides, scored against their truth GeoJSON.

    python -m workflows.bench.accuracy --out bench-out/accuracy [--seeds 31-40] [--size 8192] [--config FILE]
    wsi-pipeline bench accuracy --out bench-out/accuracy ...      (the same, from the CLI)

Each seed is its own phantom layout with its own stain strength, blur, noise and JPEG quality (none of the seeds
31-99 is used to train or validate any shipped model). The slides are written once (cached in ``--out/slides``)
and run through :func:`workflows.slide_job.run_slide` with the job config (shipped weights by default); the job's
stage markers make a re-run with the same models instant, and a changed model re-runs only what it affects.
Measured per slide and pooled: detection precision / recall / F1 at IoU 0.5, mean IoU of the matches, the area
Dice of all predicted vs all true glomerulus outlines, the class
of every matched glomerulus against the truth (accuracy, balanced accuracy, confusion matrix, s-vs-noa balanced
accuracy), and QuPath conformance of every written feature (:func:`wsi_pipeline.annotations.qupath_problems`).
Results: ``results.json`` and ``results.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from workflows.options import FiniteFloat

from .common import namespace, threads_options

CLASSES = ("noa", "ss", "gs")


def parse_seeds(text: str) -> list[int]:
    """``"31-34,40"`` -> ``[31, 32, 33, 34, 40]``."""
    seeds: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        seeds += list(range(int(lo), int(hi or lo) + 1))
    return seeds


def class_scores(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Accuracy, balanced accuracy, s-vs-noa balanced accuracy and the confusion matrix of (truth, predicted)."""
    confusion = {t: {p: sum(1 for a, b in pairs if (a, b) == (t, p)) for p in CLASSES} for t in CLASSES}
    recalls = {t: confusion[t][t] / sum(confusion[t].values()) for t in CLASSES if sum(confusion[t].values())}
    sclerotic = [(a != "noa", b != "noa") for a, b in pairs]
    s_recalls = [sum(p == t for t, p in sclerotic if t == k) / n
                 for k in (False, True) if (n := sum(1 for t, _ in sclerotic if t == k))]
    return {"n": len(pairs), "accuracy": sum(a == b for a, b in pairs) / len(pairs) if pairs else None,
            "balanced_accuracy": sum(recalls.values()) / len(recalls) if recalls else None,
            "recall": recalls, "s_vs_noa_balanced_accuracy": sum(s_recalls) / len(s_recalls) if s_recalls else None,
            "confusion": confusion}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(results: dict[str, Any]) -> str:
    pooled, cls = results["pooled"], results["classes"]
    lines = [f"# Slide job accuracy on held-out phantom slides ({results['size']} px, {results['stain']})", "",
             f"Models: {results['models']}. Seeds {results['seeds'][0]}..{results['seeds'][-1]} "
             f"({len(results['seeds'])} slides).", "",
             "| seed | glomeruli | TP / FP / FN | F1 | mean IoU | Dice | class acc. | QuPath problems | job s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["slides"]:
        lines.append(f"| {r['seed']} | {r['truth']} | {r['tp']} / {r['fp']} / {r['fn']} | {_fmt(r['f1'])} | "
                     f"{_fmt(r['mean_iou'])} | {_fmt(r['dice'])} | {_fmt(r['class_accuracy'])} | "
                     f"{r['qupath_problems']} | {r['seconds']:.1f} |")
    lines += ["", f"**Pooled detection (IoU >= 0.5)**: precision {_fmt(pooled['precision'])}, recall "
              f"{_fmt(pooled['recall'])}, **F1 {_fmt(pooled['f1'])}** (TP {pooled['tp']}, FP {pooled['fp']}, "
              f"FN {pooled['fn']}); area Dice of the glomerulus masks, mean over slides {_fmt(pooled['dice_mean'])} "
              f"(min {_fmt(pooled['dice_min'])}); features failing QuPath conformance: {pooled['qupath_problems']}.",
              "",
              f"**Classes of matched glomeruli** (n = {cls['n']}): accuracy {_fmt(cls['accuracy'])}, balanced "
              f"{_fmt(cls['balanced_accuracy'])}, s-vs-noa balanced {_fmt(cls['s_vs_noa_balanced_accuracy'])}; "
              "recall " + ", ".join(f"{k} {_fmt(v)}" for k, v in cls["recall"].items()) + ".", "",
              "| truth \\ predicted | " + " | ".join(CLASSES) + " |", "|---|" + "---|" * len(CLASSES)]
    for t in CLASSES:
        lines.append(f"| {t} | " + " | ".join(str(cls["confusion"][t][p]) for p in CLASSES) + " |")
    return "\n".join(lines) + "\n"


@click.command(name="accuracy")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("bench-out/accuracy"),
              show_default=True, help="Output folder (slides cache, jobs, results.json, results.md).")
@click.option("--seeds", default="31-40", show_default=True, help="Held-out layout seeds, e.g. 31-40 or 31,35.")
@click.option("--size", type=click.IntRange(min=1024), default=8192, show_default=True,
              help="Phantom side in level-0 px (0.5 um/px).")
@click.option("--stain", default="PAS", show_default=True, help="Stain the phantoms are rendered in.")
@click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Job YAML [default: configs/default.yaml values].")
@threads_options(2, "Threads of each slide job (Dask's threaded scheduler and PyTorch).")
@click.option("--labelled", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Score a folder of images/ + masks/ instead of phantom slides; with a labels.csv "
                   "(global_sclerosis), glomerulus crops through the classifier (README: Check it on your own "
                   "slides first).")
@click.option("--mpp", type=FiniteFloat(0.05, 20.0, unit="um/px"), default=None,
              help="With --labelled: um/px of every image (else mpp.json; labelled crops: 1.0).")
@click.option("--label-stain", default=None, help="With --labelled: stain name for every image.")
@click.option("--only", default=None, help="With --labelled: comma-separated image names to score.")
@click.option("--cv-runs", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="With --labelled: a folder of fold-k segmenter runs; each scores its own held-out fold.")
@click.option("--site", "sites", multiple=True,
              help="With --labelled crops (a labels.csv with global_sclerosis): only crops of this site (repeatable).")
@click.option("--min-truth-um2", type=FiniteFloat(0.0, unit="um^2"), default=2000.0, show_default=True,
              help="With --labelled: truth objects smaller than this are left out of the object scores.")
def command(**kw: Any) -> None:
    """The slide job on held-out phantom slides (or your own labelled images), scored against the truth:
    detection precision / recall / F1 at IoU 0.5, Dice, class accuracy, QuPath conformance."""
    _run(namespace(kw))


def main(argv: list[str] | None = None) -> None:
    command.main(args=argv, prog_name="wsi-pipeline bench accuracy")


def _run(args: Any) -> None:
    if args.labelled is not None:
        from workflows.bench.labelled import run_labelled, run_unlabelled
        from workflows.job_config import load_job_config as _load
        from wsi_pipeline.labelled import IMAGE_SUFFIXES

        if (args.labelled / "labels.csv").is_file():  # glomerulus crops labelled GS or not: the classifier
            from workflows.bench.crops import run_labelled_crops

            run_labelled_crops(args.labelled, args.out.resolve(), config=_load(args.config), mpp=args.mpp or 1.0,
                               sites=tuple(args.sites), workers=args.workers)
            print((args.out / "results.md").read_text())
            return
        if not (args.labelled / "masks").is_dir():  # no masks: find glomeruli, recognise stains, draw overlays
            if args.mpp is None:
                raise click.UsageError(f"{args.labelled}: images without masks need --mpp")
            images = sorted(p for p in args.labelled.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            found = run_unlabelled(images, args.out.resolve(), config=_load(args.config), mpp=args.mpp,
                                   workers=args.workers)
            for row in found["images"]:
                print(f"{row['name']}: {row['stain_recognised']}, {row['glomeruli']} glomeruli {row['areas_um2']}")
            return

        if args.cv_runs is not None:
            from workflows.bench.labelled import run_cv

            results = run_cv(args.labelled, args.cv_runs, args.out.resolve(), config=_load(args.config),
                             min_truth_um2=args.min_truth_um2, workers=args.workers)
            print((args.out / "results.md").read_text())
            return
        results = run_labelled(args.labelled, args.out.resolve(), config=_load(args.config), mpp=args.mpp,
                               stain=args.label_stain, only=args.only.split(",") if args.only else None,
                               min_truth_um2=args.min_truth_um2, workers=args.workers)
        print((args.out / "results.md").read_text())
        print(json.dumps(results["pooled"]))
        return

    from tqdm import tqdm

    from workflows.bench.common import save_results

    from workflows.job_config import load_job_config
    from workflows.slide_job import run_slide
    from wsi_pipeline.annotations import evaluate_geojson, qupath_problems
    from wsi_pipeline.synth import write_phantom

    out = args.out.resolve()
    config = load_job_config(args.config)
    seeds = parse_seeds(args.seeds)
    slides: list[dict[str, Any]] = []
    pairs: list[tuple[str, str]] = []
    for seed in tqdm(seeds, desc="held-out slides", unit="slide"):
        folder = out / "slides" / str(args.size)
        slide = folder / f"phantom-s{seed}-{args.stain}.svs"
        truth = folder / f"phantom-s{seed}.truth.geojson"
        if not (slide.exists() and truth.exists()):  # a slide put in the cache (or written before) is scored as is
            write_phantom(folder, size=args.size, stains=(args.stain,), seed=seed, reuse=True)
        t0 = time.perf_counter()
        entry = run_slide(slide, out / "jobs", config=config, workers=args.workers)
        seconds = time.perf_counter() - t0
        if entry["status"] != "ok" and entry["status"] != "skipped":
            raise SystemExit(f"seed {seed}: job {entry['status']}: {entry['reason']}")
        pred = Path(entry["output"]) / "glomeruli.geojson"
        scores = evaluate_geojson(pred, truth)
        problems = qupath_problems(json.loads(pred.read_text()))
        pairs += scores.pop("class_pairs")
        slides.append({"seed": seed, "truth": scores["tp"] + scores["fn"], **scores,
                       "qupath_problems": len(problems), "problems": problems[:5], "seconds": seconds,
                       "stages_run": entry["stages_run"]})
    tp, fp, fn = (sum(r[k] for r in slides) for k in ("tp", "fp", "fn"))
    precision, recall = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    results = {"size": args.size, "stain": args.stain, "seeds": seeds,
               "models": f"segment {config.segment.weights}, classify {config.classify.weights}",
               "slides": slides,
               "pooled": {"tp": tp, "fp": fp, "fn": fn, "precision": precision, "recall": recall,
                          "f1": 2 * precision * recall / max(precision + recall, 1e-12),
                          "dice_mean": sum(r["dice"] for r in slides) / len(slides),
                          "dice_min": min(r["dice"] for r in slides),
                          "qupath_problems": sum(r["qupath_problems"] for r in slides)},
               "classes": class_scores(pairs)}
    save_results(out, results, markdown(results))


if __name__ == "__main__":
    main()
