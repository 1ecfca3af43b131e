"""One run per output folder: an exclusive lock on ``OUT_DIR/.wsi-pipeline.lock`` (``tile``: one per store,
``.<store name>.lock`` beside it, so stores in one folder can still be tiled side by side).

An OS file lock (``flock``) is released by the kernel when its process dies, however it dies, so a lock left by a
killed run never blocks the next one; the file itself only says who holds it (pid, host, command, start time).

    >>> with output_lock(out_dir):  # doctest: +SKIP
    ...     run_batch(...)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

from wsi_pipeline.errors import WsiPipelineError

LOCK_NAME = ".wsi-pipeline.lock"


class OutputLockedError(WsiPipelineError, RuntimeError):
    """The output folder is being written by another running job."""


@contextlib.contextmanager
def output_lock(out_dir: str | os.PathLike[str], *, store: str | None = None) -> Iterator[Path]:
    """Hold the output folder's lock (or, with ``store``, the lock of that store in the folder) for the block;
    ``OutputLockedError`` naming the holder when another live process holds it. The folder is created if needed."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / (LOCK_NAME if store is None else f".{store}.lock")
    what = f"{out}: another wsi-pipeline job is writing this folder" if store is None else \
        f"{out / store}: another wsi-pipeline job is writing this store"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(path)
            os.close(fd)
            raise OutputLockedError(f"{what} ({holder}); wait for it to finish or stop it, or choose another "
                                    f"--out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its previous holder unlinked while we opened it
            break
        os.close(fd)
    try:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": datetime.now(UTC).isoformat(),
                "command": " ".join(sys.argv[1:3])}
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # still held: a job opening it now finds a stale inode and retries on a fresh file
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _describe(path: Path) -> str:
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        return "holder unknown"
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')}, `wsi-pipeline {info.get('command', '')}` "
            f"since {info.get('since', '?')}")


__all__ = ["LOCK_NAME", "OutputLockedError", "output_lock"]
