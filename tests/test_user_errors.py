"""What a user hits first (issue 13): implausible scales refused quickly, bad options as one-line errors before any
cluster starts, Ctrl-C stops a real batch cleanly (``interrupted`` entries, no stray temp files after a resume),
one run per output folder, progress inside a slide. Real processes, real files, real clusters on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from click.testing import CliRunner
from test_run_cli import disc_slide
from test_slide_job import job_config_file, save_models

from workflows.cli import cli as group
from workflows.cmd_bench import BENCHMARKS
from workflows.lock import LOCK_NAME, OutputLockedError, output_lock
from wsi_pipeline.atomic import remove_stale_temps
from wsi_pipeline.export import write_pyramidal_tiff
from wsi_pipeline.errors import SlideError
from wsi_pipeline.slide import check_scale, check_upsample, open_slide
from wsi_pipeline.tiling import TileConfig, tile_slide

ROOT = Path(__file__).resolve().parents[1]
REAL_SLIDES = ROOT.parent / "shared" / "data" / "real-slides"


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``wsi-pipeline ARGS`` in a fresh process, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "workflows.cli", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def stray_temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".partial"))]


# -- scale sanity --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_72_dpi_tiff_is_refused_naming_the_file(fixtures_dir: Path, backend: str) -> None:
    with open_slide(fixtures_dir / "boxes.tiff", backend=backend) as slide:
        assert slide.mpp_tag_dpi == pytest.approx(72.0)
        with pytest.raises(SlideError, match=r"boxes\.tiff: its 352\.78 um/px comes from a 72-dpi TIFF resolution "
                                             r"tag.*--mpp-override"):
            check_scale(slide)
    with open_slide(fixtures_dir / "boxes.tiff", backend=backend, mpp_override=0.5) as slide:
        check_scale(slide)  # the user's word


def test_scanner_metadata_passes_and_implausible_values_fail(fixtures_dir: Path, tmp_path: Path) -> None:
    with open_slide(fixtures_dir / "small.svs") as slide:
        assert slide.mpp_tag_dpi is None
        check_scale(slide)
    overview = REAL_SLIDES / "dicom" / "multi_frame_jpeg_camelyon_challenge_image.dcm"
    with open_slide(overview) as slide, pytest.raises(SlideError, match=r"28\.969 um/px is outside .*0\.05-20"):
        check_scale(slide)
    # a converter's TIFF with a microscope-scale resolution tag (0.25 um/px = 40,000 px/cm) is trusted
    fine = tmp_path / "fine.tif"
    tifffile.imwrite(fine, np.full((64, 64, 3), 200, np.uint8), tile=(16, 16), photometric="rgb",
                     resolution=(40000, 40000), resolutionunit="CENTIMETER")
    with open_slide(fine, backend="tifffile") as slide:
        assert slide.mpp == pytest.approx((0.25, 0.25))
        check_scale(slide)
    with pytest.raises(SlideError, match="upsample its 4 um/px 2x"):
        check_upsample(4.0, 2.0, max_upsample=1.5, path="x.svs")
    check_upsample(4.0, 2.0, max_upsample=2.0, path="x.svs")


@pytest.mark.parametrize("backend", ["openslide", "tifffile"])
def test_overview_svs_at_3_um_px_passes_and_runs(tmp_path: Path, backend: str) -> None:
    """An Aperio SVS scanned at ~3 um/px (an overview section) whose TIFF resolution tag agrees with its MPP is the
    scanner's calibration, not a dpi-style tag: it must pass the scale check (only a generic TIFF whose sole MPP
    is such a tag is refused)."""
    image = np.full((512, 512, 3), 236, np.uint8)
    image[100:400, 80:450] = (200, 120, 180)
    svs = tmp_path / "overview.svs"
    write_pyramidal_tiff(svs, lambda x, y, w, h: image[y:y + h, x:x + w], size=(512, 512), mpp=3.0, flavor="svs")
    with open_slide(svs, backend=backend) as slide:
        assert slide.mpp == pytest.approx((3.0, 3.0)) and slide.mpp_tag_dpi is None
        check_scale(slide)
    generic = tmp_path / "overview.tif"
    tifffile.imwrite(generic, image, tile=(64, 64), photometric="rgb", resolution=(10000 / 3, 10000 / 3),
                     resolutionunit="CENTIMETER")
    with open_slide(generic, backend=backend) as slide, pytest.raises(SlideError, match="8467-dpi"):
        check_scale(slide)
    if backend == "openslide":  # and the job tiles it (upsampled 1.5x to the segmenter's 2 um/px)
        res = tile_slide(svs, tmp_path / "o.zarr", config=TileConfig(mpp=2.0, tile=128), progress=False)
        assert res.mpp == pytest.approx(2.0) and res.chunks_tissue > 0


def test_tiling_never_upsamples_past_max_upsample(tmp_path: Path) -> None:
    slide = disc_slide(tmp_path / "disc.svs", size=512)  # 0.5 um/px
    with pytest.raises(SlideError, match=r"disc\.svs: tiling at 0\.1 um/px would upsample .* 5x"):
        tile_slide(slide, tmp_path / "s.zarr", config=TileConfig(mpp=0.1, tile=64), progress=False)
    assert not (tmp_path / "s.zarr").exists()  # refused before anything was written


def test_72_dpi_tiff_refused_quickly_by_tile_and_run(fixtures_dir: Path, tmp_path: Path) -> None:
    t0 = time.perf_counter()
    res = cli("tile", str(fixtures_dir / "boxes.tiff"), "--out", str(tmp_path / "b.zarr"))
    assert res.returncode == 2 and "72-dpi TIFF resolution tag" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert time.perf_counter() - t0 < 30  # an interpreter start; nothing tiled
    assert not (tmp_path / "b.zarr").exists()

    res = cli("run", str(fixtures_dir / "boxes.tiff"), "--out", str(tmp_path / "out"), "--workers", "1",
              "--no-dashboard")
    assert res.returncode == 1, res.stderr
    entry = json.loads((tmp_path / "out" / "report.json").read_text())["slides"][0]
    assert entry["status"] == "failed" and "72-dpi" in entry["reason"] and "--mpp-override" in entry["reason"]
    assert entry["stages_run"] == [] and entry["seconds"] < 2.0  # refused on opening, before tiling
    assert not (tmp_path / "out" / "boxes" / "slide.zarr").exists()


# -- options -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["run", "IN", "--out", "OUT", "--mpp-override", "-0.5"], "'--mpp-override': -0.5 is not in the range"),
    (["run", "IN", "--out", "OUT", "--mpp-override", "0"], "'--mpp-override': 0 is not in the range"),
    (["run", "IN", "--out", "OUT", "--mpp-override", "nan"], "'nan' is not a finite number"),
    (["run", "IN", "--out", "OUT", "--mpp-override", "1e6"], "'--mpp-override': 1e6 is not in the range"),
    (["run", "IN", "--out", "OUT", "--workers", "0"], "'--workers': 0 is not in the range x>=1"),
    (["run", "IN", "--out", "OUT", "--slide-timeout", "inf"], "'inf' is not a finite number"),
    (["run", "IN", "--out", "OUT", "--retries", "-1"], "'--retries': -1 is not in the range x>=0"),
    (["run", "MISSING", "--out", "OUT"], "MISSING: no such file or folder"),
    (["run", "IN", "--out", "FILE"], "is a file"),
    (["tile", "SLIDE", "--out", "OUT/s.zarr", "--mpp-override=-1"], "'--mpp-override': -1 is not in the range"),
    (["tile", "SLIDE", "--out", "OUT/s.zarr", "--mpp", "nan"], "'nan' is not a finite number"),
    (["tile", "SLIDE", "--out", "OUT/s.zarr", "--tile", "3"], "'--tile': 3 is not in the range 16<=x<=8192"),
    (["demo", "--out", "FILE"], "is a file"),
    (["run", "IN", "--out", "FILE/sub"], "is a file, not a folder"),
    (["demo", "--out", "OUT", "--size", "10"], "'--size': 10 is not in the range"),
    (["train", "segmenter", "--config", "MISSING.yaml"], "'MISSING.yaml' does not exist"),
    (["bench", "batch", "--slides", "0"], "'--slides': 0 is not in the range x>=1"),
])
def test_bad_options_are_one_line_errors_before_any_cluster(tmp_path: Path, fixtures_dir: Path, args: list[str],
                                                             message: str) -> None:
    (tmp_path / "IN").mkdir()
    shutil.copy(fixtures_dir / "small.svs", tmp_path / "IN" / "small.svs")
    (tmp_path / "FILE").write_text("a file\n")
    subs = {"IN": str(tmp_path / "IN"), "OUT": str(tmp_path / "OUT"), "FILE": str(tmp_path / "FILE"),
            "SLIDE": str(tmp_path / "IN" / "small.svs"), "MISSING": str(tmp_path / "MISSING")}
    argv = [next((v + a[len(k):] for k, v in subs.items() if a.startswith(k)), a) for a in args]
    res = CliRunner().invoke(group, argv)  # the command's own click parsing, in this process
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    assert message.replace("MISSING", str(tmp_path / "MISSING")) in res.output, res.output
    error_lines = [line for line in res.output.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1 and res.exception is None or isinstance(res.exception, SystemExit)
    assert "cluster" not in res.output and not (tmp_path / "OUT").exists()


def test_bad_options_in_a_real_process_print_one_line(tmp_path: Path, fixtures_dir: Path) -> None:
    t0 = time.perf_counter()
    res = cli("run", str(fixtures_dir), "--out", str(tmp_path / "out"), "--mpp-override", "-0.5")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.strip().splitlines()[-1] == ("Error: Invalid value for '--mpp-override': -0.5 is not in the "
                                                   "range [0.05, 20] um/px")
    res = cli("tile", str(fixtures_dir / "small.svs"), "--out", str(tmp_path / "s.zarr"), "--mpp-override=-1")
    assert res.returncode == 2 and "Traceback" not in res.stderr and "'--mpp-override': -1 is not" in res.stderr
    res = cli("run", str(tmp_path / "missing"), "--out", str(tmp_path / "out"))
    assert res.returncode == 2 and f"{tmp_path / 'missing'}: no such file or folder" in res.stderr
    assert not (tmp_path / "out").exists() and time.perf_counter() - t0 < 120  # three interpreter starts


def test_help_is_plain_and_complete() -> None:
    import click

    top = cli("--help").stdout
    assert "..." not in top.split("Commands:")[1] and "Process slide files and folders" in top, top
    ctx = click.Context(group)
    commands = [(name, group.get_command(ctx, name)) for name in group.list_commands(ctx)]
    bench = dict(commands)["bench"]
    assert isinstance(bench, click.Group)
    commands += [(f"bench {n}", bench.get_command(ctx, n)) for n in bench.list_commands(ctx)]
    assert len(commands) == 6 + len(BENCHMARKS) and len(BENCHMARKS) >= 8
    for name, command in commands:
        assert command is not None and command.help, name
        undocumented = [p.name for p in command.params if isinstance(p, click.Option) and not p.help]
        assert not undocumented, (name, undocumented)
        text = CliRunner().invoke(group, [*name.split(), "--help"], prog_name="wsi-pipeline").output
        assert text.startswith("Usage: wsi-pipeline"), (name, text[:200])
        assert ":func:" not in text and ":mod:" not in text and "``" not in text, (name, text)


# -- the lock and interruption -------------------------------------------------------------------------------------
def test_lock_refuses_a_second_holder_and_survives_a_dead_one(tmp_path: Path) -> None:
    with output_lock(tmp_path / "out"):
        with pytest.raises(OutputLockedError, match=rf"{tmp_path / 'out'}: another wsi-pipeline job .*pid {os.getpid()}"):
            with output_lock(tmp_path / "out"):
                pass
    # a process that took the lock and was SIGKILLed: the kernel released it; the next run goes ahead
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from workflows.lock import output_lock\n"
            "with output_lock(sys.argv[2]):\n    print('held', flush=True); time.sleep(60)\n")
    holder = subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(tmp_path / "out")], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(OutputLockedError, match=f"pid {holder.pid}"):
        with output_lock(tmp_path / "out"):
            pass
    holder.kill()
    holder.wait()
    assert (tmp_path / "out" / LOCK_NAME).exists()  # left behind by the killed holder
    with output_lock(tmp_path / "out"):
        pass
    assert not (tmp_path / "out" / LOCK_NAME).exists()


def test_tile_refuses_a_store_another_job_is_writing(tmp_path: Path) -> None:
    slide = disc_slide(tmp_path / "d.svs", size=768)
    store = tmp_path / "out" / "small.zarr"
    with output_lock(store.parent, store=store.name):
        busy = cli("tile", str(slide), "--out", str(store))
        other = cli("tile", str(slide), "--out", str(store.with_name("other.zarr")))
    assert busy.returncode == 2 and f"{store}: another wsi-pipeline job is writing this store" in busy.stderr
    assert f"pid {os.getpid()}" in busy.stderr and not store.exists() and "Traceback" not in busy.stderr
    assert other.returncode == 0, other.stderr  # another store in the same folder is not blocked
    assert cli("tile", str(slide), "--out", str(store)).returncode == 0
    assert sorted(p.name for p in store.parent.iterdir()) == ["other.zarr", "small.zarr"]  # no lock left behind


def test_remove_stale_temps_takes_only_temps(tmp_path: Path) -> None:
    for name in (".glomeruli.geojson.abc123.tmp", "slide.zarr/seg/c/0/0.1f2e.partial", "keep.tmp", "keep.json"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    removed = sorted(p.name for p in remove_stale_temps(tmp_path))
    assert removed == [".glomeruli.geojson.abc123.tmp", "0.1f2e.partial"]
    assert (tmp_path / "keep.tmp").exists() and (tmp_path / "keep.json").exists()


def start_batch(tmp_path: Path, names: tuple[str, ...], *, sigint_ignored: bool = False
                ) -> tuple[subprocess.Popen[str], Path, Path, Path]:
    """``wsi-pipeline run`` on disc slides ``names`` in its own process group (like a shell job: Ctrl-C in a terminal
    signals the whole group), returned once the first slide's tiling has started: (process, slides, out, config).
    ``sigint_ignored``: started with SIGINT ignored, as a shell script's background job is."""
    slides = tmp_path / "in"
    slides.mkdir()
    for name in names:
        disc_slide(slides / f"{name}.svs")
    cfg = job_config_file(tmp_path / "models", save_models(tmp_path / "models"))
    out = tmp_path / "out"
    args = [sys.executable, "-m", "workflows.cli", "run", str(slides), "--out", str(out), "--config", str(cfg),
            "--task", "segment", "--workers", "1", "--threads-per-worker", "1", "--no-dashboard"]
    proc = subprocess.Popen(args, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if sigint_ignored
                            else None)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:  # the client's live stage lines (no terminal: one line per stage)
        seen.append(line)
        if f"{names[0]}.svs: tile started" in line:
            break
    assert (out / LOCK_NAME).exists(), seen
    return proc, slides, out, cfg


def assert_interrupted(proc: subprocess.Popen[str], out: Path) -> dict[str, str]:
    """The run ended as interrupted, cleanly: exit 130, one last line, the report says so, the lock is gone."""
    assert proc.stderr is not None
    rest, stdout = proc.stderr.read(), proc.stdout.read() if proc.stdout else ""
    assert proc.wait(timeout=120) == 130, (rest, stdout)
    for noise in ("Traceback", "KeyboardInterrupt", "still alive", "leaked", "WARNING", "CancelledError"):
        assert noise not in rest, rest
    lines = [line for line in rest.splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted: ") and "re-run the same command to resume" in lines[-1], rest
    report = json.loads((out / "report.json").read_text())
    assert report["totals"]["interrupted"] >= 1  # the slides still under way or waiting
    assert "interrupted" in (out / "report.md").read_text()
    assert not (out / LOCK_NAME).exists()
    return {Path(e["input"]).name: e["status"] for e in report["slides"]}


def test_sigterm_stops_a_run_like_ctrl_c(tmp_path: Path) -> None:
    proc, _, out, _ = start_batch(tmp_path, ("a", "b"))
    os.killpg(proc.pid, signal.SIGTERM)  # what a scheduler (SLURM, systemd, docker stop) sends
    status = assert_interrupted(proc, out)
    assert set(status) == {"a.svs", "b.svs"} and status["b.svs"] == "interrupted", status


@pytest.mark.parametrize("sigint_ignored", [False, True], ids=["terminal", "background-job"])
def test_sigint_stops_the_batch_cleanly_and_a_second_run_is_refused(tmp_path: Path, sigint_ignored: bool) -> None:
    first, slides, out, cfg = start_batch(tmp_path, ("a", "b", "c", "d"), sigint_ignored=sigint_ignored)
    # the first run is paused while the second tries (a busy machine would otherwise let the four small slides
    # finish before the Ctrl-C below); a stopped process keeps its lock
    os.killpg(first.pid, signal.SIGSTOP)
    try:
        second = cli("run", str(slides), "--out", str(out), "--config", str(cfg), "--workers", "1")
    finally:
        # Ctrl-C while still paused: it is pending when the group resumes, so the run meets it before any more work
        os.killpg(first.pid, signal.SIGINT)
        os.killpg(first.pid, signal.SIGCONT)
    assert second.returncode == 2 and "another wsi-pipeline job is writing this folder" in second.stderr
    assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr

    status = assert_interrupted(first, out)
    assert set(status) == {"a.svs", "b.svs", "c.svs", "d.svs"} and status["d.svs"] == "interrupted", status

    resumed = cli("run", str(slides), "--out", str(out), "--config", str(cfg), "--task", "segment", "--workers", "1",
                  "--threads-per-worker", "1", "--no-dashboard")
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads((out / "report.json").read_text())
    assert {e["status"] for e in report["slides"]} <= {"ok", "skipped"}
    assert stray_temps(out) == [], stray_temps(out)
    # a log file keeps each row of the summary on one line
    rows = [line for line in resumed.stdout.splitlines() if ".svs" in line]
    assert len(rows) == 4 and all(str(out) in row for row in rows), resumed.stdout


def test_every_long_stage_reports_progress(tmp_path: Path) -> None:
    from workflows.job_config import load_job_config
    from workflows.report import progress_text
    from workflows.slide_job import run_slide

    slide = disc_slide(tmp_path / "p.svs")
    config = load_job_config(job_config_file(tmp_path / "models", save_models(tmp_path / "models")))
    events: list[tuple[str, int, int]] = []
    entry = run_slide(slide, tmp_path / "out", config=config, workers=1, on_progress=lambda *e: events.append(e))
    assert entry["status"] == "ok" and entry["counts"]["glomeruli"] == 3, entry
    stages: dict[str, list[tuple[int, int]]] = {}
    for stage, done, total in events:
        stages.setdefault(stage, []).append((done, total))
    assert set(stages) == {"tile", "segment", "polygons", "classify"}, stages
    for stage, seen in stages.items():
        dones = [d for d, _ in seen]
        assert dones == sorted(dones) and seen[-1][0] == seen[-1][1] > 0, (stage, seen)
        assert len({t for _, t in seen}) == 1, (stage, seen)  # the total is known from the start
    assert stages["classify"][-1] == (3, 3)  # glomeruli classified
    assert progress_text("segment", 1, 4, 10.0) == "segment 1/4 blocks (25%), ETA 0m30s"
