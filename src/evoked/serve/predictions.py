"""Predicted VA for every item of a store, from a regression run's saved model, with its kind.

`store_predictions` says for every item which kind of prediction the page shows (docs/serve.md),
reading the kinds the run recorded (`evoked.runfolder.KINDS`), never guessing them:

- ``oof`` / ``held-out`` / ``transfer``: the item's row of the run's predictions.csv (its training
  store's rows, or an eval store's when that store is served), with the kind written there;
- ``fitted``: every other item the saved model was trained on (its recorded fitted ids), predicted
  by that model: in-sample;
- ``unseen``: every other item, predicted by the saved model, which never saw it (a test split
  left out of --cv, an unrated item, another store's item).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from evoked import runfolder
from evoked.errors import ConfigError
from evoked.extract.registry import comparable_config
from evoked.features.store import open_store

if TYPE_CHECKING:
    from evoked.retrieve import RecordedBackbones

log = logging.getLogger(__name__)

KINDS = tuple(runfolder.KINDS)


@dataclass
class StorePredictions:
    va: np.ndarray  # (N, 2) per store row, NaN where none
    kind: np.ndarray  # (N,) one of KINDS, "" where there is no prediction
    label: str  # RUN/MODEL
    counts: dict[str, int] = field(default_factory=dict)  # kind -> items


def _same_store(info: dict, path: Path, uuid: str | None) -> bool:
    """Whether a run.json store record (store, store_uuid) names this store file."""
    if uuid and info.get("store_uuid"):
        return info["store_uuid"] == uuid
    recorded = info.get("store")
    return bool(recorded) and os.path.realpath(str(recorded)) == os.path.realpath(path)


def store_predictions(
    run_dir: str | os.PathLike, store: str | os.PathLike, model: str | None = None, chunk_rows: int = 65536
) -> StorePredictions:
    """The saved model's predictions for every row of `store`, replaced by the run's out-of-fold,
    held-out or transfer predictions (predictions.csv) for the items it has them for."""
    va, name, fitted_ids = _fitted(run_dir, store, model, chunk_rows)
    with open_store(store) as s:
        ids = [str(i) for i in s.ids.tolist()]
        uuid = s.attrs.get("store_uuid")
    if fitted_ids is None:  # a run written before the fitted ids were recorded
        log.warning("%s does not record the ids its models were trained on (rerun `evoked regress`): every "
                    "item without a row in predictions.csv is shown as fitted", run_dir)  # fmt: skip
        fitted_ids = set(ids)
    seen = np.array([i in fitted_ids for i in ids], dtype=bool)
    kind = np.where(seen, "fitted", "unseen").astype(object)
    kind[~np.isfinite(va).all(axis=1)] = ""
    run = runfolder.read_run(run_dir)
    row_of = {i: k for k, i in enumerate(ids)}
    groups = []
    if _same_store(run.meta, Path(store), uuid) and name in run.predictions:
        groups.append(("training side", run.predictions[name]))
    for e in run.meta.get("evals") or []:
        if (
            isinstance(e, dict)
            and _same_store(e, Path(store), uuid)
            and name in run.evals.get(e.get("name", ""), {})  # no eval set is named ""
        ):
            groups.append((f"eval set {e['name']}", run.evals[e["name"]][name]))
    for what, p in groups:
        assert p.kind is not None  # read_run gives every row its kind
        missing = 0
        for item, pred, k in zip(p.ids.tolist(), p.pred, p.kind.tolist()):
            row = row_of.get(str(item))
            if row is None:
                missing += 1
            elif np.isfinite(pred).all():
                va[row], kind[row] = pred, k
        if missing:
            log.warning(
                "%s of %s: %d item(s) of predictions.csv are not in %s", what, run_dir, missing, store
            )
    if not groups:
        log.info("%s is neither the training store nor an eval store of %s: no item has a row of "
                 "predictions.csv", store, run_dir)  # fmt: skip
    kinds, counts = np.unique(kind[kind != ""].astype(str), return_counts=True)
    label = f"{os.path.basename(os.path.normpath(run_dir))}/{name}"
    return StorePredictions(va, kind, label, {str(k): int(c) for k, c in zip(kinds, counts)})


def run_predictions(
    run_dir: str | os.PathLike, store: str | os.PathLike, model: str | None = None, chunk_rows: int = 65536
) -> tuple[np.ndarray, str]:
    """(N, 2) predictions of the final model for the store's rows (NaN where none) and a label.

    These are in-sample for the rows the model was fitted on; `store_predictions` says which
    prediction is which and uses the run's out-of-fold ones where it has them.
    """
    pred, name, _ = _fitted(run_dir, store, model, chunk_rows)
    return pred, f"{os.path.basename(os.path.normpath(run_dir))}/{name}"


def _fitted(
    run_dir: str | os.PathLike, store: str | os.PathLike, model: str | None, chunk_rows: int
) -> tuple[np.ndarray, str, set[str] | None]:
    """(N, 2) predictions for the store's rows (NaN where a row has no features), the model name
    and the ids it was trained on (None when the run does not record them).

    The store must hold the run's features, extracted with the same configuration as the store
    the run was fitted on (backbone, weights, preprocessing), else the predictions would be noise.
    """
    from evoked.regress.rundir import load_run_model, read_fitted_ids

    estimator, meta = load_run_model(run_dir, model)
    features = list(meta["features"])
    with open_store(store) as s:
        have = s.extractors
        for group, cfg in (meta.get("extractor_configs") or {}).items():
            if group not in have:
                raise ConfigError(f"{store} has no {group} features, which run {run_dir} needs")
            if cfg and comparable_config(cfg) != comparable_config(have[group].get("config", {})):
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
    return pred, str(meta.get("name", model or "model")), read_fitted_ids(run_dir, meta)


class QueryModel:
    """The run's saved model applied to one uploaded image: its features are computed as the run's
    store recorded them (`evoked.regress.predict`'s backbones, readied on first use)."""

    def __init__(self, run_dir: str | os.PathLike, model: str | None = None, device: str = "cpu"):
        from evoked.regress.rundir import load_run_model

        self.estimator, self.meta = load_run_model(run_dir, model)
        self.device = device
        self._ready: RecordedBackbones | None = None

    def predict(self, image: np.ndarray) -> tuple[float, float] | None:
        """(valence, arousal) of a decoded (H, W, 3) uint8 image; None when its features are not finite."""
        import torch

        from evoked.regress.predict import ready_run_backbones

        ready = self._ready = self._ready or ready_run_backbones(self.meta, self.device)
        tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous().to(ready.device)
        out = ready.run([tensor])
        x = np.concatenate([out[f] for f in self.meta["features"]], axis=1)
        if not np.isfinite(x).all():
            return None
        v, a = np.asarray(self.estimator.predict(x), dtype=float).reshape(2)
        return float(v), float(a)
