"""Sample grid of the real-stain generators on real PAS glomerulus crops (AIDPATH; none was seen by a generator).

    python scripts/g2c_real_samples.py --out docs/images/g2c-real-generators.jpg

Rows: the real PAS crop as the slide job cuts it, then each generator's translation (HE, PASM, MASSON, CD68),
then a real reference patch of each target stain (kidney-stains, 128 px at the training scale) for comparison.
Columns: 4 globally sclerosed and 4 not, from both hospitals.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsi_pipeline.models.registry import load_model
from wsi_pipeline.train.cyclegan import translate
from wsi_pipeline.train.data_real import RealCropsConfig, read_labels, read_real_crops
from wsi_pipeline.train.data_stain import folder_patches

STAINS = {"HE": "01", "PASM": "03", "MASSON": "32", "CD68": "16"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=Path, default=Path("runs"))
    parser.add_argument("--generator", default="{runs}/cyclegan-real-PAS-{stain}-g2c/G_AB.safetensors")
    parser.add_argument("--out", type=Path, default=Path("docs/images/g2c-real-generators.jpg"))
    args = parser.parse_args()
    cfg = RealCropsConfig()
    rows = read_labels(cfg.root)
    picked: list[str] = []
    for site in ("SESCAM", "SAS"):
        for gs in ("1", "0"):
            picked += [r["file"] for r in rows if r["site"] == site and r["global_sclerosis"] == gs][3:5]
    crops = read_real_crops(cfg, files=picked)
    order = np.argsort(-crops.gs, kind="stable")
    pas = crops.images[order]
    grid = [pas]
    stains = [s for s in STAINS if Path(args.generator.format(runs=args.runs, stain=s)).is_file()]
    for stain in stains:
        net, _ = load_model(args.generator.format(runs=args.runs, stain=stain))
        with torch.no_grad():
            grid.append(translate(pas, net))
    for stain in stains:
        ref = folder_patches(f"{cfg.root}/../../kidney-stains/orig_patch_stain_{STAINS[stain]}.png", n=len(pas),
                             size=128, seed=7, scale=0.25)
        grid.append(ref)
    image = np.concatenate([np.concatenate(list(r), axis=1) for r in grid], axis=0)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(args.out, quality=85)
    print(args.out, "rows: PAS,", ", ".join(stains), "(generated), then real", ", ".join(stains),
          "| columns:", [crops.files[i] for i in order])


if __name__ == "__main__":
    main()
