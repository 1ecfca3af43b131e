"""The seeded tissue layout of a phantom: a biopsy core, its glomeruli (with class) and arteries.

Everything finer (tubules, capillary loops, nuclei, cells) is procedural and derived from ``seed`` at render time.
All lengths are level-0 pixels; biological sizes are given in um and converted with ``mpp``.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

import numpy as np

from wsi_pipeline.annotations.geojson import CLASS_NAMES as _ANNOTATION_NAMES
from wsi_pipeline.annotations.geojson import class_color
from wsi_pipeline.errors import ConfigError

CLASSES = ("noa", "ss", "gs")
# the QuPath class names and colours the job writes (wsi_pipeline.annotations): truth and output compare by name
CLASS_NAMES = {c: _ANNOTATION_NAMES[c] for c in CLASSES}
CLASS_COLORS = {c: class_color(CLASS_NAMES[c]) for c in CLASSES}
_NAMESPACE = uuid.UUID("6f1c2f3e-7a51-4c1e-9a53-0d2b8f6a9e10")


@dataclass(frozen=True)
class Glomerulus:
    """One glomerulus: centre, Bowman's capsule radius (px), class, and shape/sclerosis parameters."""

    label: int  # 1-based instance label (label mask value, GeoJSON order)
    cx: float
    cy: float
    radius: float  # mean outer radius of Bowman's capsule
    cls: str  # noa | ss | gs
    phase: tuple[float, ...]  # lobulation phases
    sector: float  # ss: direction (rad) of the sclerotic segment
    sector_width: float  # ss: half-width (rad)
    uuid: str

    def capsule_radius(self, theta: np.ndarray) -> np.ndarray:
        """Outer boundary of Bowman's capsule at angle ``theta`` (the annotated outline)."""
        p = self.phase
        return self.radius * (1 + 0.05 * np.sin(2 * theta + p[0]) + 0.03 * np.sin(3 * theta + p[1]))

    def tuft_radius(self, theta: np.ndarray) -> np.ndarray:
        p = self.phase
        f = 0.72 if self.cls == "gs" else 0.84
        lob = 0.07 * np.sin(5 * theta + p[2]) + 0.05 * np.sin(7 * theta + p[3]) + 0.03 * np.sin(11 * theta + p[4])
        return self.capsule_radius(theta) * f * (1 + lob)

    def polygon(self, n: int = 96) -> list[tuple[float, float]]:
        """Closed outline (level-0 px), counter-clockwise in image coordinates, first point repeated."""
        th = np.linspace(0, 2 * np.pi, n, endpoint=False)
        r = self.capsule_radius(th)
        pts = [(round(float(self.cx + ri * math.cos(t)), 2), round(float(self.cy + ri * math.sin(t)), 2))
               for ri, t in zip(r, th)]
        return pts + [pts[0]]


@dataclass(frozen=True)
class Artery:
    cx: float
    cy: float
    radius: float  # outer radius (adventitia)
    lumen: float  # lumen radius


@dataclass(frozen=True)
class Layout:
    """A phantom's geometry. Frozen and small: pass it to workers freely."""

    width: int
    height: int
    seed: int
    mpp: float
    core_a: tuple[float, float]  # biopsy core axis end points
    core_b: tuple[float, float]
    core_radius: float
    tubule_angle: float
    glomeruli: tuple[Glomerulus, ...]
    arteries: tuple[Artery, ...]

    def um(self, microns: float) -> float:
        """Microns -> level-0 pixels."""
        return microns / self.mpp

    def core_distance(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Signed distance (px) to the smooth core outline: negative inside (before edge wobble)."""
        ax, ay = self.core_a
        bx, by = self.core_b
        dx, dy = bx - ax, by - ay
        t = np.clip(((x - ax) * dx + (y - ay) * dy) / (dx * dx + dy * dy), 0, 1)
        d = np.hypot(x - (ax + t * dx), y - (ay + t * dy))
        wobble = 0.08 * np.sin(t * 9.0 + self.seed % 7) + 0.05 * np.sin(t * 23.0 + self.seed % 5)
        return d - self.core_radius * (1 + wobble)


def make_layout(size: int | tuple[int, int], *, seed: int = 0, mpp: float = 0.5,
                n_glomeruli: int | None = None, density_per_mm2: float = 2.5) -> Layout:
    """Seeded layout: one biopsy core along the slide diagonal, glomeruli placed inside it (density-based count
    unless ``n_glomeruli``), classes noa/ss/gs (the first three are one of each, the rest about 60/20/20 %),
    and a few arteries.

    >>> make_layout(4096, seed=1).glomeruli[0].cls in ("noa", "ss", "gs")
    True
    """
    w, h = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(w, h) < 256:
        raise ConfigError(f"size={size!r}: phantom slides need at least 256 px per side")
    if not (math.isfinite(mpp) and 0.05 <= mpp <= 10):
        raise ConfigError(f"mpp={mpp!r}: expected 0.05..10 um/px")
    if n_glomeruli is not None and n_glomeruli < 0:
        raise ConfigError(f"n_glomeruli={n_glomeruli}: must be >= 0")
    rng = np.random.default_rng([seed, 0x6C0])
    short = min(w, h)
    core_r = float(np.clip(600 / mpp, 0.18 * short, 0.3 * short))  # ~1.2 mm wide needle core
    margin = core_r * 1.25
    if rng.random() < 0.5:
        a, b = (margin, margin), (w - margin, h - margin)
    else:
        a, b = (margin, h - margin), (w - margin, margin)
    jitter = rng.uniform(-0.05, 0.05, 4) * short
    a = (float(a[0] + jitter[0]), float(a[1] + jitter[1]))
    b = (float(b[0] + jitter[2]), float(b[1] + jitter[3]))
    proto = Layout(w, h, seed, mpp, a, b, core_r, float(rng.uniform(0, np.pi)), (), ())
    area_mm2 = (2 * core_r * math.hypot(b[0] - a[0], b[1] - a[1]) + math.pi * core_r**2) * (mpp * 1e-3) ** 2
    n = max(3, round(density_per_mm2 * area_mm2)) if n_glomeruli is None else n_glomeruli

    placed: list[tuple[float, float, float]] = []
    glomeruli: list[Glomerulus] = []
    classes = list(CLASSES) + [str(c) for c in rng.choice(CLASSES, size=max(0, n - 3), p=[0.6, 0.2, 0.2])]
    for i in range(n):
        r = proto.um(float(rng.uniform(48, 68)))
        spot = _place(rng, proto, placed, r)
        if spot is None:
            if n_glomeruli is not None:
                raise ConfigError(f"n_glomeruli={n_glomeruli}: only {i} fit a {w}x{h} px slide at {mpp} um/px")
            break
        placed.append((*spot, r * 1.5))
        glomeruli.append(Glomerulus(
            label=len(glomeruli) + 1, cx=spot[0], cy=spot[1], radius=r, cls=classes[i],
            phase=tuple(float(v) for v in rng.uniform(0, 2 * np.pi, 5)),
            sector=float(rng.uniform(0, 2 * np.pi)), sector_width=float(rng.uniform(0.6, 1.1)),
            uuid=str(uuid.uuid5(_NAMESPACE, f"phantom/{seed}/{w}x{h}/glomerulus/{len(glomeruli) + 1}")),
        ))
    arteries: list[Artery] = []
    n_art = max(1, round(area_mm2 * 0.4))
    for _ in range(n_art):
        r = proto.um(float(rng.uniform(35, 70)))
        spot = _place(rng, proto, placed, r)
        if spot is None:
            break
        placed.append((*spot, r * 1.3))
        arteries.append(Artery(cx=spot[0], cy=spot[1], radius=r, lumen=r * float(rng.uniform(0.35, 0.5))))
    return Layout(w, h, seed, mpp, a, b, core_r, proto.tubule_angle, tuple(glomeruli), tuple(arteries))


def _place(rng: np.random.Generator, layout: Layout, placed: list[tuple[float, float, float]],
           r: float) -> tuple[float, float] | None:
    """Rejection-sample a centre inside the core, clear of the edge and of everything already placed."""
    ax, ay = layout.core_a
    bx, by = layout.core_b
    for _ in range(400):
        t = rng.uniform(0, 1)
        ang, rad = rng.uniform(0, 2 * np.pi), layout.core_radius * math.sqrt(rng.uniform(0, 1))
        x, y = ax + t * (bx - ax) + rad * math.cos(ang), ay + t * (by - ay) + rad * math.sin(ang)
        if layout.core_distance(np.array(x), np.array(y)) > -1.3 * r:
            continue
        if all(math.hypot(x - px, y - py) > 1.5 * r + pr for px, py, pr in placed):
            return float(x), float(y)
    return None


__all__ = ["Artery", "CLASSES", "CLASS_COLORS", "CLASS_NAMES", "Glomerulus", "Layout", "make_layout"]
