"""Writers: streaming pyramidal TIFF (Aperio SVS, OME-TIFF with SubIFD pyramid, plain pyramidal TIFF)."""

from .tiff import Region, aperio_description, downsample2, level0_boxes, level_sizes, write_pyramidal_tiff

__all__ = ["Region", "aperio_description", "downsample2", "level0_boxes", "level_sizes", "write_pyramidal_tiff"]
