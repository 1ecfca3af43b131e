"""Tiling a slide's tissue into a zarr v3 store, and the store's format: the one place that knows it.

* :mod:`.plan`: settings (:class:`TileConfig`) and pure geometry / pixel kernels (no I/O);
* :mod:`.store`: the store's record (:class:`StoreInfo`, :class:`StoreGeometry`), tissue chunks and mask;
* :mod:`.shards`: array layout, chunk codecs and direct shard I/O; :mod:`.codec`: the ``wsi_pipeline.jpeg``
  zarr codec (registered here, and through the ``zarr.codecs`` entry point for plain zarr readers);
* :mod:`.tasks`: what runs in the Dask workers; :mod:`.run`: the driver, :func:`tile_slide`.

    >>> from wsi_pipeline.tiling import TileConfig, read_store_info, tile_slide
    >>> res = tile_slide("slide.svs", "slide.zarr", config=TileConfig(mpp=2.0))  # doctest: +SKIP
    >>> read_store_info("slide.zarr").geometry.mpp  # doctest: +SKIP
    2.0
"""

from __future__ import annotations

from .codec import register as _register_codec
from .plan import TileConfig
from .run import TileResult, tile_slide
from .store import (
    STORE_FORMAT,
    StoreGeometry,
    StoreInfo,
    read_store_info,
    tissue_chunks,
    tissue_mask,
)

_register_codec()  # zarr resolves "wsi_pipeline.jpeg" in this process, installed or not

__all__ = ["STORE_FORMAT", "StoreGeometry", "StoreInfo", "TileConfig", "TileResult", "read_store_info",
           "tile_slide", "tissue_chunks", "tissue_mask"]
