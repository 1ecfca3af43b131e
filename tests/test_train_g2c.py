"""G2C training (schedule, freezing, focal loss, augmentation, variants, metrics) and the shipped stain weights."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import wsi_pipeline.train.g2c as g2c_mod
from wsi_pipeline.models.registry import define, load_model, save_model
from wsi_pipeline.train.cyclegan import translation_error
from wsi_pipeline.train.data_stain import GlomerulusCropConfig, glomerulus_crops
from wsi_pipeline.train.g2c import (VARIANTS, ClassifierWidths, G2CTrainConfig, augment, balanced_accuracy, class_recalls, lr_at,
                                    predict, resolve_weights, roc_auc, score, train_g2c)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU two threads mostly wait in barriers (3-10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

WEIGHTS = ROOT / "wsi_pipeline" / "weights"
HELD_OUT = 7300  # layouts no shipped model was trained or measured on


@pytest.fixture(scope="module")
def tiny_generators(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("gens")
    out = {}
    for i, stain in enumerate(("HE", "MASSON", "PASM")):
        torch.manual_seed(i)
        net = define("cyclegan_generator", {"ngf": 4, "n_blocks": 1})
        path = folder / f"g-{stain}.safetensors"
        save_model(net, path, arch="cyclegan_generator", config={"ngf": 4, "n_blocks": 1})
        out[stain] = str(path)
    return out


def tiny_config(generators: dict[str, str], **update: object) -> G2CTrainConfig:
    base = G2CTrainConfig(generators=generators, epochs=2, freeze_epochs=2, batch_size=8,
                          crop=GlomerulusCropConfig(size=48, slide_size=4096, source="render"), train_seeds=(1000, 2),
                          test_seeds=(5000, 1), classifier=ClassifierWidths(stem_width=8, widths=(16,),
                                                                            blocks_per_unit=1))
    return base.model_copy(update=update)


def test_lr_schedule_values() -> None:
    cfg = G2CTrainConfig()
    assert (cfg.momentum, cfg.epochs, cfg.freeze_epochs) == (0.5, 30, 5)
    assert [lr_at(cfg, e) for e in (0, 4, 5, 10)] == pytest.approx([0.01, 0.01, 0.001, 0.0001])


def test_generators_frozen_then_trained_and_focal_loss_used(tiny_generators: dict[str, str], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[float] = []
    real_focal = g2c_mod.focal_loss

    def spy(logits: torch.Tensor, target: torch.Tensor, *, gamma: float = 2.0, **kw: object) -> torch.Tensor:
        calls.append(gamma)
        return real_focal(logits, target, gamma=gamma, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(g2c_mod, "focal_loss", spy)
    cfg = tiny_config(tiny_generators, lr_step=1)
    run = tmp_path / "run"
    frozen = train_g2c(cfg, run_dir=run, progress=False)
    assert calls and set(calls) == {2.0}
    assert frozen["generators_max_change"] == 0.0  # epochs 0 and 1 are frozen: not one generator weight moved
    first = json.loads((run / "metrics.json").read_text())
    assert [h["generators_frozen"] for h in first] == [1.0, 1.0]
    assert [h["lr"] for h in first] == pytest.approx([0.01, 0.001])
    # resume with a third epoch: generators now train jointly
    joint = train_g2c(cfg.model_copy(update={"epochs": 3}), run_dir=run, progress=False)
    history = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2] and history[2]["generators_frozen"] == 0.0
    assert history[2]["lr"] == pytest.approx(1e-4)
    assert joint["generators_max_change"] > 0.0
    assert all(math.isfinite(h["loss"]) for h in history)
    model, record = load_model(joint["model"], expected_sha256=joint["sha256"])
    assert record.arch == "g2c" and record.metadata["classes"] == ["noa", "ss", "gs"]
    assert record.metadata["crop_mpp"] == 2.0 and record.metadata["crop_size"] == 48


def test_frozen_variant_never_moves_generators(tiny_generators: dict[str, str], tmp_path: Path) -> None:
    # the shipped recipe's data path: crops read from written phantom slides (cached next to the crops)
    crop = GlomerulusCropConfig(size=48, slide_size=2048, stains=("PAS", "HE"))
    cfg = tiny_config(tiny_generators, epochs=2, freeze_epochs=0, joint=False, variant="PAS_HE", task="s_vs_noa",
                      crop=crop, train_seeds=(1000, 3), cache_dir=str(tmp_path / "cache"))
    result = train_g2c(cfg, run_dir=tmp_path / "frozen", progress=False)
    assert result["generators_max_change"] == 0.0
    assert set(result["translation_after"]) == {"HE"} and "auc" in result["test"]
    slides = sorted(p.name for p in (tmp_path / "cache" / "phantom-slides").rglob("*.svs"))
    assert slides == ["phantom-s1000-PAS.svs", "phantom-s1001-PAS.svs", "phantom-s1002-PAS.svs",
                      "phantom-s5000-HE.svs", "phantom-s5000-PAS.svs"]  # training needs the PAS input only


def test_variants_build_the_right_model(tiny_generators: dict[str, str]) -> None:
    for variant, (stains, attention) in VARIANTS.items():
        model, arch, digests = g2c_mod.build_model(tiny_config(tiny_generators, variant=variant))
        assert tuple(model.generators) == stains and set(digests) == set(stains)
        assert arch.classifier.num_stains == len(stains) + 1 and arch.classifier.attention == attention
        assert model(torch.rand(2, 3, 48, 48)).shape == (2, 3)
    ss_gs = tiny_config(tiny_generators, task="ss_vs_gs").model_config_record(g2c_mod.GeneratorConfig())
    assert ss_gs.classifier.num_classes == 2
    model, _, _ = g2c_mod.build_model(tiny_config(tiny_generators, variant="PAS_PASM"))
    ref, _ = load_model(tiny_generators["PASM"])
    for k, v in ref.state_dict().items():  # initialised from the CycleGAN checkpoint
        assert torch.equal(model.generators["PASM"].state_dict()[k], v)


def test_augment_flips_and_jitter() -> None:
    x = torch.rand(6, 3, 8, 8)
    g = torch.Generator().manual_seed(0)
    flipped = augment(x, brightness=0.0, saturation=0.0, generator=g)
    for a, b in zip(x, flipped):
        assert any(torch.allclose(f, b, atol=1e-6) for f in (a, a.flip(-1), a.flip(-2), a.flip(-1).flip(-2)))
    jittered = augment(x, brightness=0.5, saturation=0.5, generator=g)
    assert jittered.min() >= 0 and jittered.max() <= 1 and not torch.allclose(jittered, x)


def test_metrics_small_arrays() -> None:
    truth = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 0, 0, 0, 1])
    assert balanced_accuracy(pred, truth, num_classes=2) == pytest.approx(0.75)  # accuracy would be 0.833
    assert roc_auc(np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9]), truth) == 1.0
    assert roc_auc(np.array([0.5, 0.5, 0.5, 0.5, 0.5, 0.5]), truth) == 0.5
    assert class_recalls(pred, truth, ("noa", "s")) == {"recall_noa": 1.0, "recall_s": 0.5}


def test_resolve_weights_names() -> None:
    assert resolve_weights("generator-PAS-HE") == WEIGHTS / "generator-PAS-HE.safetensors"
    assert resolve_weights("runs/x.safetensors") == Path("runs/x.safetensors")


# ---- shipped weights: checksum, card, and a measured floor on held-out phantom layouts ----

def _card_sha(name: str) -> str:
    card = (WEIGHTS / f"{name}.card.md").read_text()
    match = re.search(r"sha256[^0-9a-f]*([0-9a-f]{64})", card, re.IGNORECASE)
    assert match, f"{name}.card.md has no sha256"
    return match.group(1)


@pytest.fixture(scope="module")
def held_out() -> object:
    """Rendered paired crops (the generator cards' translation errors were measured on these)."""
    return glomerulus_crops(GlomerulusCropConfig(size=64, mpp=2.0, margin=0.2, source="render"),
                            seeds=[HELD_OUT, HELD_OUT + 1])


@pytest.fixture(scope="module")
def held_out_slides(tmp_path_factory: pytest.TempPathFactory) -> object:
    """PAS crops read from written held-out phantom slides with the slide job's crop function and the shipped
    classifier's recorded crop settings (what G2C sees in the job)."""
    _, record = load_model(WEIGHTS / "g2c.safetensors", expected_sha256=_card_sha("g2c"))
    m = record.metadata
    crop = GlomerulusCropConfig(size=m["crop_size"], mpp=m["crop_mpp"], margin=m["crop_margin"], stains=("PAS",),
                                slide_size=4096)
    return glomerulus_crops(crop, seeds=range(HELD_OUT, HELD_OUT + 4), slide_dir=tmp_path_factory.mktemp("slides"))


# Floors sit below what the shipped generators measured on these two layouts (colour-error ratio 0.36 / 0.81 /
# 0.56, SSIM 0.52 / 0.45 / 0.47): at the CPU training budget only H&E also beats the untranslated PSNR (see cards).
COLOUR_RATIO = {"HE": 0.6, "MASSON": 0.95, "PASM": 0.75}


@pytest.mark.parametrize("stain", ["HE", "MASSON", "PASM"])
def test_shipped_generators_load_and_translate(stain: str, held_out) -> None:
    name = f"generator-PAS-{stain}"
    net, record = load_model(WEIGHTS / f"{name}.safetensors", expected_sha256=_card_sha(name))
    assert record.arch == "cyclegan_generator" and record.metadata["target_stain"] == stain
    assert record.metadata["mpp"] == 2.0
    idx = held_out.stains.index(stain)
    err = translation_error(net, held_out.images[:, 0], held_out.images[:, idx])
    # measured floors: the translation's colours are closer to the true paired stain than the PAS input's
    assert err["colour_error"] < COLOUR_RATIO[stain] * err["colour_error_input"]
    assert err["ssim"] > 0.35
    if stain == "HE":
        assert err["psnr"] > err["psnr_input"]
    assert (WEIGHTS / f"{name}.safetensors").stat().st_size < 4_000_000


def test_shipped_g2c_loads_and_classifies_held_out(held_out_slides) -> None:
    model, record = load_model(WEIGHTS / "g2c.safetensors", expected_sha256=_card_sha("g2c"))
    assert record.arch == "g2c" and record.metadata["classes"] == ["noa", "ss", "gs"]
    assert record.metadata["crop_size"] == 128 and record.metadata["crop_mpp"] == 1.0
    assert record.metadata["train_sites"] and record.metadata["temperature"] > 0  # trained on real glomeruli
    probs = predict(model, held_out_slides.images[:, 0], device=torch.device("cpu"))
    assert probs.shape == (len(held_out_slides), 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    scores = score(probs, held_out_slides, "three_class")
    # the shipped G2C learnt GS vs not-GS from real glomeruli (real data has no segmental label, so its ss split is
    # the phantom model's it started from and is not validated: see its card); on the phantom it must still rank
    # sclerosed above normal glomeruli and find the globally sclerosed ones. Its decision threshold is fitted on real
    # hospitals and shifts on this synthetic domain, as it does between real hospitals: the session-5 file (trained
    # with hospital variation) measured ranking AUC 1.00, GS recall 1.00 but normal recall 0.71 here (session 4's
    # file: 0.93, 1.00, 1.00), so the decision-level floor on normal glomeruli only rules out a collapse.
    assert scores["s_vs_noa_auc"] >= 0.9 and scores["recall_gs"] >= 0.85 and scores["recall_noa"] >= 0.5
