"""Stage bookkeeping of the slide job.

Each stage of a slide writes its outputs first and then a marker ``OUT/<stem>/stages/<stage>.done.json`` (atomic)
holding the stage's *digest*: a hash of its settings, the checksums of the models it used and the digests of the
stages it read from. A re-run skips a stage whose marker has the same digest and whose outputs all exist; a changed
setting or model changes that stage's digest and, through the chain, exactly the digests of the stages downstream.

>>> digest_of({"a": 1}, "x") == digest_of({"a": 1}, "x")
True
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wsi_pipeline.atomic import atomic_write_json
from wsi_pipeline.config import digest_of
from wsi_pipeline.models.registry import file_sha256

STAGES_DIR = "stages"


@dataclass(frozen=True)
class StageRecord:
    """What a finished stage left behind (the marker's content)."""

    name: str
    digest: str
    seconds: float
    finished: str  # ISO 8601 UTC
    outputs: tuple[str, ...]  # paths relative to the slide folder
    counts: dict[str, Any]


class StageBook:
    """Completion markers of one slide folder."""

    def __init__(self, slide_dir: str | Path) -> None:
        self.slide_dir = Path(slide_dir).resolve()  # outputs are recorded relative to it, whatever the cwd
        self.folder = self.slide_dir / STAGES_DIR

    def marker(self, name: str) -> Path:
        return self.folder / f"{name}.done.json"

    def done(self, name: str, digest: str) -> StageRecord | None:
        """The stage's record when it finished with ``digest`` and its outputs still exist, else ``None``."""
        try:
            data = json.loads(self.marker(name).read_text(encoding="utf-8"))
            record = StageRecord(data["name"], data["digest"], float(data["seconds"]), data["finished"],
                                 tuple(data["outputs"]), dict(data["counts"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if record.digest != digest:
            return None
        if not all((self.slide_dir / p).exists() for p in record.outputs):
            return None
        return record

    def forget(self, name: str) -> None:
        """Drop a marker before its stage re-runs (a crash then leaves no marker at all)."""
        self.marker(name).unlink(missing_ok=True)

    def mark(self, name: str, digest: str, *, seconds: float, outputs: Sequence[str | Path],
             counts: dict[str, Any] | None = None) -> StageRecord:
        """Record completion; call it after every output is in place (the marker is the last write)."""
        rel = tuple(str(Path(p).resolve().relative_to(self.slide_dir)) for p in outputs)
        record = StageRecord(name, digest, round(seconds, 4), datetime.now(UTC).isoformat(), rel,
                             dict(counts or {}))
        atomic_write_json(self.marker(name), record.__dict__)
        return record


class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.seconds``."""

    def __enter__(self) -> Stopwatch:  # noqa: PYI034  (final class)
        self._t0 = time.perf_counter()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0


__all__ = ["STAGES_DIR", "StageBook", "StageRecord", "Stopwatch", "digest_of", "file_sha256"]
