"""VA regressors on cached features: a registry of scikit-learn estimators and the runner around it."""

from __future__ import annotations

from evoked.regress.knn import FaissKNNRegressor
from evoked.regress.mlp import TorchMLPRegressor
from evoked.regress.registry import (
    build_pipeline,
    list_regressors,
    make_regressor,
    register_regressor,
    regressor_help,
)
from evoked.regress.svr import RBFSVRRegressor
from evoked.regress.targets import Targets, make_targets
from evoked.regress.two_stage import TwoStageRegressor

_LAZY = {
    "run_regress": "evoked.regress.runner",
    "predict_images": "evoked.regress.predict",
    "load_run_model": "evoked.regress.rundir",
}


def __getattr__(name: str):
    # The runner and predict pull in the store, the metrics and torch: imported on first use.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'evoked.regress' has no attribute {name!r}")


__all__ = [
    "FaissKNNRegressor",
    "RBFSVRRegressor",
    "Targets",
    "TorchMLPRegressor",
    "TwoStageRegressor",
    "build_pipeline",
    "load_run_model",
    "predict_images",
    "run_regress",
    "list_regressors",
    "make_regressor",
    "make_targets",
    "register_regressor",
    "regressor_help",
]
