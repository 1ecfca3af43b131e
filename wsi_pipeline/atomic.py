"""Atomic file output: write to a hidden temp name in the destination folder, then ``os.replace``.

A killed writer leaves the previous file or none, never half a file; a failed writer leaves no temp behind.

>>> import tempfile, pathlib
>>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
>>> _ = atomic_write_text(p, "done")
>>> p.read_text()
'done'
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a hidden temp path next to ``path``; on success it replaces ``path``, on error it is removed.

    The temp name ends in ``suffix`` (``.tmp``), so folder scans by slide extension never pick it up; pass the
    real suffix only for writers that dispatch on it (e.g. ``".ome.tif"``).
    """
    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix, dir=dest.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.is_file():  # mkstemp makes 0600 files; results are shared, so give them the usual umask mode
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (fsync'd before the rename); returns the path."""
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically; returns the path."""
    return atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=False, default=str) + "\n")


def remove_stale_temps(folder: str | os.PathLike[str], *, recursive: bool = True) -> list[Path]:
    """Delete what killed writers left in ``folder``: :func:`atomic_output`'s hidden ``.*.tmp`` files and zarr's
    (and the tiling store's) ``*.partial`` chunk files; returns them. Call it only while no writer is active (the
    job holds the output folder's lock)."""
    root = Path(folder)
    if not root.is_dir():
        return []
    found = root.rglob("*") if recursive else root.iterdir()
    stale = [p for p in found if (p.name.startswith(".") and p.name.endswith(".tmp")) or p.name.endswith(".partial")]
    removed = []
    for p in stale:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            p.unlink()
            removed.append(p)
    return removed
