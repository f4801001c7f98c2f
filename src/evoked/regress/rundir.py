"""The folder of a `regress` run: its output folder checked before any work, and its fitted models.

::

    runs/NAME/models/MODEL.joblib + MODEL.json + MODEL.fitted_ids.json

The rest of the folder (run.json, predictions.csv, ...) is written by `evoked.runfolder`, the one
writer of every run. Model names may contain ``:`` (``two_stage:ridge``); their files use ``__``
instead (``two_stage__ridge.joblib``) so the folder can be copied to any file system.
``MODEL.fitted_ids.json`` lists the ids the saved model was trained on, so `evoked serve` tells an
in-sample prediction (``fitted``) from one of an item the model never saw (``unseen``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from evoked.errors import ConfigError
from evoked.runfolder import CURVE_COLUMNS, PREDICTION_COLUMNS, read_run_meta, write_json  # noqa: F401 (the format)

__all__ = ["load_run_model", "read_fitted_ids", "save_model"]


def model_filename(name: str) -> str:
    """The file stem of a model name (no ``:`` or ``/``)."""
    return name.replace(":", "__").replace("/", "_")


def save_model(models_dir: Path, name: str, estimator: Any, meta: dict, fitted_ids: Iterable[str]) -> Path:
    """models/MODEL.joblib, its metadata MODEL.json and the ids it was fitted on."""
    import joblib

    stem = model_filename(name)
    path = models_dir / f"{stem}.joblib"
    joblib.dump(estimator, path)
    ids_file = f"{stem}.fitted_ids.json"
    write_json(models_dir / ids_file, sorted({str(i) for i in fitted_ids}))
    write_json(models_dir / f"{stem}.json", {"name": name, "file": path.name, **meta, "fitted_ids": ids_file})
    return path


def read_fitted_ids(run: str | os.PathLike, meta: dict) -> set[str] | None:
    """The ids a saved model was trained on (its metadata `meta`); None for a run written before
    they were recorded."""
    if not meta.get("fitted_ids"):
        return None
    return set(json.loads((Path(run) / "models" / meta["fitted_ids"]).read_text("utf-8")))


def _regress_meta(run: str | os.PathLike) -> dict:
    """run.json of a `regress` run (the runs that have a saved model to load)."""
    info = read_run_meta(run, ConfigError)
    if info.get("kind") != "regress":
        raise ConfigError(f"{run} is a {info.get('kind')!r} run; `evoked predict` needs a `regress` run")
    return info


def load_run_model(run: str | os.PathLike, model: str | None = None) -> tuple[Any, dict]:
    """(fitted estimator, its metadata) of `model` in a run; the run's default model when None."""
    import joblib

    info = _regress_meta(run)
    models = info.get("models", [])
    name = model or info.get("default_model") or (models[0] if models else None)
    if name is None or name not in models:
        raise ConfigError(f"--model {name!r} is not in {run}; it has {', '.join(models) or 'no models'}")
    stem = model_filename(name)
    meta_path = Path(run) / "models" / f"{stem}.json"
    if not meta_path.is_file():
        raise ConfigError(f"{meta_path} is missing; rerun `evoked regress` to write the model again")
    meta = json.loads(meta_path.read_text("utf-8"))
    try:
        estimator = joblib.load(Path(run) / "models" / meta["file"])
    except (OSError, EOFError, ValueError) as e:
        raise ConfigError(f"cannot load model {name!r} from {run}: {e}") from e
    if meta.get("target", {}).get("kind") == "distribution":  # predicts VA through the run's lexicon
        from evoked.regress.distribution import as_va_model

        estimator = as_va_model(estimator, meta["target"], f"model {name!r} of {run}")
    return estimator, meta
