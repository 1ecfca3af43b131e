"""Ship the real-data G2C classifier and the real-stain generators into ``wsi_pipeline/weights`` (registry save_model).

    python scripts/g2c_real_ship.py --model runs/g2c-real-ship/seed0/g2c.safetensors --table runs/g2c-real/table.json
    python scripts/g2c_real_ship.py --model runs/g2c-real/PAS_ONLY/SESCAM-to-SAS/seed0/g2c.safetensors \
        --calibration runs/g2c-real/PAS_ONLY/SESCAM-to-SAS/result.json --table runs/g2c-real/table.json

A model from a cross-validation run gets that run's temperature and CV threshold (fitted on its training site's
out-of-fold predictions only) and its own held-out-site figures.

Adds to each record the data attribution and licences, and (g2c) the cross-site figures of its variant.
The cards (``*.card.md``) are written by hand from the same numbers.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from wsi_pipeline.models.registry import load_model, save_model

WEIGHTS = Path("wsi_pipeline/weights")
AIDPATH = ("Bueno G, Gonzalez-Lopez L, Garcia-Rojo M, Laurinavicius A, Deniz O. Data for glomeruli characterization "
           "in histopathological images. Data in Brief 29 (2020) 105314; doi 10.17632/k7nvtgn2x6.3 (slides, CC BY 4.0). "
           "Crops: Weishaupt et al., Computers in Biology and Medicine 196 (2025) 110719, "
           "patologiivest/GlobalGlomerulosclerosisClustering (CC BY-NC-SA 4.0)")
STAINS = ("Kidney stain patches of zeeshannisar/resource-effecient-multi-stain-kidney-glomeruli-segmentation "
          "(MIT, copyright 2025 Zeeshan Nisar), Hannover Medical School cohort")


def cross_site(table: list[dict[str, Any]], variant: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in table:
        if r["tag"] != variant:
            continue
        key = f"{r['train_sites'][0]}->{r['test_sites'][0]}"
        vals = [s["test_cv_threshold"]["balanced_accuracy"] for s in r["seeds"]]
        out[key] = {"balanced_accuracy_per_seed": vals, "mean": float(np.mean(vals)), "std": float(np.std(vals)),
                    "ece_raw": float(np.mean([s["test_raw"]["ece"] for s in r["seeds"]])),
                    "ece_calibrated": float(np.mean([s["test_calibrated"]["ece"] for s in r["seeds"]]))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--table", type=Path, required=True)
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--calibration", type=Path, default=None, help="result.json of the model's CV run")
    args = parser.parse_args()
    model, record = load_model(args.model)
    meta = dict(record.metadata)
    if args.calibration is not None:
        run = json.loads(args.calibration.read_text())
        seed = next(s for s in run["seeds"] if Path(s["model"]).resolve() == args.model.resolve())
        meta |= {"temperature": run["temperature"], "gs_threshold": run["gs_threshold_cv"],
                 "calibration_n": run["cv"]["n"], "calibration_sources": [str(args.calibration)],
                 "test_sites": run["test_sites"], "heldout": {k: seed[k] for k in ("test_raw", "test_cv_threshold")},
                 "train_fold_held_out": seed.get("fold")}
    meta |= {"data": AIDPATH, "licence": "weights trained on CC BY-NC-SA 4.0 crops: non-commercial, share-alike, "
             "attribute both sources (see g2c.card.md)", "generator_data": STAINS,
             "cross_site": cross_site(json.loads(args.table.read_text()), meta["variant"])}
    digest = save_model(model, WEIGHTS / "g2c.safetensors", arch="g2c", config=record.config, metadata=meta,
                        training_config=record.training_config)
    print("g2c", digest, (WEIGHTS / "g2c.safetensors").stat().st_size)
    for stain in ("HE", "PASM", "MASSON", "CD68"):
        src = args.runs / f"cyclegan-real-PAS-{stain}-g2c" / "G_AB.safetensors"
        if not src.is_file():
            print("missing", src)
            continue
        net, rec = load_model(src)
        gmeta = dict(rec.metadata) | {"data": STAINS, "licence": "MIT (training patches)"}
        name = f"generator-real-PAS-{stain}"
        d = save_model(net, WEIGHTS / f"{name}.safetensors", arch=rec.arch, config=rec.config, metadata=gmeta,
                       training_config=rec.training_config)
        print(name, d)


if __name__ == "__main__":
    main()
