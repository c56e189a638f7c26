"""Datasets in their real formats, the paper's protocols and the synthetic camera network."""
from .protocols import Protocol, TrainRecord, build_protocol
from .records import Dataset, ImageRecord
from .registry import build_dataset, discover_datasets, resolve_dataset

__all__ = ["Dataset", "ImageRecord", "Protocol", "TrainRecord", "build_dataset",
           "build_protocol", "discover_datasets", "resolve_dataset"]
