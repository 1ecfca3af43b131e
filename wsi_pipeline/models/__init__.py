"""The papers' networks in plain PyTorch, and a registry that saves/loads them with their architecture record.

>>> net = define("unet_resnet34", {"width": 0.125, "decoder_channels": [16, 8, 8, 4, 4]})
>>> net(torch.zeros(1, 3, 64, 64)).shape
torch.Size([1, 1, 64, 64])
"""

import torch  # noqa: F401  (for the docstring example)

from .blocks import BasicBlock, ConvNormAct, count_parameters, norm_factory
from .cyclegan import GeneratorConfig, PatchGANConfig, PatchGANDiscriminator, ResnetGenerator
from .discriminators import (MultiLevelDiscriminator, MultiLevelDiscriminatorConfig, ShapeDiscriminator,
                             ShapeDiscriminatorConfig)
from .g2c import G2C, CrossStainAttention, G2CClassifier, G2CClassifierConfig, G2CConfig, InceptionV4Stem
from .registry import ARCHITECTURES, ModelRecord, define, load_model, parse_config, save_model
from .sst import (ConditionalDCGANDiscriminator, FusionNetGenerator, SSTDiscriminatorConfig, SSTGeneratorConfig,
                  capture_features, gap_features)
from .unet import UNetConfig, UNetOutput, UNetResNet34

__all__ = [
    "ARCHITECTURES", "BasicBlock", "ConditionalDCGANDiscriminator", "ConvNormAct", "CrossStainAttention",
    "FusionNetGenerator", "G2C", "G2CClassifier", "G2CClassifierConfig", "G2CConfig", "GeneratorConfig",
    "InceptionV4Stem", "ModelRecord", "MultiLevelDiscriminator", "MultiLevelDiscriminatorConfig", "PatchGANConfig",
    "PatchGANDiscriminator", "ResnetGenerator", "SSTDiscriminatorConfig", "SSTGeneratorConfig", "ShapeDiscriminator",
    "ShapeDiscriminatorConfig", "UNetConfig", "UNetOutput", "UNetResNet34", "capture_features", "count_parameters",
    "define", "gap_features", "load_model", "norm_factory", "parse_config", "save_model",
]
