"""Real labelled glomeruli (AIDPATH crops, ``shared/data/real-glomeruli/aidpath-crops``) cut like the slide job's crops.

The folder holds 484 human PAS glomeruli from two hospitals (``site`` SESCAM / SAS), each the glomerulus's bounding
box resized to 224 x 224 px, a binary mask, and ``global_sclerosis`` 0/1 (normal and segmental lesions are not told
apart). Data: Bueno et al., Data in Brief 29 (2020) 105314, slides CC BY 4.0; crops: Weishaupt et al. 2025,
repository ``patologiivest/GlobalGlomerulosclerosisClustering``, CC BY-NC-SA 4.0 (see its README).

**Geometry.** The slide job (:func:`wsi_pipeline.infer.crops.read_glomerulus_crops`) cuts a square centred on the
polygon's bounding box, side ``max(w, h) * (1 + margin)``, and resizes it to ``size``: the glomerulus's box fills
``1 / (1 + margin)`` of the crop side, whatever its size in microns. Here the same square is taken around the
*mask's* bounding box in the 224 px crop, and the part that falls outside the crop (the crop has no context beyond
the box) is filled by reflection. So the glomerulus occupies the same fraction of the crop as in the job; what
differs: the border is mirrored tissue, not the real surroundings, and the source crop was already stretched to a
square (the job keeps the aspect ratio).

**Slides.** The slide id is the file name before the last ``-N`` (``SESCAM_4_0-12.png`` -> ``SESCAM_4_0``); every
split here is by slide, never by crop.

>>> slide_id("SAS_21883_001-10.png"), slide_id("SESCAM_4_0-3")
('SAS_21883_001', 'SESCAM_4_0')
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from numpy.typing import NDArray
from PIL import Image
from pydantic import Field

from ..config import FrozenConfig
from ..errors import ConfigError
from ..infer.classify import crop_box, finish_crop

DEFAULT_ROOT = "../shared/data/real-glomeruli/aidpath-crops"


class RealCropsConfig(FrozenConfig):
    """Where the labelled crops are and how they are cut (size/margin: the classifier card's crop settings)."""

    root: str = DEFAULT_ROOT
    size: int = Field(128, ge=16)
    margin: float = Field(0.2, ge=0, le=2)


@dataclass(frozen=True)
class RealGlomeruli:
    """Crops in the job's geometry with their labels: ``images`` (N, size, size, 3) uint8, ``gs`` (N,) 0/1."""

    images: NDArray[np.uint8]
    gs: NDArray[np.int64]
    sites: NDArray[np.str_]
    slides: NDArray[np.str_]
    files: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.gs)

    def subset(self, index: NDArray[np.bool_] | NDArray[np.int64]) -> RealGlomeruli:
        idx = np.flatnonzero(index) if index.dtype == np.bool_ else index
        return RealGlomeruli(self.images[idx], self.gs[idx], self.sites[idx], self.slides[idx],
                             tuple(self.files[i] for i in idx))

    def at_sites(self, sites: tuple[str, ...]) -> RealGlomeruli:
        return self.subset(np.isin(self.sites, sites))


def slide_id(file: str) -> str:
    """The slide a crop came from: its file stem without the trailing ``-N``."""
    return Path(file).stem.rsplit("-", 1)[0]


def job_crop(image: NDArray[np.uint8], mask: NDArray[np.bool_], *, size: int, margin: float) -> NDArray[np.uint8]:
    """The slide job's square crop around the mask's bounding box (outside the image: reflected), resized to ``size``."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    h, w = image.shape[:2]
    if len(rows) == 0:  # no mask: the crop is the box
        rows, cols = np.array([0, h - 1]), np.array([0, w - 1])
    box = shapely.box(float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1))
    x0, y0, x1, y1 = (round(v) for v in crop_box(box, margin=margin))
    pad = max(0, -x0, -y0, x1 - w, y1 - h)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="symmetric") if pad else image
    region = padded[y0 + pad:y1 + pad, x0 + pad:x1 + pad]
    return finish_crop(np.array(region, copy=True), side_px=size, size=size)


def read_labels(root: str | Path) -> list[dict[str, str]]:
    """The rows of ``labels.csv`` (file, site, global_sclerosis, ...)."""
    labels = Path(root) / "labels.csv"
    if not labels.is_file():
        raise ConfigError(f"real crops: {labels} not found")
    with labels.open(newline="") as fh:
        return list(csv.DictReader(fh))


def read_real_crops(config: RealCropsConfig = RealCropsConfig(), *,
                    files: Sequence[str] | None = None) -> RealGlomeruli:
    """The crops of ``labels.csv`` (all, or only ``files``) in file order, cut with :func:`job_crop`."""
    root = Path(config.root)
    rows = read_labels(root)
    if files is not None:
        wanted = set(files)
        rows = [r for r in rows if r["file"] in wanted]
    images, gs, sites, files_out = [], [], [], []
    for row in rows:
        name = row["file"]
        with Image.open(root / "images" / name) as im:
            rgb = np.asarray(im.convert("RGB"))
        with Image.open(root / "masks" / name) as m:
            mask = np.asarray(m.convert("L")) > 127
        images.append(job_crop(rgb, mask, size=config.size, margin=config.margin))
        gs.append(int(row["global_sclerosis"]))
        sites.append(row["site"])
        files_out.append(name)
    if not images:
        raise ConfigError(f"real crops: no rows selected in {root / 'labels.csv'}")
    return RealGlomeruli(np.stack(images), np.asarray(gs, np.int64), np.asarray(sites),
                         np.asarray([slide_id(f) for f in files_out]), tuple(files_out))


def slide_folds(slides: NDArray[np.str_], *, k: int, seed: int = 0) -> NDArray[np.int64]:
    """Fold (0..k-1) of every crop, whole slides per fold, folds balanced by crop count (greedy, shuffled by seed)."""
    names, counts = np.unique(slides, return_counts=True)
    if len(names) < k:
        raise ConfigError(f"{len(names)} slides cannot fill k={k} folds")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(names))
    order = order[np.argsort(-counts[order], kind="stable")]  # largest first, ties in shuffled order
    load = np.zeros(k, np.int64)
    fold_of: dict[str, int] = {}
    for i in order:
        f = int(np.argmin(load))
        fold_of[str(names[i])] = f
        load[f] += counts[i]
    return np.asarray([fold_of[str(s)] for s in slides], np.int64)


__all__ = ["DEFAULT_ROOT", "RealCropsConfig", "RealGlomeruli", "job_crop", "read_labels", "read_real_crops", "slide_folds", "slide_id"]
