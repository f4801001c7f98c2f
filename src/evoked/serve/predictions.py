"""Predicted VA for every item of a store, from a regress run's saved model."""

from __future__ import annotations

import os

import numpy as np

from evoked.errors import ConfigError


def run_predictions(run_dir: str | os.PathLike, store: str | os.PathLike, model: str | None = None) -> tuple[np.ndarray, str]:
    """(N, 2) predictions (NaN where the store row has no features) and a label for the page."""
    try:
        from evoked.regress.predict import predict_store
    except ImportError as e:  # pragma: no cover - regress ships with evoked
        raise ConfigError(f"cannot load regression runs: {e}") from e
    pred, model_name = predict_store(run_dir, store, model)
    return pred, f"{os.path.basename(os.path.normpath(run_dir))}/{model_name}"
