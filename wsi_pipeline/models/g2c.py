"""G2C: generators (PAS -> other stains) feeding a weight-shared multi-branch classifier with cross-stain attention.

The paper (seeds/g2c-generator-to-classifier.txt) fixes the shape but not the widths; where it is silent:
- the stem is Inception-v4's (valid convs, 384 channels at ``stem_width=32``; ``stem_width`` scales all of it);
- a down-sampling unit is 3 basic residual blocks (the first one projects to the unit's width) + 3x3 stride-2 max-pool;
- the cross-stain attention hidden size is ``C // reduction`` with ``reduction=8``: squeeze all S = M+1 stains'
  pooled responses (S*C values), FC -> ReLU -> FC back to S*C, sigmoid, excite each stain's own channels. With basic
  blocks and M = 3 this adds ~5.4% parameters, close to the paper's 5.27%.
The M+1 branches share weights, so the trunk runs once on all stains batched together: (B, S, C, H, W) ->
(B*S, C, H, W). Inputs are RGB in [0, 1]; generators work in [-1, 1] and :class:`G2C` converts.

>>> clf = G2CClassifierConfig(num_stains=4, stem_width=8, widths=(16, 32)).build()
>>> clf(torch.rand(2, 4, 3, 64, 64)).shape
torch.Size([2, 2])
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import Field, model_validator
from torch import nn

from ..config import FrozenConfig
from .blocks import BasicBlock, ConvNormAct, NormFactory, NormName, init_resnet, norm_factory, scaled
from .cyclegan import GeneratorConfig


class InceptionV4Stem(nn.Module):
    """Inception-v4 stem (Szegedy et al. 2017, Fig. 3): 299 -> 35 (224 -> 25) px, ``384 * width / 32`` channels."""

    def __init__(self, in_channels: int = 3, *, width: int = 32, norm_layer: NormFactory = nn.BatchNorm2d) -> None:
        super().__init__()

        def c(n: int) -> int:  # channel counts of the paper, scaled by width / 32
            return scaled(n, width / 32)

        def conv(i: int, o: int, k: int | tuple[int, int], s: int = 1, valid: bool = False) -> ConvNormAct:
            return ConvNormAct(i, o, k, stride=s, padding=0 if valid else None, norm_layer=norm_layer)

        self.head = nn.Sequential(conv(in_channels, c(32), 3, 2, True), conv(c(32), c(32), 3, valid=True),
                                  conv(c(32), c(64), 3))
        self.pool1 = nn.MaxPool2d(3, stride=2)
        self.conv1 = conv(c(64), c(96), 3, 2, True)
        self.branch_a = nn.Sequential(conv(c(160), c(64), 1), conv(c(64), c(96), 3, valid=True))
        self.branch_b = nn.Sequential(conv(c(160), c(64), 1), conv(c(64), c(64), (7, 1)),
                                      conv(c(64), c(64), (1, 7)), conv(c(64), c(96), 3, valid=True))
        self.conv2 = conv(2 * c(96), c(192), 3, 2, True)
        self.pool2 = nn.MaxPool2d(3, stride=2)
        self.out_channels = c(192) + 2 * c(96)
        if c(160) != c(64) + c(96):  # rounding of tiny widths must keep the concatenations consistent
            raise ValueError(f"stem width={width} gives inconsistent channel counts; use a multiple of 8")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(x)
        x = torch.cat([self.pool1(x), self.conv1(x)], dim=1)
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        return torch.cat([self.conv2(x), self.pool2(x)], dim=1)


class CrossStainAttention(nn.Module):
    """SE-style attention across stains: pooled responses of all S stains -> FC-ReLU-FC-sigmoid -> per-stain gates."""

    def __init__(self, channels: int, num_stains: int, *, reduction: int = 8) -> None:
        super().__init__()
        self.num_stains = num_stains
        hidden = max(4, channels // reduction)
        self.fc = nn.Sequential(nn.Linear(num_stains * channels, hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, num_stains * channels), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bs, c, h, w = x.shape
        s = self.num_stains
        squeezed = x.mean(dim=(2, 3)).reshape(bs // s, s * c)  # one row per sample: all its stains
        gates = self.fc(squeezed).reshape(bs, c, 1, 1)
        return x * gates


class G2CClassifier(nn.Module):
    """Weight-shared multi-stain classifier: ``forward((B, S, 3, H, W) in [0, 1]) -> (B, num_classes)`` logits."""

    def __init__(self, num_stains: int = 4, num_classes: int = 2, *, in_channels: int = 3, stem_width: int = 32,
                 widths: tuple[int, ...] = (128, 256, 512), blocks_per_unit: int = 3, attention: bool = True,
                 reduction: int = 8, dropout: float = 0.0, norm_layer: NormFactory = nn.BatchNorm2d) -> None:
        super().__init__()
        self.num_stains = num_stains
        self.stem = InceptionV4Stem(in_channels, width=stem_width, norm_layer=norm_layer)
        layers: list[nn.Module] = []
        prev = self.stem.out_channels
        for width in widths:
            for i in range(blocks_per_unit):
                layers.append(BasicBlock(prev if i == 0 else width, width, norm_layer=norm_layer))
                if attention:
                    layers.append(CrossStainAttention(width, num_stains, reduction=reduction))
            layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            prev = width
        self.trunk = nn.Sequential(*layers)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(num_stains * prev, num_classes)
        init_resnet(self)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Trunk output, (B, S * C, h, w): the stains' maps concatenated along channels."""
        if x.ndim != 5 or x.shape[1] != self.num_stains:
            raise ValueError(f"input shape {tuple(x.shape)}: expected (B, {self.num_stains}, C, H, W)")
        b, s = x.shape[:2]
        y = self.trunk(self.stem(x.flatten(0, 1)))  # shared weights: all stains in one batch
        return y.reshape(b, s * y.shape[1], *y.shape[2:])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x).mean(dim=(2, 3))))


class G2C(nn.Module):
    """Generators PAS -> each stain, then the classifier on [PAS, generated...]; differentiable end to end.

    >>> model = G2CConfig(stains=("HE",), generator=GeneratorConfig(ngf=4, n_blocks=1),
    ...                   classifier=G2CClassifierConfig(num_stains=2, stem_width=8, widths=(16,))).build()
    >>> model(torch.rand(1, 3, 64, 64)).shape
    torch.Size([1, 2])
    """

    def __init__(self, generators: Mapping[str, nn.Module], classifier: G2CClassifier) -> None:
        super().__init__()
        if classifier.num_stains != len(generators) + 1:
            raise ValueError(f"classifier has num_stains={classifier.num_stains}, "
                             f"expected {len(generators) + 1} (PAS + {len(generators)} generators)")
        self.generators = nn.ModuleDict(dict(generators))
        self.classifier = classifier
        self.generators_frozen = False

    def freeze_generators(self, frozen: bool = True) -> None:
        """Stop (or resume) training the generators; frozen generators also stay in eval mode."""
        self.generators_frozen = frozen
        self.generators.requires_grad_(not frozen)
        self.generators.train(self.training and not frozen)

    def train(self, mode: bool = True) -> G2C:
        super().train(mode)
        self.generators.train(mode and not self.generators_frozen)
        return self

    def stains(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) PAS in [0, 1] -> (B, M+1, 3, H, W): the input and each generated stain, all in [0, 1]."""
        signed = x * 2 - 1
        generated = [(g(signed) + 1) / 2 for g in self.generators.values()]
        return torch.stack([x, *generated], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.stains(x))


class G2CClassifierConfig(FrozenConfig):
    """Architecture record of a :class:`G2CClassifier` (``num_stains`` = M + 1; 1 is PAS_ONLY)."""

    num_stains: int = Field(4, ge=1)
    num_classes: int = Field(2, ge=1)
    in_channels: int = Field(3, ge=1)
    stem_width: int = Field(32, ge=8, multiple_of=8)
    widths: tuple[int, ...] = (128, 256, 512)
    blocks_per_unit: int = Field(3, ge=1)
    attention: bool = True
    reduction: int = Field(8, ge=1)
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    norm: NormName = "batch"

    def build(self) -> G2CClassifier:
        return G2CClassifier(self.num_stains, self.num_classes, in_channels=self.in_channels,
                             stem_width=self.stem_width, widths=self.widths, blocks_per_unit=self.blocks_per_unit,
                             attention=self.attention, reduction=self.reduction, dropout=self.dropout,
                             norm_layer=norm_factory(self.norm))


class G2CConfig(FrozenConfig):
    """Architecture record of a full :class:`G2C` model: one generator config shared by all target stains."""

    stains: tuple[str, ...] = ("HE", "MASSON", "PASM")
    generator: GeneratorConfig = GeneratorConfig()
    classifier: G2CClassifierConfig = G2CClassifierConfig()

    @model_validator(mode="after")
    def _stains_match(self) -> G2CConfig:
        if self.classifier.num_stains != len(self.stains) + 1:
            raise ValueError(f"classifier.num_stains={self.classifier.num_stains} but stains={self.stains} "
                             f"needs {len(self.stains) + 1}")
        if len(set(self.stains)) != len(self.stains):
            raise ValueError(f"stains={self.stains} has duplicates")
        return self

    def build(self) -> G2C:
        return G2C({s: self.generator.build() for s in self.stains}, self.classifier.build())
