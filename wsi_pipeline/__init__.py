"""wsi-pipeline: gigapixel kidney-biopsy slides -> glomerulus annotations for QuPath."""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

__version__ = "0.1.0"


def _register_zarr_codecs() -> None:
    from . import jpeg_codec  # noqa: F401  (registers ``wsi_pipeline.jpeg`` with zarr on import)


class _RegisterAfterZarr:
    """Registers our zarr codecs as soon as zarr is imported.

    Importing zarr here would cost every ``wsi-pipeline`` call half a second; the ``zarr.codecs`` entry point
    covers installed copies, this covers a source checkout on ``sys.path``.
    """

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "zarr":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        loader = getattr(spec, "loader", None)
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            del loader.exec_module  # back to the class's method
            _register_zarr_codecs()

        loader.exec_module = exec_module
        return spec


if "zarr" in sys.modules:
    _register_zarr_codecs()
else:
    sys.meta_path.insert(0, _RegisterAfterZarr())
