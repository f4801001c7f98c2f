"""Datasets as manifests, splits, robust image decoding and category-derived VA."""

from evoked import lazy_exports

# The readers register themselves when `DATASETS` is first read; scikit-learn (splits) loads
# when a name is first used.
__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "evoked.data.datasets": ("DATASETS", "load_dataset", "register_dataset"),
        "evoked.data.decode": ("DecodeError", "decode_rgb", "load_rgb", "read_bytes"),
        "evoked.data.lexicon": ("CATEGORY_SETS", "Lexicon", "load_lexicon"),
        "evoked.data.manifest": ("SPLITS", "Manifest"),
        "evoked.data.splits": ("split_manifest",),
    },
)
