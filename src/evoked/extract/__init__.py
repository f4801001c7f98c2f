"""Feature extraction: the backbone registry and the batched runner (reader -> models -> writer)."""

from evoked.extract.backbone import Backbone, Preprocess, WeightsInfo
from evoked.extract.registry import create_backbone, list_backbones, register_backbone
from evoked.extract.runner import ExtractSummary, extract

__all__ = [
    "Backbone",
    "ExtractSummary",
    "Preprocess",
    "WeightsInfo",
    "create_backbone",
    "extract",
    "list_backbones",
    "register_backbone",
]
