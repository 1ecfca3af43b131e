"""U-Net with a ResNet-34 encoder (no FC) for glomerulus segmentation (multi-level adversarial paper, G).

Encoder: ResNet-34 stem (7x7/2) and layers [3, 4, 6, 3] of basic blocks -> maps at 1/2, 1/4, 1/8, 1/16, 1/32.
Decoder (as in segmentation_models_pytorch's Unet, the paper is silent): five blocks, each 2x nearest up-sampling,
concatenation with the encoder map of that size, two 3x3 conv-BN-ReLU; then a 3x3 conv to 1-channel logits.
Sides that are not multiples of 32 are reflect-padded and the logits cropped back, so any size >= 1 works; the
exposed feature maps then have the padded size (``ceil(side / 32) * 32 / stride``).

>>> net = UNetConfig(width=0.125, decoder_channels=(16, 8, 8, 4, 4)).build()
>>> net(torch.zeros(1, 3, 70, 90)).shape
torch.Size([1, 1, 70, 90])
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..config import FrozenConfig
from .blocks import ConvNormAct, NormFactory, NormName, ResNetStem, init_resnet, norm_factory, pad_to_multiple, \
    resnet_layer, scaled

RESNET34_LAYERS = (3, 4, 6, 3)
RESNET_WIDTHS = (64, 64, 128, 256, 512)  # stem, layer1..layer4


class UNetOutput(NamedTuple):
    """Logits at input size plus the feature maps the domain discriminators look at."""

    logits: torch.Tensor
    encoder: list[torch.Tensor]  # stem (1/2), layer1 (1/4), layer2 (1/8), layer3 (1/16), layer4 (1/32)
    decoder: list[torch.Tensor]  # block outputs at 1/16, 1/8, 1/4, 1/2, 1/1


class ResNetEncoder(nn.Module):
    """ResNet-18/34 trunk without pooling head; returns the five feature maps, finest first."""

    def __init__(self, in_channels: int = 3, *, layers: tuple[int, ...] = RESNET34_LAYERS, width: float = 1.0,
                 norm_layer: NormFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        self.channels = tuple(scaled(c, width) for c in RESNET_WIDTHS)
        self.stem = ResNetStem(in_channels, self.channels[0], norm_layer=norm_layer)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layers = nn.ModuleList(
            resnet_layer(self.channels[i], self.channels[i + 1], n, stride=1 if i == 0 else 2, norm_layer=norm_layer)
            for i, n in enumerate(layers)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.stem(x)]
        y = self.pool(feats[0])
        for layer in self.layers:
            y = layer(y)
            feats.append(y)
        return feats


class DecoderBlock(nn.Module):
    """2x nearest up-sampling, concatenation with the skip (if any), two 3x3 conv-norm-ReLU."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int, *, norm_layer: NormFactory) -> None:
        super().__init__()
        self.conv = nn.Sequential(ConvNormAct(in_channels + skip_channels, out_channels, norm_layer=norm_layer),
                                  ConvNormAct(out_channels, out_channels, norm_layer=norm_layer))

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        if skip is not None:
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class UNetResNet34(nn.Module):
    """U-Net, ResNet-34 encoder: ``forward(x) -> logits``; ``forward_features(x) -> UNetOutput`` adds the maps."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, *, width: float = 1.0,
                 decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
                 norm_layer: NormFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels={decoder_channels}: need 5 (one per encoder scale)")
        self.encoder = ResNetEncoder(in_channels, width=width, norm_layer=norm_layer)
        enc = self.encoder.channels
        skips = (enc[3], enc[2], enc[1], enc[0], 0)  # the last block reaches full resolution, no skip there
        prev = enc[4]
        blocks = []
        for skip, out in zip(skips, decoder_channels):
            blocks.append(DecoderBlock(prev, skip, out, norm_layer=norm_layer))
            prev = out
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(prev, out_channels, 3, padding=1)
        init_resnet(self)

    def forward_features(self, x: torch.Tensor) -> UNetOutput:
        padded, (h, w) = pad_to_multiple(x, 32)
        enc = self.encoder(padded)
        skips: list[torch.Tensor | None] = [enc[3], enc[2], enc[1], enc[0], None]
        y = enc[4]
        dec = []
        for block, skip in zip(self.decoder, skips):
            y = block(y, skip)
            dec.append(y)
        return UNetOutput(self.head(y)[..., :h, :w], enc, dec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).logits


class UNetConfig(FrozenConfig):
    """Architecture record of a :class:`UNetResNet34`; ``width`` scales the encoder (1.0 = ResNet-34)."""

    in_channels: int = Field(3, ge=1)
    out_channels: int = Field(1, ge=1)
    width: float = Field(1.0, gt=0.0)
    decoder_channels: tuple[int, int, int, int, int] = (256, 128, 64, 32, 16)
    norm: NormName = "batch"

    @property
    def encoder_channels(self) -> tuple[int, ...]:
        return tuple(scaled(c, self.width) for c in RESNET_WIDTHS)

    def build(self) -> UNetResNet34:
        return UNetResNet34(self.in_channels, self.out_channels, width=self.width,
                            decoder_channels=self.decoder_channels, norm_layer=norm_factory(self.norm))
