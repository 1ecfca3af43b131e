"""`wsi-pipeline bench accuracy --labelled`: real images + masks written as slides, run through the job, scored."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from PIL import Image

from workflows.bench.labelled import score_image
from workflows.cli import cli

ROOT = Path(__file__).resolve().parents[1]
TILES = ROOT.parent / "shared" / "data" / "real-glomeruli" / "aidpath-tiles"
STAINS = ROOT.parent / "shared" / "data" / "kidney-stains"


def test_score_image_counts_objects_and_pixels() -> None:
    from shapely.geometry import box

    labels = np.zeros((100, 100), np.uint16)
    labels[10:50, 10:50] = 1
    labels[60:62, 60:62] = 2  # a sliver below the truth minimum: pixels count, the object does not
    scores = score_image([box(10, 10, 50, 50), box(70, 70, 90, 90)], labels, mpp=1.0, min_truth_um2=100)
    assert (scores["tp"], scores["fp"], scores["fn"], scores["truth"]) == (1, 1, 0, 1)
    assert 0.7 < scores["dice"] < 0.9


def test_labelled_folder_runs_through_the_job(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
        for name in ("10149", "10215"):  # one glomerulus; an empty mask
            shutil.copy(TILES / sub / f"{name}.png", data / sub / f"{name}.png")
    (data / "mpp.json").write_text(json.dumps({"mpp": 0.5}))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["bench", "accuracy", "--labelled", str(data), "--out", str(out),
                                       "--workers", "1"])
    assert result.exit_code == 0, result.output
    res = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in res["images"]}
    assert set(rows) == {"10149", "10215"} and rows["10149"]["truth"] == 1 and rows["10215"]["truth"] == 0
    assert rows["10149"]["tp"] == 1  # the shipped segmenter was trained on these tiles: it must find this one
    assert all(r["stain_recognised"] == "PAS" and r["stain"] == "PAS" for r in rows.values())
    pooled = res["pooled"]
    assert pooled["truth"] == 1 and 0 <= pooled["f1"] <= 1 and 0 <= pooled["dice"] <= 1
    assert "| **pooled** |" in (out / "results.md").read_text()
    assert Image.open(out / "overlays.jpg").size[0] >= 256


def test_images_without_masks_give_overlays_and_stains(tmp_path: Path) -> None:
    data = tmp_path / "patches"
    data.mkdir()
    img = Image.open(STAINS / "orig_patch_stain_16.png").convert("RGB").crop((0, 0, 512, 512))
    img.save(data / "cd68.png")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["bench", "accuracy", "--labelled", str(data), "--mpp", "0.5",
                                       "--out", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    [row] = json.loads((out / "results.json").read_text())["images"]
    assert row["stain_recognised"] == "IHC_DAB" and row["status"] == "ok"
    assert (out / "overlays.jpg").exists()


def test_labelled_crops_are_classified_through_the_job_as_in_training(tmp_path: Path) -> None:
    """Crops + masks + labels.csv (the aidpath-crops layout): each crop a slide with its outline as a QuPath
    annotation, `run --task classify` on it; the job's p_gs equals the classifier's on the training reader's crop
    (same geometry, the slide's edge mirrored as in training), up to the slide's JPEG and resampling."""
    from workflows.job_config import JobConfig
    from workflows.slide_plan import classifier_settings
    from wsi_pipeline.infer.classify import g2c_probabilities
    from wsi_pipeline.train.data_real import RealCropsConfig, read_real_crops

    src = ROOT.parent / "shared" / "data" / "real-glomeruli" / "aidpath-crops"
    picked = ["SAS_21883_001-10.png", "SAS_21942_001-1.png", "SESCAM_4_0-12.png", "SESCAM_1_0-3.png"]
    data = tmp_path / "crops"
    for sub in ("images", "masks"):
        (data / sub).mkdir(parents=True)
        for name in picked:
            shutil.copy(src / sub / name, data / sub / name)
    lines = (src / "labels.csv").read_text().splitlines()
    (data / "labels.csv").write_text("\n".join([lines[0], *(l for l in lines[1:] if l.split(",")[0] in picked)]) + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["bench", "accuracy", "--labelled", str(data), "--out", str(out),
                                       "--workers", "1"])
    assert result.exit_code == 0, result.output
    res = json.loads((out / "results.json").read_text())
    assert set(res["per_site"]) == {"SAS", "SESCAM"} and res["pooled"]["n"] == 4
    assert "| pooled | 4 |" in result.output
    cls = classifier_settings(JobConfig().classify, base_dir=None)
    crops = read_real_crops(RealCropsConfig(root=str(data), size=cls.spec.size, margin=cls.spec.margin))
    direct = g2c_probabilities(crops.images, cls.load(), batch_size=4)[:, list(cls.load().classes).index("gs")]
    job = {r["file"]: r["p_gs"] for r in res["crops"]}
    # the job reads the slide (JPEG q90) and resizes in two steps (area to the crop MPP, then bilinear to 128 px); the
    # training reader in one: measured up to 0.11 apart on these four
    assert np.abs(np.array([job[f] for f in crops.files]) - direct).max() < 0.2
