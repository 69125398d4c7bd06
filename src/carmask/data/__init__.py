"""The Carvana data layer: discovery and validation, splits, datasets, transforms, synthesis."""

from carmask.data.io import (
    DataError,
    Photo,
    PhotoError,
    read_image,
    read_mask,
    read_photo,
    save_mask,
)
from carmask.data.layout import DataIndex, Problem, Record, index_dataset

__all__ = [
    "DataError", "DataIndex", "Photo", "PhotoError", "Problem", "Record", "index_dataset",
    "read_image", "read_mask", "read_photo", "save_mask",
]
