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
        [--stains PAS HE ...] [--final-mpp 3.0] [--macenko] [--via cyclegan|colour]

``--macenko`` also writes ``<stain>+macenko`` folders: each translated image Macenko-normalised to the colours of the
first PAS control image (a colour-only "route to PAS" before segmenting).

``--via colour`` replaces the generators by a colour-only re-staining that keeps every structure: each PAS image's
own Macenko stain split (hematoxylin and PAS magenta) recomposed with the stain vectors and concentration range of a
real patch of the target stain in ``kidney-stains`` (``COLOUR_REFERENCES``); the folders are named ``<stain>~colour``.
It is the counterpart of the generators: it changes colours only, where the CycleGANs (trained on one 1000 px patch
per stain) also destroy structure (docs/images/cyclegan-real-PAS-HE.png), so the two bracket what a real slide in
that stain would show. It says nothing about a stain's different chemistry (an IHC's DAB marks cells, not the PAS
pattern).

``--final-mpp`` resamples the translated images once more (e.g. 3.0: the overview sections some labs scan at about
3 um/px); the folders are then named ``<stain>@<final-mpp>``.

``--to-pas RUNS`` measures the self-adversarial paper's own route for a non-PAS slide, translation into PAS before
segmenting: each re-stained image goes back through the X -> PAS generator ``G_BA`` of that stain's real CycleGAN
(``RUNS/HE``, ``RUNS/PASM``, ``RUNS/MASSON``, ``RUNS/CD68``: the recipes of the shipped PAS -> X generators trained
with ``--set export=both``); folders ``<name>+to-PAS``. Used with ``--via colour`` (through the CycleGANs both ways
it would only measure their cycle consistency).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from wsi_pipeline.atomic import atomic_write_json
from wsi_pipeline.infer.loaders import generator_predictor
from wsi_pipeline.labelled import read_labelled_folder
from wsi_pipeline.models.registry import file_sha256
from wsi_pipeline.stain.macenko import MacenkoParams, apply_macenko, fit_macenko
from wsi_pipeline.weights import resolve_weights

GENERATORS = {"HE": "generator-real-PAS-HE", "SILVER": "generator-real-PAS-PASM",
              "SIRIUS_RED": "generator-real-PAS-MASSON", "IHC_CD68": "generator-real-PAS-CD68"}

# the real patch of each stain whose stain vectors the colour-only route uses (kidney-stains README)
COLOUR_REFERENCES = {"HE": "orig_patch_stain_01.png", "SILVER": "orig_patch_stain_03.png",
                     "SIRIUS_RED": "orig_patch_stain_32.png", "IHC_CD68": "orig_patch_stain_16.png"}


def _resample(rgb: np.ndarray, labels: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Image (Lanczos) and mask (nearest) to ``size`` = (width, height)."""
    image = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    mask = np.asarray(Image.fromarray(labels.astype(np.uint16)).resize(size, Image.Resampling.NEAREST))
    return image, mask


def _translate(rgb: np.ndarray, *, predictor: object) -> np.ndarray:
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
    ap.add_argument("--via", choices=["cyclegan", "colour"], default="cyclegan",
                    help="the shipped real-stain generators, or a colour-only re-staining (structure kept)")
    ap.add_argument("--stain-patches", default="../shared/data/kidney-stains", help="references of --via colour")
    ap.add_argument("--to-pas", type=Path, default=None, metavar="RUNS",
                    help="then translate each image back to PAS with RUNS/<run>/G_BA.safetensors, the X -> PAS "
                         "generator of a real-stain CycleGAN trained with export=both (folders '<name>+to-PAS')")
    args = ap.parse_args()
    items = read_labelled_folder(args.labelled)
    stains: dict[str, Callable[[np.ndarray], np.ndarray] | None] = {"PAS": None} if "PAS" in args.stains else {}
    for s in (s for s in args.stains if s != "PAS"):
        if args.via == "colour":
            params = fit_macenko(np.asarray(Image.open(Path(args.stain_patches) / COLOUR_REFERENCES[s]).convert("RGB")))
            stains[s] = partial(apply_macenko, params=params)
        else:
            ref = resolve_weights(GENERATORS[s])
            stains[s] = partial(_translate, predictor=generator_predictor(str(ref.path), ref.sha256, "cpu"))
    to_pas: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    if args.to_pas is not None:
        for s in (s for s in stains if s != "PAS"):
            path = args.to_pas / GENERATORS[s].rsplit("-", 1)[-1] / "G_BA.safetensors"
            to_pas[s] = partial(_translate, predictor=generator_predictor(str(path), file_sha256(path), "cpu"))
    out = Path(args.out)
    final = args.final_mpp or args.mpp
    reference: MacenkoParams | None = None
    for stain, restain in stains.items():
        name = stain if stain == "PAS" or args.via == "cyclegan" else f"{stain}~colour"
        name += "+to-PAS" if stain in to_pas else ""
        folder = out / (name if args.final_mpp is None else f"{name}@{args.final_mpp:g}")
        normalised = folder.with_name(folder.name + "+macenko")
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "masks").mkdir(parents=True, exist_ok=True)
        for it in tqdm(items, desc=stain):
            rgb, labels = it.load()
            factor = it.mpp / args.mpp
            size = (round(rgb.shape[1] * factor), round(rgb.shape[0] * factor))
            image, mask = _resample(rgb, labels, size)
            if restain is not None:
                image = restain(image)
            if stain in to_pas:
                image = to_pas[stain](image)
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
            + (" (resampled only: the control)" if stain == "PAS" else f" via {args.via}: "
               + (GENERATORS[stain] if args.via == "cyclegan" else f"the stain vectors of {COLOUR_REFERENCES[stain]}")
               + (f", then back to PAS by {args.to_pas}/*/G_BA.safetensors" if stain in to_pas else ""))
            + ".\n")
    print(json.dumps({"out": str(out), "stains": list(stains), "images": len(items)}))


if __name__ == "__main__":
    main()
