"""Masks -> valid polygons merged across chunk seams; QuPath GeoJSON read/write."""

from .geojson import (
    CLASS_COLORS,
    Annotation,
    annotations_from_polygons,
    class_color,
    parse_geojson,
    qupath_problems,
    read_geojson,
    to_feature,
    write_geojson,
)
from .polygons import (
    Piece,
    area_um2_to_px,
    chunk_pieces,
    mask_to_polygons,
    mean_inside,
    merge_across_seams,
    polygons_from_chunks,
    polygons_from_zarr,
    snap_valid,
)

__all__ = [
    "CLASS_COLORS",
    "Annotation",
    "Piece",
    "annotations_from_polygons",
    "area_um2_to_px",
    "chunk_pieces",
    "class_color",
    "mask_to_polygons",
    "mean_inside",
    "merge_across_seams",
    "parse_geojson",
    "polygons_from_chunks",
    "polygons_from_zarr",
    "qupath_problems",
    "read_geojson",
    "snap_valid",
    "to_feature",
    "write_geojson",
]
