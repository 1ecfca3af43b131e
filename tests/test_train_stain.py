"""Stain data sets, CycleGAN training (losses, image pool, schedule, resume, export) and SST, on tiny sizes."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_pipeline.config import load_config
from wsi_pipeline.models.registry import load_model
from wsi_pipeline.synth import make_layout
from wsi_pipeline.synth.render import render_regions
from wsi_pipeline.train.common import RunState
from wsi_pipeline.train.cyclegan import (CycleGANTrainConfig, ImagePool, linear_decay, train_cyclegan, translate,
                                         translation_error)
from wsi_pipeline.train.data_stain import (GlomerulusCropConfig, PhantomPatchConfig, StyleShift, folder_patches,
                                           glomerulus_crops, phantom_patches, resize_square)
from wsi_pipeline.train.sst import SSTTrainConfig, train_sst

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared, oversubscribed CPU two threads mostly wait in barriers (3-10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

KIDNEY = ROOT.parent / "shared" / "data" / "kidney-stains"
TINY = GlomerulusCropConfig(size=32, slide_size=4096, source="render")


@pytest.fixture(scope="module")
def crops():
    return glomerulus_crops(TINY, seeds=[7100, 7101])


def test_glomerulus_crops_labels_shapes_and_pairing(crops) -> None:
    layouts = [make_layout(4096, seed=s) for s in (7100, 7101)]
    expected = [("noa", "ss", "gs").index(g.cls) for lay in layouts for g in lay.glomeruli]
    assert crops.images.shape == (len(expected), 4, 32, 32, 3) and crops.images.dtype == np.uint8
    assert crops.classes.tolist() == expected
    assert set(crops.seeds.tolist()) == {7100, 7101}
    # the paired stains are the same glomerulus: a single-stain crop equals that stain's slot
    he_only = glomerulus_crops(TINY.model_copy(update={"stains": ("HE",)}), seeds=[7100])
    np.testing.assert_array_equal(he_only.images[:, 0], crops.images[: len(he_only), 1])
    # and the crop is the glomerulus: centred square of side 2 r (1 + margin), read at 2 um/px
    g = layouts[0].glomeruli[0]
    half = g.radius * 1.2
    side = round(2 * half / 4)
    direct = render_regions(layouts[0], ("PAS",), round(g.cx - half), round(g.cy - half), side, side,
                            level_downsample=4)[0]
    np.testing.assert_array_equal(resize_square(direct, 32), crops.images[0, 0])


def test_tasks_relabel(crops) -> None:
    _, y = crops.task("s_vs_noa")
    assert y.tolist() == (crops.classes > 0).astype(int).tolist()
    x, y = crops.task("ss_vs_gs")
    assert len(x) == int((crops.classes > 0).sum()) and y.tolist() == (crops.classes[crops.classes > 0] == 2).tolist()
    assert crops.task("three_class")[1] is crops.classes


def test_style_shift_changes_colour_not_geometry() -> None:
    shift = StyleShift(strength=(1.8, 1.0, 0.55, 1.0, 1.0, 1.0, 1.0, 1.0), glass=(0.06, 0.0, 0.04))
    cfg = TINY.model_copy(update={"stains": ("PAS",)})
    plain = glomerulus_crops(cfg, seeds=[7100])
    shifted = glomerulus_crops(cfg.model_copy(update={"style_shift": shift}), seeds=[7100])
    assert plain.classes.tolist() == shifted.classes.tolist()
    diff = np.abs(plain.images.astype(int) - shifted.images.astype(int)).mean()
    assert diff > 5  # a visible shift, not noise
    with pytest.raises(ValueError):
        StyleShift(strength=(1.0,)).apply(__import__("wsi_pipeline.synth", fromlist=["stain_style"]).stain_style(
            "PAS", seed=1))


def test_phantom_patches_are_tissue_and_seeded() -> None:
    cfg = PhantomPatchConfig(stain="MASSON", n=5, size=32, seed=300, n_layouts=2, slide_size=4096)
    a = phantom_patches(cfg)
    assert a.shape == (5, 32, 32, 3) and a.dtype == np.uint8
    assert ((a.mean(axis=3) < 215).mean(axis=(1, 2)) >= 0.5).all()
    np.testing.assert_array_equal(a, phantom_patches(cfg))
    assert not np.array_equal(a, phantom_patches(cfg.model_copy(update={"seed": 301})))


def test_folder_patches_from_real_stains() -> None:
    p = folder_patches(KIDNEY / "orig_patch_stain_02.png", n=3, size=48, scale=0.25, seed=1)
    assert p.shape == (3, 48, 48, 3)
    assert p.std() > 5  # real tissue, not a blank crop
    with pytest.raises(ValueError):
        folder_patches(KIDNEY, n=1, size=48, pattern="*.none")


def test_image_pool_behaviour() -> None:
    passthrough = ImagePool(0)
    x = torch.randn(3, 3, 4, 4)
    assert passthrough.query(x) is x
    pool = ImagePool(4, rng=random.Random(0))
    first = torch.arange(4.0).reshape(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first) and len(pool.images) == 4  # fills, returns the new images
    old = 0
    for i in range(200):  # once full, about half the answers are older images, swapped for the new one
        new = torch.full((1, 1, 1, 1), 100.0 + i)
        old += int(pool.query(new).item() != 100.0 + i)
        assert len(pool.images) == 4
    assert 70 < old < 130


def test_linear_decay_schedule() -> None:
    rule = linear_decay(3, 4)
    assert [rule(e) for e in range(3)] == [1.0, 1.0, 1.0]
    assert rule(3) == pytest.approx(1 - 1 / 5) and rule(6) == pytest.approx(1 / 5)
    assert all(rule(e) > rule(e + 1) for e in range(2, 7))


def test_cyclegan_fast_run_resume_and_export(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "train-cyclegan-fast.yaml", CycleGANTrainConfig)
    assert (cfg.lambda_cycle, cfg.identity_ratio, cfg.lr, cfg.beta1) == (10.0, 0.5, 2e-4, 0.5)
    run = tmp_path / "run"
    result = train_cyclegan(cfg, run_dir=run, progress=False)
    history = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    assert all(math.isfinite(v) for h in history for v in h.values())
    assert history[0]["lr"] == pytest.approx(2e-4) and history[1]["lr"] == pytest.approx(2e-4 * (1 - 1 / 2))
    assert (run / "samples.png").stat().st_size > 0
    g_ab, record = load_model(result["G_AB"], expected_sha256=result["G_AB_sha256"])
    assert record.metadata["source_stain"] == "PAS" and record.metadata["target_stain"] == "HE"
    assert "heldout_ssim" in record.metadata and 0 <= result["translation"]["ssim"] <= 1
    g_ba, rec_ba = load_model(result["G_BA"])
    assert rec_ba.metadata["target_stain"] == "PAS"
    # resume: one more decay epoch continues at epoch 2, earlier epochs untouched
    longer = cfg.model_copy(update={"epochs_decay": 2})
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 1
    train_cyclegan(longer, run_dir=run, progress=False)
    again = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in again] == [0, 1, 2] and again[:2] == history
    assert RunState(run).resume(models={}) == 3


def test_translation_error_of_identity_matches_input_baseline(crops) -> None:
    ident = torch.nn.Identity()
    err = translation_error(ident, crops.images[:4, 0], crops.images[:4, 1])
    assert err["ssim"] == pytest.approx(err["ssim_input"], abs=1e-6)
    assert err["psnr"] == pytest.approx(err["psnr_input"], abs=0.2)  # round trip through [-1, 1] floats
    assert err["colour_error"] == pytest.approx(err["colour_error_input"], abs=0.5) and err["colour_error"] > 0
    assert translate(crops.images[:2, 0], ident).shape == (2, 32, 32, 3)


def test_sst_fast_run_compares_all_methods(tmp_path: Path) -> None:
    cfg = load_config(ROOT / "configs" / "train-sst-fast.yaml", SSTTrainConfig)
    result = train_sst(cfg, run_dir=tmp_path / "sst", progress=False)
    methods = set(result["comparison"])
    assert methods == {"unshifted (upper bound)", "none", "reinhard", "macenko", "histogram", "sst"}
    for m in result["comparison"].values():
        assert all(0.0 <= v <= 1.0 for v in m.values() if not math.isnan(v))
    net, record = load_model(result["model"], expected_sha256=result["sha256"])
    assert record.arch == "sst_generator"
    history = json.loads((tmp_path / "sst" / "metrics.json").read_text())
    assert len(history) == cfg.epochs and all(math.isfinite(h["loss_l1"]) for h in history)
    # resuming for one more epoch keeps the downstream classifier exactly as trained (batch-norm stats included)
    before = torch.load(tmp_path / "sst" / "checkpoint.pt", weights_only=True)["models"]["classifier"]
    again = train_sst(cfg.model_copy(update={"epochs": cfg.epochs + 1}), run_dir=tmp_path / "sst", progress=False)
    after = torch.load(tmp_path / "sst" / "checkpoint.pt", weights_only=True)["models"]["classifier"]
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert len(json.loads((tmp_path / "sst" / "metrics.json").read_text())) == cfg.epochs + 1
    assert again["comparison"]["unshifted (upper bound)"] == result["comparison"]["unshifted (upper bound)"]
