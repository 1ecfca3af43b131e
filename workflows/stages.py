"""Stage bookkeeping of the slide job, and the weights/model loaders it hands to Dask tasks.

Each stage of a slide writes its outputs first and then a marker ``OUT/<stem>/stages/<stage>.done.json`` (atomic)
holding the stage's *digest*: a hash of its settings, the checksums of the models it used and the digests of the
stages it read from. A re-run skips a stage whose marker has the same digest and whose outputs all exist; a changed
setting or model changes that stage's digest and, through the chain, exactly the digests of the stages downstream.

>>> digest_of({"a": 1}, "x") == digest_of({"a": 1}, "x")
True
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from wsi_pipeline import __version__
from wsi_pipeline.atomic import atomic_write_json
from wsi_pipeline.errors import WeightsError
from wsi_pipeline.infer.predictor import TorchPredictor
from wsi_pipeline.models.registry import ModelRecord, load_model

STAGES_DIR = "stages"


def digest_of(*parts: Any) -> str:
    """SHA-256 of the JSON form of ``parts`` and the pipeline version (a new release recomputes everything)."""
    text = json.dumps([__version__, *parts], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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


# -- weights -------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class WeightsRef:
    """Resolved weights: the file, its SHA-256 and where the reference came from (shipped name or path)."""

    path: Path
    sha256: str
    shipped: bool

    @property
    def label(self) -> str:
        return f"{self.path.name} sha256:{self.sha256[:16]}" + (" (shipped)" if self.shipped else "")


def resolve_weights(ref: str, *, base_dir: str | Path | None = None) -> WeightsRef:
    """A shipped weights name (checked against its sidecar) or a checkpoint path; ``WeightsError`` names the file."""
    from wsi_pipeline.weights import KNOWN, default_weights

    if ref in KNOWN:
        path = default_weights(ref)  # raises WeightsError when missing or tampered with
        sha = path.with_name(path.name + ".sha256").read_text(encoding="utf-8").split()[0]
        return WeightsRef(path, sha, True)
    path = Path(ref).expanduser()
    if not path.is_absolute() and base_dir is not None and (Path(base_dir) / path).exists():
        path = Path(base_dir) / path
    path = path.resolve()
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found (from reference {ref!r})")
    return WeightsRef(path, file_sha256(path), False)


def load_checked(ref: WeightsRef, *, arch: Sequence[str]) -> tuple[Any, ModelRecord]:
    """Load ``ref`` through the registry (checksum verified) and require one of the architectures ``arch``."""
    model, record = load_model(ref.path, expected_sha256=ref.sha256)
    if record.arch not in arch:
        raise WeightsError(f"{ref.path}: arch {record.arch!r}, expected {' or '.join(arch)}")
    return model, record


def segmenter_predictor(path: str, sha256: str, device: str = "auto") -> TorchPredictor:
    """The segmenter as a tiled-inference predictor (sigmoid probabilities; module level so it pickles)."""
    model, _ = load_checked(WeightsRef(Path(path), sha256, False), arch=("unet_resnet34",))
    return TorchPredictor(model, device=device, activation="sigmoid")


__all__ = ["STAGES_DIR", "StageBook", "StageRecord", "Stopwatch", "WeightsRef", "digest_of", "file_sha256",
           "load_checked", "resolve_weights", "segmenter_predictor"]
