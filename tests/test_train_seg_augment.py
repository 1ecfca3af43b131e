"""Self-adversarial CycleGAN augmentation: shape, range, probability, noise bound, loading generators."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from wsi_pipeline.errors import WeightsError
from wsi_pipeline.models import registry
from wsi_pipeline.train.augment import SelfAdversarialAugment, SelfAdversarialConfig


def small_generator(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return registry.define("cyclegan_generator", {"ngf": 4, "n_blocks": 1})


def test_shape_range_and_inputs_untouched() -> None:
    aug = SelfAdversarialAugment(small_generator(0), small_generator(1), p=1.0, eps=0.05)
    x = torch.rand(3, 3, 36, 44, generator=torch.Generator().manual_seed(0))
    keep = x.clone()
    y = aug(x, generator=torch.Generator().manual_seed(1))
    assert y.shape == x.shape and y.dtype == x.dtype
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert torch.equal(x, keep)
    assert all(not torch.equal(y[i], x[i]) for i in range(3))  # p = 1: every sample translated
    assert torch.equal(aug(x, generator=torch.Generator().manual_seed(1)), y)  # seeded


def test_probability() -> None:
    aug = SelfAdversarialAugment(small_generator(0), small_generator(1), p=0.5)
    x = torch.rand(400, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y = aug(x, generator=torch.Generator().manual_seed(2))
    changed = (y - x).flatten(1).abs().amax(1) > 0
    # Binomial(400, 0.5): 200 +- 10 (1 sd); the band is +- 4 sd
    assert 160 <= int(changed.sum()) <= 240
    none = SelfAdversarialAugment(small_generator(0), small_generator(1), p=0.0)
    assert torch.equal(none(x), x)


def test_noise_sigma_is_bounded_by_eps() -> None:
    # identity generators: b~ = b + noise / 2 in [0, 1] units, so 2 * (b~ - b) is the noise itself
    aug = SelfAdversarialAugment(nn.Identity(), nn.Identity(), p=1.0, eps=0.1)
    x = torch.full((64, 3, 32, 32), 0.5)
    noise = 2 * (aug(x, generator=torch.Generator().manual_seed(3)) - x)
    sd = noise.flatten(1).std(1)
    assert float(sd.min()) > 0.0
    assert float(sd.max()) <= 0.1 * 1.1  # sigma <= eps (10 % sampling slack over 3072 values)
    assert float(sd.mean()) == pytest.approx(0.05, abs=0.01)  # sigma ~ U(0, eps]: mean eps / 2
    with pytest.raises(ValueError, match="eps"):
        SelfAdversarialAugment(nn.Identity(), nn.Identity(), eps=0.0)
    with pytest.raises(ValueError, match="p="):
        SelfAdversarialAugment(nn.Identity(), nn.Identity(), p=1.5)


def test_from_config_loads_through_the_registry(tmp_path: Path) -> None:
    paths = []
    for i in range(2):
        path = tmp_path / f"g{i}.safetensors"
        registry.save_model(small_generator(i), path, arch="cyclegan_generator", config={"ngf": 4, "n_blocks": 1})
        paths.append(path)
    aug = SelfAdversarialAugment.from_config(SelfAdversarialConfig(g_ab=str(paths[0]), g_ba=str(paths[1]), p=1.0))
    assert not aug.g_ab.training and not any(p.requires_grad for p in aug.parameters())
    aug.train()
    assert not aug.g_ba.training  # stays frozen inside a module switched to training
    assert aug(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    wrong = tmp_path / "u.safetensors"
    registry.save_model(registry.define("patchgan", {"ndf": 4}), wrong, arch="patchgan", config={"ndf": 4})
    with pytest.raises(WeightsError, match="cyclegan_generator"):
        SelfAdversarialAugment.from_config(SelfAdversarialConfig(g_ab=str(wrong), g_ba=str(paths[1])))
    with pytest.raises(WeightsError, match="SHA-256"):
        SelfAdversarialAugment.from_config(SelfAdversarialConfig(g_ab=str(paths[0]), g_ba=str(paths[1]),
                                                                 g_ab_sha256="0" * 64))


def test_segmenter_step_with_the_augmentation(tmp_path: Path) -> None:
    from wsi_pipeline.train.segmentation import SegmenterTrainConfig, _Nets, _Trainer
    paths = []
    for i in range(2):
        path = tmp_path / f"g{i}.safetensors"
        registry.save_model(small_generator(i), path, arch="cyclegan_generator", config={"ngf": 4, "n_blocks": 1})
        paths.append(str(path))
    cfg = SegmenterTrainConfig.from_dict({"model": {"width": 0.0625, "decoder_channels": [16, 8, 8, 4, 4]},
                                          "augment": {"g_ab": paths[0], "g_ba": paths[1], "p": 1.0}})
    aug = SelfAdversarialAugment.from_config(cfg.augment)  # type: ignore[arg-type]
    trainer = _Trainer(cfg, _Nets(cfg, torch.device("cpu")), torch.device("cpu"), [aug])
    batch = {"image": torch.rand(2, 3, 32, 32), "mask": (torch.rand(2, 1, 32, 32) > 0.5).float()}
    x, _ = trainer._batch(batch)
    assert not torch.equal(x, batch["image"])  # p = 1: what the network sees is the translated batch
    assert torch.isfinite(torch.tensor(trainer.step("segmenter", batch, None)["loss_seg"]))


def test_stain_transfer_translates_the_chosen_samples_with_shipped_generators() -> None:
    from wsi_pipeline.train.augment import StainTransferAugment, StainTransferConfig
    from wsi_pipeline.weights import resolve_weights
    cfg = StainTransferConfig(generators=("generator-real-PAS-HE", "generator-real-PAS-CD68"), p=1.0, eps=0.0)
    aug = StainTransferAugment.from_config(cfg)
    images = torch.rand(6, 3, 32, 32)
    out = aug(images, generator=torch.Generator().manual_seed(3))
    assert out.shape == images.shape and float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    # every sample went through one of the two generators, exactly as that generator alone translates it
    gens = [registry.load_model(resolve_weights(n).path)[0].eval() for n in cfg.generators]
    with torch.no_grad():
        direct = [((g(images * 2 - 1) + 1) / 2).clamp(0, 1) for g in gens]
    for i in range(len(images)):
        assert any(torch.allclose(out[i], d[i], atol=1e-5) for d in direct)
    assert torch.equal(StainTransferAugment(gens, p=0.0)(images), images)  # p = 0: untouched
    with pytest.raises(ValueError, match="at least one"):
        StainTransferAugment([])


def test_several_partner_stains_each_sample_goes_round_one_pair(tmp_path: Path) -> None:
    pairs = [(small_generator(2 * k), small_generator(2 * k + 1)) for k in range(3)]
    aug = SelfAdversarialAugment(*pairs[0], p=1.0, eps=1e-6, more_pairs=pairs[1:])
    x = torch.rand(12, 3, 24, 24, generator=torch.Generator().manual_seed(4))
    y = aug(x, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():  # each pair's round trip without noise (eps 1e-6: below the tolerance)
        trips = [((g_ab(g_ba(x * 2 - 1)) + 1) / 2).clamp(0, 1) for g_ab, g_ba in pairs]
    used = {next(k for k, t in enumerate(trips) if torch.allclose(y[i], t[i], atol=1e-3)) for i in range(len(x))}
    assert used == {0, 1, 2}  # 12 samples, 3 pairs: all three drawn (chance of missing one: 3 * (2/3)^12 < 2 %)
    assert not aug.more_ab[0].training and not any(p.requires_grad for p in aug.parameters())
    # the config: one pair (g_ab / g_ba) or several (pairs), never both or neither
    paths = []
    for i in range(2):
        path = tmp_path / f"g{i}.safetensors"
        registry.save_model(small_generator(i), path, arch="cyclegan_generator", config={"ngf": 4, "n_blocks": 1})
        paths.append(str(path))
    two = SelfAdversarialConfig(pairs=({"g_ab": paths[0], "g_ba": paths[1]}, {"g_ab": paths[1], "g_ba": paths[0]}))
    assert len(SelfAdversarialAugment.from_config(two).pairs()) == 2
    for bad in ({}, {"g_ab": paths[0]}, {"g_ab": paths[0], "g_ba": paths[1], "pairs": two.pairs}):
        with pytest.raises(ValueError, match="either both g_ab and g_ba"):
            SelfAdversarialConfig.model_validate(bad)
