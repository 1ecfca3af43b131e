"""Real labelled glomeruli for segmenter training: tiles with masks, glomerulus crops pasted into real tissue.

Sources (``RealSegDataConfig``):

* ``folders``: labelled folders (:mod:`wsi_pipeline.labelled`: ``images/`` + ``masks/`` + an MPP), e.g.
  ``aidpath-tiles`` (24 PAS tiles at ~0.5 um/px, 28 glomeruli). Each image becomes a :class:`~.data_seg.Scene` at the
  segmentation resolution (area-averaged). Folds: consecutive names, whole groups (:func:`contiguous_groups`).
* ``crops``: ``aidpath-crops`` (484 glomerulus bounding boxes resized to 224 px, with masks). Their true scale is
  lost, so each is pasted at a random glomerulus diameter in ``crop_diameter_um`` (the range of real glomeruli)
  into a training scene, feathered along its mask (a *composite*). Folds by slide (the file name before ``-N``).
* ``negatives``: glomerulus-free real tissue (crowded tubules, vessels) with an empty mask.

:class:`RealPatchDataset` draws seeded crops at a random scale (MPP error of real slides), with rot90 / flips and the
appearance augmentations of :mod:`.appearance`. Item ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from scipy import ndimage
from torch.utils.data import Dataset

from ..config import FrozenConfig
from ..errors import DataError
from ..labelled import LabelledImage, contiguous_groups, read_instance_mask, read_labelled_folder, read_rgb
from .appearance import AppearanceConfig, augment_appearance
from .data_real import slide_id
from .data_seg import GLASS_GREY, Scene


class RealSegDataConfig(FrozenConfig):
    """Real labelled data and how it is sampled (paths relative to the working directory)."""

    folders: tuple[str, ...] = ("../shared/data/real-glomeruli/aidpath-tiles",)
    crops: str | None = "../shared/data/real-glomeruli/aidpath-crops"
    negatives: tuple[str, ...] = ()  # RGB images without glomeruli
    negatives_mpp: float = Field(0.5, gt=0)
    n_folds: int = Field(5, ge=2)
    fold: int | None = Field(None, ge=0, description="hold this fold out (validation); None: train on all")
    # interior glomeruli of aidpath-tiles measure 135-212 um (equivalent diameter, Bowman's capsule included)
    crop_diameter_um: tuple[float, float] = (110.0, 230.0)
    p_paste: float = Field(0.6, ge=0, le=1, description="share of items with pasted crop glomeruli")
    max_paste: int = Field(3, ge=1)
    scale_jitter: float = Field(0.3, ge=0, lt=1, description="MPP error: the crop's scale in [1-j, 1+j]")
    appearance: AppearanceConfig = AppearanceConfig()
    # share of items drawn from the phantom scenes (the recipe's train_seeds / stains), same appearance augmentation:
    # keeps the synthetic test instrument (demo, phantom benchmarks) working beside real tissue
    phantom_fraction: float = Field(0.0, ge=0, lt=1)


@dataclass(frozen=True)
class GlomerulusCrop:
    """A glomerulus crop (RGB uint8, bool mask) with its slide, site and global-sclerosis label."""

    image: np.ndarray
    mask: np.ndarray
    name: str
    slide: str
    site: str
    sclerosed: bool


def read_crops(folder: str | Path) -> list[GlomerulusCrop]:
    """Every crop of an ``aidpath-crops``-style folder (``images/``, ``masks/``, ``labels.csv``)."""
    root = Path(folder)
    table = root / "labels.csv"
    if not table.exists():
        raise DataError(f"{folder}: no labels.csv (need images/, masks/, labels.csv)")
    with open(table, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for row in rows:
        name = row["file"]
        img = read_rgb(root / "images" / name)
        labels = read_instance_mask(root / "masks" / name)
        out.append(GlomerulusCrop(img, labels > 0, Path(name).stem, slide_id(name), row["site"],
                                  row["global_sclerosis"] == "1"))
    return out


def crop_folds(crops: Sequence[GlomerulusCrop], n: int) -> dict[str, int]:
    """Fold per slide: slides sorted by size, dealt round-robin (balanced folds, a slide never in two)."""
    sizes: dict[str, int] = {}
    for c in crops:
        sizes[c.slide] = sizes.get(c.slide, 0) + 1
    order = sorted(sizes, key=lambda s: (-sizes[s], s))
    return {s: i % n for i, s in enumerate(order)}


def resample_scene(image: np.ndarray, labels: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    """Image area-averaged and labels resampled by ``1 / factor`` (factor > 1 shrinks); labels re-numbered."""
    if abs(factor - 1.0) < 1e-6:
        return image, labels
    h, w = labels.shape
    size = (max(1, round(w / factor)), max(1, round(h / factor)))
    img = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX if factor > 1 else Image.Resampling.BILINEAR))
    frac = np.asarray(Image.fromarray((labels > 0).astype(np.float32)).resize(size, Image.Resampling.BOX))
    # keep instances apart: a pixel belongs to the label found there by nearest-neighbour sampling
    near = np.asarray(Image.fromarray(labels.astype(np.int32)).resize(size, Image.Resampling.NEAREST))
    out = np.where(frac >= 0.5, near, 0)
    out = np.where((frac >= 0.5) & (out == 0), ndimage.maximum_filter(near, 3), out)
    return img, out.astype(np.uint16)


def labelled_scene(item: LabelledImage, *, mpp: float, index: int = 0) -> Scene:
    """A labelled image at the segmentation resolution ``mpp``."""
    image, labels = item.load()
    img, lab = resample_scene(image, labels, mpp / item.mpp)
    return Scene(img, lab, (item.stain or "PAS").upper(), index)


def unlabelled_scenes(paths: Sequence[str | Path], *, mpp: float, image_mpp: float, first: int = 0,
                      stain: str = "UNLABELLED") -> list[Scene]:
    """Images without labels (glomerulus-free negatives, or a DA target domain) as empty-mask scenes at ``mpp``."""
    scenes = []
    for j, path in enumerate(paths):
        img = read_rgb(Path(path))
        img, _ = resample_scene(img, np.zeros(img.shape[:2], np.uint16), mpp / image_mpp)
        scenes.append(Scene(img, np.zeros(img.shape[:2], np.uint16), stain, first + j))
    return scenes


@dataclass(frozen=True)
class RealData:
    """Training and validation scenes plus the crops to paste, for one fold (or all data when ``fold`` is None)."""

    train: list[Scene]
    val: list[Scene]
    crops: list[GlomerulusCrop]
    val_names: list[str]


def load_real_data(config: RealSegDataConfig, *, mpp: float) -> RealData:
    """Read every source and split it by ``config.fold`` (tiles by contiguous names, crops by slide)."""
    items: list[LabelledImage] = []
    for folder in config.folders:
        items.extend(read_labelled_folder(folder))
    folds = contiguous_groups(items, config.n_folds)
    train, val, val_names = [], [], []
    for i, it in enumerate(items):
        scene = labelled_scene(it, mpp=mpp, index=i)
        if config.fold is not None and folds[it.name] == config.fold:
            val.append(scene)
            val_names.append(it.name)
        else:
            train.append(scene)
    train.extend(unlabelled_scenes(config.negatives, mpp=mpp, image_mpp=config.negatives_mpp, first=10_000,
                                   stain="PAS"))
    crops: list[GlomerulusCrop] = []
    if config.crops is not None:
        crops = read_crops(config.crops)
        if config.fold is not None:
            cf = crop_folds(crops, config.n_folds)
            crops = [c for c in crops if cf[c.slide] != config.fold]
    return RealData(train, val, crops, val_names)


def _feather(mask: np.ndarray) -> np.ndarray:
    """Alpha for pasting: the mask grown by 2 px with a soft edge."""
    grown = ndimage.binary_dilation(mask, iterations=2)
    return np.clip(ndimage.gaussian_filter(grown.astype(np.float32), 1.2) * 1.3, 0, 1)


def paste(image: np.ndarray, labels: np.ndarray, crop: GlomerulusCrop, *, diameter_px: float,
          rng: np.random.Generator, tries: int = 12) -> bool:
    """Paste ``crop``'s glomerulus (scaled to ``diameter_px`` equivalent diameter) into ``image``/``labels`` in
    place, centred on a tissue pixel where it overlaps no labelled glomerulus. False when no place was found."""
    area = float(crop.mask.sum())
    if area < 16:
        return False
    scale = diameter_px / (2.0 * np.sqrt(area / np.pi))
    h0, w0 = crop.mask.shape
    size = (max(4, round(w0 * scale)), max(4, round(h0 * scale)))
    g_img = np.asarray(Image.fromarray(crop.image).resize(size, Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR))
    g_mask = np.asarray(Image.fromarray(crop.mask.astype(np.uint8) * 255).resize(size, Image.Resampling.BILINEAR)) >= 128
    if rng.random() < 0.5:
        g_img, g_mask = g_img[:, ::-1], g_mask[:, ::-1]
    k = int(rng.integers(4))
    g_img, g_mask = np.rot90(g_img, k), np.rot90(g_mask, k)
    alpha = _feather(g_mask)[..., None]
    gh, gw = g_mask.shape
    H, W = labels.shape
    tissue = np.argwhere(image.mean(axis=2) < GLASS_GREY)
    if not len(tissue) or gh >= H or gw >= W:
        return False
    for _ in range(tries):
        cy, cx = tissue[rng.integers(len(tissue))]
        y0, x0 = int(np.clip(cy - gh // 2, 0, H - gh)), int(np.clip(cx - gw // 2, 0, W - gw))
        win = labels[y0:y0 + gh, x0:x0 + gw]
        if (win[ndimage.binary_dilation(g_mask, iterations=3)] > 0).any():
            continue
        region = image[y0:y0 + gh, x0:x0 + gw].astype(np.float32)
        image[y0:y0 + gh, x0:x0 + gw] = np.clip(alpha * g_img + (1 - alpha) * region + 0.5, 0, 255).astype(np.uint8)
        win[g_mask] = int(labels.max()) + 1
        return True
    return False


class MixedPatchDataset(Dataset[dict[str, torch.Tensor]]):
    """Item ``i``: from ``phantom`` (a :class:`~.data_seg.SegPatchDataset`, then the same appearance augmentation)
    with probability ``fraction``, else from ``real``; seeded like both."""

    def __init__(self, real: RealPatchDataset, phantom: Dataset[dict[str, torch.Tensor]], *, fraction: float,
                 seed: int = 0) -> None:
        self.real, self.phantom, self.fraction, self.seed, self.epoch = real, phantom, fraction, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.real.set_epoch(epoch)
        self.phantom.set_epoch(epoch)  # type: ignore[attr-defined]

    def __len__(self) -> int:
        return len(self.real)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, index, 7])
        if rng.random() >= self.fraction:
            return self.real[index]
        img, mask = self.phantom.crop(index)  # type: ignore[attr-defined]
        img = np.array(augment_appearance(np.ascontiguousarray(img), rng=rng, config=self.real.config.appearance))
        return {"image": torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0),
                "mask": torch.from_numpy(np.ascontiguousarray(mask))[None].float()}


class RealPatchDataset(Dataset[dict[str, torch.Tensor]]):
    """Seeded augmented crops of real scenes with pasted real glomeruli (see the module doc).

    ``{"image": float (3, P, P) in [0, 1], "mask": float (1, P, P)}``; call :meth:`set_epoch` each epoch.
    """

    def __init__(self, scenes: Sequence[Scene], crops: Sequence[GlomerulusCrop], *, config: RealSegDataConfig,
                 mpp: float, patch: int, glomerulus_fraction: float, length: int, seed: int = 0) -> None:
        if not scenes:
            raise DataError("real data: no training scenes")
        self.scenes, self.crops = list(scenes), list(crops)
        self.config, self.mpp, self.patch = config, mpp, patch
        self.glomerulus_fraction, self.length, self.seed, self.epoch = glomerulus_fraction, length, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def _canvas(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        scene = self.scenes[int(rng.integers(len(self.scenes)))]
        image, labels = scene.image.copy(), scene.labels.copy()
        if self.crops and rng.random() < self.config.p_paste:
            lo, hi = self.config.crop_diameter_um
            for _ in range(int(rng.integers(1, self.config.max_paste + 1))):
                crop = self.crops[int(rng.integers(len(self.crops)))]
                paste(image, labels, crop, diameter_px=float(rng.uniform(lo, hi)) / self.mpp, rng=rng)
        return image, labels

    def crop(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The augmented uint8 image ``(P, P, 3)`` and bool mask ``(P, P)`` of item ``index``."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        image, labels = self._canvas(rng)
        j = self.config.scale_jitter
        s = float(np.exp(rng.uniform(np.log(1 - j), np.log(1 + j)))) if j > 0 else 1.0
        win = max(8, round(self.patch * s))
        h, w = labels.shape
        ids = np.unique(labels)
        ids = ids[ids > 0]
        if len(ids) and rng.random() < self.glomerulus_fraction:
            ys, xs = np.nonzero(labels == ids[rng.integers(len(ids))])
            cy = int(ys.mean()) + int(rng.integers(-win * 2 // 5, win * 2 // 5 + 1))
            cx = int(xs.mean()) + int(rng.integers(-win * 2 // 5, win * 2 // 5 + 1))
        else:
            tissue = np.argwhere(image.mean(axis=2) < GLASS_GREY)
            cy, cx = tissue[rng.integers(len(tissue))] if len(tissue) else (h // 2, w // 2)
        # inside the scene where it is big enough: padding with glass would teach edges that slides do not have
        y0 = int(np.clip(int(cy) - win // 2, 0, h - win)) if h >= win else (h - win) // 2
        x0 = int(np.clip(int(cx) - win // 2, 0, w - win)) if w >= win else (w - win) // 2
        img = _window(image, y0, x0, win, 255)
        lab = _window(labels, y0, x0, win, 0)
        if win != self.patch:
            img = np.asarray(Image.fromarray(img).resize((self.patch, self.patch), Image.Resampling.BILINEAR))
            lab = np.asarray(Image.fromarray(lab.astype(np.int32)).resize((self.patch, self.patch), Image.Resampling.NEAREST))
        mask = lab > 0
        k, flip = int(rng.integers(4)), bool(rng.integers(2))
        img, mask = np.rot90(img, k), np.rot90(mask, k)
        if flip:
            img, mask = img[:, ::-1], mask[:, ::-1]
        img = augment_appearance(np.ascontiguousarray(img), rng=rng, config=self.config.appearance)
        return img, np.ascontiguousarray(mask)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        img, mask = self.crop(index)
        img = np.array(img)  # writable for torch
        return {"image": torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0),
                "mask": torch.from_numpy(mask)[None].float()}


def _window(a: np.ndarray, y0: int, x0: int, size: int, fill: int) -> np.ndarray:
    """``a[y0:y0+size, x0:x0+size]`` with out-of-bounds parts filled (windows may hang over the scene's edge)."""
    out = np.full((size, size) + a.shape[2:], fill, a.dtype)
    h, w = a.shape[:2]
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(h, y0 + size), min(w, x0 + size)
    if ye > ys and xe > xs:
        out[ys - y0:ye - y0, xs - x0:xe - x0] = a[ys:ye, xs:xe]
    return out


__all__ = ["GlomerulusCrop", "MixedPatchDataset", "RealData", "RealPatchDataset", "RealSegDataConfig", "crop_folds",
           "labelled_scene", "load_real_data", "paste", "read_crops", "resample_scene", "unlabelled_scenes"]
