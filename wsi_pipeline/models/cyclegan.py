"""CycleGAN ResNet generator (as G2C describes it) and the 70x70 PatchGAN discriminator.

Follows Zhu et al.'s ``models/networks.py`` except where G2C is explicit: up-sampling uses 4x4 stride-2 transposed
convolutions (``padding=1`` gives exactly 2x, so no ``output_padding`` is needed) and 6 residual blocks by default.
Generators work on images in [-1, 1].

>>> g = GeneratorConfig(ngf=8, n_blocks=2).build()
>>> g(torch.zeros(1, 3, 100, 132)).shape
torch.Size([1, 3, 100, 132])
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from ..config import FrozenConfig
from .blocks import NormFactory, NormName, init_weights, norm_factory, pad_to_multiple, uses_bias


class ResnetBlock(nn.Module):
    """CycleGAN residual block: reflect-pad, 3x3 conv, norm, ReLU, (dropout), reflect-pad, 3x3 conv, norm, + x."""

    def __init__(self, channels: int, *, norm_layer: NormFactory, dropout: float = 0.0) -> None:
        super().__init__()
        bias = uses_bias(norm_layer)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), norm_layer(channels), nn.ReLU(True),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3, bias=bias), norm_layer(channels)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """7x7 conv in, 2 stride-2 3x3 convs down, ``n_blocks`` residual blocks, 2 stride-2 4x4 deconvs up, 7x7 out, tanh.

    Any input size works: sides are reflect-padded up to a multiple of 4 and the output is cropped back, so the output
    always has the input's size (inputs already divisible by 4 are not padded).
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, *, ngf: int = 64, n_blocks: int = 6,
                 norm_layer: NormFactory = norm_factory("instance"), dropout: float = 0.0) -> None:
        super().__init__()
        bias = uses_bias(norm_layer)
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3), nn.Conv2d(in_channels, ngf, 7, bias=bias), norm_layer(ngf), nn.ReLU(True),
        ]
        for i in range(2):  # down-sampling: ngf -> 2 ngf -> 4 ngf
            c = ngf * 2**i
            layers += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1, bias=bias), norm_layer(2 * c), nn.ReLU(True)]
        layers += [ResnetBlock(4 * ngf, norm_layer=norm_layer, dropout=dropout) for _ in range(n_blocks)]
        for i in range(2):  # up-sampling: (H - 1) * 2 - 2 * 1 + 4 = 2 H exactly
            c = ngf * 2 ** (2 - i)
            layers += [nn.ConvTranspose2d(c, c // 2, 4, stride=2, padding=1, bias=bias), norm_layer(c // 2),
                       nn.ReLU(True)]
        layers += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, 7), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        padded, (h, w) = pad_to_multiple(x, 4)
        return self.model(padded)[..., :h, :w]


class PatchGANDiscriminator(nn.Module):
    """PatchGAN (``n_layers=3`` is the 70x70 receptive field): a map of real/fake logits, one per patch."""

    def __init__(self, in_channels: int = 3, *, ndf: int = 64, n_layers: int = 3,
                 norm_layer: NormFactory = norm_factory("instance")) -> None:
        super().__init__()
        bias = uses_bias(norm_layer)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, ndf, 4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
        mult = 1
        for n in range(1, n_layers + 1):
            prev, mult = mult, min(2**n, 8)
            stride = 2 if n < n_layers else 1  # the last one keeps resolution, as in the reference
            layers += [nn.Conv2d(ndf * prev, ndf * mult, 4, stride=stride, padding=1, bias=bias),
                       norm_layer(ndf * mult), nn.LeakyReLU(0.2, True)]
        layers.append(nn.Conv2d(ndf * mult, 1, 4, stride=1, padding=1))
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class GeneratorConfig(FrozenConfig):
    """Architecture record of a :class:`ResnetGenerator` (``n_blocks`` 6 as in G2C, 9 as CycleGAN at 256 px)."""

    in_channels: int = Field(3, ge=1)
    out_channels: int = Field(3, ge=1)
    ngf: int = Field(64, ge=1)
    n_blocks: int = Field(6, ge=0)
    norm: NormName = "instance"
    dropout: float = Field(0.0, ge=0.0, lt=1.0)

    def build(self) -> ResnetGenerator:
        return ResnetGenerator(self.in_channels, self.out_channels, ngf=self.ngf, n_blocks=self.n_blocks,
                               norm_layer=norm_factory(self.norm), dropout=self.dropout)


class PatchGANConfig(FrozenConfig):
    """Architecture record of a :class:`PatchGANDiscriminator`."""

    in_channels: int = Field(3, ge=1)
    ndf: int = Field(64, ge=1)
    n_layers: int = Field(3, ge=1)
    norm: NormName = "instance"

    def build(self) -> PatchGANDiscriminator:
        return PatchGANDiscriminator(self.in_channels, ndf=self.ndf, n_layers=self.n_layers,
                                     norm_layer=norm_factory(self.norm))
