"""Figure: what the self-adversarial augmentation of a real-PAS segmenter recipe shows the network.

For a few labelled real PAS tiles (at the recipe's 2 um/px): the tile, then for each partner stain of the recipe's
``augment.pairs`` the PAS -> X translation and the round trip X + noise -> PAS (sigma = eps, the strongest draw),
one column per stain; the mean absolute change of the round trip is printed.

    python scripts/sa_round_trips.py [--config configs/train-segmenter-real-sa.yaml] [--out docs/images/...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wsi_pipeline.config import load_config
from wsi_pipeline.labelled import read_labelled_folder
from wsi_pipeline.train.augment import SelfAdversarialAugment
from wsi_pipeline.train.segmentation import SegmenterTrainConfig


def _tile(path: Path, mpp: float, target_mpp: float, size: int) -> torch.Tensor:
    """Centre square of an image resampled to ``target_mpp``, as float (3, size, size) in [0, 1]."""
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        scale = mpp / target_mpp
        rgb = rgb.resize((round(rgb.width * scale), round(rgb.height * scale)), Image.Resampling.LANCZOS)
    arr = np.asarray(rgb)
    y0, x0 = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return torch.from_numpy(arr[y0:y0 + size, x0:x0 + size].copy()).permute(2, 0, 1).float() / 255.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="configs/train-segmenter-real-sa.yaml")
    ap.add_argument("--tiles", nargs="*", default=["10063", "10025", "10047"], help="tile names (aidpath-tiles)")
    ap.add_argument("--out", default="docs/images/segmenter-sa-round-trips.jpg")
    ap.add_argument("--size", type=int, default=192)
    args = ap.parse_args()
    config = load_config(args.config, SegmenterTrainConfig)
    if config.augment is None or config.real is None:
        raise SystemExit(f"{args.config}: needs augment and real")
    aug = SelfAdversarialAugment.from_config(config.augment)
    items = {i.name: i for i in read_labelled_folder(config.real.folders[0])}
    x = torch.stack([_tile(items[n].image, items[n].mpp, config.data.mpp, args.size) for n in args.tiles])
    gen = torch.Generator().manual_seed(0)
    columns = [x]
    with torch.no_grad():
        for (g_ab, g_ba), name in zip(aug.pairs(), [p.g_ab for p in config.augment.pairs]):
            a = g_ba(x * 2 - 1)
            b = g_ab(a + config.augment.eps * torch.randn(a.shape, generator=gen))
            back = ((b + 1) / 2).clamp(0, 1)
            columns += [((a + 1) / 2).clamp(0, 1), back]
            print(f"{name}: mean |round trip - tile| = {float((back - x).abs().mean()):.3f}")
    grid = torch.cat([torch.cat(list(col), 1) for col in columns], 2)  # rows: tiles; columns: tile, X, back, ...
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(out, quality=85)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
