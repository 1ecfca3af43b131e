"""Optical density (Beer-Lambert) and tissue masks shared by the stain normalisers.

OD = -ln(I / I0) with I0 the background (white) intensity; intensities are clipped to [1, I0] first so that
black pixels stay finite and pixels brighter than I0 give OD 0 rather than negative values.

>>> float(rgb_to_od(np.array([[[255, 255, 255]]], dtype=np.uint8)).max())
0.0
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import NDArray
from skimage.color import lab2rgb, rgb2lab


def check_rgb(image: NDArray, name: str = "image") -> NDArray[np.uint8]:
    """Validate an (H, W, 3) uint8 RGB array (an alpha channel is dropped); raises ``ValueError`` naming it."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] not in (3, 4):
        raise ValueError(f"{name}: expected an (H, W, 3) RGB array, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"{name}: expected dtype uint8, got {image.dtype}")
    return image[..., :3]


def rgb_to_od(image: NDArray[np.uint8], *, background: float = 255.0) -> NDArray[np.float64]:
    """(H, W, 3) uint8 RGB -> (H, W, 3) optical density >= 0."""
    rgb = check_rgb(image).astype(np.float64)
    return np.maximum(-np.log(np.clip(rgb, 1.0, background) / background), 0.0)  # no -0.0


def od_to_rgb(od: NDArray[np.floating], *, background: float = 255.0) -> NDArray[np.uint8]:
    """Optical density -> uint8 RGB (rounded, clipped to [0, 255]); the inverse of :func:`rgb_to_od`.

    >>> od_to_rgb(rgb_to_od(np.full((1, 1, 3), 77, np.uint8)))[0, 0].tolist()
    [77, 77, 77]
    """
    return np.clip(np.rint(background * np.exp(-np.asarray(od, dtype=np.float64))), 0, 255).astype(np.uint8)


def to_lab(image: NDArray[np.uint8]) -> NDArray[np.float64]:
    """uint8 RGB -> CIELAB (L in [0, 100])."""
    return rgb2lab(check_rgb(image))


def from_lab(lab: NDArray[np.floating]) -> NDArray[np.uint8]:
    """CIELAB -> uint8 RGB; out-of-gamut colours are clipped (skimage warns about them, expected here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rgb = lab2rgb(lab)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


# sRGB -> linear light for every uint8 value: a 256-entry table makes the per-pixel work a lookup.
_srgb = np.arange(256) / 255.0
_LINEAR = np.where(_srgb <= 0.04045, _srgb / 12.92, ((_srgb + 0.055) / 1.055) ** 2.4)


def lightness(image: NDArray[np.uint8]) -> NDArray[np.float64]:
    """CIELAB L* (0-100, D65) of uint8 RGB, without computing a and b (equal to ``rgb2lab(image)[..., 0]``)."""
    rgb = check_rgb(image)
    y = _LINEAR[rgb[..., 0]] * 0.212671 + _LINEAR[rgb[..., 1]] * 0.715160 + _LINEAR[rgb[..., 2]] * 0.072169
    f = np.where(y > 0.008856, np.cbrt(y), 7.787 * y + 16.0 / 116.0)
    return 116.0 * f - 16.0


def tissue_mask(image: NDArray[np.uint8], *, luminosity: float = 0.8) -> NDArray[np.bool_]:
    """True where a pixel is darker than ``luminosity`` (CIELAB L / 100): tissue rather than white glass.

    >>> tissue_mask(np.array([[[255, 255, 255], [150, 60, 140]]], dtype=np.uint8)).tolist()
    [[False, True]]
    """
    if not 0.0 < luminosity <= 1.0:
        raise ValueError(f"luminosity={luminosity}: must be in (0, 1]")
    return lightness(image) < luminosity * 100.0
