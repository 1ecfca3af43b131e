"""Absorbance directions of the dyes kidney stains are made of: one table for stain augmentation and recognition.

Unit optical-density vectors (R, G, B) after normalisation; hematoxylin, eosin and DAB after Ruifrok & Johnston
(2001), the rest read off the real patches of ``shared/data/kidney-stains``.

>>> round(float(np.linalg.norm(unit("dab"))), 6)
1.0
"""

from __future__ import annotations

import numpy as np

ABSORBANCE: dict[str, tuple[float, float, float]] = {
    "hematoxylin": (0.65, 0.70, 0.29),
    "eosin": (0.07, 0.99, 0.11),
    "pas": (0.27, 0.90, 0.35),  # PAS magenta
    "pink": (0.18, 0.95, 0.25),  # between eosin and PAS: the two are told apart by texture, not colour
    "dab": (0.27, 0.57, 0.78),
    "silver": (0.58, 0.58, 0.57),  # grey-black silver deposits (Jones, PASM)
    "sirius_red": (0.10, 0.80, 0.59),
    "aniline_blue": (0.85, 0.45, 0.27),  # Masson's trichrome collagen
    "picric": (0.05, 0.25, 0.97),  # picric-acid yellow of picro-Sirius
}


def unit(name: str) -> np.ndarray:
    """The unit OD vector of dye ``name``."""
    v = np.asarray(ABSORBANCE[name], np.float64)
    return v / np.linalg.norm(v)


__all__ = ["ABSORBANCE", "unit"]
