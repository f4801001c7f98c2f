"""Datasets as manifests, splits, robust image decoding and category-derived VA."""

from evoked.data import emotion6, folder, ldl, parquet, tabular, webdataset  # noqa: F401  (readers register on import)
from evoked.data.datasets import list_dataset_kinds, load_dataset, register_dataset
from evoked.data.decode import DecodeError, decode_rgb, load_rgb, read_bytes
from evoked.data.lexicon import CATEGORY_SETS, Lexicon, load_lexicon
from evoked.data.manifest import SPLITS, Manifest
from evoked.data.splits import split_manifest

__all__ = [
    "CATEGORY_SETS",
    "SPLITS",
    "DecodeError",
    "Lexicon",
    "Manifest",
    "decode_rgb",
    "list_dataset_kinds",
    "load_dataset",
    "load_lexicon",
    "load_rgb",
    "read_bytes",
    "register_dataset",
    "split_manifest",
]
