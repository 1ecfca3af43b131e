"""Glomerulus classification core: square crops at the classification resolution -> generators -> G2C.

Crops: a square centred on the glomerulus' bounding box, side ``max(width, height) * (1 + margin)`` (Bowman's
capsule plus a margin), reduced to the classification resolution by area averaging, then resized to ``size``
(antialiased bilinear). :func:`wsi_pipeline.infer.crops.read_glomerulus_crops` reads them from a slide, for the slide
job and for the G2C training data alike (:mod:`wsi_pipeline.train.data_stain`, ``source: slide``). The generators
(PAS -> each virtual stain) run on these crops only; the multi-stain classifier sees ``[PAS, generated...]``.
Everything here is pure: numpy/torch in, numpy out; reading the slide is the caller's job.

>>> import shapely
>>> crop_box(shapely.box(100, 200, 180, 260), margin=0.25)
(90.0, 180.0, 190.0, 280.0)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import NDArray
from shapely.geometry.base import BaseGeometry
from torch import nn

from .predictor import resolve_device


@dataclass(frozen=True)
class CropSpec:
    """How a glomerulus is cut for classification: output side (px), resolution (um/px), margin (fraction)."""

    size: int = 64
    mpp: float = 2.0
    margin: float = 0.2

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"size={self.size}: must be >= 8")
        if not self.mpp > 0:
            raise ValueError(f"mpp={self.mpp}: must be > 0")
        if not 0 <= self.margin <= 2:
            raise ValueError(f"margin={self.margin}: must be in [0, 2]")


def crop_box(polygon: BaseGeometry, *, margin: float) -> tuple[float, float, float, float]:
    """Level-0 ``(x0, y0, x1, y1)`` of the square crop around ``polygon`` (centred on its bounding box)."""
    minx, miny, maxx, maxy = polygon.bounds
    cx, cy = (minx + maxx) / 2.0, (miny + maxy) / 2.0
    half = max(maxx - minx, maxy - miny) / 2.0 * (1.0 + margin)
    return (cx - half, cy - half, cx + half, cy + half)


def area_resize(image: NDArray[np.uint8], side: int) -> NDArray[np.uint8]:
    """Resize ``(H, W, 3)`` uint8 to ``(side, side, 3)`` by area averaging (antialiased bilinear when enlarging)."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    if image.shape[0] >= side and image.shape[1] >= side:
        out = F.interpolate(t, size=(side, side), mode="area")
    else:
        out = F.interpolate(t, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def resize_square(image: NDArray[np.uint8], size: int) -> NDArray[np.uint8]:
    """``(H, W, 3)`` uint8 -> ``(size, size, 3)``, antialiased bilinear: exactly the training crops' resize."""
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    out = F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def finish_crop(region: NDArray[np.uint8], *, side_px: int, size: int) -> NDArray[np.uint8]:
    """A square ``region`` read at any resolution -> ``side_px`` at the crop resolution (area) -> ``size``."""
    if region.ndim != 3 or region.shape[2] != 3 or region.dtype != np.uint8:
        raise ValueError(f"region: expected uint8 (H, W, 3), got {region.dtype} {region.shape}")
    side_px = max(8, int(side_px))
    at_mpp = region if region.shape[:2] == (side_px, side_px) else area_resize(region, side_px)
    return resize_square(at_mpp, size)


@dataclass(frozen=True)
class G2CModel:
    """A classifier over ``[PAS, *generated stains]`` plus the PAS -> stain generators it was trained with."""

    generators: Mapping[str, nn.Module]  # ordered like the classifier's stain branches 1..M
    classifier: nn.Module  # (B, M + 1, 3, H, W) in [0, 1] -> (B, K) logits
    classes: tuple[str, ...]
    provenance: Mapping[str, str] = field(default_factory=dict)  # stain -> where its generator came from
    temperature: float = 1.0  # probabilities are softmax(logits / temperature) (calibration)

    @property
    def stains(self) -> tuple[str, ...]:
        return tuple(self.generators)

    def to(self, device: torch.device) -> G2CModel:
        for g in self.generators.values():
            g.to(device).eval()
        self.classifier.to(device).eval()
        return self


def _autocast(device: torch.device, amp: bool | None = None) -> torch.autocast:
    """bf16 autocast: on CUDA by default; on CPU only when asked (``amp=True``: measured slower without AVX-512 BF16,
    see docs/benchmarks.md)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" if amp is None else amp)


def _to_unit(batch: NDArray[np.uint8], device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(batch)).to(device).permute(0, 3, 1, 2).float().div_(255.0)


@torch.inference_mode()
def generate_stains(
    pas: NDArray[np.uint8], generators: Mapping[str, nn.Module], *, batch_size: int = 16, device: str = "cpu"
) -> dict[str, NDArray[np.uint8]]:
    """Virtual stains of PAS crops ``(N, H, W, 3)`` uint8: ``{stain: (N, H, W, 3) uint8}`` (generators in [-1, 1])."""
    dev = resolve_device(device)
    out: dict[str, list[NDArray[np.uint8]]] = {s: [] for s in generators}
    for i in range(0, len(pas), batch_size):
        x = _to_unit(pas[i:i + batch_size], dev)
        with _autocast(dev):
            for stain, g in generators.items():
                y = (g.to(dev).eval()(x * 2 - 1).float() + 1) / 2
                out[stain].append((y.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    return {s: np.concatenate(v) if v else np.zeros((0, *pas.shape[1:]), np.uint8) for s, v in out.items()}


@torch.inference_mode()
def g2c_probabilities(
    pas: NDArray[np.uint8], model: G2CModel, *, batch_size: int = 16, device: str = "cpu", amp: bool | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> NDArray[np.float32]:
    """Class probabilities ``(N, K)`` of PAS crops ``(N, H, W, 3)`` uint8: generators on the crops, then G2C.

    Identical to ``softmax(G2C(x) / model.temperature)`` of :class:`wsi_pipeline.models.G2C` for a model built
    from one. ``progress(done, total)`` is called after each batch (glomeruli classified so far).
    """
    if pas.ndim != 4 or pas.shape[-1] != 3 or pas.dtype != np.uint8:
        raise ValueError(f"pas: expected uint8 (N, H, W, 3), got {pas.dtype} {pas.shape}")
    dev = resolve_device(device)
    model.to(dev)
    probs = []
    for i in range(0, len(pas), batch_size):
        x = _to_unit(pas[i:i + batch_size], dev)
        with _autocast(dev, amp):
            generated = [(g(x * 2 - 1) + 1) / 2 for g in model.generators.values()]
            logits = model.classifier(torch.stack([x, *generated], dim=1))
        probs.append(torch.softmax(logits.float() / model.temperature, dim=1).cpu().numpy())
        if progress is not None:
            progress(min(i + batch_size, len(pas)), len(pas))
    k = len(model.classes)
    return np.concatenate(probs).astype(np.float32) if probs else np.zeros((0, k), np.float32)


def decide(probs: NDArray[np.float32], classes: Sequence[str], *, gs_threshold: float | None = None) -> list[str]:
    """Class codes: ``gs`` when ``p_gs >= gs_threshold``, else the most probable other class; ``None``: argmax.

    >>> decide(np.array([[0.5, 0.1, 0.4], [0.2, 0.7, 0.1]], np.float32), ("noa", "ss", "gs"), gs_threshold=0.35)
    ['gs', 'ss']
    """
    if gs_threshold is None or "gs" not in classes:
        return [classes[int(np.argmax(p))] for p in probs]
    g = list(classes).index("gs")
    rest = [j for j in range(len(classes)) if j != g]
    return [classes[g] if p[g] >= gs_threshold else classes[rest[int(np.argmax(p[rest]))]] for p in probs]


def class_measurements(probs: NDArray[np.float32], classes: Sequence[str]) -> list[dict[str, float]]:
    """``[{"p_noa": .., "p_ss": .., "p_gs": ..}, ...]`` rounded to 4 decimals."""
    return [{f"p_{c}": round(float(p[j]), 4) for j, c in enumerate(classes)} for p in probs]


__all__ = ["CropSpec", "G2CModel", "area_resize", "class_measurements", "crop_box", "decide", "finish_crop",
           "g2c_probabilities", "generate_stains", "resize_square"]
