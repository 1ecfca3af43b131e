"""The batch layer's pieces that need no slide processing: discovery of multi-file slides, the resource rule (on
real in-process Dask clusters), merging a slide's step entries, option checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from distributed import Client, LocalCluster

from workflows.batch import (
    ClusterOptions,
    local_layout,
    merge_steps,
    slide_slots,
    slide_threads,
    step_resources,
)
from workflows.cli import cli
from workflows.report import discover
from wsi_pipeline.errors import ConfigError


def test_discover_counts_mrxs_and_dicom_series_once(tmp_path: Path, fixtures_dir: Path) -> None:
    mrxs = tmp_path / "scans" / "kidney.mrxs"
    data = mrxs.with_suffix("")  # MIRAX: kidney.mrxs + kidney/ (Slidedat.ini, Data*.dat, ...)
    data.mkdir(parents=True)
    mrxs.write_text("[GENERAL]\n")
    for name in ("Slidedat.ini", "Data0000.dat", "Index.dat", "preview.tif"):  # .tif in there is not a slide
        (data / name).write_bytes(b"\0")
    dicom = tmp_path / "scans" / "dicom"
    dicom.mkdir()
    for name in ("boxes_0.dcm", "boxes_1.dcm"):  # two levels of one DICOM series
        shutil.copy(fixtures_dir / name, dicom / name)
    (dicom / "broken.dcm").write_text("not DICOM")  # kept: the job reports it
    (tmp_path / "scans" / ".hidden").mkdir()
    (tmp_path / "scans" / ".hidden" / "x.svs").write_bytes(b"\0")
    (tmp_path / "scans" / "phantom-s1-PAS.labels.tif").write_bytes(b"\0")  # wsi-pipeline synth's label mask
    found = discover([tmp_path / "scans"])
    assert [p.relative_to(tmp_path / "scans").as_posix() for p in found] == [
        "dicom/boxes_0.dcm", "dicom/broken.dcm", "kidney.mrxs"]
    assert discover([data / "preview.tif"]) == [data / "preview.tif"]  # named explicitly: taken as given


@pytest.mark.parametrize("gpu", [False, True])
def test_step_resources_follow_device_and_gpu_workers(gpu: bool) -> None:
    resources = {"GPU": 1} if gpu else None
    with LocalCluster(n_workers=2, processes=False, threads_per_worker=1, resources=resources,
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        client.wait_for_workers(2)
        assert step_resources(client, device="cpu") == ({}, {})
        assert step_resources(client, device="auto") == ({}, {"GPU": 1} if gpu else {})
        if gpu:
            assert step_resources(client, device="cuda:0") == ({}, {"GPU": 1})
        else:
            with pytest.raises(ConfigError, match="no worker advertises a GPU"):
                step_resources(client, device="cuda")


def test_workers_advertising_slide_share_their_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WSI_PIPELINE_THREADS", raising=False)
    with LocalCluster(n_workers=1, processes=False, threads_per_worker=4, resources={"slide": 2, "GPU": 1},
                      dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        client.wait_for_workers(1)
        assert step_resources(client, device="auto") == ({"slide": 1}, {"slide": 1, "GPU": 1})
        assert list(client.run(lambda dask_worker: slide_threads(dask_worker)).values()) == [2]
    assert slide_slots(4, {"slide": 2}) == 2 and slide_slots(4, {}) == 4 and slide_threads(None) == 1


def test_merge_steps_reports_the_slide_once() -> None:
    tile = {"input": "a.svs", "status": "ok", "reason": None, "seconds": 1.0, "timings": {"tile": 0.9},
            "stages_run": ["tile"], "stages_skipped": [], "counts": {"tissue_chunks": 4}, "outputs": {"store": "z"}}
    infer = {"input": "a.svs", "status": "skipped", "reason": None, "seconds": 0.5, "timings": {},
             "stages_run": [], "stages_skipped": ["tile", "segment", "export"], "counts": {"glomeruli": 3},
             "outputs": {"geojson": "g"}}
    entry = merge_steps([tile, infer])
    assert entry["status"] == "ok"  # tiling ran in this batch
    assert entry["stages_run"] == ["tile"] and entry["stages_skipped"] == ["segment", "export"]
    assert entry["counts"] == {"tissue_chunks": 4, "glomeruli": 3} and entry["seconds"] == 1.5
    assert entry["outputs"] == {"store": "z", "geojson": "g"}
    skipped = {**tile, "status": "skipped", "stages_run": [], "stages_skipped": ["tile"], "timings": {}}
    assert merge_steps([skipped, infer])["status"] == "skipped"


def test_local_layout_and_thread_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert local_layout(20, cores=16, memory_gib=128) == (16, 1)  # a worker per core ...
    assert local_layout(20, cores=16, memory_gib=32) == (8, 2)  # ... as memory allows
    assert local_layout(3, cores=16, memory_gib=128) == (3, 5)  # never more than slides
    assert local_layout(20, n_workers=2, threads=3, cores=16, memory_gib=1) == (2, 3)
    monkeypatch.setenv("WSI_PIPELINE_THREADS", "3")
    assert slide_threads() == 3
    monkeypatch.setenv("WSI_PIPELINE_THREADS", "zero")
    with pytest.raises(ConfigError, match="WSI_PIPELINE_THREADS"):
        slide_threads()


def test_options_are_checked_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="all of"):
        ClusterOptions(scheduler="tls://127.0.0.1:1", tls_ca_file="ca.pem")
    with pytest.raises(ConfigError, match="--scheduler only"):
        ClusterOptions(tls_ca_file="a", tls_cert="b", tls_key="c")
    with pytest.raises(ConfigError, match="n_workers=0"):
        ClusterOptions(n_workers=0)
    (tmp_path / "a.svs").write_text("x")
    result = CliRunner().invoke(cli, ["run", str(tmp_path / "a.svs"), "--out", str(tmp_path / "o"),
                                      "--scheduler", "tcp://127.0.0.1:1", "--workers", "2"])
    assert result.exit_code == 2 and "not with --scheduler" in result.output
