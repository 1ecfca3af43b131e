"""One error hierarchy for the whole project.

Every error subclasses :class:`WsiPipelineError` and also the builtin it refines, so callers can catch either.
Messages name the file, the parameter and its value.
"""

from __future__ import annotations

from pathlib import Path


class WsiPipelineError(Exception):
    """Root of all wsi-pipeline errors."""


class SlideError(WsiPipelineError, OSError):
    """A slide cannot be opened or read; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # keep picklable across dask workers
        return (type(self), (self.path, self.reason))


class NoTissueError(WsiPipelineError, ValueError):
    """A slide holds no detectable tissue (an outcome, reported as status ``no-tissue``)."""


class ConfigError(WsiPipelineError, ValueError):
    """A configuration file or option is invalid."""


class StoreError(WsiPipelineError, OSError):
    """A zarr store is missing, damaged, or was written with different settings."""


class WeightsError(WsiPipelineError, OSError):
    """Model weights are missing, tampered with, unsafe, or do not match their architecture record."""


class AnnotationError(WsiPipelineError, ValueError):
    """A GeoJSON annotation file cannot be read or holds invalid geometry."""


class DataError(WsiPipelineError, ValueError):
    """A training or scoring data folder (labelled images, masks, crops) is missing, malformed or inconsistent."""
