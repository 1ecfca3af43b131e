"""Masks -> valid polygons merged across chunk seams; QuPath GeoJSON read/write; detection matching."""

from .geojson import (
    CLASS_COLORS,
    Annotation,
    annotations_from_polygons,
    class_color,
    Feature,
    parse_geojson,
    qupath_problems,
    read_features,
    read_geojson,
    to_feature,
    write_geojson,
)
from .matching import DetectionScores, evaluate_geojson, match_polygons, polygon_detection_scores
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
    "DetectionScores",
    "Feature",
    "Piece",
    "annotations_from_polygons",
    "area_um2_to_px",
    "chunk_pieces",
    "class_color",
    "evaluate_geojson",
    "mask_to_polygons",
    "match_polygons",
    "mean_inside",
    "merge_across_seams",
    "parse_geojson",
    "polygon_detection_scores",
    "polygons_from_chunks",
    "polygons_from_zarr",
    "qupath_problems",
    "read_features",
    "read_geojson",
    "snap_valid",
    "to_feature",
    "write_geojson",
]
