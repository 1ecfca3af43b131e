"""Shared fixtures: paths to the real data in ../shared/data (read in place, never written)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FIXTURES = SHARED / "openslide-fixtures"
STAINS = SHARED / "kidney-stains"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"shared test data missing: {FIXTURES}")
    return FIXTURES


@pytest.fixture(scope="session")
def stains_dir() -> Path:
    if not STAINS.is_dir():
        pytest.fail(f"shared test data missing: {STAINS}")
    return STAINS


def _finished_markers(done_dir: Path) -> dict[Path, int]:
    """Block markers a tiling run has finished, with their mtimes (a marker still being written is a hidden temp)."""
    return {p: p.stat().st_mtime_ns for p in done_dir.glob("*/*") if not p.name.startswith(".")}


@pytest.fixture
def sigkill_after_markers() -> Callable[[subprocess.Popen[bytes], Path, int], dict[Path, int]]:
    """SIGKILL a tiling subprocess once ``n`` block markers are finished; return the finished markers."""

    def kill(proc: subprocess.Popen[bytes], done_dir: Path, n: int) -> dict[Path, int]:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if done_dir.is_dir() and len(_finished_markers(done_dir)) >= n:
                break
            time.sleep(0.002)
        assert proc.poll() is None, "tiling finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        return _finished_markers(done_dir)

    return kill
