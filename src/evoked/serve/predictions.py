"""Predicted VA for every item of a store, from a regression run's saved model."""

from __future__ import annotations

import json
import os

import numpy as np

from evoked.errors import ConfigError
from evoked.features.store import open_store


def _comparable(config: dict) -> dict:
    """A backbone config without the weights' local details (path, time): tag and hash decide."""
    plain = json.loads(json.dumps(config))
    weights = {k: v for k, v in plain.pop("weights", {}).items() if k in ("tag", "sha256")}
    return plain | {"weights": weights}


def _same(a: dict, b: dict) -> bool:
    return _comparable(a) == _comparable(b)


def run_predictions(
    run_dir: str | os.PathLike, store: str | os.PathLike, model: str | None = None, chunk_rows: int = 65536
) -> tuple[np.ndarray, str]:
    """(N, 2) predictions for the store's rows (NaN where a row has no features) and a label.

    The store must hold the run's features, extracted with the same configuration as the store
    the run was fitted on (backbone, weights, preprocessing), else the predictions would be noise.
    """
    from evoked.regress.rundir import load_run_model

    estimator, meta = load_run_model(run_dir, model)
    features = list(meta["features"])
    with open_store(store) as s:
        have = s.extractors
        for group, cfg in (meta.get("extractor_configs") or {}).items():
            if group not in have:
                raise ConfigError(f"{store} has no {group} features, which run {run_dir} needs")
            if cfg and not _same(cfg, have[group].get("config", {})):
                raise ConfigError(
                    f"{group} in {store} was extracted differently from the store run {run_dir} was fitted on; "
                    "its predictions would not mean anything"
                )
        pred = np.full((len(s), 2), np.nan)
        for start in range(0, len(s), chunk_rows):
            rows = np.arange(start, min(start + chunk_rows, len(s)))
            x = s.read(features, rows=rows)
            ok = np.isfinite(x).all(axis=1)
            if ok.any():
                pred[rows[ok]] = estimator.predict(x[ok])
    name = meta.get("name", model or "model")
    return pred, f"{os.path.basename(os.path.normpath(run_dir))}/{name}"
