"""Glomerulus segmentation data from phantom layouts, rendered the way the pipeline will see real slides.

The inference job tiles a JPEG-compressed slide to the segmentation resolution (area-averaged pyramid levels), so a
training *scene* is made the same way: a whole phantom layout is rendered finer than the target (``render_downsample``
level-0 px per sample), area-averaged to ``mpp``, and passed through JPEG at the slide's own quality (per-seed stain
jitter comes with the layout seed). Its truth is the instance-label image of Bowman's capsule outlines at ``mpp``.
Scenes are cached as ``.npz`` (rendering is the expensive part); :class:`SegPatchDataset` cuts seeded random crops.

>>> cfg = SegDataConfig(layout_size=1024, render_downsample=4)
>>> scene = render_scene(make_layout(1024, seed=1, mpp=cfg.phantom_mpp), "PAS", config=cfg, region=(0, 0, 512, 256))
>>> scene.image.shape, scene.labels.shape
((64, 128, 3), (64, 128))
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import imagecodecs
import numpy as np
import torch
from pydantic import Field, model_validator
from scipy import ndimage
from torch.utils.data import Dataset

from ..atomic import atomic_output
from ..config import FrozenConfig
from ..synth import make_layout, stain_style
from ..synth.layout import Layout
from ..synth.render import render_regions
from ..synth.truth import label_region

GLASS_GREY = 225  # grey level above which a pixel is glass (phantom glass renders at ~240-250)


class SegDataConfig(FrozenConfig):
    """How scenes are rendered and cropped. ``mpp / phantom_mpp`` must be an integer multiple of
    ``render_downsample`` (the area-averaging factor)."""

    mpp: float = Field(2.0, gt=0, description="segmentation resolution, um/px (recorded in the model's metadata)")
    phantom_mpp: float = Field(0.5, gt=0, description="level-0 um/px of the phantom layouts")
    layout_size: int = Field(4096, ge=256, description="level-0 px per side of one layout")
    density_per_mm2: float = Field(2.5, gt=0, description="glomeruli per mm^2 of core (make_layout's default)")
    render_downsample: int = Field(2, ge=1, description="level-0 px per rendered sample before area averaging")
    jpeg: bool = True  # JPEG round trip at the slide's quality, as the SVS pyramid stores its levels
    patch: int = Field(256, ge=32)
    glomerulus_fraction: float = Field(0.5, ge=0, le=1, description="share of crops that contain a glomerulus")
    flips: bool = True  # random rot90 + flip (glomeruli have no orientation)
    # random Gaussian blur sigma in [0, blur_max] px: render_downsample 2 leaves ~12 % more high-frequency energy
    # than exact 4x4 area averaging (measured on the Laplacian), and real scanners vary in focus
    blur_max: float = Field(0.5, ge=0)

    @model_validator(mode="after")
    def _check(self) -> SegDataConfig:
        factor = self.mpp / self.phantom_mpp
        if abs(factor - round(factor)) > 1e-6 or round(factor) < 1:
            raise ValueError(f"mpp={self.mpp} must be an integer multiple of phantom_mpp={self.phantom_mpp}")
        if round(factor) % self.render_downsample:
            raise ValueError(f"render_downsample={self.render_downsample} must divide mpp/phantom_mpp={factor:g}")
        return self

    @property
    def factor(self) -> int:
        """Level-0 phantom px per segmentation px."""
        return round(self.mpp / self.phantom_mpp)

    def render_key(self) -> str:
        """Digest of the settings a rendered scene depends on (its cache key)."""
        keys = ("mpp", "phantom_mpp", "layout_size", "density_per_mm2", "render_downsample", "jpeg")
        return FrozenConfig.digest(_Key(**{k: getattr(self, k) for k in keys}))[:12]


class _Key(FrozenConfig):
    mpp: float
    phantom_mpp: float
    layout_size: int
    density_per_mm2: float
    render_downsample: int
    jpeg: bool


@dataclass(frozen=True)
class Scene:
    """One layout in one stain at the segmentation resolution: RGB uint8 ``(H, W, 3)`` + instance labels."""

    image: np.ndarray
    labels: np.ndarray  # uint16, 0 = background, k = glomerulus k
    stain: str
    seed: int

    @property
    def mask(self) -> np.ndarray:
        return self.labels > 0


def area_reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks of an ``(H, W, C)`` uint8 image (H, W multiples of ``factor``), rounded.

    >>> area_reduce(np.arange(16, dtype=np.uint8).reshape(4, 4, 1), 2)[..., 0]
    array([[ 3,  5],
           [11, 13]], dtype=uint8)
    """
    if factor == 1:
        return image
    h, w, c = image.shape
    if h % factor or w % factor:
        raise ValueError(f"image {h}x{w} is not a multiple of factor={factor}")
    blocks = image.reshape(h // factor, factor, w // factor, factor, c).astype(np.float32)
    return np.clip(blocks.mean(axis=(1, 3)) + 0.5, 0, 255).astype(np.uint8)


def jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    """Encode + decode ``image`` as JPEG at ``quality`` (the artefacts a JPEG slide's tiles carry)."""
    return np.asarray(imagecodecs.jpeg_decode(imagecodecs.jpeg_encode(image, level=int(quality))))


def render_scenes(layout: Layout, stains: Sequence[str], *, config: SegDataConfig,
                  region: tuple[int, int, int, int] | None = None) -> list[Scene]:
    """Render ``layout`` in each stain at ``config.mpp`` (see the module docstring); tissue fields shared.

    ``region`` = level-0 ``(x, y, w, h)`` renders only that part (origin and size in whole output pixels).
    """
    f, r = config.factor, config.render_downsample
    x, y, w, h = region if region is not None else (0, 0, layout.width, layout.height)
    if x % f or y % f or w < f or h < f:
        raise ValueError(f"region={region}: origin must be a multiple of {f} level-0 px and the size at least {f}")
    out_w, out_h = w // f, h // f
    styles = [stain_style(s, seed=layout.seed) for s in stains]
    fine = render_regions(layout, styles, x, y, out_w * (f // r), out_h * (f // r), level_downsample=r)
    labels = label_region(layout, x, y, out_w, out_h, downsample=f)
    scenes = []
    for style, img in zip(styles, fine):
        img = area_reduce(img, f // r)
        if config.jpeg:
            img = jpeg_roundtrip(img, style.jpeg_quality)
        scenes.append(Scene(img, labels, style.stain, layout.seed))
    return scenes


def render_scene(layout: Layout, stain: str, *, config: SegDataConfig,
                 region: tuple[int, int, int, int] | None = None) -> Scene:
    """One stain of :func:`render_scenes`."""
    return render_scenes(layout, (stain,), config=config, region=region)[0]


def _cache_path(cache_dir: Path, seed: int, stain: str, config: SegDataConfig) -> Path:
    return cache_dir / f"scene-{config.render_key()}-s{seed}-{stain}.npz"


def _build(args: tuple[int, tuple[str, ...], SegDataConfig, Path]) -> None:
    seed, stains, config, cache_dir = args
    layout = make_layout(config.layout_size, seed=seed, mpp=config.phantom_mpp,
                         density_per_mm2=config.density_per_mm2)
    for scene in render_scenes(layout, stains, config=config):
        path = _cache_path(cache_dir, seed, scene.stain, config)
        with atomic_output(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, image=scene.image, labels=scene.labels)


def load_scenes(seeds: Sequence[int], stains: Sequence[str], *, config: SegDataConfig, cache_dir: str | Path,
                workers: int = 1) -> list[Scene]:
    """Scenes for every ``seed x stain`` (seed-major), rendered once into ``cache_dir`` and read from there after.

    Rendering runs in ``workers`` processes (one layout each, all its stains at once).
    """
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    stains = tuple(s.upper() for s in stains)
    todo = [(s, tuple(st for st in stains if not _cache_path(cache, s, st, config).exists()), config, cache)
            for s in seeds]
    todo = [t for t in todo if t[1]]
    if workers > 1 and len(todo) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_build, todo))
    else:
        for job in todo:
            _build(job)
    scenes = []
    for seed in seeds:
        for stain in stains:
            with np.load(_cache_path(cache, seed, stain, config)) as data:
                scenes.append(Scene(data["image"], data["labels"], stain, int(seed)))
    return scenes


class SegPatchDataset(Dataset[dict[str, torch.Tensor]]):
    """Seeded random crops of scenes: ``{"image": float (3, P, P) in [0, 1], "mask": float (1, P, P)}``.

    Item ``i`` of epoch ``e`` is a pure function of ``(seed, e, i)``, so a resumed run sees the same data; call
    :meth:`set_epoch` each epoch. A share ``glomerulus_fraction`` of crops holds a glomerulus (placed anywhere in
    the crop); the others are centred on a random tissue pixel.
    """

    def __init__(self, scenes: Sequence[Scene], *, config: SegDataConfig, length: int, seed: int = 0) -> None:
        if not scenes:
            raise ValueError("scenes: need at least one scene")
        if length < 1:
            raise ValueError(f"length={length}: must be >= 1")
        self.scenes = list(scenes)
        self.config, self.length, self.seed, self.epoch = config, length, seed, 0
        self._centres = [self._glomerulus_centres(s.labels) for s in self.scenes]
        self._tissue = [np.argwhere(s.image.mean(axis=2) < GLASS_GREY) for s in self.scenes]

    @staticmethod
    def _glomerulus_centres(labels: np.ndarray) -> np.ndarray:
        ids = np.unique(labels)
        ids = ids[ids > 0]
        if not len(ids):
            return np.zeros((0, 2), np.int64)
        rows, cols = np.nonzero(labels)
        lab = labels[rows, cols]
        counts = np.bincount(lab)[ids]
        return np.stack([np.bincount(lab, rows)[ids] / counts, np.bincount(lab, cols)[ids] / counts], 1).astype(int)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def crop(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 image ``(P, P, 3)`` and bool mask ``(P, P)`` of item ``index`` (before tensor conversion)."""
        rng = np.random.default_rng([self.seed, self.epoch, index])
        k = int(rng.integers(len(self.scenes)))
        scene, p = self.scenes[k], self.config.patch
        h, w = scene.labels.shape
        centres, tissue = self._centres[k], self._tissue[k]
        if len(centres) and rng.random() < self.config.glomerulus_fraction:
            cy, cx = centres[rng.integers(len(centres))]
            # the glomerulus lands anywhere in the central 80 % of the crop, not always in the middle
            # int() bounds: what Generator.integers does with float bounds anyway (same draws), typed as int
            lo, hi = int(-0.4 * p), int(0.4 * p + 1)
            cy, cx = cy + int(rng.integers(lo, hi)), cx + int(rng.integers(lo, hi))
        elif len(tissue):
            cy, cx = tissue[rng.integers(len(tissue))]
        else:
            cy, cx = int(rng.integers(h)), int(rng.integers(w))
        y0 = int(np.clip(cy - p // 2, 0, max(0, h - p)))
        x0 = int(np.clip(cx - p // 2, 0, max(0, w - p)))
        img = _pad_to(scene.image[y0:y0 + p, x0:x0 + p], p, 255)
        mask = _pad_to(scene.labels[y0:y0 + p, x0:x0 + p] > 0, p, False)
        if self.config.blur_max > 0:
            sigma = float(rng.uniform(0, self.config.blur_max))
            if sigma > 0.1:
                img = np.clip(ndimage.gaussian_filter(img.astype(np.float32), (sigma, sigma, 0)) + 0.5, 0, 255
                              ).astype(np.uint8)
        if self.config.flips:
            rot, flip = int(rng.integers(4)), bool(rng.integers(2))
            img, mask = np.rot90(img, rot), np.rot90(mask, rot)
            if flip:
                img, mask = img[:, ::-1], mask[:, ::-1]
        return np.ascontiguousarray(img), np.ascontiguousarray(mask)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        img, mask = self.crop(index)
        return {"image": torch.from_numpy(img).permute(2, 0, 1).float().div_(255.0),
                "mask": torch.from_numpy(mask)[None].float()}


def _pad_to(a: np.ndarray, size: int, value: float | bool) -> np.ndarray:
    """Pad the first two axes of ``a`` up to ``size`` (scenes smaller than a patch)."""
    ph, pw = size - a.shape[0], size - a.shape[1]
    if ph <= 0 and pw <= 0:
        return a
    pad = [(0, max(0, ph)), (0, max(0, pw))] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, pad, constant_values=value)


__all__ = ["GLASS_GREY", "Scene", "SegDataConfig", "SegPatchDataset", "area_reduce", "jpeg_roundtrip",
           "load_scenes", "render_scene", "render_scenes"]
