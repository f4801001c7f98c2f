"""Built-in backbones; each module registers its backbones on import."""

from evoked.extract.backbones import clip, color, torchvision_models  # noqa: F401
