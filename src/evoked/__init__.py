"""evoked: what emotion does an image evoke, as valence and arousal."""

import os

# How idle OpenMP threads wait. They must be set before torch, faiss or LightGBM load their OpenMP
# runtimes, so they are set here, on the first import of evoked; a value the user set wins.
# - OMP_WAIT_POLICY=PASSIVE: with several runtimes in one process (torch, faiss, LightGBM), or with
#   the cores shared, threads that spin without end made the same work 3-10x slower on a 2-core
#   machine (the regression tests: 97 s against 9 s). Passive also means no spinning at all when a
#   runtime has more threads than cores.
# - GOMP_SPINCOUNT=30000 (about 0.3 ms): but a CNN on the CPU is thousands of small parallel regions
#   back to back, and threads that went to sleep after each one took 1.6x longer for MobileNetV2
#   (BENCHMARKS.md, "OpenMP threads spin briefly"); a short spin keeps them awake between layers and
#   lets them sleep once the work pauses.
OPENMP_DEFAULTS = {
    k: v for k, v in {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "30000"}.items() if k not in os.environ
}
os.environ.update(OPENMP_DEFAULTS)

__version__ = "0.1.0"


def lazy_exports(package: str, exports: dict[str, tuple[str, ...]]):
    """``(__getattr__, __all__)`` for a package that re-exports names of heavy modules: each name
    is imported from its module (`exports`: module -> names) on first use, not with the package."""
    import importlib

    where = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name]), name)

    return __getattr__, sorted(where)
