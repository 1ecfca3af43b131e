"""Batch runs on real Dask clusters with real faults (issue 7).

Every test uses real processes: a ``LocalCluster`` of worker processes, or ``dask scheduler`` + ``dask worker``
subprocesses on 127.0.0.1; real openslide reads, zarr stores on disk and the shipped default weights. The inputs
are two small seeded phantoms (one also copied into a sub-folder) next to four broken files; the reference is a
plain local run of that folder, and every faulty run must end with the same outputs (GeoJSON without the UUIDs,
every zarr array, the overlay pixels) and the same statuses. Workers run one thread each everywhere, so PyTorch
computes the same numbers in every run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import yaml
import zarr
from click.testing import CliRunner
from PIL import Image

from workflows.batch import ClusterOptions, open_cluster, run_batch
from workflows.cli import cli
from workflows.job_config import JobConfig
from wsi_pipeline.synth import write_phantom

BIN = Path(sys.executable).parent
VALID = ("a", "b", "c")
BROKEN = ("unreadable.svs", "unopenable.tiff", "truncated.svs", "notes.svs")
LOCAL = ["--workers", "2", "--threads-per-worker", "1", "--no-dashboard", "--no-progress"]
LOCAL_WITH_PROGRESS = LOCAL[:-1]
STAGES = ["tile", "segment", "polygons", "classify", "export"]


# -- inputs and the reference run ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, fixtures_dir: Path) -> Path:
    root = tmp_path_factory.mktemp("batch")
    folder = root / "in"
    (folder / "nested").mkdir(parents=True)
    for name, seed in (("a", 3), ("b", 7)):
        ph = write_phantom(root / "phantoms", size=1536, stains=("PAS",), seed=seed, name=name)
        shutil.copy(ph.slides["PAS"], folder / f"{name}.svs")
    shutil.copy(folder / "a.svs", folder / "nested" / "c.svs")
    shutil.copy(fixtures_dir / "unreadable.svs", folder / "unreadable.svs")  # a corrupt JPEG tile
    shutil.copy(fixtures_dir / "unopenable.tiff", folder / "unopenable.tiff")  # an unsupported compression
    data = (folder / "a.svs").read_bytes()
    (folder / "truncated.svs").write_bytes(data[: len(data) * 6 // 10])  # a copy cut short
    (folder / "notes.svs").write_text("not a slide, whatever the name says\n")
    return folder


@pytest.fixture(scope="module")
def reference(inputs: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("reference") / "out"
    result = CliRunner().invoke(cli, ["run", str(inputs), "--out", str(out), *LOCAL_WITH_PROGRESS])
    return {"out": out, "result": result, "report": _report(out)}


def _report(out: Path) -> dict[str, dict[str, Any]]:
    """``report.json`` entries by output folder name."""
    return {Path(e["output"]).name: e for e in json.loads((out / "report.json").read_text())["slides"]}


def outputs_of(slide_dir: Path) -> dict[str, Any]:
    """What a run leaves for a slide, minus what differs by design (feature UUIDs)."""
    feats = json.loads((slide_dir / "glomeruli.geojson").read_text())["features"]
    arrays: dict[str, np.ndarray] = {}

    def walk(group: Any, prefix: str) -> None:
        for name, arr in group.arrays():
            arrays[prefix + name] = np.asarray(arr[...])
        for name, sub in group.groups():
            walk(sub, f"{prefix}{name}/")

    walk(zarr.open_group(str(slide_dir / "slide.zarr"), mode="r"), "")
    return {"features": [{k: v for k, v in f.items() if k != "id"} for f in feats], "arrays": arrays,
            "overlay": np.asarray(Image.open(slide_dir / "overlay.png"))}


def assert_same_outputs(out: Path, reference: dict[str, Any]) -> None:
    report = _report(out)
    assert {k: e["status"] for k, e in report.items()} == {k: e["status"] for k, e in reference["report"].items()}
    for stem in VALID:
        got, want = outputs_of(out / stem), outputs_of(reference["out"] / stem)
        assert got["features"] == want["features"], stem
        assert got["arrays"].keys() == want["arrays"].keys(), stem
        for name, arr in want["arrays"].items():
            np.testing.assert_array_equal(got["arrays"][name], arr, err_msg=f"{stem}: {name}")
        np.testing.assert_array_equal(got["overlay"], want["overlay"])


# -- real processes -----------------------------------------------------------------------------------------------
def wait_for(predicate: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def spawn(args: list[str], log: Path, **env: str) -> subprocess.Popen[bytes]:
    """A subprocess in its own process group (so a test can kill it with everything it started)."""
    with open(log, "wb") as fh:
        return subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **env})


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def group_alive(pgid: int) -> list[int]:
    pids = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                pids.append(p.pid)
    return pids


@contextlib.contextmanager
def dask_processes(tmp: Path, *, workers: int, worker_args: Sequence[str] = ("--nthreads", "1"),
                   tls: Sequence[str] = ()) -> Iterator[tuple[str, dict[str, subprocess.Popen[bytes]]]]:
    """``dask scheduler`` and ``dask worker`` subprocesses on 127.0.0.1; yields the address and workers by name."""
    procs: list[subprocess.Popen[bytes]] = []
    sched_file = tmp / "scheduler.json"
    try:
        procs.append(spawn([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                            "--scheduler-file", str(sched_file), *tls], tmp / "scheduler.log"))
        wait_for(lambda: sched_file.is_file() and sched_file.stat().st_size > 0, timeout=60, what="the scheduler")
        address = json.loads(sched_file.read_text())["address"]
        named = {}
        for i in range(workers):
            name = f"w{i}"
            named[name] = spawn([str(BIN / "dask"), "worker", address, "--name", name, *worker_args,
                                 "--host", "127.0.0.1", "--no-dashboard", "--local-directory", str(tmp / name),
                                 *tls], tmp / f"{name}.log")
            procs.append(named[name])
        yield address, named
    finally:
        for p in reversed(procs):
            kill_group(p)


# -- tests ---------------------------------------------------------------------------------------------------------
def test_broken_files_fail_alone_with_named_reasons(reference: dict[str, Any], inputs: Path) -> None:
    result, report, out = reference["result"], reference["report"], reference["out"]
    assert result.exit_code == 1, result.output
    assert set(report) == {*VALID, *(Path(b).stem for b in BROKEN)}
    for stem in VALID:
        e = report[stem]
        assert e["status"] == "ok", e["reason"]
        assert e["stages_run"] == STAGES and e["attempts"] == 1
        assert e["counts"]["features"] == e["counts"]["glomeruli"] + 1 and e["counts"]["glomeruli"] > 0  # + Tissue
    for name in BROKEN:
        e = report[Path(name).stem]
        assert e["status"] == "failed" and name in e["reason"], e
        assert (out / Path(name).stem / "job.log").read_text().startswith(str(inputs / name))
    assert "damaged" in report["unreadable"]["reason"] and "compression" in report["unopenable"]["reason"]
    totals = json.loads((out / "report.json").read_text())["totals"]
    assert totals == {"ok": 3, "skipped": 0, "no-tissue": 0, "failed": 4, "interrupted": 0}
    md = (out / "report.md").read_text()
    assert "3 ok, 0 skipped, 0 no-tissue, 4 failed" in md and "slides/hour" in md
    assert f"| c.svs | ok | {report['c']['counts']['stain']} | {report['c']['counts']['glomeruli']} |" in md
    assert "local cluster: 2 worker processes x 1 threads" in result.output
    assert "[7/7] " in result.output and "notes.svs failed: " in result.output  # progress lines (not a terminal)


def test_worker_killed_mid_slide_batch_completes_identically(inputs: Path, reference: dict[str, Any],
                                                             tmp_path: Path) -> None:
    from distributed import Client

    out = tmp_path / "out"
    one_slide_each = ["--nthreads", "1", "--resources", "slide=1"]  # as docker/compose.yaml starts its workers
    with dask_processes(tmp_path, workers=2, worker_args=one_slide_each) as (address, workers), \
            Client(address) as watcher:
        watcher.wait_for_workers(2, timeout=90)
        run = spawn([str(BIN / "wsi-pipeline"), "run", str(inputs), "--out", str(out), "--scheduler", address,
                     "--no-progress"], tmp_path / "run.log")
        try:
            def busy_after_polygons() -> tuple[str, str, str] | None:
                """(task key, worker address, name) of a slide between its polygons and its export markers."""
                for marker in out.glob("*/stages/polygons.done.json"):
                    if (marker.parent / "export.done.json").exists():
                        continue
                    for addr, keys in watcher.processing().items():
                        for key in keys:
                            if key.startswith(f"infer-{marker.parent.parent.name}-"):
                                return key, addr, watcher.scheduler_info()["workers"][addr]["name"]
                return None

            key, addr, name = wait_for(busy_after_polygons, timeout=180, what="a slide in its classify/export stages")
            kill_group(workers[name])  # the nanny and its worker: this worker is gone for good
            rc = run.wait(timeout=240)
        finally:
            kill_group(run)
    log = (tmp_path / "run.log").read_text()
    assert rc == 1, log
    assert_same_outputs(out, reference)
    stem = key[len("infer-"):-9]
    entry = _report(out)[stem]
    assert entry["attempts"] == 2, entry  # the killed task ran again on the other worker ...
    assert entry["worker"] != addr and {"segment", "polygons"} <= set(entry["stages_skipped"])  # ... resumed
    assert sum(e["attempts"] for e in _report(out).values() if e["status"] == "ok") == len(VALID) + 1


def test_killed_run_resumes_to_identical_outputs(inputs: Path, reference: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["run", str(inputs), "--out", str(out), *LOCAL]
    run = spawn([str(BIN / "wsi-pipeline"), *args], tmp_path / "run.log")
    try:
        wait_for(lambda: list(out.glob("*/stages/polygons.done.json")), timeout=180, what="a polygons marker")
    finally:
        kill_group(run)  # the CLI and its local cluster, mid-slide
    wait_for(lambda: not group_alive(run.pid), timeout=30, what="the run's processes to exit")
    markers = {p: p.stat().st_mtime_ns for p in out.glob("*/stages/*.done.json")}
    finished = {p.parent.parent.name for p in markers if p.name == "export.done.json"}
    partial = {p.parent.parent.name for p in markers} - finished
    assert partial, "the kill must land mid-slide"
    for geojson in out.glob("*/glomeruli.geojson"):  # written atomically: complete or absent
        assert json.loads(geojson.read_text())["type"] == "FeatureCollection"

    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert_same_outputs(out, reference)
    assert {p: p.stat().st_mtime_ns for p in markers} == markers  # finished stages were not redone
    report = _report(out)
    for stem in VALID:
        done_before = [s for s in STAGES if out / stem / "stages" / f"{s}.done.json" in markers]
        assert report[stem]["stages_run"] == [s for s in STAGES if s not in done_before]
        assert report[stem]["status"] == ("skipped" if stem in finished else "ok")


def test_changed_classifier_reruns_exactly_classify_and_export(inputs: Path, reference: dict[str, Any],
                                                              tmp_path: Path) -> None:
    from test_slide_job import save_models

    out = tmp_path / "out"
    shutil.copytree(reference["out"], out)
    models = save_models(tmp_path / "models", g2c_seed=5)  # another (tiny, real) G2C checkpoint
    cfg = tmp_path / "job.yaml"
    cfg.write_text(yaml.safe_dump({"classify": {"weights": str(models["g2c"])}}))
    result = CliRunner().invoke(cli, ["run", str(inputs), "--out", str(out), "--config", str(cfg), *LOCAL])
    assert result.exit_code == 1, result.output
    report = _report(out)
    for stem in VALID:
        assert report[stem]["status"] == "ok"
        assert report[stem]["stages_run"] == ["classify", "export"]
        assert report[stem]["stages_skipped"] == ["tile", "segment", "polygons"]
        got, want = outputs_of(out / stem), outputs_of(reference["out"] / stem)
        for name, arr in want["arrays"].items():
            np.testing.assert_array_equal(got["arrays"][name], arr)
        assert [f["geometry"] for f in got["features"]] == [f["geometry"] for f in want["features"]]
        assert "g2c-5.safetensors" in got["features"][0]["properties"]["metadata"]["classifier"]


def test_slide_timeout_restarts_the_worker_and_reports(inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    t0 = time.monotonic()
    result = CliRunner().invoke(cli, ["run", str(inputs / "a.svs"), str(inputs / "notes.svs"), "--out", str(out),
                                      "--task", "segment", "--workers", "1", "--slide-timeout", "0.5",
                                      "--no-dashboard", "--no-progress"])
    assert result.exit_code == 1, result.output
    assert time.monotonic() - t0 < 120
    report = _report(out)
    reason = report["a"]["reason"]
    assert report["a"]["status"] == "failed" and "a.svs" in reason and "timed out after 0.5 s" in reason, reason
    assert "restarted" in reason
    assert "timed out after 0.5 s" in (out / "a" / "job.log").read_text()
    assert report["notes"]["status"] == "failed" and "notes.svs" in report["notes"]["reason"]


def test_worker_crashes_end_as_killed_worker(inputs: Path, tmp_path: Path) -> None:
    import dask

    killed: list[int] = []

    def crash_first_slide(state: Any, event: dict[str, Any]) -> None:
        if event["kind"] == "start" and event["index"] == 0 and event["step"] == "infer" and not killed:
            killed.append(event["pid"])
            os.kill(event["pid"], signal.SIGKILL)  # what a segfaulting reader does to its worker

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            open_cluster(ClusterOptions(n_workers=1, threads_per_worker=1, dashboard=False), n_slides=2) as cluster:
        entries = run_batch([inputs / "a.svs", inputs / "b.svs"], tmp_path / "out", client=cluster.client,
                            config=JobConfig(), task="segment", on_event=crash_first_slide)
    assert killed
    a, b = entries
    assert a["status"] == "failed" and "KilledWorker" in a["reason"] and "a.svs" in a["reason"], a
    assert a["stages_run"] == ["tile"]  # the tile task had finished before the crash
    assert b["status"] == "ok" and b["attempts"] == 1  # on the worker the nanny restarted
    assert "KilledWorker" in (tmp_path / "out" / "a" / "job.log").read_text()


def tls_files(folder: Path) -> dict[str, Path]:
    """A throw-away CA and one certificate for 127.0.0.1 signed by it (openssl CLI)."""
    if shutil.which("openssl") is None:  # a missing tool fails the test: a skipped TLS test proves nothing
        pytest.fail("openssl CLI not installed: the TLS test needs it to make its certificates")
    f = {k: folder / n for k, n in (("ca", "ca.pem"), ("ca_key", "ca.key"), ("cert", "node.pem"),
                                    ("key", "node.key"), ("csr", "node.csr"), ("ext", "san.ext"))}
    f["ext"].write_text("subjectAltName=IP:127.0.0.1\n")
    for cmd in (["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f["ca_key"], "-out", f["ca"], "-days", "1",
                 "-subj", "/CN=wsi-pipeline test CA"],
                ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", f["key"], "-out", f["csr"], "-subj", "/CN=127.0.0.1"],
                ["x509", "-req", "-in", f["csr"], "-CA", f["ca"], "-CAkey", f["ca_key"], "-CAcreateserial", "-out",
                 f["cert"], "-days", "1", "-extfile", f["ext"]]):
        subprocess.run(["openssl", *map(str, cmd)], check=True, capture_output=True)
    return f


def test_tls_scheduler_address_and_certificates_pass_through(inputs: Path, tmp_path: Path) -> None:
    f = tls_files(tmp_path)
    tls = ["--tls-ca-file", str(f["ca"]), "--tls-cert", str(f["cert"]), "--tls-key", str(f["key"])]
    out = tmp_path / "out"
    with dask_processes(tmp_path, workers=1, tls=["--protocol", "tls", *tls]) as (address, _):
        assert address.startswith("tls://127.0.0.1:")
        plain = CliRunner().invoke(cli, ["run", str(inputs / "notes.svs"), "--out", str(out), "--scheduler", address,
                                         "--no-progress"])
        assert plain.exit_code != 0 and "cannot connect" in str(plain.exception)  # no certificates: refused
        result = CliRunner().invoke(cli, ["run", str(inputs / "b.svs"), "--out", str(out), "--task", "segment",
                                          "--scheduler", address, *tls, "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"scheduler {address} (1 workers)" in result.output
    entry = _report(out)["b"]
    assert entry["status"] == "ok" and entry["worker"].startswith("tls://")
