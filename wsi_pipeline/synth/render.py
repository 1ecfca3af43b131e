"""Render any region of a phantom in one stain: components -> OD -> blur -> RGB + noise, all tile-independent.

The blur is computed over a halo so a region's pixels equal the same pixels of any larger render; noise is a
hash of the global pixel coordinates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.ndimage import gaussian_filter

from wsi_pipeline.errors import ConfigError

from .fields import components, tissue_possible
from .layout import Layout
from .noise import gaussian_noise
from .stains import StainStyle, stain_style

_CHUNK = 256  # sqrt of the pixels of one component evaluation: bounds the (13, rows, cols) float32 working set


def render_region(layout: Layout, stain: str | StainStyle, x: int, y: int, w: int, h: int, *,
                  level_downsample: int = 1) -> np.ndarray:
    """RGB uint8 ``(h, w, 3)`` of the region at level-0 ``(x, y)``, sampled every ``level_downsample`` px.

    >>> from wsi_pipeline.synth import make_layout
    >>> render_region(make_layout(2048, seed=3), "PAS", 900, 900, 64, 32).shape
    (32, 64, 3)
    """
    return render_regions(layout, (stain,), x, y, w, h, level_downsample=level_downsample)[0]


def render_regions(layout: Layout, stains: Sequence[str | StainStyle], x: int, y: int, w: int, h: int, *,
                   level_downsample: int = 1) -> list[np.ndarray]:
    """:func:`render_region` for several stains at once: the tissue components are computed once and shared
    (the expensive part), and each result equals its single-stain render exactly."""
    if w < 1 or h < 1:
        raise ConfigError(f"region size {w}x{h}: width and height must be >= 1")
    if level_downsample < 1:
        raise ConfigError(f"level_downsample={level_downsample}: must be >= 1")
    if not stains:
        raise ConfigError("stains: at least one stain is needed")
    styles = [s if isinstance(s, StainStyle) else stain_style(s, seed=layout.seed) for s in stains]
    ds = level_downsample
    sigmas = [st.blur / ds for st in styles]
    halos = [int(np.ceil(4 * sg)) if sg > 0.2 else 0 for sg in sigmas]
    halo = max(halos)
    gx0, gy0 = x // ds - halo, y // ds - halo  # halo in output pixels, anchored to the level grid
    hw, hh = w + 2 * halo, h + 2 * halo
    ods = [np.zeros((3, hh, hw), np.float32) for _ in styles]  # channels first: contiguous planes to blur
    tissue = tissue_possible(layout, x - halo * ds, y - halo * ds, x + (w + halo) * ds, y + (h + halo) * ds)
    if tissue:
        mats = [st.od_matrix() for st in styles]
        ox, oy = x - (x // ds) * ds, y - (y // ds) * ds  # sub-grid offset of an unaligned level-0 origin
        # chunks span the region's full height when it is short (a writer's tile row plus its halo), so no thin
        # leftover row pays a chunk's fixed cost
        ch = min(hh, 2 * _CHUNK)
        cw = max(_CHUNK // 4, _CHUNK * _CHUNK // ch)
        for r0 in range(0, hh, ch):
            for c0 in range(0, hw, cw):
                r1, c1 = min(hh, r0 + ch), min(hw, c0 + cw)
                if not tissue_possible(layout, (gx0 + c0) * ds + ox, (gy0 + r0) * ds + oy,
                                       (gx0 + c1) * ds + ox, (gy0 + r1) * ds + oy):
                    continue
                ys = ((gy0 + np.arange(r0, r1)) * ds + oy + (ds - 1) / 2).astype(np.float32)
                xs = ((gx0 + np.arange(c0, c1)) * ds + ox + (ds - 1) / 2).astype(np.float32)
                comp = components(layout, xs[None, :], ys[:, None]).reshape(len(mats[0]), -1)
                for od, mat in zip(ods, mats):
                    # einsum's own loop: a BLAS matmul this thin costs more in thread hand-offs than it computes
                    od[:, r0:r1, c0:c1] = np.einsum("kn,kc->cn", comp, mat).reshape(3, r1 - r0, c1 - c0)
    yy = (gy0 + halo + np.arange(h))[:, None]
    xx = (gx0 + halo + np.arange(w))[None, :]
    noise = np.moveaxis(gaussian_noise(xx, yy, key=layout.seed * 977 + ds * 131 + 17), -1, 0)
    out = []
    for od, style, sigma, own in zip(ods, styles, sigmas, halos):
        if tissue and own:
            # blur only what this stain's own halo needs: the result is independent of the shared halo
            od = od[:, halo - own:hh - halo + own, halo - own:hw - halo + own]
            for c in range(3):
                od[c] = gaussian_filter(od[c], sigma, mode="nearest", truncate=4.0)
            od = od[:, own:own + h, own:own + w]
        else:
            od = od[:, halo:halo + h, halo:halo + w]
        glass = np.array(style.glass, np.float32)[:, None, None]
        rgb = np.exp((od + glass) * np.float32(-np.log(10.0))) * np.float32(255.0)  # 255 * 10 ** -(OD + glass)
        rgb += np.float32(style.noise) * noise
        out.append(np.ascontiguousarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)))
    return out


__all__ = ["render_region", "render_regions"]
