"""What the benchmarks share."""

from __future__ import annotations

import json
import resource
from pathlib import Path
from types import SimpleNamespace
from typing import Any


def peak_rss_mib() -> float:
    """This process's own peak resident set size in MiB: the kernel's ``VmHWM`` of its address space.

    Not ``ru_maxrss``: Linux carries that across ``fork`` + ``exec``, so a process started by a big parent (a
    benchmark driver holding a slide, a Dask nanny) would report the parent's size instead of its own.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # elsewhere: KiB on Linux, the best there is


def save_results(out: Path, results: dict[str, Any], text: str) -> None:
    """A benchmark's ``results.json`` and ``results.md`` in ``out``; the markdown is printed too."""
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(text)
    print(text)


def threads_options(default: int, what: str) -> Any:
    """``--threads N`` (threads of one slide job: Dask's threaded scheduler and PyTorch) and its old spelling
    ``--workers`` (hidden; ``--workers`` counts worker processes everywhere else), stored as ``workers``."""
    import click

    def decorate(fn: Any) -> Any:
        fn = click.option("--workers", "legacy_workers", type=click.IntRange(min=1), default=None, hidden=True,
                          help="Old name of --threads.")(fn)
        return click.option("--threads", "workers", type=click.IntRange(min=1), default=default, show_default=True,
                            help=what)(fn)

    return decorate


def namespace(kw: dict[str, Any]) -> SimpleNamespace:
    """The parsed options as attributes (``--workers`` folded into ``--threads``)."""
    legacy = kw.pop("legacy_workers", None)
    if legacy is not None:
        kw["workers"] = legacy
    return SimpleNamespace(**kw)
