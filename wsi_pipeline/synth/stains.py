"""Stains as Beer-Lambert mixtures: per-component dye uptake x per-dye optical-density (OD) colour vectors.

``OD_rgb(pixel) = sum_component amount * sum_dye uptake[stain][component, dye] * strength[dye] * dye_od[dye]``,
``RGB = 255 * 10 ** -(OD + glass)``. Per-slide jitter (stain strength, blur, noise, JPEG quality) is drawn from the
slide seed and the stain name, so every slide of a seed differs a little, reproducibly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsi_pipeline.errors import ConfigError

from .fields import COMPONENTS

STAINS = ("PAS", "HE", "MASSON", "PASM", "CD68", "CD34")

# unit OD vectors (R, G, B); haematoxylin/eosin/DAB after Ruifrok & Johnston 2001, the rest fitted by eye to the
# real patches in shared/data/kidney-stains
_DYE_OD = {
    "hema": (0.60, 0.72, 0.33),
    "eosin": (0.12, 0.95, 0.28),
    "pas": (0.42, 0.85, 0.30),
    "aniline": (0.82, 0.52, 0.22),
    "scarlet": (0.12, 0.86, 0.50),
    "silver": (0.56, 0.60, 0.57),
    "dab": (0.27, 0.57, 0.78),
    "fastred": (0.18, 0.80, 0.58),
}
DYES = tuple(_DYE_OD)

# uptake[stain][component] = {dye: OD at full amount}; components missing from a stain take up nothing
_UPTAKE: dict[str, dict[str, dict[str, float]]] = {
    "PAS": {
        "cyto": {"pas": 0.07, "hema": 0.14}, "brush": {"pas": 0.5, "hema": 0.1}, "bm": {"pas": 1.0, "hema": 0.25},
        "nuc": {"hema": 0.8, "pas": 0.05}, "inter": {"pas": 0.2, "hema": 0.12}, "rbc": {"eosin": 0.35},
        "mesangium": {"pas": 0.42, "hema": 0.15}, "scler": {"pas": 0.5, "hema": 0.12}, "muscle": {"pas": 0.22, "hema": 0.25},
        "collagen": {"pas": 0.45, "hema": 0.1}, "macro": {"pas": 0.3, "hema": 0.2}, "endo": {"pas": 0.05},
        "tissue": {"hema": 0.04},
    },
    "HE": {
        "cyto": {"eosin": 0.30, "hema": 0.08}, "brush": {"eosin": 0.55}, "bm": {"eosin": 0.55, "hema": 0.05},
        "nuc": {"hema": 0.9, "eosin": 0.1}, "inter": {"eosin": 0.40}, "rbc": {"eosin": 1.1},
        "mesangium": {"eosin": 0.55, "hema": 0.2}, "scler": {"eosin": 0.75, "hema": 0.05}, "muscle": {"eosin": 0.8},
        "collagen": {"eosin": 0.55}, "macro": {"eosin": 0.4, "hema": 0.15}, "endo": {"eosin": 0.1},
        "tissue": {"eosin": 0.05},
    },
    "MASSON": {
        "cyto": {"scarlet": 0.45, "aniline": 0.04}, "brush": {"scarlet": 0.5}, "bm": {"aniline": 0.75},
        "nuc": {"hema": 1.0, "silver": 0.25}, "inter": {"aniline": 0.55}, "rbc": {"scarlet": 1.2},
        "mesangium": {"aniline": 0.35, "scarlet": 0.25}, "scler": {"aniline": 1.25, "scarlet": 0.05},
        "muscle": {"scarlet": 0.85}, "collagen": {"aniline": 1.1}, "macro": {"scarlet": 0.4},
        "endo": {"scarlet": 0.05}, "tissue": {"scarlet": 0.04},
    },
    "PASM": {  # Jones silver with H&E counterstain
        "cyto": {"eosin": 0.30, "hema": 0.2}, "brush": {"eosin": 0.3, "silver": 0.12}, "bm": {"silver": 1.6},
        "nuc": {"hema": 0.9}, "inter": {"silver": 0.35, "eosin": 0.2}, "rbc": {"eosin": 0.9},
        "mesangium": {"silver": 0.6, "eosin": 0.2}, "scler": {"silver": 1.5, "eosin": 0.1}, "muscle": {"eosin": 0.6, "hema": 0.15},
        "collagen": {"silver": 0.7, "eosin": 0.2}, "macro": {"eosin": 0.3, "hema": 0.15}, "endo": {"eosin": 0.05},
        "tissue": {"hema": 0.05},
    },
    "CD68": {
        "cyto": {"hema": 0.03, "dab": 0.13}, "brush": {"hema": 0.05, "dab": 0.05}, "bm": {"hema": 0.05},
        "nuc": {"hema": 0.42}, "inter": {"hema": 0.05}, "rbc": {"dab": 0.08}, "mesangium": {"hema": 0.1},
        "scler": {"hema": 0.12}, "muscle": {"hema": 0.1}, "collagen": {"hema": 0.06}, "macro": {"dab": 1.1, "hema": 0.1},
        "endo": {}, "tissue": {"hema": 0.03},
    },
    "CD34": {
        "cyto": {"hema": 0.10}, "brush": {"hema": 0.08}, "bm": {"hema": 0.06}, "nuc": {"hema": 0.45},
        "inter": {"hema": 0.05}, "rbc": {"fastred": 0.1}, "mesangium": {"hema": 0.12}, "scler": {"hema": 0.14},
        "muscle": {"hema": 0.12}, "collagen": {"hema": 0.08}, "macro": {"hema": 0.1}, "endo": {"fastred": 1.2},
        "tissue": {"hema": 0.03},
    },
}


@dataclass(frozen=True)
class StainStyle:
    """One slide's look: the stain, its per-dye strengths, blur (px), noise (grey levels), JPEG quality."""

    stain: str
    strength: tuple[float, ...]  # per dye, in DYES order
    blur: float
    noise: float
    jpeg_quality: int
    glass: tuple[float, float, float]  # background OD (R, G, B)

    def od_matrix(self) -> np.ndarray:
        """``(len(COMPONENTS), 3)`` OD contributed by one unit of each component."""
        dyes = np.array([_DYE_OD[d] for d in DYES], np.float32)
        dyes /= np.linalg.norm(dyes, axis=1, keepdims=True)
        up = np.zeros((len(COMPONENTS), len(DYES)), np.float32)
        for ci, comp in enumerate(COMPONENTS):
            for dye, amount in _UPTAKE[self.stain].get(comp, {}).items():
                up[ci, DYES.index(dye)] = amount
        return (up * np.array(self.strength, np.float32)) @ dyes


def stain_style(stain: str, *, seed: int, jitter: bool = True) -> StainStyle:
    """The look of slide ``seed`` in ``stain``; ``jitter=False`` gives the nominal style."""
    stain = stain.upper()
    if stain not in _UPTAKE:
        raise ConfigError(f"stain={stain!r}: expected one of {STAINS}")
    if not jitter:
        return StainStyle(stain, (1.0,) * len(DYES), 0.7, 2.0, 90, (0.02, 0.02, 0.015))
    rng = np.random.default_rng([seed, STAINS.index(stain), 0x57A1])
    strength = tuple(float(v) for v in rng.uniform(0.85, 1.15, len(DYES)) * rng.uniform(0.9, 1.1))
    glass = tuple(float(v) for v in rng.uniform(0.015, 0.03) + rng.uniform(-0.004, 0.004, 3))
    return StainStyle(stain, strength, float(rng.uniform(0.5, 1.1)), float(rng.uniform(1.5, 3.5)),
                      int(rng.integers(80, 96)), (glass[0], glass[1], glass[2]))


__all__ = ["DYES", "STAINS", "StainStyle", "stain_style"]
