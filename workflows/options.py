"""Command-line values checked by click before any work starts (no cluster, no model, no file written): finite
numbers in range, inputs that exist, an output folder that can be written. Bad values end in click's usual
``Error: Invalid value for '--X': ...`` line, never a traceback.

    >>> MPP.convert("0.25", None, None)
    0.25
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import click

from wsi_pipeline.slide.scale import MPP_RANGE


class FiniteFloat(click.ParamType):
    """A finite float in ``[low, high]`` (``low`` excluded when ``low_open``): click's ``FloatRange`` lets
    ``nan`` through."""

    name = "float"

    def __init__(self, low: float | None = None, high: float | None = None, *, low_open: bool = False,
                 unit: str = "") -> None:
        self.low, self.high, self.low_open, self.unit = low, high, low_open, unit

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        below = self.low is not None and (number <= self.low if self.low_open else number < self.low)
        above = self.high is not None and number > self.high
        if below or above:
            self.fail(f"{value} is not in {self.describe()}", param, ctx)
        return number

    def describe(self) -> str:
        lo = "" if self.low is None else f"{self.low:g}"
        hi = "" if self.high is None else f"{self.high:g}"
        unit = f" {self.unit}" if self.unit else ""
        if self.high is None:
            return f"the range {'>' if self.low_open else '>='} {lo}{unit}"
        return f"the range {'(' if self.low_open else '['}{lo}, {hi}]{unit}"

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:  # noqa: ARG002
        return "FLOAT"


#: a level-0 resolution a slide scanner can produce (``--mpp-override``)
MPP = FiniteFloat(*MPP_RANGE, unit="um/px")
#: a target resolution to tile or segment at
TARGET_MPP = FiniteFloat(0.0, 1000.0, low_open=True, unit="um/px")
POSITIVE_SECONDS = FiniteFloat(0.0, unit="s")


def writable_folder(path: Path, option: str) -> Path:
    """``path`` as a folder this process can write (created if needed, a probe file written and removed); else
    click's one-line error naming the option, the folder and the reason."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise click.BadParameter(f"{probe} is a file, not a folder", param_hint=option)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path, prefix=".wsi-pipeline-probe-"):
            pass
    except OSError as exc:
        raise click.BadParameter(f"{path}: cannot write there ({exc.strerror or exc})", param_hint=option) from None
    return path


def existing_inputs(paths: tuple[Path, ...], option: str = "INPUT") -> tuple[Path, ...]:
    """Every input exists (a slide file or a folder); else click's one-line error naming the first missing one."""
    for p in paths:
        if not p.exists():
            raise click.BadParameter(f"{p}: no such file or folder", param_hint=option)
    return paths


def legacy_workers(threads: int | None, workers: int | None, *, default: int | None) -> int | None:
    """``--threads``, or the old ``--workers`` spelling of single-slide commands (``--workers`` now always means
    worker processes: ``wsi-pipeline run``)."""
    if threads is not None and workers is not None and threads != workers:
        raise click.UsageError("--workers is the old name of --threads here: give one of them")
    return threads if threads is not None else workers if workers is not None else default


__all__ = ["MPP", "POSITIVE_SECONDS", "TARGET_MPP", "FiniteFloat", "existing_inputs", "legacy_workers",
           "writable_folder"]
