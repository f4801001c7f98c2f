"""Feature extraction: the backbone registry and the batched runner (reader -> models -> writer)."""

from evoked import lazy_exports

# torch loads when a name is first used, not with the package.
__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "evoked.extract.backbone": ("Backbone", "Preprocess", "WeightsInfo"),
        "evoked.extract.registry": ("BACKBONES", "create_backbone", "list_backbones", "register_backbone"),
        "evoked.extract.runner": ("ExtractSummary", "extract"),
    },
)
