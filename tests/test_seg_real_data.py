"""Real labelled data: folder reader, crop reader and folds, composites, augmentations, stain recognition, and a
short segmenter run on the real tiles (all on the files in ../shared/data, read in place)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from wsi_pipeline.config import apply_overrides, load_config
from wsi_pipeline.errors import ConfigError, DataError
from wsi_pipeline.labelled import contiguous_groups, read_instance_mask, read_labelled_folder
from wsi_pipeline.stain.recognise import recognise_stain
from wsi_pipeline.train.appearance import AppearanceConfig, augment_appearance, degrade_optics, recolour
from wsi_pipeline.train.data_seg_real import (
    RealPatchDataset,
    RealSegDataConfig,
    crop_folds,
    load_real_data,
    paste,
    read_crops,
    resample_scene,
)
from wsi_pipeline.models.registry import load_model
from wsi_pipeline.train.segmentation import DAConfig, SegmenterTrainConfig, train_segmenter

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "real-glomeruli"
TILES, CROPS = REAL / "aidpath-tiles", REAL / "aidpath-crops"
STAINS = ROOT.parent / "shared" / "data" / "kidney-stains"


@pytest.fixture(scope="module")
def crops() -> Any:
    if not CROPS.is_dir():
        pytest.fail(f"shared test data missing: {CROPS}")
    return read_crops(CROPS)


def test_labelled_folder_reads_aidpath_tiles_with_manifest_mpp() -> None:
    items = read_labelled_folder(TILES)
    assert len(items) == 24 and all(i.mpp == 0.5 and i.stain == "PAS" for i in items)
    image, labels = items[0].load()
    assert image.shape == (1024, 1024, 3) and labels.shape == (1024, 1024) and labels.max() >= 1


def test_labelled_folder_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "images" / "a.png")
    with pytest.raises(DataError, match=r"a\.png: no mask"):
        read_labelled_folder(tmp_path)
    Image.new("L", (8, 8)).save(tmp_path / "masks" / "a.png")
    with pytest.raises(DataError, match="no resolution"):
        read_labelled_folder(tmp_path)
    (tmp_path / "mpp.json").write_text(json.dumps({"mpp": 0.25, "stain": "HE"}))
    [item] = read_labelled_folder(tmp_path)
    assert (item.mpp, item.stain) == (0.25, "HE")
    assert read_labelled_folder(tmp_path, mpp=1.0)[0].mpp == 1.0


def test_instance_mask_splits_values_and_components(tmp_path: Path) -> None:
    raw = np.zeros((10, 10), np.uint8)
    raw[1:3, 1:3] = 255
    raw[6:8, 6:8] = 255  # second component of the same value
    raw[1:3, 6:9] = 7  # another value
    Image.fromarray(raw).save(tmp_path / "m.png")
    labels = read_instance_mask(tmp_path / "m.png")
    assert labels.max() == 3 and len(np.unique(labels)) == 4


def test_contiguous_folds_keep_groups_together() -> None:
    items = read_labelled_folder(TILES)
    folds = contiguous_groups(items, 5)
    assert sorted(set(folds.values())) == [0, 1, 2, 3, 4]
    names = sorted(folds)
    assert [folds[n] for n in names] == sorted(folds[n] for n in names)  # runs of consecutive ids


def test_crops_and_slide_folds(crops: Any) -> None:
    assert len(crops) == 484 and sum(c.sclerosed for c in crops) == 191
    assert {c.site for c in crops} == {"SESCAM", "SAS"}
    folds = crop_folds(crops, 5)
    for k in range(5):  # no slide in two folds (a dict has one fold per slide) and every fold holds crops
        assert any(folds[c.slide] == k for c in crops)
    data = load_real_data(RealSegDataConfig(fold=2, folders=(str(TILES),), crops=str(CROPS)), mpp=2.0)
    held = {c.slide for c in crops if folds[c.slide] == 2}
    assert held and not held & {c.slide for c in data.crops}
    assert len(data.val) + len(data.train) == 24 and data.val_names
    assert all(s.image.shape[:2] == (256, 256) for s in data.train)  # 1024 px at 0.5 -> 256 px at 2.0


def test_resample_keeps_instances() -> None:
    labels = np.zeros((40, 40), np.uint16)
    labels[4:20, 4:20], labels[22:38, 22:38] = 1, 2
    img = np.full((40, 40, 3), 200, np.uint8)
    out_img, out = resample_scene(img, labels, 4.0)
    assert out_img.shape == (10, 10, 3) and set(np.unique(out)) == {0, 1, 2}


def test_paste_adds_one_labelled_glomerulus(crops: Any) -> None:
    rng = np.random.default_rng(0)
    image = np.full((300, 300, 3), 180, np.uint8)
    labels = np.zeros((300, 300), np.uint16)
    labels[:60, :60] = 1
    assert paste(image, labels, crops[0], diameter_px=80, rng=rng)
    assert labels.max() == 2
    area = (labels == 2).sum()
    assert 0.6 * np.pi * 40**2 < area < 1.4 * np.pi * 40**2
    assert (labels[:60, :60] == 1).all()  # never pasted over an existing glomerulus
    assert (image[labels == 2] != 180).any()


def test_dataset_items_are_seeded_and_shaped(crops: Any) -> None:
    cfg = RealSegDataConfig(fold=0, folders=(str(TILES),), crops=str(CROPS))
    data = load_real_data(cfg, mpp=2.0)
    ds = RealPatchDataset(data.train, data.crops[:20], config=cfg, mpp=2.0, patch=96, glomerulus_fraction=1.0,
                          length=4, seed=3)
    a, b = ds[1], ds[1]
    assert a["image"].shape == (3, 96, 96) and a["mask"].shape == (1, 96, 96)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert a["mask"].sum() > 0  # glomerulus_fraction=1: every crop holds glomerulus pixels
    ds.set_epoch(1)
    assert not torch.equal(ds[1]["image"], a["image"])


def test_appearance_augmentations_keep_structure() -> None:
    img = np.asarray(Image.open(STAINS / "orig_patch_stain_02.png").convert("RGB"))[:128, :128]
    rng = np.random.default_rng(1)
    out = recolour(img, rng=rng)
    assert out.shape == img.shape and out.dtype == np.uint8
    # the structure stays: darkness ranks of recoloured pixels follow the original's
    assert np.corrcoef(out.mean(axis=2).ravel(), img.mean(axis=2).ravel())[0, 1] > 0.5
    blurred = degrade_optics(img, rng=np.random.default_rng(2), max_down=2.5, max_blur=1.0)
    assert blurred.shape == img.shape and np.abs(np.diff(blurred.astype(float), axis=1)).mean() <= \
        np.abs(np.diff(img.astype(float), axis=1)).mean()
    same = augment_appearance(img, rng=np.random.default_rng(5), config=AppearanceConfig())
    assert np.array_equal(same, augment_appearance(img, rng=np.random.default_rng(5), config=AppearanceConfig()))


@pytest.mark.parametrize("name, stain", [("01", "HE"), ("02", "PAS"), ("03", "SILVER"), ("16", "IHC_DAB"),
                                         ("32", "SIRIUS_RED"), ("39", "IHC_DAB"), ("13", "IHC_DAB")])
def test_stain_recognised_on_real_patches(name: str, stain: str) -> None:
    img = Image.open(STAINS / f"orig_patch_stain_{name}.png").convert("RGB").resize((250, 250), Image.BOX)
    assert recognise_stain(np.asarray(img)).stain == stain


def test_stain_recognised_on_real_pas_tiles() -> None:
    for item in read_labelled_folder(TILES)[::4]:
        img = Image.open(item.image).convert("RGB").resize((256, 256), Image.BOX)
        assert recognise_stain(np.asarray(img)).stain == "PAS", item.name


def test_overrides_change_nested_settings(tmp_path: Path) -> None:
    assert apply_overrides({"a": {"b": 1}}, ["a.b=2"], source="x") == {"a": {"b": 2}}
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["nonsense"], source="x")
    cfg = load_config(ROOT / "configs" / "train-segmenter-real.yaml", SegmenterTrainConfig,
                      overrides=["real.fold=3", "epochs=2"])
    assert cfg.real is not None and cfg.real.fold == 3 and cfg.epochs == 2


def test_segmenter_trains_on_real_tiles(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = load_config(ROOT / "configs" / "train-segmenter-real.yaml", SegmenterTrainConfig, overrides=[
        "real.fold=4", "epochs=2", "steps_per_epoch=2", "batch_size=2", "data.patch=64", f"real.folders=[{TILES}]",
        f"real.crops={CROPS}", "model={width: 0.0625, decoder_channels: [8, 8, 8, 4, 4]}", "window=128"])
    result = train_segmenter(cfg, run_dir=tmp_path / "run", progress=False)
    assert result["best_epoch"] == 1  # select_on: last
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())
    entries = history if isinstance(history, list) else history["history"]
    assert all("val_dice" in e for e in entries)  # validated on the held-out fold's tiles

    # multi-level adversarial DA from that model to real unlabelled stains: G starts from the first run's export,
    # the discriminators learn first, then G is adapted; the exported G is an adapted one
    targets = [str(STAINS / f"orig_patch_stain_{k}.png") for k in ("01", "03", "16")]
    start, _ = load_model(result["weights"])
    da = cfg.model_copy(update={"init": result["weights"], "da": DAConfig(
        mode="unsupervised", target_images=tuple(targets), target_mpp=0.5, s0=0, d0=1, disc_width=0.125)})
    adapted = train_segmenter(da, run_dir=tmp_path / "da", progress=False)
    history = json.loads((tmp_path / "da" / "metrics.json").read_text())
    assert [("phase_discriminators" in e, "phase_adversarial" in e) for e in history] == [(True, False),
                                                                                          (False, True)]
    assert history[0]["loss_De"] > 0 and "loss_seg" not in history[0] and history[1]["loss_seg"] > 0
    g0, _ = load_model(adapted["weights"])
    a, b = start.state_dict(), g0.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)  # G moved in the adversarial epoch only
    shutil.rmtree(tmp_path / "run")
    with pytest.raises(ValueError, match="target_images: not found: nope.png"):
        SegmenterTrainConfig.model_validate({**cfg.model_dump(), "da": {"mode": "unsupervised",
                                                                         "target_images": ["nope.png"]}})
