"""Small building blocks shared by every network: norm factories, conv units, ResNet basic blocks, padding.

Norm layers are injected as factories (``Callable[[int], nn.Module]``), as in the CycleGAN reference, so one block
serves instance norm (generators) and batch norm (classifiers) alike.

>>> block = BasicBlock(8, 16, stride=2, norm_layer=norm_factory("batch"))
>>> block(torch.zeros(1, 8, 10, 10)).shape
torch.Size([1, 16, 5, 5])
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

NormFactory = Callable[[int], nn.Module]
NormName = Literal["batch", "instance", "none"]


def norm_factory(name: NormName) -> NormFactory:
    """Norm layer factory by name: ``batch``, ``instance`` (CycleGAN: no affine, no running stats) or ``none``.

    >>> norm_factory("instance")(4).affine
    False
    """
    if name == "batch":
        return nn.BatchNorm2d
    if name == "instance":
        return functools.partial(nn.InstanceNorm2d, affine=False, track_running_stats=False)
    if name == "none":
        return lambda _channels: nn.Identity()
    raise ValueError(f"norm={name!r}: expected 'batch', 'instance' or 'none'")


def uses_bias(norm_layer: NormFactory) -> bool:
    """Convs before a norm with its own shift need no bias; instance norm without affine (and no norm) does."""
    probe = norm_layer(1)
    return not isinstance(probe, nn.BatchNorm2d) and not getattr(probe, "affine", False)


def scaled(channels: int, width: float, *, minimum: int = 4) -> int:
    """Channel count scaled by a width multiplier, at least ``minimum``."""
    return max(minimum, int(round(channels * width)))


class ConvNormAct(nn.Sequential):
    """Conv -> norm -> activation with 'same'-style padding by default (``padding=None``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int] = 3,
        *,
        stride: int = 1,
        padding: int | tuple[int, int] | None = None,
        norm_layer: NormFactory = nn.BatchNorm2d,
        activation: Callable[[], nn.Module] | None = lambda: nn.ReLU(inplace=True),
    ) -> None:
        if padding is None:
            k = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
            padding = (k[0] // 2, k[1] // 2)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                      bias=uses_bias(norm_layer)),
            norm_layer(out_channels),
        ]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)


class BasicBlock(nn.Module):
    """ResNet-18/34 basic block (two 3x3 convs) with a 1x1 projection shortcut when shape changes."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 1,
                 norm_layer: NormFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, 3, stride=stride, norm_layer=norm_layer)
        self.conv2 = ConvNormAct(out_channels, out_channels, 3, norm_layer=norm_layer, activation=None)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = ConvNormAct(in_channels, out_channels, 1, stride=stride, padding=0,
                                        norm_layer=norm_layer, activation=None)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


def resnet_layer(in_channels: int, out_channels: int, blocks: int, *, stride: int = 1,
                 norm_layer: NormFactory = nn.BatchNorm2d) -> nn.Sequential:
    """One ResNet stage: ``blocks`` basic blocks, the first one strided/projecting."""
    layers = [BasicBlock(in_channels, out_channels, stride=stride, norm_layer=norm_layer)]
    layers += [BasicBlock(out_channels, out_channels, norm_layer=norm_layer) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


class ResNetStem(nn.Sequential):
    """The torchvision ResNet stem: 7x7 stride-2 conv, norm, ReLU (output at 1/2; max-pool is left to the caller)."""

    def __init__(self, in_channels: int, out_channels: int, *, norm_layer: NormFactory = nn.BatchNorm2d) -> None:
        super().__init__(ConvNormAct(in_channels, out_channels, 7, stride=2, padding=3, norm_layer=norm_layer))


def pad_to_multiple(x: torch.Tensor, multiple: int, *, mode: str = "reflect") -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad H and W at the bottom/right up to a multiple; returns the padded tensor and the original (H, W).

    Reflection needs the pad to be smaller than the side, so tiny inputs fall back to replication.
    """
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x, (h, w)
    if mode == "reflect" and (ph >= h or pw >= w):
        mode = "replicate"
    return F.pad(x, (0, pw, 0, ph), mode=mode), (h, w)


def init_weights(module: nn.Module, *, gain: float = 0.02) -> None:
    """CycleGAN/DCGAN initialisation: conv weights ~ N(0, gain), norm weights ~ N(1, gain), biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, gain)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.InstanceNorm2d)) and m.weight is not None:
            nn.init.normal_(m.weight, 1.0, gain)
            nn.init.zeros_(m.bias)


def init_resnet(module: nn.Module) -> None:
    """He (fan-out) initialisation for ReLU ResNets, norm weights 1, biases 0 (torchvision's recipe)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def count_parameters(module: nn.Module, *, trainable_only: bool = False) -> int:
    """Number of parameters (optionally only those with ``requires_grad``).

    >>> count_parameters(nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
