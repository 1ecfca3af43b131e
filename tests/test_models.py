"""Networks: shapes at awkward sizes, weight sharing, attention, gradient flow, determinism, parameter counts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wsi_pipeline.models import (G2CClassifierConfig, G2CConfig, GeneratorConfig, MultiLevelDiscriminatorConfig,
                                 PatchGANConfig, SSTDiscriminatorConfig, SSTGeneratorConfig, ShapeDiscriminatorConfig,
                                 UNetConfig, capture_features, count_parameters, define, gap_features)
from wsi_pipeline.models.cyclegan import ResnetBlock

TINY_GEN = GeneratorConfig(ngf=4, n_blocks=1)
TINY_CLF = dict(stem_width=8, widths=(16, 24), blocks_per_unit=2)
TINY_UNET = UNetConfig(width=0.125, decoder_channels=(16, 8, 8, 4, 4))


@pytest.mark.parametrize("size", [(100, 132), (101, 67), (64, 64), (5, 7)])
def test_generator_keeps_any_input_size(size):
    g = TINY_GEN.build()
    y = g(torch.rand(2, 3, *size) * 2 - 1)
    assert y.shape == (2, 3, *size)
    assert y.abs().max() <= 1.0  # tanh


def test_generator_architecture_follows_g2c():
    g = GeneratorConfig(ngf=8).build()
    assert sum(isinstance(m, ResnetBlock) for m in g.modules()) == 6
    assert sum(isinstance(m, ResnetBlock) for m in GeneratorConfig(ngf=8, n_blocks=9).build().modules()) == 9
    ups = [m for m in g.modules() if isinstance(m, nn.ConvTranspose2d)]
    downs = [m for m in g.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
    assert [(m.kernel_size, m.stride) for m in ups] == [((4, 4), (2, 2))] * 2
    assert [m.kernel_size for m in downs] == [(3, 3)] * 2
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in g.modules()) == 3 + 2 + 2 * 6


def test_patchgan_has_a_70_pixel_receptive_field():
    d = PatchGANConfig(ndf=8, norm="none").build()  # instance norm would couple all pixels
    x = torch.rand(1, 3, 256, 256, requires_grad=True)
    out = d(x)
    assert out.shape == (1, 1, 30, 30)
    out[0, 0, 15, 15].backward()
    rows = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 3))).flatten()
    cols = torch.nonzero(x.grad.abs().sum(dim=(0, 1, 2))).flatten()
    assert rows.max() - rows.min() + 1 == 70 and cols.max() - cols.min() + 1 == 70


@pytest.mark.parametrize("num_stains", [1, 4])
def test_classifier_shapes_for_pas_only_and_all_stains(num_stains):
    clf = G2CClassifierConfig(num_stains=num_stains, num_classes=3, **TINY_CLF).build()
    assert clf(torch.rand(2, num_stains, 3, 75, 75)).shape == (2, 3)
    with pytest.raises(ValueError, match="expected"):
        clf(torch.rand(2, num_stains + 1, 3, 75, 75))


def test_branches_share_weights_and_attention_mixes_stains():
    torch.manual_seed(0)
    x = torch.rand(1, 3, 3, 64, 64)
    swapped = x[:, [1, 0, 2]]
    plain = G2CClassifierConfig(num_stains=3, attention=False, **TINY_CLF).build().eval()
    with torch.no_grad():
        f, g = plain.features(x), plain.features(swapped)
    c = f.shape[1] // 3  # one shared trunk: swapping two stains swaps their feature blocks exactly
    assert torch.allclose(f[:, :c], g[:, c:2 * c], atol=1e-5) and torch.allclose(f[:, 2 * c:], g[:, 2 * c:], atol=1e-5)

    attn = G2CClassifierConfig(num_stains=3, attention=True, **TINY_CLF).build().eval()
    changed = x.clone()
    changed[:, 2] = torch.rand(1, 3, 64, 64)  # only the third stain differs
    with torch.no_grad():
        a, b = attn.features(x), attn.features(changed)
        p, q = plain.features(x), plain.features(changed)
    assert not torch.allclose(a[:, :c], b[:, :c])  # stain 0's features react to stain 2 through attention
    assert torch.allclose(p[:, :c], q[:, :c])  # ...and do not without it


def _tiny_g2c() -> nn.Module:
    cfg = G2CConfig(stains=("HE", "MASSON"), generator=TINY_GEN,
                    classifier=G2CClassifierConfig(num_stains=3, **TINY_CLF))
    return cfg.build()


def _grads(module: nn.Module) -> list[torch.Tensor | None]:
    return [p.grad for p in module.parameters()]


def test_gradients_reach_generators_only_when_unfrozen():
    torch.manual_seed(0)
    model = _tiny_g2c().train()
    x = torch.rand(2, 3, 64, 64)
    model.freeze_generators(True)
    model(x).sum().backward()
    assert all(g is None for g in _grads(model.generators))
    assert any(g is not None and g.abs().sum() > 0 for g in _grads(model.classifier))
    assert not model.generators.training and model.classifier.training

    model.zero_grad(set_to_none=True)
    model.freeze_generators(False)
    model.train()
    model(x).sum().backward()
    for name in ("HE", "MASSON"):
        grads = _grads(model.generators[name])
        assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0


def test_g2c_feeds_classifier_with_inputs_in_unit_range():
    model = _tiny_g2c().eval()
    with torch.no_grad():
        stains = model.stains(torch.rand(2, 3, 32, 32))
    assert stains.shape == (2, 3, 3, 32, 32) and stains.min() >= 0 and stains.max() <= 1
    with pytest.raises(ValueError, match="num_stains"):
        G2CConfig(stains=("HE",), classifier=G2CClassifierConfig(num_stains=4))


def test_same_seed_same_network_and_output():
    def run() -> torch.Tensor:
        torch.manual_seed(123)
        model = _tiny_g2c().eval()
        with torch.no_grad():
            return model(torch.rand(1, 3, 48, 48))

    assert torch.equal(run(), run())
    torch.manual_seed(1)
    a = TINY_GEN.build()
    torch.manual_seed(2)
    b = TINY_GEN.build()
    assert not torch.equal(a.model[1].weight, b.model[1].weight)


def test_parameter_counts_and_attention_overhead():
    with torch.device("meta"):  # full-size networks, counted without allocating memory
        counts = {
            "generator (ngf 64, 6 blocks)": count_parameters(GeneratorConfig().build()),
            "generator (ngf 64, 9 blocks)": count_parameters(GeneratorConfig(n_blocks=9).build()),
            "patchgan 70x70": count_parameters(PatchGANConfig().build()),
            "g2c classifier M=3 +attention": count_parameters(G2CClassifierConfig(num_stains=4).build()),
            "g2c classifier M=3": count_parameters(G2CClassifierConfig(num_stains=4, attention=False).build()),
            "g2c classifier M=0 (PAS_ONLY)": count_parameters(G2CClassifierConfig(num_stains=1,
                                                                                  attention=False).build()),
            "g2c full (3 generators + classifier)": count_parameters(G2CConfig().build()),
            "unet resnet34": count_parameters(UNetConfig().build()),
            "D_e": count_parameters(MultiLevelDiscriminatorConfig.for_encoder(UNetConfig()).build()),
            "D_d": count_parameters(MultiLevelDiscriminatorConfig.for_decoder(UNetConfig()).build()),
            "D_s resnet18": count_parameters(ShapeDiscriminatorConfig().build()),
            "sst fusionnet": count_parameters(SSTGeneratorConfig().build()),
            "sst discriminator (64 px)": count_parameters(SSTDiscriminatorConfig().build()),
        }
    overhead = counts["g2c classifier M=3 +attention"] / counts["g2c classifier M=3"] - 1
    print()
    for name, n in counts.items():
        print(f"  {name:40s} {n:>12,d}")
    print(f"  cross-stain attention overhead (M=3): {overhead:.2%} (paper: 5.27%)")
    assert 0.03 < overhead < 0.08
    assert counts["g2c full (3 generators + classifier)"] == (3 * counts["generator (ngf 64, 6 blocks)"]
                                                               + counts["g2c classifier M=3 +attention"])
    assert 11_000_000 < counts["generator (ngf 64, 9 blocks)"] < 12_000_000  # CycleGAN's ~11.4 M (+4x4 deconvs)
    assert counts["patchgan 70x70"] == 2_764_737  # the CycleGAN reference's count
    assert 24_000_000 < counts["unet resnet34"] < 25_000_000  # ResNet-34 (21.3 M w/o FC) + decoder
    assert 11_000_000 < counts["D_s resnet18"] < 11_300_000  # ResNet-18 (11.2 M) with a 1-channel input


@pytest.mark.parametrize("size", [(64, 64), (70, 90), (33, 31)])
def test_unet_logits_at_input_size_and_features(size):
    net = TINY_UNET.build().eval()
    with torch.no_grad():
        out = net.forward_features(torch.rand(1, 3, *size))
    assert out.logits.shape == (1, 1, *size)
    padded = [-(-s // 32) * 32 for s in size]
    assert [f.shape[-1] for f in out.encoder] == [padded[1] // 2**k for k in range(1, 6)]
    assert [f.shape[-1] for f in out.decoder] == [padded[1] // 2**k for k in range(4, -1, -1)]
    assert [f.shape[1] for f in out.encoder] == list(TINY_UNET.encoder_channels)
    assert torch.equal(net(torch.zeros(1, 3, *size)), net.forward_features(torch.zeros(1, 3, *size)).logits)


def test_multilevel_and_shape_discriminators_on_unet_features():
    net = TINY_UNET.build()
    x = torch.rand(2, 3, 64, 96)
    out = net.forward_features(x)
    d_e = MultiLevelDiscriminatorConfig.for_encoder(TINY_UNET, width=0.25).build()
    d_d = MultiLevelDiscriminatorConfig.for_decoder(TINY_UNET, width=0.25).build()
    d_s = ShapeDiscriminatorConfig(in_channels=4, width=0.125).build()
    assert d_e(out.encoder).shape == (2, 1) and d_d(out.decoder).shape == (2, 1)
    assert d_s(torch.cat([torch.sigmoid(out.logits), x], dim=1)).shape == (2, 1)
    d_e(out.encoder).sum().backward()  # the adversarial signal reaches the segmentation encoder
    assert net.encoder.stem[0][0].weight.grad.abs().sum() > 0
    assert net.decoder[0].conv[0][0].weight.grad is None  # D_e never looks at the decoder
    with pytest.raises(ValueError, match="channels"):
        d_e(out.decoder)
    cropped = list(out.encoder)
    cropped[2] = cropped[2][..., :-2]  # a cropped map no longer matches the discriminator's own map
    with pytest.raises(ValueError, match="halve"):
        d_e(cropped)


def test_sst_generator_discriminator_and_feature_hook():
    g = SSTGeneratorConfig(base_channels=4, depth=3).build()
    gray = torch.rand(2, 1, 45, 50) * 2 - 1
    rgb = g(gray)
    assert rgb.shape == (2, 3, 45, 50) and rgb.abs().max() <= 1
    d = SSTDiscriminatorConfig(ndf=8, image_size=32, num_classes=2).build().eval()
    img = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        same = d(img, torch.tensor([0, 0]))
        other = d(img, torch.tensor([1, 1]))
    assert same.shape == (2, 1) and not torch.allclose(same, other)  # the label conditions the output
    with pytest.raises(ValueError, match="image_size"):
        d(torch.rand(1, 3, 16, 16), torch.tensor([0]))

    classifier = define("unet_resnet34", TINY_UNET).eval()  # any network works as a feature extractor
    feats = gap_features(classifier, rgb, "encoder.layers.3")
    assert feats.shape == (2, TINY_UNET.encoder_channels[-1])
    feats.sum().backward()  # gradients flow through the hook into the generator
    assert g.out[0].weight.grad is not None
    with capture_features(classifier, "encoder.layers.1") as captured:
        classifier(torch.rand(1, 3, 64, 64))
        classifier(torch.rand(1, 3, 64, 64))
    assert len(captured) == 2
    classifier(torch.rand(1, 3, 64, 64))
    assert len(captured) == 2  # hook removed on exit
    with pytest.raises(ValueError, match="layer"):
        gap_features(classifier, rgb, "no.such.layer")
