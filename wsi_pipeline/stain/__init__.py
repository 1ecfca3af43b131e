"""Classic stain normalisation, vectorised numpy: fit on a reference image, apply to tiles independently.

Every method is a pair of pure functions, ``fit_*(reference) -> frozen params`` and
``apply_*(image, params, *, source=None) -> uint8``; :func:`fit` / :func:`apply` pick one by name / by params
type. Without ``source`` each tile is normalised with its own statistics; with ``source`` (the same method fitted on
the whole slide, e.g. its thumbnail) every tile gets the same transform, so tiled output equals untiled output.

>>> import numpy as np
>>> ref = np.random.default_rng(0).integers(40, 200, (32, 32, 3), dtype=np.uint8)
>>> apply(ref, fit(ref, method="reinhard")).dtype
dtype('uint8')
"""

from __future__ import annotations

from typing import Any, Literal, Union

import numpy as np
from numpy.typing import NDArray

from .gray import gray_normalize
from .histogram import HistogramParams, apply_histogram, fit_histogram
from .macenko import MacenkoParams, apply_macenko, fit_macenko
from .od import od_to_rgb, rgb_to_od, tissue_mask
from .reinhard import ReinhardParams, apply_reinhard, fit_reinhard

Method = Literal["reinhard", "macenko", "histogram"]
StainParams = Union[ReinhardParams, MacenkoParams, HistogramParams]

_FIT = {"reinhard": fit_reinhard, "macenko": fit_macenko, "histogram": fit_histogram}


def fit(reference: NDArray[np.uint8], *, method: Method, **options: Any) -> StainParams:
    """Fit ``method`` (``reinhard``, ``macenko`` or ``histogram``) on a reference RGB image."""
    if method not in _FIT:
        raise ValueError(f"method={method!r}: expected one of {sorted(_FIT)}")
    return _FIT[method](reference, **options)  # type: ignore[no-any-return, operator]


def apply(image: NDArray[np.uint8], params: StainParams, *, source: StainParams | None = None) -> NDArray[np.uint8]:
    """Normalise one RGB tile with fitted target params (the method follows from the params type)."""
    if source is not None and type(source) is not type(params):
        raise TypeError(f"source: expected {type(params).__name__} like params, got {type(source).__name__}")
    if isinstance(params, ReinhardParams):
        return apply_reinhard(image, params, source=source)  # type: ignore[arg-type]
    if isinstance(params, MacenkoParams):
        return apply_macenko(image, params, source=source)  # type: ignore[arg-type]
    if isinstance(params, HistogramParams):
        return apply_histogram(image, params, source=source)  # type: ignore[arg-type]
    raise TypeError(f"params: expected ReinhardParams, MacenkoParams or HistogramParams, got {type(params).__name__}")


__all__ = [
    "HistogramParams", "MacenkoParams", "ReinhardParams", "StainParams", "apply", "apply_histogram",
    "apply_macenko", "apply_reinhard", "fit", "fit_histogram", "fit_macenko", "fit_reinhard", "gray_normalize",
    "od_to_rgb", "rgb_to_od", "tissue_mask",
]
