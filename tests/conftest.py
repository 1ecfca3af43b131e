"""Shared fixtures: paths to the real data in ../shared/data (read in place, never written)."""

from __future__ import annotations

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
