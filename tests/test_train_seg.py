"""Segmenter training: metrics on literal arrays, phantom patch data, the training loop, resume, DA phases."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from shapely.geometry import Point, box

from wsi_pipeline.config import load_config
from wsi_pipeline.errors import ConfigError
from wsi_pipeline.synth import make_layout
from wsi_pipeline.train.data_seg import SegDataConfig, SegPatchDataset, area_reduce, render_scenes
from wsi_pipeline.train.metrics import (
    DetectionScores,
    PixelCounts,
    detection_scores,
    label_iou,
    pixel_counts,
    polygon_detection_scores,
)
from wsi_pipeline.train.segmentation import DAConfig, SegmenterTrainConfig, _loader, _Nets, _Trainer, train_segmenter

ROOT = Path(__file__).resolve().parents[1]
FAST = ROOT / "configs" / "train-segmenter-fast.yaml"
DA_FAST = ROOT / "configs" / "train-segmenter-da-fast.yaml"


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    """Tiny networks: one thread avoids OpenMP spin-waits on a busy 2-core CI host (2-4x faster, measured)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# -- metrics ------------------------------------------------------------------------------------------------------
def test_pixel_metrics_on_literal_arrays() -> None:
    pred = np.array([[1, 1, 0, 0],
                     [1, 1, 0, 0],
                     [0, 0, 0, 1]], bool)
    truth = np.array([[1, 1, 1, 0],
                      [1, 0, 0, 0],
                      [0, 0, 0, 0]], bool)
    c = pixel_counts(pred, truth)
    assert (c.tp, c.fp, c.fn, c.tn) == (3, 2, 1, 6)
    assert c.dice == pytest.approx(6 / 9)
    assert c.f1 == c.dice
    assert c.accuracy == pytest.approx(9 / 12)
    assert c.precision == pytest.approx(3 / 5)
    assert c.recall == pytest.approx(3 / 4)
    assert c.iou == pytest.approx(3 / 6)
    # pooling adds counts: the pooled Dice is not the mean of the two Dice values
    both = c + pixel_counts(truth, truth)
    assert both.dice == pytest.approx((6 + 8) / (9 + 8))
    assert PixelCounts().dice == 1.0  # nothing to find, nothing found
    assert pixel_counts(np.zeros((2, 2)), np.ones((2, 2))).dice == 0.0
    with pytest.raises(ValueError, match="shape"):
        pixel_counts(np.zeros((2, 2)), np.zeros((2, 3)))


def test_detection_f1_at_iou_half() -> None:
    truth = np.zeros((20, 40), np.uint16)
    truth[2:8, 2:8] = 1      # found exactly
    truth[2:8, 20:26] = 2    # found with IoU 24/36 (>= 0.5)
    truth[12:18, 2:8] = 3    # only a sliver predicted: IoU 6/36, a miss
    pred = np.zeros((20, 40), bool)
    pred[2:8, 2:8] = True
    pred[2:6, 20:26] = True
    pred[12:13, 2:8] = True
    pred[14:18, 30:36] = True  # false positive, no truth there
    d = detection_scores(pred, truth)
    assert (d.tp, d.fp, d.fn) == (2, 2, 1)
    assert d.precision == pytest.approx(0.5)
    assert d.recall == pytest.approx(2 / 3)
    assert d.f1 == pytest.approx(4 / 7)
    assert sorted(d.ious) == pytest.approx([24 / 36, 1.0])
    # dropping predicted components under 10 px removes the sliver (6 px) -> still a miss, one fewer FP
    d2 = detection_scores(pred, truth, min_area=10)
    assert (d2.tp, d2.fp, d2.fn) == (2, 1, 1)
    assert DetectionScores().f1 == 1.0
    iou = label_iou(detection_labels(pred), truth)
    assert iou.shape == (4, 3)
    assert iou[0, 0] == 1.0 and iou[3].max() == 0.0  # components in raster order; the last one is the FP


def detection_labels(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage
    return ndimage.label(mask, structure=np.ones((3, 3)))[0]


def test_detection_touching_truth_instances_stay_apart() -> None:
    truth = np.zeros((10, 20), np.uint16)
    truth[:, :10], truth[:, 10:] = 1, 2
    merged = np.ones((10, 20), bool)  # one predicted blob covering both: IoU 0.5 with each
    d = detection_scores(merged, truth)
    assert (d.tp, d.fp, d.fn) == (1, 0, 1)  # one-to-one: the blob can match only one of them


def test_polygon_detection() -> None:
    truth = [Point(50, 50).buffer(20), Point(150, 50).buffer(20), box(300, 300, 310, 310)]
    pred = [Point(52, 50).buffer(20), Point(150, 50).buffer(8), box(300, 300, 310, 310), box(0, 200, 5, 205)]
    d = polygon_detection_scores(pred, truth)
    assert (d.tp, d.fp, d.fn) == (2, 2, 1)
    assert polygon_detection_scores([], truth).recall == 0.0
    with pytest.raises(ValueError, match="iou_threshold"):
        polygon_detection_scores(pred, truth, iou_threshold=0.0)


# -- data ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def scenes() -> list[Any]:
    cfg = SegDataConfig(layout_size=2048, render_downsample=4, patch=64)
    return render_scenes(make_layout(2048, seed=7, mpp=0.5), ["PAS", "MASSON"], config=cfg)


def test_area_reduce_and_config_validation() -> None:
    img = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    out = area_reduce(img, 2)
    assert out.shape == (2, 2, 3)
    assert out[0, 0, 0] == round(np.mean([0, 3, 12, 15]))
    with pytest.raises(ValueError, match="multiple"):
        area_reduce(img[:3], 2)
    with pytest.raises(ConfigError, match="render_downsample"):
        SegDataConfig.from_dict({"render_downsample": 3})
    with pytest.raises(ConfigError, match="mpp"):
        SegDataConfig.from_dict({"mpp": 1.3})


def test_scenes_are_paired_and_labelled(scenes: list[Any]) -> None:
    pas, masson = scenes
    assert pas.image.shape == (512, 512, 3) and pas.labels.shape == (512, 512)
    assert np.array_equal(pas.labels, masson.labels)  # one layout, two stains: the same truth
    assert pas.labels.max() >= 1
    assert np.abs(pas.image.astype(int) - masson.image.astype(int)).mean() > 5  # but different colours
    # glomeruli are 48-68 um in radius: at 2 um/px each instance covers roughly pi * 24..34 ** 2 px
    areas = np.bincount(pas.labels.ravel())[1:]
    areas = areas[areas > 0]
    assert np.pi * 20**2 < np.median(areas) < np.pi * 38**2


def test_patch_dataset_is_seeded_and_centres_glomeruli(scenes: list[Any]) -> None:
    cfg = SegDataConfig(layout_size=2048, render_downsample=4, patch=64, glomerulus_fraction=1.0)
    ds = SegPatchDataset(scenes, config=cfg, length=12, seed=3)
    a = ds[5]
    assert a["image"].shape == (3, 64, 64) and a["mask"].shape == (1, 64, 64)
    assert a["image"].dtype == torch.float32 and 0.0 <= float(a["image"].min()) <= float(a["image"].max()) <= 1.0
    assert torch.equal(a["image"], ds[5]["image"])  # item = f(seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(a["image"], ds[5]["image"])
    assert all(float(ds[i]["mask"].sum()) > 0 for i in range(len(ds)))  # fraction 1: a glomerulus in every crop
    bg = SegPatchDataset(scenes, config=cfg.model_copy(update={"glomerulus_fraction": 0.0}), length=40, seed=3)
    assert np.mean([float(bg[i]["mask"].mean()) for i in range(40)]) < 0.5


# -- training loop ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def scene_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scenes")


def fast_config(path: Path, cache: Path, **update: Any) -> SegmenterTrainConfig:
    cfg = load_config(path, SegmenterTrainConfig)
    data = {**cfg.to_dict(), "cache_dir": str(cache), **update}
    return SegmenterTrainConfig.from_dict(data)


def test_loss_decreases_on_a_fixed_batch(scenes: list[Any]) -> None:
    torch.manual_seed(0)
    cfg = SegmenterTrainConfig.from_dict({"model": {"width": 0.0625, "decoder_channels": [16, 8, 8, 4, 4]},
                                          "train_seeds": [1], "val_seeds": [2], "lr": 0.003})
    nets = _Nets(cfg, torch.device("cpu"))
    trainer = _Trainer(cfg, nets, torch.device("cpu"), [])
    data = SegDataConfig(layout_size=2048, render_downsample=4, patch=64, glomerulus_fraction=1.0)
    ds = SegPatchDataset(scenes, config=data, length=4, seed=0)
    batch = {k: torch.stack([ds[i][k] for i in range(4)]) for k in ("image", "mask")}
    losses = [trainer.step("segmenter", batch, None)["loss_seg"] for _ in range(25)]
    assert np.mean(losses[-3:]) < 0.6 * np.mean(losses[:3]), losses


def test_fast_run_resumes_at_the_right_epoch(tmp_path: Path, scene_cache: Path) -> None:
    run = tmp_path / "run"
    first = train_segmenter(fast_config(FAST, scene_cache, epochs=1), run_dir=run, progress=False)
    assert first["epochs_run"] == 1
    saved = torch.load(run / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 0
    second = train_segmenter(fast_config(FAST, scene_cache, epochs=2), run_dir=run, progress=False)
    assert second["epochs_run"] == 1  # epoch 0 was not trained again
    history = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    assert {"loss_seg", "val_dice", "val_pixel_accuracy", "val_det_f1"} <= set(history[1])
    from wsi_pipeline.models.registry import load_model
    _, record = load_model(run / "segmenter.safetensors")
    assert record.arch == "unet_resnet34"
    assert record.metadata["mpp"] == 2.0 and record.metadata["threshold"] == 0.5
    assert record.metadata["window"] == 128 and "dice" in record.metadata["validation"]
    assert record.training_config is not None and record.training_config["epochs"] in (1, 2)


def test_time_budget_ends_the_run_and_its_decay(tmp_path: Path, scene_cache: Path) -> None:
    run = tmp_path / "run"
    cfg = fast_config(FAST, scene_cache, epochs=5, time_budget_s=0.01)
    first = train_segmenter(cfg, run_dir=run, progress=False)
    history = json.loads((run / "metrics.json").read_text())
    # one epoch always runs; past the budget the cosine decay has reached its end and the run stops there
    assert first["epochs_run"] == 1 and [h["epoch"] for h in history] == [0]
    assert history[0]["lr"] == pytest.approx(0.0) and history[0]["train_seconds"] > 0.01
    assert (run / "segmenter.safetensors").exists()
    again = train_segmenter(cfg, run_dir=run, progress=False)  # resumed: the spent budget carries over
    assert again["epochs_run"] == 0
    more = train_segmenter(cfg.model_copy(update={"time_budget_s": 3600.0}), run_dir=run, progress=False)
    history = json.loads((run / "metrics.json").read_text())
    assert more["epochs_run"] == 4 and history[-1]["train_seconds"] > history[0]["train_seconds"]
    assert 0 < history[1]["lr"] < cfg.lr  # a larger budget: the decay follows the share of it spent


def test_loader_workers_give_the_same_batches(scenes: list[Any]) -> None:
    data = SegDataConfig(layout_size=2048, render_downsample=4, patch=64, glomerulus_fraction=0.5)
    ds = SegPatchDataset(scenes, config=data, length=8, seed=3)
    ds.set_epoch(2)
    inline = [b["image"] for b in _loader(ds, 4, 0)]
    workers = [b["image"] for b in _loader(ds, 4, 2)]
    assert len(inline) == len(workers) == 2 and all(torch.equal(a, b) for a, b in zip(inline, workers))


def test_da_schedule_switches_phases() -> None:
    da = DAConfig(mode="unsupervised", target_seeds=(5,), s0=2, d0=3)
    assert [da.phase(e) for e in range(7)] == ["segmenter"] * 2 + ["discriminators"] * 3 + ["adversarial"] * 2
    assert DAConfig(mode="none", s0=0, d0=0).phase(10) == "segmenter"
    assert DAConfig(mode="supervised", target_seeds=(5,), s0=0, d0=0).phase(0) == "adversarial"
    with pytest.raises(ConfigError, match="target_seeds"):
        SegmenterTrainConfig.from_dict({"da": {"mode": "unsupervised"}})
    with pytest.raises(ConfigError, match="overlap"):
        SegmenterTrainConfig.from_dict({"train_seeds": [1, 2], "val_seeds": [2]})


@pytest.mark.parametrize("mode", ["unsupervised", "supervised"])
def test_da_phases_update_the_right_networks(scenes: list[Any], mode: str) -> None:
    torch.manual_seed(0)
    cfg = SegmenterTrainConfig.from_dict({
        "model": {"width": 0.0625, "decoder_channels": [16, 8, 8, 4, 4]}, "train_seeds": [1], "val_seeds": [2],
        "da": {"mode": mode, "target_seeds": [3], "s0": 1, "d0": 1, "disc_width": 0.125}})
    nets = _Nets(cfg, torch.device("cpu"))
    trainer = _Trainer(cfg, nets, torch.device("cpu"), [])
    data = SegDataConfig(layout_size=2048, render_downsample=4, patch=64)
    src = SegPatchDataset(scenes[:1], config=data, length=4, seed=0)
    tgt = SegPatchDataset(scenes[1:], config=data, length=4, seed=1)

    def batch(ds: SegPatchDataset) -> dict[str, torch.Tensor]:
        return {k: torch.stack([ds[i][k] for i in range(4)]) for k in ("image", "mask")}

    def snapshot() -> dict[str, list[torch.Tensor]]:
        return {k: [t.detach().clone() for t in m.state_dict().values()] for k, m in nets.models.items()}

    def changed(before: dict[str, list[torch.Tensor]]) -> set[str]:
        return {k for k, m in nets.models.items()
                if any(not torch.equal(a, b) for a, b in zip(before[k], m.state_dict().values()))}

    phases = [cfg.da.phase(e) for e in range(3)]
    assert phases == ["segmenter", "discriminators", "adversarial"]
    expected = [{"G"}, {"De", "Dd", "Ds"}, {"G", "De", "Dd", "Ds"}]
    for phase, want in zip(phases, expected):
        before = snapshot()
        logs = trainer.step(phase, batch(src), batch(tgt))
        assert changed(before) == want, phase  # weights *and* BN statistics of G stay put while D trains
        assert all(np.isfinite(v) for v in logs.values())
    assert {"loss_seg", "adv_De", "adv_Dd", "adv_Ds", "loss_De"} <= set(logs)


def test_fast_da_run_records_phases(tmp_path: Path, scene_cache: Path) -> None:
    result = train_segmenter(fast_config(DA_FAST, scene_cache), run_dir=tmp_path / "da", progress=False)
    history = json.loads((tmp_path / "da" / "metrics.json").read_text())
    assert [next(k for k in h if k.startswith("phase_")) for h in history] == \
        ["phase_segmenter", "phase_discriminators", "phase_adversarial"]
    assert "loss_seg" not in history[1] and "loss_De" in history[1]
    assert result["best"] is not None and 0.0 <= result["best"]["val_dice"] <= 1.0
    assert result["best_epoch"] == 2  # only an adapted G (alternating phase) is exported


def test_run_state_resumes_a_numpy_valued_schedule(tmp_path):
    """A schedule lambda returning np.float64 must not break weights_only resume."""
    import numpy as np
    import torch

    from wsi_pipeline.train.common import RunState

    net = torch.nn.Linear(2, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: np.float64(0.5) ** e)
    opt.step()
    sched.step()
    RunState(tmp_path).end_epoch(0, {"loss": 1.0}, models={"net": net}, optimizers={"opt": opt},
                                 schedulers={"sched": sched})
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: np.float64(0.5) ** e)
    assert RunState(tmp_path).resume(models={"net": net}, optimizers={"opt": opt}, schedulers={"sched": sched2}) == 1
    assert sched2.get_last_lr() == [0.05]
