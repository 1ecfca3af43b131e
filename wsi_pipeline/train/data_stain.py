"""Data for the stain papers: unlabeled reference patches (CycleGAN) and labelled glomerulus crops (G2C, SST).

Two sources of reference patches, both returning ``(N, size, size, 3)`` uint8 stacks:

- :func:`phantom_patches`: random tissue crops rendered from seeded phantom layouts in one stain, read at the
  classification resolution. Different stains come from *different* layout seeds, so the sets are truly unpaired.
- :func:`folder_patches`: random crops from a folder of image files (e.g. ``shared/data/kidney-stains``).

Glomerulus crops (:func:`glomerulus_crops`), from one of two sources:

- ``source="slide"`` (default, what a classifier for the slide job must see): each layout is written as JPEG Aperio
  SVS slides (:func:`wsi_pipeline.synth.write_phantom`: the per-slide stain, blur, noise and JPEG jitter, a pyramid)
  and the crops are read around the truth polygons with the slide job's own crop function
  (:func:`wsi_pipeline.infer.crops.read_glomerulus_crops`): same level, JPEG artefacts, area resampling, geometry.
- ``source="render"``: rendered directly at ``mpp`` (a point sample per output pixel, blur and noise at that
  resolution, no JPEG): a square centred on the glomerulus, side ``2 * radius * (1 + margin)``. Sharper and noisier
  than any slide read at ``mpp``; a classifier trained on it loses accuracy on slides. Kept for experiments that
  alter the rendering (``style_shift``) and for the translation-error numbers measured on it.

The PAS crop is the input; the other stains of the same layout are pixel-aligned, so their crops are the *true*
paired targets that translation error is measured against.

>>> crops = glomerulus_crops(GlomerulusCropConfig(size=32, slide_size=4096, source="render"), seeds=[1])
>>> crops.images.shape[1:], crops.stains
((4, 32, 32, 3), ('PAS', 'HE', 'MASSON', 'PASM'))
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from PIL import Image
from pydantic import Field, model_validator
from shapely.geometry import Polygon

from ..config import FrozenConfig
from ..errors import ConfigError
from ..infer.classify import CropSpec
from ..infer.crops import read_glomerulus_crops
from ..slide import open_slide
from ..synth import CLASSES, DYES, STAINS, Layout, StainStyle, make_layout, stain_style, write_phantom
from ..synth.render import render_regions

Task = Literal["three_class", "s_vs_noa", "ss_vs_gs"]
#: class names of each task's integer labels
TASK_CLASSES: dict[str, tuple[str, ...]] = {
    "three_class": ("noa", "ss", "gs"), "s_vs_noa": ("noa", "s"), "ss_vs_gs": ("ss", "gs"),
}


class StyleShift(FrozenConfig):
    """A systematic stain-style change (another lab's protocol): per-dye strength factors, extra glass OD."""

    strength: tuple[float, ...] = (1.0,) * len(DYES)  # multiplies each dye's strength, in ``synth.DYES`` order
    glass: tuple[float, float, float] = (0.0, 0.0, 0.0)  # added to the background OD (R, G, B)

    def apply(self, style: StainStyle) -> StainStyle:
        if len(self.strength) != len(DYES):
            raise ConfigError(f"style_shift.strength: {len(self.strength)} factors, expected one per dye {DYES}")
        return replace(style, strength=tuple(a * b for a, b in zip(style.strength, self.strength)),
                       glass=tuple(a + b for a, b in zip(style.glass, self.glass)))  # type: ignore[arg-type]


class GlomerulusCropConfig(FrozenConfig):
    """How glomerulus crops are cut: the classification resolution, margin and output size (recorded in cards)."""

    size: int = Field(64, ge=16)  # output side (px); the paper uses 224, CPU budget uses less (cards say which)
    mpp: float = Field(2.0, gt=0)  # resolution the crop is read at (um/px), before resizing to ``size``
    margin: float = Field(0.2, ge=0.0, le=1.0)  # fraction of the radius added around Bowman's capsule
    stains: tuple[str, ...] = ("PAS", "HE", "MASSON", "PASM")  # first is the input stain, the rest paired targets
    slide_size: int = Field(8192, ge=1024)  # phantom layout side (level-0 px)
    layout_mpp: float = Field(0.5, gt=0)  # phantom level-0 resolution
    style_shift: StyleShift | None = None  # render every stain in a shifted style (SST's "other institute")
    # "slide": read from written JPEG SVS phantoms with the slide job's crop function; "render": rendered at mpp
    source: Literal["slide", "render"] = "slide"

    @model_validator(mode="after")
    def _shift_needs_render(self) -> GlomerulusCropConfig:
        if self.style_shift is not None and self.source != "render":
            raise ValueError("style_shift: only source='render' can render a shifted style (slides are written "
                             "in the phantom's own styles)")
        return self

    def spec(self) -> CropSpec:
        """The inference job's crop settings these crops are cut with."""
        return CropSpec(size=self.size, mpp=self.mpp, margin=self.margin)


class PhantomPatchConfig(FrozenConfig):
    """Unlabeled phantom reference patches of one stain: ``n`` random in-tissue crops over ``n_layouts`` seeds."""

    stain: str = "PAS"
    n: int = Field(100, ge=1)  # G2C: 100 patches per stain
    size: int = Field(64, ge=16)
    mpp: float = Field(2.0, gt=0)
    seed: int = 0  # first layout seed; layouts use seed, seed + 1, ...
    n_layouts: int = Field(10, ge=1)
    slide_size: int = Field(8192, ge=1024)
    layout_mpp: float = Field(0.5, gt=0)


@dataclass(frozen=True)
class GlomerulusCrops:
    """Crops of every glomerulus of some layouts: ``images`` (N, S, size, size, 3) uint8, stain 0 the input."""

    images: NDArray[np.uint8]
    classes: NDArray[np.int64]  # index into ``CLASSES`` (noa, ss, gs)
    seeds: NDArray[np.int64]  # layout seed of each crop (held-out splits are by seed)
    stains: tuple[str, ...]
    config: GlomerulusCropConfig

    def __len__(self) -> int:
        return len(self.classes)

    def task(self, task: Task) -> tuple[NDArray[np.uint8], NDArray[np.int64]]:
        """The (images, labels) of one task; ``ss_vs_gs`` keeps only sclerotic glomeruli."""
        if task == "three_class":
            return self.images, self.classes
        if task == "s_vs_noa":
            return self.images, (self.classes > 0).astype(np.int64)
        if task == "ss_vs_gs":
            keep = self.classes > 0
            return self.images[keep], (self.classes[keep] == 2).astype(np.int64)
        raise ConfigError(f"task={task!r}: expected one of {sorted(TASK_CLASSES)}")


def _downsample(mpp: float, layout_mpp: float) -> int:
    ds = round(mpp / layout_mpp)
    if ds < 1 or abs(ds * layout_mpp - mpp) > 1e-6:
        raise ConfigError(f"mpp={mpp}: must be a whole multiple of the phantom's {layout_mpp} um/px")
    return ds


def resize_square(image: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """Resize an (H, W, 3) uint8 image to (size, size, 3), antialiased bilinear (what the inference crops use)."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    out = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def glomerulus_crops(config: GlomerulusCropConfig, *, seeds: Sequence[int],
                     slide_dir: str | Path | None = None) -> GlomerulusCrops:
    """The crop of every glomerulus of the layouts ``seeds`` in every stain of ``config`` (paired).

    ``source="slide"`` writes the phantom slides into ``slide_dir`` (reused when already there; a temporary folder
    when None), see the module docstring.
    """
    for s in config.stains:
        if s not in STAINS:
            raise ConfigError(f"stains: {s!r} is not a phantom stain ({STAINS})")
    if config.source == "slide":
        if slide_dir is None:
            with tempfile.TemporaryDirectory(prefix="wsi-glomerulus-slides-") as tmp:
                return _slide_crops(config, seeds, Path(tmp))
        return _slide_crops(config, seeds, Path(slide_dir))
    ds = _downsample(config.mpp, config.layout_mpp)
    images, classes, seed_of = [], [], []
    for seed in seeds:
        layout = make_layout(config.slide_size, seed=int(seed), mpp=config.layout_mpp)
        styles: list[str | StainStyle] = list(config.stains)
        if config.style_shift is not None:
            styles = [config.style_shift.apply(stain_style(s, seed=layout.seed)) for s in config.stains]
        for g in layout.glomeruli:
            half = g.radius * (1 + config.margin)  # level-0 px, as the inference job pads a polygon's box
            side = max(8, round(2 * half / ds))
            x0, y0 = round(g.cx - half), round(g.cy - half)
            rendered = render_regions(layout, styles, x0, y0, side, side, level_downsample=ds)
            images.append(np.stack([resize_square(r, config.size) for r in rendered]))
            classes.append(CLASSES.index(g.cls))
            seed_of.append(int(seed))
    if not images:
        raise ConfigError(f"seeds={list(seeds)}: no glomeruli in these layouts")
    return GlomerulusCrops(np.stack(images), np.asarray(classes, np.int64), np.asarray(seed_of, np.int64),
                           tuple(config.stains), config)


def phantom_slide_paths(config: GlomerulusCropConfig, seed: int, slide_dir: str | Path) -> dict[str, Path]:
    """``{stain: .svs}`` of layout ``seed`` in ``slide_dir``, writing the stains not there yet.

    A slide of one stain does not depend on the other stains written with it, so stains can be added later.
    """
    folder = Path(slide_dir) / f"phantom-{config.slide_size}px-{config.layout_mpp:g}mpp"
    name = f"phantom-s{seed}"
    paths = {s: folder / f"{name}-{s}.svs" for s in config.stains}
    missing = tuple(s for s, p in paths.items() if not p.exists())
    if missing:
        write_phantom(folder, size=config.slide_size, stains=missing, seed=int(seed), mpp=config.layout_mpp,
                      name=name)
    return paths


def truth_polygons(layout: Layout) -> list[Polygon]:
    """The glomeruli outlines exactly as the truth GeoJSON stores them (level-0, rounded to 0.01 px)."""
    return [Polygon(g.polygon()) for g in layout.glomeruli]


def _slide_crops(config: GlomerulusCropConfig, seeds: Sequence[int], slide_dir: Path) -> GlomerulusCrops:
    spec = config.spec()
    images, classes, seed_of = [], [], []
    for seed in seeds:
        layout = make_layout(config.slide_size, seed=int(seed), mpp=config.layout_mpp)
        if not layout.glomeruli:
            continue
        shapes = truth_polygons(layout)
        per_stain = []
        for path in phantom_slide_paths(config, int(seed), slide_dir).values():
            with open_slide(path) as slide:
                per_stain.append(read_glomerulus_crops(slide, shapes, spec))
        images.append(np.stack(per_stain, axis=1))
        classes += [CLASSES.index(g.cls) for g in layout.glomeruli]
        seed_of += [int(seed)] * len(layout.glomeruli)
    if not images:
        raise ConfigError(f"seeds={list(seeds)}: no glomeruli in these layouts")
    return GlomerulusCrops(np.concatenate(images), np.asarray(classes, np.int64), np.asarray(seed_of, np.int64),
                           tuple(config.stains), config)


def phantom_patches(config: PhantomPatchConfig) -> NDArray[np.uint8]:
    """``config.n`` random tissue crops (N, size, size, 3) of one stain, spread evenly over the layouts."""
    if config.stain not in STAINS:
        raise ConfigError(f"stain={config.stain!r}: not a phantom stain ({STAINS})")
    ds = _downsample(config.mpp, config.layout_mpp)
    rng = np.random.default_rng([config.seed, 0x57A1])
    out: list[NDArray[np.uint8]] = []
    span = config.size * ds
    for i in range(config.n_layouts):
        layout = make_layout(config.slide_size, seed=config.seed + i, mpp=config.layout_mpp)
        want = config.n * (i + 1) // config.n_layouts - len(out)
        tries = 0
        while want > 0:
            tries += 1
            if tries > 2000:
                raise ConfigError(f"layout seed {config.seed + i}: cannot find tissue for {config.size}px patches")
            # centre drawn along the core axis, inside the core: patches may or may not contain glomeruli
            t = rng.uniform(0, 1)
            ax, ay = layout.core_a
            bx, by = layout.core_b
            r = layout.core_radius * 0.7 * np.sqrt(rng.uniform(0, 1))
            ang = rng.uniform(0, 2 * np.pi)
            cx, cy = ax + t * (bx - ax) + r * np.cos(ang), ay + t * (by - ay) + r * np.sin(ang)
            x0, y0 = int(cx - span / 2), int(cy - span / 2)
            if x0 < 0 or y0 < 0 or x0 + span > layout.width or y0 + span > layout.height:
                continue
            patch = render_regions(layout, (config.stain,), x0, y0, config.size, config.size,
                                   level_downsample=ds)[0]
            if (patch.mean(axis=2) < 215).mean() < 0.5:  # mostly glass: not a tissue patch
                continue
            out.append(patch)
            want -= 1
    return np.stack(out)


def folder_patches(folder: str | Path, *, n: int, size: int, seed: int = 0, scale: float = 1.0,
                   pattern: str = "*.png") -> NDArray[np.uint8]:
    """``n`` random ``size`` crops from the images in ``folder`` (or one file), each image ``scale``-resized first.

    ``scale`` < 1 brings a high-resolution patch closer to the classification resolution (e.g. 0.25 for 0.5 ->
    2 um/px).
    """
    path = Path(folder)
    files = [path] if path.is_file() else sorted(path.glob(pattern))
    if not files:
        raise ConfigError(f"folder={str(folder)!r}: no files matching {pattern!r}")
    rng = np.random.default_rng([seed, 0xF01D])
    images = []
    for f in files:
        with Image.open(f) as opened:
            im = opened.convert("RGB")
            if scale != 1.0:
                im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))),
                               Image.Resampling.LANCZOS)
            images.append(np.asarray(im))
    out = []
    for i in range(n):
        img = images[i % len(images)]
        h, w = img.shape[:2]
        if h < size or w < size:
            raise ConfigError(f"{files[i % len(files)]}: {w}x{h} px is smaller than size={size}")
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        out.append(img[y:y + size, x:x + size])
    return np.stack(out)


def to_tensor(images: NDArray[np.uint8], *, signed: bool = False) -> torch.Tensor:
    """(..., H, W, 3) uint8 -> (..., 3, H, W) float in [0, 1] (or [-1, 1] with ``signed``, the generators' range)."""
    t = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    t = t.movedim(-1, -3)
    return t * 2 - 1 if signed else t


def to_uint8(tensor: torch.Tensor, *, signed: bool = False) -> NDArray[np.uint8]:
    """Inverse of :func:`to_tensor`: (..., 3, H, W) float -> (..., H, W, 3) uint8."""
    t = (tensor.detach().float().cpu() + 1) / 2 if signed else tensor.detach().float().cpu()
    return (t.clamp(0, 1) * 255).round().to(torch.uint8).movedim(-3, -1).numpy()


__all__ = ["GlomerulusCropConfig", "GlomerulusCrops", "PhantomPatchConfig", "StyleShift", "TASK_CLASSES", "Task",
           "folder_patches", "glomerulus_crops", "phantom_patches", "phantom_slide_paths", "resize_square", "to_tensor",
           "to_uint8", "truth_polygons"]
