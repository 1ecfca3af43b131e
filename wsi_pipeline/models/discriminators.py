"""Discriminators of the multi-level adversarial segmentation paper: D_e, D_d (multi-level) and D_s (shape).

D_e mirrors the ResNet-34 encoder: it starts from the finest encoder map and, after each of its own stride-2 ResNet
stages, concatenates the segmentation network's map of the same size onto its own (no cropping, nothing lost), then
global-average-pools to one source-vs-target logit. D_d does the same over the decoder maps (finest first). D_s is a
ResNet-18 on masks (optionally with the image concatenated) telling predicted from ground-truth masks.

>>> from .unet import UNetConfig
>>> unet_cfg = UNetConfig(width=0.125, decoder_channels=(16, 8, 8, 4, 4))
>>> out = unet_cfg.build().forward_features(torch.zeros(2, 3, 64, 64))
>>> d_e = MultiLevelDiscriminatorConfig.for_encoder(unet_cfg, width=0.25).build()
>>> d_e(out.encoder).shape
torch.Size([2, 1])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from pydantic import Field, model_validator
from torch import nn

from ..config import FrozenConfig
from .blocks import NormFactory, NormName, ResNetStem, init_resnet, norm_factory, resnet_layer, scaled
from .unet import RESNET34_LAYERS, RESNET_WIDTHS, UNetConfig


class MultiLevelDiscriminator(nn.Module):
    """Maps at successive 2x scales in -> one logit per sample; ``in_channels`` lists their channels, finest first."""

    def __init__(self, in_channels: Sequence[int], *, blocks: Sequence[int] | None = None, width: float = 1.0,
                 norm_layer: NormFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"in_channels={tuple(in_channels)}: need at least two feature maps")
        blocks = tuple(blocks) if blocks is not None else (2,) * (len(in_channels) - 1)
        if len(blocks) != len(in_channels) - 1:
            raise ValueError(f"blocks={blocks}: need {len(in_channels) - 1} stages for {len(in_channels)} maps")
        self.in_channels = tuple(in_channels)
        stages = []
        prev = in_channels[0]
        for k, n in enumerate(blocks, start=1):
            own = scaled(in_channels[k], width)  # mirror the width the segmentation net has at that scale
            stages.append(resnet_layer(prev, own, n, stride=2, norm_layer=norm_layer))
            prev = own + in_channels[k]
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(prev, 1)
        init_resnet(self)

    def forward(self, maps: Sequence[torch.Tensor]) -> torch.Tensor:
        """``maps`` in any order (sorted finest first here, so ``UNetOutput.decoder`` can be passed as is)."""
        maps = sorted(maps, key=lambda t: -t.shape[-1] * t.shape[-2])
        if len(maps) != len(self.in_channels) or any(m.shape[1] != c for m, c in zip(maps, self.in_channels)):
            raise ValueError(f"got maps with channels {[m.shape[1] for m in maps]}, expected {list(self.in_channels)}")
        x = maps[0]
        for stage, skip in zip(self.stages, maps[1:]):
            x = stage(x)
            if x.shape[-2:] != skip.shape[-2:]:
                raise ValueError(f"feature map of size {tuple(skip.shape[-2:])} does not match the discriminator's "
                                 f"{tuple(x.shape[-2:])}: maps must halve exactly at each level")
            x = torch.cat([x, skip], dim=1)
        return self.fc(x.mean(dim=(2, 3)))


class ShapeDiscriminator(nn.Module):
    """ResNet-18 on a mask (``in_channels=1``) or mask + image (``1 + 3``): one real/fake logit per sample."""

    def __init__(self, in_channels: int = 1, *, width: float = 1.0, layers: Sequence[int] = (2, 2, 2, 2),
                 norm_layer: NormFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        ch = tuple(scaled(c, width) for c in RESNET_WIDTHS)
        self.stem = nn.Sequential(ResNetStem(in_channels, ch[0], norm_layer=norm_layer),
                                  nn.MaxPool2d(3, stride=2, padding=1))
        self.layers = nn.Sequential(*(resnet_layer(ch[i], ch[i + 1], n, stride=1 if i == 0 else 2,
                                                   norm_layer=norm_layer) for i, n in enumerate(layers)))
        self.fc = nn.Linear(ch[len(layers)], 1)
        init_resnet(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layers(self.stem(x)).mean(dim=(2, 3)))


class MultiLevelDiscriminatorConfig(FrozenConfig):
    """Architecture record of a :class:`MultiLevelDiscriminator`; see :meth:`for_encoder` / :meth:`for_decoder`."""

    in_channels: tuple[int, ...]
    blocks: tuple[int, ...] | None = None
    width: float = Field(1.0, gt=0.0)
    norm: NormName = "batch"

    @model_validator(mode="after")
    def _check(self) -> MultiLevelDiscriminatorConfig:
        if len(self.in_channels) < 2:
            raise ValueError("in_channels needs at least two feature maps")
        if self.blocks is not None and len(self.blocks) != len(self.in_channels) - 1:
            raise ValueError(f"blocks needs {len(self.in_channels) - 1} entries, got {len(self.blocks)}")
        return self

    @classmethod
    def for_encoder(cls, unet: UNetConfig, *, width: float = 1.0) -> MultiLevelDiscriminatorConfig:
        """D_e for a U-Net: mirrors ResNet-34's layers [3, 4, 6, 3] over the 5 encoder maps."""
        return cls(in_channels=unet.encoder_channels, blocks=RESNET34_LAYERS, width=width)

    @classmethod
    def for_decoder(cls, unet: UNetConfig, *, width: float = 1.0) -> MultiLevelDiscriminatorConfig:
        """D_d for a U-Net: the same over the 5 decoder maps, finest (full resolution) first."""
        return cls(in_channels=tuple(reversed(unet.decoder_channels)), blocks=RESNET34_LAYERS, width=width)

    def build(self) -> MultiLevelDiscriminator:
        return MultiLevelDiscriminator(self.in_channels, blocks=self.blocks, width=self.width,
                                       norm_layer=norm_factory(self.norm))


class ShapeDiscriminatorConfig(FrozenConfig):
    """Architecture record of a :class:`ShapeDiscriminator` (``in_channels`` 1: mask; 4: mask + RGB image)."""

    in_channels: int = Field(1, ge=1)
    width: float = Field(1.0, gt=0.0)
    layers: tuple[int, int, int, int] = (2, 2, 2, 2)
    norm: NormName = "batch"

    def build(self) -> ShapeDiscriminator:
        return ShapeDiscriminator(self.in_channels, width=self.width, layers=self.layers,
                                  norm_layer=norm_factory(self.norm))
