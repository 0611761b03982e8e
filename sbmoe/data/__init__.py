"""Datasets: the registry of known names, data roots and the cache folder, BEIR-layout loaders, triples."""

from .beir import BeirDataset, DataFormatError, load_queries, read_queries
from .document import Document
from .registry import DatasetNotFoundError, dataset_info, local_datasets, resolve_dataset
from .roots import cache_root, search_roots
from .shuffle import WindowShuffle
from .triples import IdTriples, TextTriples, TriplesSource, open_triples, read_triples

__all__ = ["BeirDataset", "DataFormatError", "DatasetNotFoundError", "Document", "IdTriples", "TextTriples",
           "TriplesSource", "WindowShuffle", "cache_root", "dataset_info", "open_triples",
           "load_queries", "local_datasets", "read_queries", "read_triples", "resolve_dataset", "search_roots"]
