"""Writers: streaming pyramidal TIFF (Aperio SVS, OME-TIFF whose pyramid openslide and OME readers both see, plain
pyramidal TIFF)."""

from .tiff import OmeInfo, Region, aperio_description, downsample2, level0_boxes, level_sizes, write_pyramidal_tiff

__all__ = ["OmeInfo", "Region", "aperio_description", "downsample2", "level0_boxes", "level_sizes",
           "write_pyramidal_tiff"]
