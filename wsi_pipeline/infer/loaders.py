"""The slide job's model loaders, side by side: each builds its network once per process and reuses it.

Tiled-inference predictors are module-level functions, so a ``functools.partial`` of one pickles to the same bytes
in every worker and :func:`~wsi_pipeline.infer.cached_predictor` builds it once per process for every slide. The
G2C model (classifier + generators) is cached the same way by :func:`load_g2c`. Nothing is loaded until a stage
that needs it runs; settings come from the records (:func:`~wsi_pipeline.weights.checked_record`), which build
nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import cast

from torch import nn

from ..models.g2c import G2C
from ..weights import WeightsRef, load_checked
from .classify import G2CModel
from .predictor import TorchPredictor
from .translate import SignedToUnit
from .tta import TTA, SymmetryAverage

__all__ = ["clear_model_cache", "generator_predictor", "load_g2c", "segmenter_predictor"]

SEGMENTER_ARCH = ("unet_resnet34",)
GENERATOR_ARCH = ("cyclegan_generator",)
G2C_ARCH = ("g2c", "g2c_classifier")


def segmenter_predictor(path: str, sha256: str, device: str = "auto", tta: TTA = "none") -> TorchPredictor:
    """The segmenter as a tiled-inference predictor (sigmoid probabilities; ``tta``: averaged over flips/turns)."""
    model, _ = load_checked(WeightsRef(Path(path), sha256, False), arch=SEGMENTER_ARCH)
    net = model if tta == "none" else SymmetryAverage(model, tta)
    return TorchPredictor(net, device=device, activation="sigmoid")


def generator_predictor(path: str, sha256: str, device: str = "auto") -> TorchPredictor:
    """A PAS -> stain generator as a tiled-inference predictor ([0, 1] in and out)."""
    model, _ = load_checked(WeightsRef(Path(path), sha256, False), arch=GENERATOR_ARCH)
    return TorchPredictor(SignedToUnit(model), device=device)


_G2C: dict[tuple[str, tuple[tuple[str, str], ...], tuple[str, ...], float], G2CModel] = {}
_G2C_LOCK = threading.Lock()


def load_g2c(weights: WeightsRef, *, generators: Mapping[str, WeightsRef], classes: tuple[str, ...],
             provenance: Mapping[str, str], temperature: float = 1.0) -> G2CModel:
    """The G2C model, built once per process for these files: a ``g2c`` checkpoint carries its own generators
    (``generators`` empty); a bare ``g2c_classifier`` takes ``generators`` (stain -> weights)."""
    key = (weights.sha256, tuple(sorted((s, r.sha256) for s, r in generators.items())), classes, temperature)
    with _G2C_LOCK:
        model = _G2C.get(key)
        if model is None:
            net, record = load_checked(weights, arch=G2C_ARCH)
            gens: dict[str, nn.Module]
            classifier: nn.Module
            if record.arch == "g2c":
                g2c = cast(G2C, net)
                gens, classifier = dict(g2c.generators.items()), g2c.classifier
            else:
                gens = {s: load_checked(r, arch=GENERATOR_ARCH)[0] for s, r in generators.items()}
                classifier = net
            model = _G2C[key] = G2CModel(gens, classifier, classes, provenance=dict(provenance),
                                         temperature=temperature)
    return model


def clear_model_cache() -> None:
    """Forget the cached G2C models (tests; a long-lived worker that must free memory)."""
    with _G2C_LOCK:
        _G2C.clear()
