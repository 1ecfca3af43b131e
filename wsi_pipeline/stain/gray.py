"""Gray normalisation (SST): ITU-R 601-2 luma, bit-exact with Pillow's ``Image.convert("L")``.

>>> gray_normalize(np.array([[[255, 0, 0], [10, 200, 30]]], dtype=np.uint8)).tolist()
[[76, 124]]
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from .od import check_rgb


def gray_normalize(image: NDArray[np.uint8], *, channels: int = 1) -> NDArray[np.uint8]:
    """(H, W, 3) uint8 RGB -> (H, W) luma (``channels=1``) or that luma repeated to (H, W, 3) (``channels=3``).

    Pillow's fixed-point formula: ``(R*19595 + G*38470 + B*7471 + 0x8000) >> 16``.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels={channels}: expected 1 or 3")
    rgb = check_rgb(image).astype(np.uint32)
    luma = ((rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000) >> 16).astype(np.uint8)
    return luma if channels == 1 else np.repeat(luma[..., None], 3, axis=-1)
