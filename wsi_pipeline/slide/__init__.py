"""Whole-slide reading: ``open_slide(path) -> Slide`` (openslide or tifffile backend)."""

from .base import Slide, TileDecoder, TileGrid

__all__ = ["Slide", "TileDecoder", "TileGrid"]
