"""The Carvana data layer: discovery and validation, splits, datasets, transforms, synthesis."""

from carmask.data.io import DataError, read_image, read_mask, save_mask
from carmask.data.layout import DataIndex, Problem, Record, index_dataset

__all__ = [
    "DataError", "DataIndex", "Problem", "Record", "index_dataset",
    "read_image", "read_mask", "save_mask",
]
