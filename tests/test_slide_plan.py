"""One slide, planned once: how often a job opens the slide, hashes and builds models, reads the store's record.

Counted with :func:`workflows.bench.trace.counting`, which wraps the real functions (every call still does its
work). Before the slide was planned once (974b348) a fresh full job on one slide opened it 7 times, hashed weight
files 5 times, built the U-Net twice and read the store's record twice; a resumed job still hashed 4 times and built
both networks (``python -m workflows.bench.trace`` measures any checkout).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import tifffile
import yaml
from test_slide_job import job_config_file, save_models

from workflows.bench.trace import counting
from workflows.job_config import JobConfig, load_job_config
from workflows.slide_job import run_slide, slide_stem
from wsi_pipeline.config import load_config
from wsi_pipeline.infer import clear_predictor_cache
from wsi_pipeline.infer.loaders import clear_model_cache
from wsi_pipeline.models import registry
from wsi_pipeline.synth import write_phantom
from wsi_pipeline.tiling import TileConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("plan")
    phantom = write_phantom(root / "slides", size=2048, stains=("PAS",), seed=3, n_glomeruli=6)
    models = save_models(root / "models")
    config = load_job_config(job_config_file(root / "models", models))
    return {"root": root, "slide": phantom.slides["PAS"], "models": models, "config": config}


def _cold() -> None:
    """A fresh worker process: nothing hashed, no predictor or G2C model built yet."""
    registry._SHA_CACHE.clear()
    clear_predictor_cache()
    clear_model_cache()


def test_one_slide_is_opened_hashed_and_built_once(setup: dict, tmp_path: Path) -> None:
    _cold()
    weights = list(setup["models"].values())
    with counting(weights) as fresh:
        entry = run_slide(setup["slide"], tmp_path / "out", config=setup["config"], workers=1)
    assert entry["status"] == "ok", entry["reason"]
    assert entry["stages_run"] == ["tile", "segment", "polygons", "classify", "export"]
    assert fresh["network_builds[unet_resnet34]"] == 1  # the predictor; settings come from the record
    assert fresh["network_builds[g2c]"] == 1
    assert fresh["weight_hashes"] == 2  # segmenter and G2C, once each; the unused generator never
    assert fresh["store_record_reads"] == 0  # the tile stage hands its record over in memory
    # the job's own handle, plus what tiling opens for direct tile decoding (driver thumbnail, one worker thread)
    assert fresh["slide_opens"] <= 4

    with counting(weights) as resumed:
        again = run_slide(setup["slide"], tmp_path / "out", config=setup["config"], workers=1)
    assert again["status"] == "skipped"
    assert dict(resumed) == {"slide_opens": 1}  # nothing hashed again, nothing built, nothing read back

    other = tmp_path / "second.svs"  # the next slide of a batch in the same worker
    shutil.copy(setup["slide"], other)
    with counting(weights) as second:
        assert run_slide(other, tmp_path / "out", config=setup["config"], workers=1)["status"] == "ok"
    assert not any(k.startswith(("network_builds", "weight_hashes")) for k in second)  # models reused


def test_a_skipped_stage_loads_nothing(setup: dict, tmp_path: Path) -> None:
    _cold()
    with counting(list(setup["models"].values())) as counts:
        entry = run_slide(setup["slide"], tmp_path / "out", config=setup["config"], task="segment", workers=1)
    assert entry["status"] == "ok", entry["reason"]
    assert "network_builds[g2c]" not in counts and counts["weight_hashes"] == 1  # G2C neither built nor hashed


@pytest.mark.parametrize("redo", [("classify", "export"), ("export",)])
def test_resumed_from_the_stage_files_writes_the_same_bytes(setup: dict, tmp_path: Path, redo: tuple) -> None:
    """Stages hand their results on in memory; a run resumed from the files they wrote must write the same."""
    out = tmp_path / "out"
    assert run_slide(setup["slide"], out, config=setup["config"], workers=1)["status"] == "ok"
    slide_dir = out / slide_stem(setup["slide"])
    fresh = {n: (slide_dir / n).read_bytes() for n in ("glomeruli.geojson", "overlay.png")}
    for stage in redo:  # as if the job had been killed before these stages finished
        (slide_dir / "stages" / f"{stage}.done.json").unlink()
    entry = run_slide(setup["slide"], out, config=setup["config"], workers=1)
    assert entry["stages_run"] == list(redo)
    assert {n: (slide_dir / n).read_bytes() for n in fresh} == fresh


def _break_level0_tiles(src: Path, dst: Path) -> None:
    """Copy ``src`` with every level-0 tile's JPEG start marker overwritten (reduced levels stay intact)."""
    shutil.copy(src, dst)
    with tifffile.TiffFile(dst) as tif:
        offsets = [int(o) for o in tif.pages[0].dataoffsets]
    with open(dst, "r+b") as fh:
        for offset in offsets:
            fh.seek(offset)
            fh.write(b"\x00\x00")


def test_a_corrupt_tile_fails_without_deleting_the_store(setup: dict, tmp_path: Path) -> None:
    """Only a store written with other settings is replaced; a damaged slide fails and keeps the partial store."""
    bad = tmp_path / "bad.svs"
    _break_level0_tiles(setup["slide"], bad)
    cfg = setup["config"]
    config = cfg.model_copy(update={"segment": cfg.segment.model_copy(update={"mpp": 0.5})})  # tile level 0
    out = tmp_path / "out"
    first = run_slide(bad, out, config=config, task="segment", workers=1)
    assert first["status"] == "failed" and "bad.svs" in first["reason"] and "JPEG" in first["reason"]
    meta = out / slide_stem(bad) / "slide.zarr" / "zarr.json"
    kept = meta.stat()
    second = run_slide(bad, out, config=config, task="segment", workers=1)
    assert second["status"] == "failed" and second["reason"] == first["reason"]
    now = meta.stat()
    assert (now.st_ino, now.st_mtime_ns) == (kept.st_ino, kept.st_mtime_ns)  # not deleted and re-tiled


def test_store_with_other_settings_is_replaced(setup: dict, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_slide(setup["slide"], out, config=setup["config"], task="translate", until="tile",
                     workers=1)["status"] == "ok"
    (out / slide_stem(setup["slide"]) / "stages" / "tile.done.json").unlink()  # forget the marker
    cfg = setup["config"]
    other = cfg.model_copy(update={"tile": cfg.tile.model_copy(update={"thumbnail_px": 256})})
    entry = run_slide(setup["slide"], out, config=other, task="translate", until="tile", workers=1)
    assert entry["status"] == "ok" and entry["stages_run"] == ["tile"]


def test_one_set_of_defaults() -> None:
    """The shipped YAML files repeat the code's defaults; the job config contains the tiling config."""
    job = load_job_config(ROOT / "configs" / "default.yaml")
    assert job.model_copy(update={"base_dir": None}) == JobConfig()
    assert load_config(ROOT / "configs" / "tile.yaml", TileConfig, section="tile") == TileConfig()
    assert isinstance(JobConfig().tile, TileConfig)
    data = yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())
    data["tile"]["mpp"] = 1.0
    with pytest.raises(Exception, match="segment.mpp"):
        JobConfig.from_dict(data)
