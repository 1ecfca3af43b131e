"""Stain-style transfer (SST): FusionNet style generator, DCGAN-style conditional discriminator, feature hooks.

The generator colourises a gray-normalised image (1 channel, see :func:`wsi_pipeline.stain.gray_normalize`) into
the target stain style (RGB, tanh, [-1, 1]). FusionNet (Quan et al. 2016): every level is conv -> residual block of
three convs -> conv; down-sampling by max-pool, up-sampling by stride-2 transposed conv; skips are *added* (not
concatenated). Any size works: sides are reflect-padded to a multiple of 2**depth and cropped back.

>>> g = SSTGeneratorConfig(base_channels=4, depth=2).build()
>>> g(torch.zeros(1, 1, 30, 45)).shape
torch.Size([1, 3, 30, 45])
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ..config import FrozenConfig
from .blocks import ConvNormAct, NormFactory, NormName, init_weights, norm_factory, pad_to_multiple

_lrelu = lambda: nn.LeakyReLU(0.2, inplace=True)  # noqa: E731  FusionNet and DCGAN both use leaky ReLU


class FusionResidual(nn.Module):
    """Three 3x3 conv-norm units with an identity shortcut around them."""

    def __init__(self, channels: int, *, norm_layer: NormFactory) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvNormAct(channels, channels, norm_layer=norm_layer, activation=_lrelu),
                                  ConvNormAct(channels, channels, norm_layer=norm_layer, activation=_lrelu),
                                  ConvNormAct(channels, channels, norm_layer=norm_layer, activation=None))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.body(x), 0.2)


def _level(in_channels: int, out_channels: int, norm_layer: NormFactory) -> nn.Sequential:
    """One FusionNet level: conv -> residual block -> conv."""
    return nn.Sequential(ConvNormAct(in_channels, out_channels, norm_layer=norm_layer, activation=_lrelu),
                         FusionResidual(out_channels, norm_layer=norm_layer),
                         ConvNormAct(out_channels, out_channels, norm_layer=norm_layer, activation=_lrelu))


class FusionNetGenerator(nn.Module):
    """Gray (B, 1, H, W) in [-1, 1] -> RGB (B, 3, H, W) in [-1, 1]; FusionNet with ``depth`` down-sampling levels."""

    def __init__(self, in_channels: int = 1, out_channels: int = 3, *, base_channels: int = 64, depth: int = 4,
                 norm_layer: NormFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(_level(in_channels if i == 0 else widths[i - 1], widths[i], norm_layer)
                                  for i in range(depth))
        self.bridge = _level(widths[depth - 1], widths[depth], norm_layer)
        self.up = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(widths[i + 1], widths[i], 3, stride=2, padding=1, output_padding=1),
                          norm_layer(widths[i]), _lrelu())
            for i in reversed(range(depth)))
        self.decode = nn.ModuleList(_level(widths[i], widths[i], norm_layer) for i in reversed(range(depth)))
        self.out = nn.Sequential(nn.Conv2d(widths[0], out_channels, 1), nn.Tanh())
        self.multiple = 2**depth
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, (h, w) = pad_to_multiple(x, self.multiple)
        skips = []
        for level in self.down:
            y = level(y)
            skips.append(y)
            y = F.max_pool2d(y, 2)
        y = self.bridge(y)
        for up, level, skip in zip(self.up, self.decode, reversed(skips)):
            y = level(up(y) + skip)  # FusionNet merges by summation
        return self.out(y)[..., :h, :w]


class ConditionalDCGANDiscriminator(nn.Module):
    """DCGAN discriminator conditioned on the class label (one-hot planes concatenated to the image, Mirza 2014).

    Stride-2 4x4 convs (no norm on the first, leaky ReLU 0.2) down to 4x4 at ``image_size``, then a 4x4 valid conv
    to one logit; larger inputs give a logit map, averaged to one logit per sample (sides must be >= image_size).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, *, ndf: int = 64, image_size: int = 64,
                 norm_layer: NormFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        n_down = int(math.log2(image_size)) - 2
        if n_down < 1 or 2 ** (n_down + 2) != image_size:
            raise ValueError(f"image_size={image_size}: expected a power of two >= 8")
        self.num_classes = num_classes
        self.image_size = image_size
        layers: list[nn.Module] = [nn.Conv2d(in_channels + num_classes, ndf, 4, 2, 1), _lrelu()]
        c = ndf
        for _ in range(n_down - 1):
            layers += [nn.Conv2d(c, min(2 * c, 8 * ndf), 4, 2, 1, bias=False), norm_layer(min(2 * c, 8 * ndf)),
                       _lrelu()]
            c = min(2 * c, 8 * ndf)
        layers.append(nn.Conv2d(c, 1, 4, 1, 0))
        self.model = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``labels``: (B,) class indices -> (B, 1) logits."""
        if min(x.shape[-2:]) < self.image_size:
            raise ValueError(f"input size {tuple(x.shape[-2:])} is smaller than image_size={self.image_size}")
        planes = F.one_hot(labels.long(), self.num_classes).to(x.dtype)[:, :, None, None]
        y = self.model(torch.cat([x, planes.expand(-1, -1, *x.shape[-2:])], dim=1))
        return y.mean(dim=(2, 3)).reshape(-1, 1)


@contextmanager
def capture_features(model: nn.Module, layer: str) -> Iterator[list[torch.Tensor]]:
    """Within the block, every forward of ``model`` appends the global-average-pooled output of ``layer``.

    Gradients flow through the captured features (the feature-preserving loss needs them).

    >>> net = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU())
    >>> with capture_features(net, "0") as feats:
    ...     _ = net(torch.zeros(2, 3, 8, 8))
    >>> feats[0].shape
    torch.Size([2, 5])
    """
    try:
        module = model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        raise ValueError(f"layer={layer!r} not in model; some layers: {names[:10]}") from None
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        captured.append(output.mean(dim=tuple(range(2, output.ndim))) if output.ndim > 2 else output)

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def gap_features(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """Global-average-pooled output of ``model``'s ``layer`` for input ``x`` (runs one forward pass).

    >>> gap_features(nn.Sequential(nn.Conv2d(3, 5, 3)), torch.zeros(2, 3, 8, 8), "0").shape
    torch.Size([2, 5])
    """
    with capture_features(model, layer) as feats:
        model(x)
    if not feats:
        raise ValueError(f"layer={layer!r} was not called in the forward pass")
    return feats[-1]


class SSTGeneratorConfig(FrozenConfig):
    """Architecture record of a :class:`FusionNetGenerator` (FusionNet's own widths: base 64, depth 4)."""

    in_channels: int = Field(1, ge=1)
    out_channels: int = Field(3, ge=1)
    base_channels: int = Field(64, ge=1)
    depth: int = Field(4, ge=1, le=6)
    norm: NormName = "batch"

    def build(self) -> FusionNetGenerator:
        return FusionNetGenerator(self.in_channels, self.out_channels, base_channels=self.base_channels,
                                  depth=self.depth, norm_layer=norm_factory(self.norm))


class SSTDiscriminatorConfig(FrozenConfig):
    """Architecture record of a :class:`ConditionalDCGANDiscriminator`."""

    in_channels: int = Field(3, ge=1)
    num_classes: int = Field(2, ge=1)
    ndf: int = Field(64, ge=1)
    image_size: int = Field(64, ge=8)
    norm: NormName = "batch"

    def build(self) -> ConditionalDCGANDiscriminator:
        return ConditionalDCGANDiscriminator(self.in_channels, self.num_classes, ndf=self.ndf,
                                             image_size=self.image_size, norm_layer=norm_factory(self.norm))
