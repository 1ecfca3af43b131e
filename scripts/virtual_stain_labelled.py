"""Labelled real tiles in other stains: a stain-robustness check for the segmenter where no labelled slide exists.

Each image of a labelled folder (default: ``aidpath-tiles``, real PAS with glomerulus masks) is resampled to the
real-stain generators' working scale (about 1.6 um/px) and translated by the shipped real-tissue CycleGAN generators
(PAS -> H&E, Jones silver, Sirius Red, CD68 IHC; learnt from the unlabelled ``kidney-stains`` patches, never from
these tiles). The masks are resampled with the image; every output folder is a labelled folder with its own
``mpp.json``, so ``wsi-pipeline bench accuracy --labelled OUT/<stain> --cv-runs ...`` scores each fold's model on its
own held-out tiles in that virtual stain. ``PAS`` is the control: the same resampling without translation.

What it can and cannot say: a generated stain is a CycleGAN's idea of the stain (it keeps the PAS image's layout,
and may hide PAS information in its output), so these figures bound robustness to stain *appearance*; they are no
substitute for labelled slides that were stained that way.

    python scripts/virtual_stain_labelled.py [--labelled DIR] [--out bench-out/virtual-stains] [--mpp 1.6]
        [--stains PAS HE ...] [--final-mpp 3.0] [--macenko]

``--macenko`` also writes ``<stain>+macenko`` folders: each translated image Macenko-normalised to the colours of the
first PAS control image (a colour-only "route to PAS" before segmenting).

``--final-mpp`` resamples the translated images once more (e.g. 3.0: the overview sections some labs scan at about
3 um/px); the folders are then named ``<stain>@<final-mpp>``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from wsi_pipeline.atomic import atomic_write_json
from wsi_pipeline.infer.loaders import generator_predictor
from wsi_pipeline.labelled import read_labelled_folder
from wsi_pipeline.stain.macenko import MacenkoParams, apply_macenko, fit_macenko
from wsi_pipeline.weights import resolve_weights

GENERATORS = {"HE": "generator-real-PAS-HE", "SILVER": "generator-real-PAS-PASM",
              "SIRIUS_RED": "generator-real-PAS-MASSON", "IHC_CD68": "generator-real-PAS-CD68"}


def _resample(rgb: np.ndarray, labels: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Image (Lanczos) and mask (nearest) to ``size`` = (width, height)."""
    image = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    mask = np.asarray(Image.fromarray(labels.astype(np.uint16)).resize(size, Image.Resampling.NEAREST))
    return image, mask


def _translate(rgb: np.ndarray, predictor: object) -> np.ndarray:
    """One whole image through a generator (padded by reflection to a multiple of 4, as its strides need)."""
    h, w = rgb.shape[:2]
    ph, pw = -h % 4, -w % 4
    padded = np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="reflect")
    out = predictor(padded.transpose(2, 0, 1)[None])[0]  # type: ignore[operator]
    return (np.clip(out[:, :h, :w], 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--labelled", default="../shared/data/real-glomeruli/aidpath-tiles")
    ap.add_argument("--out", default="bench-out/virtual-stains")
    ap.add_argument("--mpp", type=float, default=1.6, help="working scale of the generators (um/px)")
    ap.add_argument("--stains", nargs="+", default=["PAS", *GENERATORS], choices=["PAS", *GENERATORS])
    ap.add_argument("--final-mpp", type=float, default=None, help="resample the outputs to this um/px at the end")
    ap.add_argument("--macenko", action="store_true", help="also write Macenko-to-PAS normalised copies")
    args = ap.parse_args()
    items = read_labelled_folder(args.labelled)
    refs = {s: resolve_weights(GENERATORS[s]) for s in args.stains if s != "PAS"}
    stains = {s: None if s == "PAS" else generator_predictor(str(refs[s].path), refs[s].sha256, "cpu")
              for s in args.stains}
    out = Path(args.out)
    final = args.final_mpp or args.mpp
    reference: MacenkoParams | None = None
    for stain, predictor in stains.items():
        folder = out / (stain if args.final_mpp is None else f"{stain}@{args.final_mpp:g}")
        normalised = folder.with_name(folder.name + "+macenko")
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        for it in tqdm(items, desc=stain):
            rgb, labels = it.load()
            factor = it.mpp / args.mpp
            size = (round(rgb.shape[1] * factor), round(rgb.shape[0] * factor))
            image, mask = _resample(rgb, labels, size)
            if predictor is not None:
                image = _translate(image, predictor)
            if final != args.mpp:
                image, mask = _resample(image, mask, (round(size[0] * args.mpp / final), round(size[1] * args.mpp / final)))
            Image.fromarray(image).save(folder / "images" / f"{it.name}.png")
            Image.fromarray(mask.astype(np.uint16)).save(folder / "masks" / f"{it.name}.png")
            if stain == "PAS" and reference is None:
                reference = fit_macenko(image)
            if args.macenko and stain != "PAS":
                if reference is None:
                    raise SystemExit("--macenko needs PAS among --stains (its first image is the reference)")
                for sub in ("images", "masks"):
                    (normalised / sub).mkdir(parents=True, exist_ok=True)
                Image.fromarray(apply_macenko(image, reference)).save(normalised / "images" / f"{it.name}.png")
                Image.fromarray(mask.astype(np.uint16)).save(normalised / "masks" / f"{it.name}.png")
        if args.macenko and stain != "PAS":
            atomic_write_json(normalised / "mpp.json", {"mpp": final, "stain": stain})
        atomic_write_json(folder / "mpp.json", {"mpp": final, "stain": stain})
        (folder / "SOURCE.md").write_text(
            f"{stain} version of {args.labelled} at {final} um/px, written by scripts/virtual_stain_labelled.py"
            + (f" with {GENERATORS[stain]}" if stain in GENERATORS else " (resampled only: the control)") + ".\n")
    print(json.dumps({"out": str(out), "stains": list(stains), "images": len(items)}))


if __name__ == "__main__":
    main()
