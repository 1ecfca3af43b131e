"""Test-time augmentation for dense binary predictions: average a segmenter's probabilities over the symmetries of
the square (flips, 90-degree rotations), each mapped back before averaging.

A glomerulus has no preferred orientation, so a segmenter should give the same map for a flipped window; averaging
over the variants smooths the decisions of a network trained on few real glomeruli. The wrapper returns logits of the
averaged probabilities, so it drops in wherever the bare network's logits go (``TorchPredictor(activation="sigmoid")``).
``"flips"`` costs 4 forward passes, ``"d4"`` 8 (windows must be square for the rotations).

>>> net = torch.nn.Conv2d(3, 1, 3, padding=1)
>>> x = torch.rand(2, 3, 16, 16)
>>> torch.allclose(SymmetryAverage(net, "none")(x), net(x))
True
>>> SymmetryAverage(net, "d4")(x).shape
torch.Size([2, 1, 16, 16])
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

TTA = Literal["none", "flips", "d4"]
_EPS = 1e-6


def _variants(mode: TTA) -> list[tuple[int, bool]]:
    """(quarter turns, horizontal flip) pairs of a mode."""
    if mode == "none":
        return [(0, False)]
    if mode == "flips":  # identity, h-flip, v-flip (= 2 turns + h-flip), both (= 2 turns)
        return [(0, False), (0, True), (2, True), (2, False)]
    if mode == "d4":
        return [(k, f) for k in range(4) for f in (False, True)]
    raise ValueError(f"tta={mode!r}: expected 'none', 'flips' or 'd4'")


class SymmetryAverage(nn.Module):
    """``module`` (logits of one or more independent binary maps) averaged in probability over ``mode``'s variants."""

    def __init__(self, module: nn.Module, mode: TTA = "flips") -> None:
        super().__init__()
        self.module, self.mode = module, mode
        self.variants = _variants(mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "none":
            return self.module(x)
        total: torch.Tensor | None = None
        for turns, flip in self.variants:
            v = torch.rot90(x, turns, dims=(2, 3)) if turns else x
            v = torch.flip(v, dims=(3,)) if flip else v
            y = self.module(v).float()
            y = torch.flip(y, dims=(3,)) if flip else y
            y = torch.rot90(y, -turns, dims=(2, 3)) if turns else y
            p = torch.sigmoid(y)
            total = p if total is None else total + p
        assert total is not None
        return torch.logit((total / len(self.variants)).clamp(_EPS, 1 - _EPS))


__all__ = ["TTA", "SymmetryAverage"]
