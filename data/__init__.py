"""Dataset registry and BEIR-format loaders (this folder installs as ``sbmoe.data``)."""

from .beir import BeirDataset, DataFormatError, Document, read_queries
from .registry import DatasetNotFoundError, dataset_info, resolve_dataset

__all__ = ["BeirDataset", "DataFormatError", "DatasetNotFoundError", "Document", "dataset_info", "read_queries",
           "resolve_dataset"]
