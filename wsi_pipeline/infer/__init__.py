"""Batched model application over images and zarr arrays: overlapping windows, weighted blending, device choice.

Names are imported lazily, so ``wsi_pipeline.infer.blend`` / ``.layout`` are usable without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # static view for mypy and IDEs; at run time the names load on first use
    from .blend import predict_tiled, window_spans, window_starts, window_weights
    from .layout import Layout
    from .predictor import TorchPredictor, measure_receptive_radius, resolve_device
    from .tiled import (
        TiledInferenceConfig,
        cached_predictor,
        clear_predictor_cache,
        plan_windows,
        predict_zarr,
    )

_EXPORTS = {
    "predict_tiled": "blend",
    "window_spans": "blend",
    "window_starts": "blend",
    "window_weights": "blend",
    "Layout": "layout",
    "TorchPredictor": "predictor",
    "measure_receptive_radius": "predictor",
    "resolve_device": "predictor",
    "TiledInferenceConfig": "tiled",
    "cached_predictor": "tiled",
    "clear_predictor_cache": "tiled",
    "plan_windows": "tiled",
    "predict_zarr": "tiled",
}

__all__ = [  # sorted(_EXPORTS), spelled out so linters see the re-exports
    "Layout",
    "TiledInferenceConfig",
    "TorchPredictor",
    "cached_predictor",
    "clear_predictor_cache",
    "measure_receptive_radius",
    "plan_windows",
    "predict_tiled",
    "predict_zarr",
    "resolve_device",
    "window_spans",
    "window_starts",
    "window_weights",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
