"""evoked: what emotion does an image evoke, as valence and arousal."""

from collections.abc import Callable

__version__ = "0.1.0"


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]) -> tuple[Callable, list[str]]:
    """``(__getattr__, __all__)`` for a package that re-exports names of heavy modules: each name
    is imported from its module (`exports`: module -> names) on first use, not with the package."""
    import importlib

    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name]), name)

    return __getattr__, sorted(where)
