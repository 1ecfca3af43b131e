"""The G2C cross-site table on real glomeruli: each variant trained on one hospital and tested on the other.

    python scripts/g2c_real_table.py --config configs/train-g2c-real-cv.yaml --out runs/g2c-real \
        --variants PAS_ONLY PAS_ALL+ [--frozen-vs-joint PAS_ALL]

Resumable: a finished (variant, direction) keeps its ``result.json``; an interrupted seed resumes from its
checkpoint. Writes ``<out>/table.json`` and ``<out>/table.md`` (the paper's layout, its numbers beside ours).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from wsi_pipeline.atomic import atomic_write_json, atomic_write_text
from wsi_pipeline.config import load_config
from wsi_pipeline.train.data_real import read_real_crops
from wsi_pipeline.train.g2c_real import G2CRealConfig, train_g2c_real

DIRECTIONS = ((("SESCAM",), ("SAS",)), (("SAS",), ("SESCAM",)))
#: the paper's Table 2 (s-vs-noa) and Table 3 (ss-vs-gs) averaged accuracies (%), private data
PAPER = {"PAS_ONLY": (90.74, 87.41), "PAS_HE": (92.55, 88.05), "PAS_MASSON": (92.06, 87.55),
         "PAS_PASM": (92.46, 89.50), "PAS_ALL": (93.34, 89.90), "PAS_ALL+": (93.68, 90.45)}


def run_all(base: G2CRealConfig, variants: list[str], out: Path, *, joint: bool | None = None,
            directions: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = DIRECTIONS) -> list[dict[str, Any]]:
    data = read_real_crops(base.data)
    rows = []
    for variant in variants:
        for train_sites, test_sites in directions:
            update: dict[str, Any] = {"variant": variant, "train_sites": train_sites, "test_sites": test_sites}
            tag = variant
            if joint is not None:
                update["joint"] = joint
                tag += "-joint" if joint else "-frozen"
            cfg = base.model_copy(update=update)
            run_dir = out / tag / f"{train_sites[0]}-to-{test_sites[0]}"
            done = run_dir / "result.json"
            result = json.loads(done.read_text()) if done.exists() else train_g2c_real(cfg, run_dir=run_dir, data=data)
            rows.append({"tag": tag, **result})
    return rows


def _pm(values: list[float]) -> str:
    return f"{100 * np.mean(values):.1f} +- {100 * np.std(values):.1f}"


def _per_seed(values: list[float]) -> str:
    return ", ".join(f"{100 * v:.1f}" for v in values)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown, the paper's layout: per variant, balanced accuracy on the held-out hospital per direction (mean +- std
    over seeds, each seed in brackets) and its AUC, the mean of the two directions (+- std over seeds, seed k of
    one direction paired with seed k of the other), the paper's numbers beside. A direction not run shows '-'."""
    key = "test_cv_threshold"
    lines = ["| variant | SESCAM -> SAS, balanced % | AUC | SAS -> SESCAM, balanced % | AUC | mean of directions | "
             "paper s-vs-noa | paper ss-vs-gs |", "|---|---|---|---|---|---|---|---|"]
    for tag in dict.fromkeys(r["tag"] for r in rows):
        mine = {r["train_sites"][0]: r for r in rows if r["tag"] == tag}
        cells, per_dir = [], []
        for site in ("SESCAM", "SAS"):
            if site not in mine:
                cells += ["-", "-"]
                continue
            seeds = mine[site]["seeds"]
            vals = [s[key]["balanced_accuracy"] for s in seeds]
            aucs = [s[key]["auc"] for s in seeds]
            cells += [f"{_pm(vals)} ({_per_seed(vals)})", f"{np.mean(aucs):.3f} +- {np.std(aucs):.3f}"]
            per_dir.append(vals)
        if len(per_dir) == 2:
            n = min(len(v) for v in per_dir)
            mean = f"**{_pm([(a + b) / 2 for a, b in zip(per_dir[0][:n], per_dir[1][:n])])}**"
        else:
            mean = "-"
        paper = PAPER.get(tag.split("-")[0].split(" ")[0], (float("nan"), float("nan")))
        lines.append(f"| {tag} | {' | '.join(cells)} | {mean} | {paper[0]:.2f} | {paper[1]:.2f} |")
    return "\n".join(lines) + "\n"


def calibration_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per run, the train-site CV temperature and threshold, held-out ECE before / after temperature
    scaling, and balanced accuracy at p_gs >= 0.5 (raw) vs at the CV rule (mean +- std over seeds)."""
    lines = ["| variant | direction | T (train-site CV) | CV threshold | ECE raw | ECE calibrated | "
             "balanced @0.5 raw | balanced @CV rule |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s = r["seeds"]
        lines.append(f"| {r['tag']} | {r['train_sites'][0]} -> {r['test_sites'][0]} | {r['temperature']:.2f} | "
                     f"{r['gs_threshold_cv']:.2f} | {np.mean([x['test_raw']['ece'] for x in s]):.3f} | "
                     f"{np.mean([x['test_calibrated']['ece'] for x in s]):.3f} | "
                     f"{_pm([x['test_raw']['balanced_accuracy'] for x in s])} | "
                     f"{_pm([x['test_cv_threshold']['balanced_accuracy'] for x in s])} |")
    return "\n".join(lines) + "\n"


def cv_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: cross-validation inside the training hospital (slide-grouped, out-of-fold): what selection uses."""
    lines = ["| variant | training hospital | glomeruli (out of fold) | balanced % @0.5 raw | AUC | ECE raw | "
             "ECE calibrated |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "cv" not in r:
            continue
        raw, cal = r["cv"]["raw"], r["cv"]["calibrated"]
        lines.append(f"| {r['tag']} | {r['train_sites'][0]} | {r['cv']['n']} | {100 * raw['balanced_accuracy']:.1f} | "
                     f"{raw['auc']:.3f} | {raw['ece']:.3f} | {cal['ece']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("configs/train-g2c-real-cv.yaml"))
    parser.add_argument("--out", type=Path, default=Path("runs/g2c-real"))
    parser.add_argument("--variants", nargs="+", default=["PAS_ONLY", "PAS_ALL+"])
    parser.add_argument("--joint", choices=("default", "frozen", "joint"), default="default")
    parser.add_argument("--train-site", choices=("SESCAM", "SAS"), default=None,
                        help="run only the direction that trains on this hospital")
    parser.add_argument("--report-only", action="store_true", help="rebuild table.md from finished runs only")
    parser.add_argument("--with", dest="others", nargs="*", default=[], metavar="DIR[:SUFFIX]",
                        help="also list the finished runs of these table folders (their tags + ' SUFFIX')")
    args = parser.parse_args()
    base = load_config(args.config, G2CRealConfig)
    joint = None if args.joint == "default" else args.joint == "joint"
    if not args.report_only:
        directions = tuple(d for d in DIRECTIONS if args.train_site in (None, d[0][0]))
        run_all(base, args.variants, args.out, joint=joint, directions=directions)
    rows = [{"tag": p.parent.parent.name, **json.loads(p.read_text())} for p in sorted(args.out.glob("*/*/result.json"))]
    for other in args.others:
        folder, _, suffix = other.partition(":")
        rows += [{"tag": f"{p.parent.parent.name} {suffix}".strip(), **json.loads(p.read_text())}
                 for p in sorted(Path(folder).glob("*/*/result.json"))]
    for r in rows:
        for s in r["seeds"]:
            s.pop("test_logits", None)
    atomic_write_json(args.out / "table.json", rows)
    text = table(rows) + "\n" + calibration_table(rows) + "\n" + cv_table(rows)
    atomic_write_text(args.out / "table.md", text)
    print(text)


if __name__ == "__main__":
    main()
