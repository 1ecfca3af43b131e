"""Every example in the package's docstrings runs and prints what it says (examples that need a slide or a
folder on disk are marked ``# doctest: +SKIP`` in place)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted(m.name for pkg in ("wsi_pipeline", "workflows")
                 for m in pkgutil.walk_packages([str(ROOT / pkg)], prefix=f"{pkg}.")
                 if not m.name.endswith("__main__"))


@pytest.mark.parametrize("package", ["wsi_pipeline", "workflows"])
def test_docstring_examples_run(package: str) -> None:
    failed, tried = [], 0
    for name in (n for n in [package, *MODULES] if n.split(".")[0] == package):
        result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS, report=False)
        tried += result.attempted
        if result.failed:
            failed.append(f"{name}: {result.failed} of {result.attempted}")
    assert not failed, failed
    assert tried > (40 if package == "wsi_pipeline" else 0)
