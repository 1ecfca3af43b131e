"""wsi-pipeline: gigapixel kidney-biopsy slides -> glomerulus annotations for QuPath."""

__version__ = "0.1.0"
