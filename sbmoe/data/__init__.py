"""Datasets: the registry of known names, data roots and the cache folder, BEIR-layout loaders, triples."""

from .beir import BeirDataset, DataFormatError, Document, load_queries, read_queries
from .registry import DatasetNotFoundError, dataset_info, resolve_dataset
from .roots import cache_root, search_roots
from .triples import read_triples

__all__ = ["BeirDataset", "DataFormatError", "DatasetNotFoundError", "Document", "cache_root", "dataset_info",
           "load_queries", "read_queries", "read_triples", "resolve_dataset", "search_roots"]
