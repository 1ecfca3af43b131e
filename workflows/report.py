"""Batch inputs and outputs: find slides in files/folders, write ``report.json`` and ``report.md``, show the live
progress of a batch, print the summary table.

>>> is_slide_file(Path("a/b/biopsy.SVS")), is_slide_file(Path("notes.txt"))
(True, False)
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wsi_pipeline import __version__
from wsi_pipeline.atomic import atomic_write_json, atomic_write_text

#: extensions openslide or the tifffile backend open (MRXS: the .mrxs file; its data folder is found by openslide)
SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm")
STATUSES = ("ok", "skipped", "no-tissue", "failed", "interrupted")


#: our own non-slide TIFFs found next to slides (the phantom's label masks, ``wsi-pipeline synth``)
NOT_SLIDE_SUFFIXES = (".labels.tif", ".labels.tiff")


def is_slide_file(path: Path) -> bool:
    name = path.name.lower()
    return path.suffix.lower() in SLIDE_SUFFIXES and not name.endswith(NOT_SLIDE_SUFFIXES)


def discover(inputs: Iterable[str | os.PathLike[str]], *, exclude: Sequence[Path] = ()) -> list[Path]:
    """Slide files among ``inputs``: files as given (any name), folders searched recursively by extension.

    Paths under ``exclude`` (the output folder) and hidden files are skipped; order is stable, duplicates dropped.
    A multi-file slide is one entry: an ``X.mrxs`` stands for its data folder ``X/`` (never scanned), and the
    ``.dcm`` files of one DICOM series in one folder are one slide (the first file by name). A missing input is
    returned as is, so the job reports it as failed instead of silently dropping it.
    """
    excluded = [p.resolve() for p in exclude]
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(_scan(path, excluded))
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


def _scan(folder: Path, excluded: Sequence[Path]) -> list[Path]:
    files = [p for p in sorted(folder.rglob("*"))
             if p.is_file() and is_slide_file(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
             and not any(_under(p.resolve(), e) for e in excluded)]
    data_dirs = [p.with_suffix("").resolve() for p in files if p.suffix.lower() == ".mrxs"]
    files = [p for p in files if not any(_under(p.resolve(), d) for d in data_dirs)]
    return _one_per_dicom_series(files)


def _one_per_dicom_series(files: list[Path]) -> list[Path]:
    """Keep the first ``.dcm`` of each (folder, SeriesInstanceUID); unreadable ones stay (they will be reported)."""
    kept: list[Path] = []
    series: set[tuple[Path, str]] = set()
    for p in files:
        uid = _dicom_series(p) if p.suffix.lower() == ".dcm" else None
        if uid is not None:
            if (p.parent, uid) in series:
                continue
            series.add((p.parent, uid))
        kept.append(p)
    return kept


def _dicom_series(path: Path) -> str | None:
    """The SeriesInstanceUID (0020,000E) from a DICOM file's header bytes (explicit or implicit VR), else None.

    Read directly: opening every file of a large series with openslide would scan the whole folder each time.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(1 << 20)
    except OSError:
        return None
    if head[128:132] != b"DICM":
        return None
    at = head.find(b"\x20\x00\x0e\x00", 132)
    while at != -1:
        if head[at + 4:at + 6] == b"UI":  # explicit VR: 2-byte length
            size, start = int.from_bytes(head[at + 6:at + 8], "little"), at + 8
        else:  # implicit VR: 4-byte length
            size, start = int.from_bytes(head[at + 4:at + 8], "little"), at + 8
        if 0 < size <= 64:
            uid = head[start:start + size].rstrip(b"\0 ").decode("ascii", "replace")
            if uid.replace(".", "").isdigit():
                return uid
        at = head.find(b"\x20\x00\x0e\x00", at + 1)
    return None


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


def write_markdown(out_dir: Path, entries: Sequence[dict[str, Any]], *, task: str,
                   notes: Sequence[str] = ()) -> Path:
    """``OUT_DIR/report.md`` (atomic): totals, ``notes`` (cluster, throughput) and one table row per input."""
    totals = Counter(e["status"] for e in entries)
    lines = [f"# wsi-pipeline run --task {task}", "",
             f"{len(entries)} slides: " + ", ".join(f"{totals.get(s, 0)} {s}" for s in STATUSES), ""]
    lines += [f"- {n}" for n in notes] + ([""] if notes else [])
    lines += ["| slide | status | stain | glomeruli | classes | stages run | s | reason / output |",
              "|---|---|---|---:|---|---|---:|---|"]
    for e in entries:
        counts = e.get("counts") or {}
        classes = ", ".join(f"{k} {v}" for k, v in sorted((counts.get("classes") or {}).items()))
        cells = [Path(e["input"]).name, e["status"], str(counts.get("stain", "")),
                 str(counts.get("glomeruli", counts.get("features", ""))),
                 classes, ",".join(e.get("stages_run") or []) or "-", f"{e.get('seconds', 0):.1f}",
                 "; ".join([e.get("reason") or e.get("output", ""), *(counts.get("warnings") or [])])]
        lines.append("| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    return atomic_write_text(out_dir / "report.md", "\n".join(lines) + "\n")


def summary_table(entries: Sequence[dict[str, Any]], *, title: str = "wsi-pipeline run") -> Any:
    """A rich table: slide, status, glomeruli / classes, seconds, reason."""
    from rich.table import Table

    colours = {"ok": "green", "skipped": "cyan", "no-tissue": "yellow", "failed": "red", "interrupted": "magenta"}
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


#: what one unit of a stage's progress counts
STAGE_UNITS = {"tile": "tasks", "segment": "blocks", "polygons": "chunks", "classify": "glomeruli"}


def stage_unit(stage: str) -> str:
    return STAGE_UNITS.get(stage, "blocks")  # translate-<STAIN>: blocks of chunks, like segment


def progress_text(stage: str, done: int, total: int, elapsed: float) -> str:
    """One line of a stage's progress with its ETA (from the rate so far).

    >>> progress_text("segment", 30, 120, 60.0)
    'segment 30/120 blocks (25%), ETA 3m00s'
    """
    pct = f" ({100 * done // total}%)" if total else ""
    eta = ""
    if 0 < done < total and elapsed > 0:
        left = elapsed / done * (total - done)
        eta = f", ETA {int(left // 60)}m{int(left % 60):02d}s"
    return f"{stage} {done}/{total} {stage_unit(stage)}{pct}{eta}"


class StageBars:
    """Console progress of one slide job in this process: a tqdm bar with rate and ETA per stage
    (``run_slide(..., progress=True)``: ``demo``, the benchmarks)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._bar: Any = None
        self._stage: str | None = None
        self._lock = threading.Lock()

    def __call__(self, stage: str, done: int, total: int) -> None:
        from tqdm.auto import tqdm

        with self._lock:
            if stage != self._stage or self._bar is None:
                if self._bar is not None:
                    self._bar.close()
                self._stage = stage
                self._bar = tqdm(total=total, desc=f"{stage} {self.name}", unit=stage_unit(stage).rstrip("s"))
            self._bar.total = total
            self._bar.update(done - self._bar.n)
            if done >= total:
                self._bar.close()
                self._bar = None


def print_summary(entries: Sequence[dict[str, Any]], *, title: str = "wsi-pipeline run", file: Any = None) -> None:
    """Print :func:`summary_table` to stdout (or ``file``); written to a file or a pipe the table is as wide as its
    longest row instead of 80 columns, so reasons stay on one line in a log."""
    from rich.console import Console

    console = Console(file=file)
    if not console.is_terminal:
        console = Console(file=file, width=100_000, no_color=True)
    table = summary_table(entries, title=title)
    if not console.is_terminal:
        table.title_justify = "left"
        for column in table.columns:
            column.overflow = "ignore"
            column.no_wrap = True
    console.print(table)


class BatchProgress:
    """Live display of a running batch (rich): slides done/failed, throughput, slides in flight and their stage.

    Use as ``on_event`` of :func:`workflows.batch.run_batch` inside ``with``; without a terminal (CI, logs) it
    prints one line per finished slide instead.
    """

    def __init__(self, console: Any, *, total: int) -> None:
        self.console, self.total = console, total
        self.state: Any = None
        self._live: Any = None
        self._printed: dict[int, float] = {}

    def __enter__(self) -> BatchProgress:  # noqa: PYI034  (final class)
        if self.console.is_terminal:
            from rich.live import Live

            self._live = Live(get_renderable=self.render, console=self.console, refresh_per_second=2)
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()

    #: without a terminal, seconds between two progress lines of one slide
    LINE_EVERY_S = 10.0

    def __call__(self, state: Any, event: dict[str, Any]) -> None:
        self.state = state
        if self._live is None and event.get("kind") in ("stage", "progress"):
            s = state.slides[event["index"]]
            now = time.monotonic()
            last = self._printed.get(s.index)
            if event["kind"] == "stage" or last is None or now - last >= self.LINE_EVERY_S:
                self._printed[s.index] = now
                text = _slide_progress(s, now) if event["kind"] == "progress" else f"{event['stage']} started"
                self.console.print(f"  {s.path.name}: {text}", markup=False, highlight=False)
        if self._live is None and event.get("kind") == "done":
            s = state.slides[event["index"]]
            reason = f": {s.entry['reason']}" if s.entry.get("reason") else ""
            self.console.print(f"[{len(state.finished)}/{self.total}] {s.path.name} {event['status']}{reason}",
                               markup=False, highlight=False)

    def render(self) -> Any:
        from rich.console import Group
        from rich.table import Table

        if self.state is None:
            return f"0/{self.total} slides: starting (workers load the models on their first slide)"
        totals = self.state.totals()
        elapsed = time.monotonic() - self.state.t0
        head = (f"{len(self.state.finished)}/{self.total} slides  ok {totals['ok']}  skipped {totals['skipped']}  "
                f"no-tissue {totals['no-tissue']}  [red]failed {totals['failed']}[/]  "
                f"{self.state.per_hour():.1f} slides/h  {elapsed:.0f} s")
        running = self.state.running
        if not running:
            return head
        table = Table(box=None, show_header=True, pad_edge=False)
        for col in ("running", "step", "progress", "worker", "s"):
            table.add_column(col)
        now = time.monotonic()
        for s in running:
            started = s.started or now  # the runner's thread may reset it meanwhile
            table.add_row(s.path.name, s.step or "", _slide_progress(s, now), s.worker or "", f"{now - started:.0f}")
        return Group(head, table)


def _slide_progress(s: Any, now: float) -> str:
    """The stage line of a running slide: its stage, units done of total and ETA when its worker reported them."""
    progress = s.progress
    if progress is None or progress[0] != s.stage:
        return s.stage or ""
    stage, done, total, since = progress
    return progress_text(stage, done, total, now - since)


__all__ = ["SLIDE_SUFFIXES", "STAGE_UNITS", "STATUSES", "BatchProgress", "StageBars", "print_summary", "progress_text", "discover", "is_slide_file", "summary_table",
           "unique_stems", "write_markdown", "write_report"]
