"""The shipped segmenter: checksum, registry record, and a measured Dice floor on a held-out phantom region."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_pipeline.errors import WeightsError
from wsi_pipeline.synth import make_layout
from wsi_pipeline.train.data_seg import SegDataConfig, render_scene
from wsi_pipeline.train.metrics import detection_scores, pixel_counts
from wsi_pipeline.train.segmentation import segment_image
from wsi_pipeline.weights import WEIGHTS_DIR, default_weights, load_default

HELD_OUT_SEED = 9101  # never used for training (1-24) or validation (101-104)


def test_default_weights_verify_their_checksum(tmp_path: Path) -> None:
    path = default_weights("segmenter")
    assert path.parent == WEIGHTS_DIR and path.stat().st_size < 8_000_000  # width 1/4, float32: 6.3 MB
    copy = tmp_path / path.name
    shutil.copy(path, copy)
    shutil.copy(path.with_name(path.name + ".sha256"), tmp_path)
    assert default_weights("segmenter", directory=tmp_path) == copy
    data = bytearray(copy.read_bytes())
    data[-1] ^= 0x01  # one flipped bit
    copy.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="tampered"):
        default_weights("segmenter", directory=tmp_path)
    (tmp_path / (path.name + ".sha256")).unlink()
    with pytest.raises(WeightsError, match="sidecar"):
        default_weights("segmenter", directory=tmp_path)
    with pytest.raises(WeightsError, match="missing"):
        default_weights("segmenter", directory=tmp_path / "nowhere")
    with pytest.raises(WeightsError, match="known"):
        default_weights("no-such-model")


def test_card_names_the_checksum() -> None:
    digest = (WEIGHTS_DIR / "segmenter.safetensors.sha256").read_text().split()[0]
    card = (WEIGHTS_DIR / "segmenter.card.md").read_text()
    assert digest in card and "2.0" in card


def test_shipped_segmenter_on_a_held_out_phantom_region() -> None:
    torch.set_num_threads(1)
    model, record = load_default("segmenter")
    meta = record.metadata
    assert record.arch == "unet_resnet34" and meta["mpp"] == 2.0
    assert {"window", "overlap", "threshold", "min_area_um2", "validation"} <= set(meta)
    cfg = SegDataConfig(**record.training_config["data"])  # render exactly as in training
    layout = make_layout(4096, seed=HELD_OUT_SEED, mpp=cfg.phantom_mpp)
    # the 2048-px (level 0) window holding the most glomeruli: a 512 x 512 px region at 2 um/px
    step = cfg.factor * 64
    best = max(((x, y) for x in range(0, 2049, step) for y in range(0, 2049, step)),
               key=lambda xy: sum(xy[0] + 80 < g.cx < xy[0] + 1968 and xy[1] + 80 < g.cy < xy[1] + 1968
                                  for g in layout.glomeruli))
    scene = render_scene(layout, "PAS", config=cfg, region=(*best, 2048, 2048))
    assert scene.labels.max() >= 1
    prob = segment_image(model, scene.image, window=meta["window"], overlap=meta["overlap"], device="cpu")
    pred = prob >= meta["threshold"]
    counts = pixel_counts(pred, scene.labels)
    # the real-tissue segmenter keeps the phantom (a quarter of its training crops): the floor is the 0.85 target
    assert counts.dice >= 0.85, counts
    assert counts.accuracy >= 0.95
    det = detection_scores(pred, scene.labels, min_area=int(meta["min_area_um2"] / meta["mpp"] ** 2))
    assert det.f1 >= 0.8, det  # with 3 glomeruli: at most one miss or one false positive
    assert np.isfinite(prob).all() and 0.0 <= prob.min() <= prob.max() <= 1.0


@pytest.mark.parametrize(("name", "arch"), [("segmenter", "unet_resnet34"), ("generator-PAS-HE", "cyclegan_generator"),
                                            ("generator-PAS-MASSON", "cyclegan_generator"),
                                            ("generator-PAS-PASM", "cyclegan_generator"), ("g2c", "g2c")])
def test_every_shipped_network_loads_through_the_registry(name: str, arch: str) -> None:
    model, record = load_default(name)
    assert record.arch == arch and not model.training
    assert record.sha256 == (WEIGHTS_DIR / f"{name}.safetensors.sha256").read_text().split()[0]
