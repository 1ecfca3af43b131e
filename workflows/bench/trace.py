"""Tracing benchmark: what one slide job costs in repeated work (slide opens, weight-file hashes, network builds,
reads of the tiled store's record), counted by wrapping the real functions, never by replacing what they do.

    python -m workflows.bench.trace SLIDE --out DIR [--task full] [--workers 1]

Runs the job twice in this process (fresh, then resumed) and prints the counts of each run as JSON. The counters
wrap: the slide backends' constructors (every open, including the tifffile handle a direct tile decoder opens),
``hashlib.sha256`` (a hash counts when the bytes it digested are as many as a weights file's), the ``build()`` of
every registered architecture config (outermost only: a G2C build counts once, not once per generator) and reads
of the store's ``wsi_pipeline`` attribute. They apply to any version of the job, so the same script measures a
checkout before and after a change.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import click

from .common import namespace, threads_options

__all__ = ["counting", "main"]


@contextlib.contextmanager
def counting(weight_files: Iterable[str | Path]) -> Iterator[Counter[str]]:
    """Count slide opens, weight hashes, network builds and store-record reads while the block runs."""
    from zarr.core.attributes import Attributes

    from wsi_pipeline.models.registry import ARCHITECTURES
    from wsi_pipeline.slide.openslide_backend import OpenSlideSlide
    from wsi_pipeline.slide.tifffile_backend import TiffSlide

    counts: Counter[str] = Counter()
    sizes = {Path(p).stat().st_size for p in weight_files}
    undo: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, name: str, make: Any) -> None:
        original = getattr(owner, name)
        undo.append((owner, name, original))
        setattr(owner, name, make(original))

    for cls in (OpenSlideSlide, TiffSlide):
        def opened(init: Any) -> Any:
            def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
                counts["slide_opens"] += 1
                return init(self, *args, **kwargs)
            return counted
        wrap(cls, "__init__", opened)

    real_sha256 = hashlib.sha256

    class CountingSha256:
        def __init__(self, data: bytes = b"", **kwargs: Any) -> None:
            self._h, self._n = real_sha256(data, **kwargs), len(data)

        def update(self, data: bytes) -> None:
            self._n += len(data)
            self._h.update(data)

        def hexdigest(self) -> str:
            if self._n in sizes:
                counts["weight_hashes"] += 1
            return self._h.hexdigest()

        def digest(self) -> bytes:
            return self._h.digest()

    wrap(hashlib, "sha256", lambda _original: CountingSha256)

    depth = [0]
    for arch, cfg in ARCHITECTURES.items():
        def built(build: Any, arch: str = arch) -> Any:
            def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
                if depth[0] == 0:
                    counts[f"network_builds[{arch}]"] += 1
                depth[0] += 1
                try:
                    return build(self, *args, **kwargs)
                finally:
                    depth[0] -= 1
            return counted
        wrap(cfg, "build", built)

    def read(getitem: Any) -> Any:
        def counted(self: Any, key: str) -> Any:
            if key == "wsi_pipeline":
                counts["store_record_reads"] += 1
            return getitem(self, key)
        return counted
    wrap(Attributes, "__getitem__", read)
    try:
        yield counts
    finally:
        for owner, name, original in reversed(undo):
            setattr(owner, name, original)


@click.command(name="trace")
@click.argument("slide", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Output folder of the traced job.")
@click.option("--task", default="full", show_default=True, type=click.Choice(["full", "segment", "translate"]),
              help="The job's task.")
@threads_options(1, "Threads of the slide job (Dask's threaded scheduler and PyTorch).")
def command(**kw: Any) -> None:
    """Repeated work of one slide job, fresh and resumed: slide opens, weight hashes, network builds, store reads."""
    _run(namespace(kw))


def main(argv: list[str] | None = None) -> None:
    command.main(args=argv, prog_name="wsi-pipeline bench trace")


def _run(args: Any) -> None:
    from wsi_pipeline.weights import WEIGHTS_DIR
    from workflows.job_config import JobConfig
    from workflows.slide_job import run_slide

    result: dict[str, Any] = {}
    for run in ("fresh", "resume"):
        with counting(WEIGHTS_DIR.glob("*.safetensors")) as counts:
            t0 = time.perf_counter()
            entry = run_slide(args.slide, args.out, config=JobConfig(), task=args.task, workers=args.workers)
            seconds = time.perf_counter() - t0
        result[run] = {"status": entry["status"], "seconds": round(seconds, 2), "stages_run": entry["stages_run"],
                       **dict(sorted(counts.items()))}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
