"""Batch inputs and outputs: find slides in files/folders, write ``report.json``, print the summary table.

>>> is_slide_file(Path("a/b/biopsy.SVS")), is_slide_file(Path("notes.txt"))
(True, False)
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wsi_pipeline import __version__
from wsi_pipeline.atomic import atomic_write_json

#: extensions openslide or the tifffile backend open (MRXS: the .mrxs file; its data folder is found by openslide)
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm")
STATUSES = ("ok", "skipped", "no-tissue", "failed")


def is_slide_file(path: Path) -> bool:
    return path.suffix.lower() in SLIDE_SUFFIXES


def discover(inputs: Iterable[str | os.PathLike[str]], *, exclude: Sequence[Path] = ()) -> list[Path]:
    """Slide files among ``inputs``: files as given (any name), folders searched recursively by extension.

    Paths under ``exclude`` (the output folder) and hidden files are skipped; order is stable, duplicates dropped.
    A missing input is returned as is, so the job reports it as failed instead of silently dropping it.
    """
    excluded = [p.resolve() for p in exclude]
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for p in sorted(path.rglob("*")):
                if (p.is_file() and is_slide_file(p) and not p.name.startswith(".")
                        and not any(_under(p.resolve(), e) for e in excluded)):
                    found.append(p)
        else:
            found.append(path)
    seen: set[Path] = set()
    unique = []
    for p in found:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _under(path: Path, folder: Path) -> bool:
    try:
        path.relative_to(folder)
        return True
    except ValueError:
        return False


def unique_stems(paths: Sequence[Path], stem_of: Any) -> list[str]:
    """Output folder names: the slide stem, plus a short path hash where two inputs share a stem."""
    stems = [stem_of(p) for p in paths]
    counts = Counter(stems)
    return [s if counts[s] == 1 else f"{s}-{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:8]}"
            for s, p in zip(stems, paths)]


def write_report(out_dir: Path, entries: Sequence[dict[str, Any]], *, task: str, config: dict[str, Any]) -> Path:
    """``OUT_DIR/report.json`` (atomic): one entry per input plus totals."""
    totals = Counter(e["status"] for e in entries)
    report = {"pipeline": f"wsi-pipeline {__version__}", "task": task,
              "finished": datetime.now(UTC).isoformat(),
              "totals": {s: totals.get(s, 0) for s in STATUSES}, "config": config, "slides": list(entries)}
    return atomic_write_json(out_dir / "report.json", report)


def summary_table(entries: Sequence[dict[str, Any]], *, title: str = "wsi-pipeline run") -> Any:
    """A rich table: slide, status, glomeruli / classes, seconds, reason."""
    from rich.table import Table

    colours = {"ok": "green", "skipped": "cyan", "no-tissue": "yellow", "failed": "red"}
    table = Table(title=title)
    for col in ("slide", "status", "glomeruli", "classes", "stages run", "s", "reason / output"):
        table.add_column(col, overflow="fold")
    for e in entries:
        counts = e.get("counts") or {}
        classes = counts.get("classes") or {}
        glom = counts.get("glomeruli", counts.get("features", ""))
        table.add_row(Path(e["input"]).name, f"[{colours.get(e['status'], 'white')}]{e['status']}[/]", str(glom),
                      ", ".join(f"{k} {v}" for k, v in sorted(classes.items())),
                      ",".join(e.get("stages_run") or []) or "-", f"{e.get('seconds', 0):.1f}",
                      e.get("reason") or e.get("output", ""))
    return table


__all__ = ["SLIDE_SUFFIXES", "STATUSES", "discover", "is_slide_file", "summary_table", "unique_stems",
           "write_report"]
