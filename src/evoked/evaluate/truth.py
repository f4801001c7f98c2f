"""`evoked evaluate --predictions P.csv --truth DATASET`: score a predictions file against any dataset.

A predictions file has at least the columns ``id, model, valence_pred, arousal_pred`` (``path``
optional): what `evoked predict` writes, and also any run's predictions.csv. The JSON of
``evoked predict --json`` is read too. Each row is joined to an item of the truth dataset:

1. by ``id``, when it is one of the dataset's ids;
2. else by ``path``: the row's path (`evoked predict` writes absolute paths; a relative one is
   taken against the predictions file's folder), resolved, equal to the resolved path of one of
   the dataset's images (`evoked.runfolder.image_path_key`).

A row that matches no item is an error naming the count and the first ids (nothing is scored on
a guess); with ``--truth DATASET:SPLIT`` rows of items outside that split are left out and counted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evoked.data import Manifest
from evoked.data.text import iter_rows, parse_float, parse_json_object, read_utf8
from evoked.data.va_range import DEFAULT_VA_RANGE, check_prediction_scale, check_va_range
from evoked.errors import ConfigError, DatasetError
from evoked.runfolder import Predictions, Run, image_path_key

NEEDED = ("id", "model", "valence_pred", "arousal_pred")


def read_prediction_rows(path: Path) -> list[dict]:
    """[{id, path, model, valence_pred, arousal_pred}] from a predictions CSV or `predict --json` output.

    The file is read as UTF-8 (a BOM is dropped; other encodings are refused naming the byte), and
    every prediction is a finite number or empty.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"--predictions {str(path)!r}: no such file")
    if path.suffix.lower() == ".json":
        rows = _json_rows(path)
    else:
        rows = _csv_rows(path)
    if not rows:
        raise DatasetError(f"{path} has no prediction rows")
    return rows


def _json_rows(path: Path) -> list[dict]:
    obj = parse_json_object(read_utf8(path, "predictions file", DatasetError), str(path))
    if not isinstance(obj.get("predictions"), list):
        raise DatasetError(
            f"{path}: expected the JSON of `evoked predict --json` (model, predictions: [...])"
        )
    model = str(obj.get("model") or path.stem)
    rows = []
    for k, p in enumerate(obj["predictions"]):
        where = f"{path}: predictions[{k}]"
        if not isinstance(p, dict):
            raise DatasetError(f"{where}: expected an object with id, valence_pred, arousal_pred")
        rows.append(
            {
                "id": str(p.get("id") or ""),
                "path": str(p.get("path") or ""),
                "model": model,
                "valence_pred": parse_float(p.get("valence_pred", p.get("valence")), where, "valence"),
                "arousal_pred": parse_float(p.get("arousal_pred", p.get("arousal")), where, "arousal"),
            }
        )
    return rows


def _csv_rows(path: Path) -> list[dict]:
    reader, _ = iter_rows(path, "predictions file", DatasetError)
    rows = []
    for row in reader:
        missing = [c for c in NEEDED if c not in row]
        if missing:
            raise DatasetError(
                f"{path}: missing column(s) {', '.join(missing)}; a predictions file needs "
                f"{', '.join(NEEDED)} (path optional), as `evoked predict` writes"
            )
        where = f"{path}:{row['__line__']}"
        if (row.get("eval") or "").strip():
            continue  # a run's eval-set rows: score its training side, or pass that run to evaluate
        rows.append(
            {
                "id": row["id"] or "",
                "path": row.get("path") or "",
                "model": (row["model"] or "").strip() or path.stem,
                "valence_pred": parse_float(row["valence_pred"], where, "valence_pred"),
                "arousal_pred": parse_float(row["arousal_pred"], where, "arousal_pred"),
            }
        )
    return rows


def match_items(rows: list[dict], truth: Manifest, base: Path, source: str) -> np.ndarray:
    """The truth row of every prediction row (by id, else by resolved path); refuses unmatched rows."""
    by_id = {str(i): k for k, i in enumerate(truth.ids.tolist())}
    by_path = {image_path_key(str(p), base): k for k, p in enumerate(truth.abspaths())}
    index = np.full(len(rows), -1, dtype=np.int64)
    unmatched = []
    for n, r in enumerate(rows):
        k = by_id.get(str(r["id"]))
        if k is None and r["path"]:
            k = by_path.get(image_path_key(r["path"], base))
        if k is None:
            unmatched.append(r["id"] or r["path"])
        else:
            index[n] = k
    if unmatched:
        shown = ", ".join(repr(u) for u in unmatched[:5])
        raise DatasetError(
            f"{source}: {len(unmatched)} of {len(rows)} prediction row(s) match no item of {truth.name!r} "
            f"(e.g. {shown}): a row joins by id, else by its path (absolute, or relative to the predictions "
            "file's folder). Predict the dataset itself (`evoked predict --run RUN KIND:PATH`) so the ids are its ids, "
            "or score against the dataset the images come from"
        )
    return index


def predictions_run(
    path: str | Path,
    truth: Manifest,
    split: str | None = None,
    name: str | None = None,
    va_range: tuple[float, float] = DEFAULT_VA_RANGE,
) -> Run:
    """A predictions file joined to `truth`, as a run `evaluate_runs` compares (fold -1, kind transfer).

    Truths outside `va_range`, predictions far off it and a model with no prediction on an axis are
    refused (`evoked.data.va_range`, the checks regress makes).
    """
    path = Path(path)
    rows = read_prediction_rows(path)
    index = match_items(rows, truth, path.resolve().parent, f"--predictions {path}")
    keep = np.ones(len(rows), dtype=bool) if split is None else truth.split[index] == split
    notes = []
    if not keep.any():
        raise ConfigError(
            f"--predictions {path}: none of its items is in the {split!r} split of {truth.name!r}"
        )
    if not keep.all():
        notes.append(f"{int((~keep).sum())} prediction row(s) of items outside the {split!r} split left out")
    models: dict[str, list[int]] = {}
    for n in np.flatnonzero(keep):
        models.setdefault(rows[n]["model"], []).append(int(n))
    preds = {}
    for model, ns in models.items():
        ks = index[ns]
        if len(set(ks.tolist())) < len(ks):
            dup = next(truth.ids[k] for k in ks if (ks == k).sum() > 1)
            raise DatasetError(
                f"--predictions {path}: model {model!r} predicts item {dup!r} more than once (by id or path)"
            )
        pred = np.array([[rows[n]["valence_pred"], rows[n]["arousal_pred"]] for n in ns], dtype=np.float64)
        _check_model(path, model, truth, ks, pred, va_range, notes)
        preds[model] = Predictions(
            ids=truth.ids[ks].astype(object),
            fold=np.full(len(ks), -1, dtype=np.int64),
            split=truth.split[ks].astype(object),
            true=np.stack([truth.valence[ks], truth.arousal[ks]], axis=1).astype(np.float64),
            pred=pred,
            category=np.array([c or "" for c in truth.category[ks].tolist()], dtype=object),
            kind=np.full(len(ks), "transfer", dtype=object),
        )
    meta = {
        "kind": "predictions",
        "dataset": truth.name,
        "protocol": {"kind": "predictions file", "file": str(path), "truth": truth.name, "split": split},
        "notes": notes,
    }
    return Run(path=path, name=name or path.stem, meta=meta, predictions=preds)


def _check_model(
    path: Path,
    model: str,
    truth: Manifest,
    ks: np.ndarray,
    pred: np.ndarray,
    va_range: tuple[float, float],
    notes: list[str],
) -> None:
    """One model's predictions are scorable: some on each axis, on the ratings' scale, as the truths."""
    source = f"--predictions {path} (model {model!r})"
    ids = truth.ids[ks].tolist()
    check_va_range(ids, truth.valence[ks], truth.arousal[ks], va_range, source=f"--truth {truth.name}")
    for d, dim in enumerate(("valence", "arousal")):
        empty = np.isnan(pred[:, d])
        if empty.all():
            raise DatasetError(
                f"{source}: no {dim} prediction in any of its {len(pred)} row(s) (all empty or NaN); "
                f"fill in {dim}_pred, or score the file that holds them"
            )
        if empty.any():
            notes.append(
                f"{model}: {int(empty.sum())} row(s) without a {dim} prediction are left out of its {dim} scores"
            )
    check_prediction_scale(ids, pred, va_range, source=source)
