"""Pack the real segmentation data at the training resolution, small enough to travel to a leased GPU machine.

    python scripts/pack_seg_real.py OUT [--config configs/train-segmenter-real-gpu.yaml]

Writes ``OUT/aidpath-tiles`` (each tile as the trainer's own scene: area-averaged to ``data.mpp`` with
``labelled_scene``, saved losslessly with ``mpp.json``, so the trainer reads identical scenes) and
``OUT/aidpath-crops`` (each crop reduced so that its glomerulus is at most the largest pasted diameter,
``real.crop_diameter_um[1] / data.mpp`` px, 116 px at 2 um/px, instead of ~222 px: pasting only ever shrinks a crop
further, so a second box filter replaces one; labels.csv unchanged). 78 MB of PNG become about 17 MB.
Train with ``--set real.folders=[OUT/aidpath-tiles] --set real.crops=OUT/aidpath-crops``; tile names, so the
cross-validation folds, stay the same.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_pipeline.config import load_config
from wsi_pipeline.labelled import read_labelled_folder
from wsi_pipeline.train.data_seg_real import labelled_scene, read_crops
from wsi_pipeline.train.segmentation import SegmenterTrainConfig


def pack_tiles(folder: str, out: Path, *, mpp: float) -> int:
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    items = read_labelled_folder(folder)
    for item in items:
        scene = labelled_scene(item, mpp=mpp)
        Image.fromarray(scene.image).save(out / "images" / f"{item.name}.png", optimize=True)
        Image.fromarray(scene.labels.astype(np.uint16)).save(out / "masks" / f"{item.name}.png")
    stains = {it.stain for it in items}
    (out / "mpp.json").write_text(json.dumps({"mpp": mpp, **({"stain": stains.pop()} if len(stains) == 1 else {})}))
    return len(items)


def pack_crops(folder: str, out: Path, *, max_diameter_px: float) -> int:
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    shutil.copy(Path(folder) / "labels.csv", out / "labels.csv")
    crops = read_crops(folder)
    for crop in crops:
        diameter = 2.0 * np.sqrt(crop.mask.sum() / np.pi)
        scale = min(1.0, max_diameter_px / max(diameter, 1.0))
        h, w = crop.mask.shape
        size = (max(4, round(w * scale)), max(4, round(h * scale)))
        img = Image.fromarray(crop.image).resize(size, Image.Resampling.BOX)
        mask = Image.fromarray(crop.mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR)
        img.save(out / "images" / f"{crop.name}.png", optimize=True)
        Image.fromarray((np.asarray(mask) >= 128).astype(np.uint8) * 255).save(out / "masks" / f"{crop.name}.png")
    return len(crops)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--config", default="configs/train-segmenter-real-gpu.yaml")
    args = ap.parse_args()
    config = load_config(args.config, SegmenterTrainConfig)
    if config.real is None:
        raise SystemExit(f"{args.config}: no real: section")
    mpp = config.data.mpp
    n = sum(pack_tiles(f, args.out / Path(f).name, mpp=mpp) for f in config.real.folders)
    m = pack_crops(config.real.crops, args.out / "aidpath-crops",
                   max_diameter_px=np.ceil(config.real.crop_diameter_um[1] / mpp) + 1) if config.real.crops else 0
    print(f"{args.out}: {n} tiles at {mpp} um/px, {m} crops")


if __name__ == "__main__":
    main()
