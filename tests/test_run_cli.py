"""``wsi-pipeline run`` over a folder mixing a good slide with broken files: report, statuses, exit code, resume."""

from __future__ import annotations

import functools
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
from click.testing import CliRunner
from test_slide_job import job_config_file, save_models

from workflows.cli import cli
from workflows.report import discover
from wsi_pipeline.export.tiff import write_pyramidal_tiff


def disc_slide(path: Path, *, size: int = 1536) -> Path:
    """A small SVS: a pink tissue disc with three dark glomerulus-sized blobs (0.5 um/px)."""
    yy, xx = np.mgrid[:size, :size]
    img = np.full((size, size, 3), 243, np.uint8)
    img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 < (0.45 * size) ** 2] = (215, 160, 210)
    for cy, cx in ((500, 500), (900, 1000), (1100, 450)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 90**2] = (110, 60, 140)
    return write_pyramidal_tiff(path, lambda x, y, w, h: img[y:y + h, x:x + w], size=(size, size), mpp=0.5)


def test_batch_isolates_broken_files_and_resumes(tmp_path: Path, fixtures_dir: Path) -> None:
    inputs = tmp_path / "in"
    (inputs / "nested").mkdir(parents=True)
    disc_slide(inputs / "nested" / "good.svs")
    shutil.copy(fixtures_dir / "unopenable.tiff", inputs / "unopenable.tiff")
    (inputs / "notes.svs").write_text("this is not a slide\n")
    (inputs / "readme.txt").write_text("ignored: not a slide extension\n")
    models = save_models(tmp_path / "models")
    cfg = job_config_file(tmp_path / "models", models)
    out = tmp_path / "out"
    assert [p.name for p in discover([inputs])] == ["good.svs", "notes.svs", "unopenable.tiff"]

    args = ["run", str(inputs), "--out", str(out), "--config", str(cfg), "--task", "segment", "--workers", "2",
            "--no-progress"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    report = json.loads((out / "report.json").read_text())
    by_name = {Path(e["input"]).name: e for e in report["slides"]}
    assert set(by_name) == {"good.svs", "notes.svs", "unopenable.tiff"}
    assert report["totals"] == {"ok": 1, "skipped": 0, "no-tissue": 0, "failed": 2, "interrupted": 0}
    good = by_name["good.svs"]
    assert good["status"] == "ok" and good["counts"]["glomeruli"] == 3
    assert set(good["timings"]) == {"tile", "segment", "polygons", "export"}
    for name in ("notes.svs", "unopenable.tiff"):
        assert by_name[name]["status"] == "failed" and name in by_name[name]["reason"]
        assert (out / Path(name).stem / "job.log").read_text().startswith(str(inputs / name))
    feats = json.loads((out / "good" / "glomeruli.geojson").read_text())["features"]
    assert {f["properties"]["classification"]["name"] for f in feats} == {"Glomerulus", "Tissue"}
    assert "good.svs" in result.output and "failed" in result.output  # the summary table

    again = CliRunner().invoke(cli, args)  # resume: the good slide is complete, the broken ones fail again
    assert again.exit_code == 1
    report = json.loads((out / "report.json").read_text())
    assert [e["status"] for e in report["slides"]] == ["skipped", "failed", "failed"]


def test_slide_task_pickles_as_paths_and_config(tmp_path: Path) -> None:
    from workflows.job_config import JobConfig
    from workflows.slide_job import run_slide

    task = functools.partial(run_slide, tmp_path / "a.svs", tmp_path / "out", config=JobConfig(), task="segment")
    again = pickle.loads(pickle.dumps(task))  # what a Dask worker receives (issue 7)
    assert again.keywords["config"] == JobConfig() and again.func is run_slide


def test_run_rejects_annotations_outside_classify(tmp_path: Path) -> None:
    ann = tmp_path / "a.geojson"
    ann.write_text("[]")
    result = CliRunner().invoke(cli, ["run", str(tmp_path), "--out", str(tmp_path / "o"), "--annotations", str(ann)])
    assert result.exit_code == 2 and "--task classify" in result.output
