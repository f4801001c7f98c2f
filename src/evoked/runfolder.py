"""The run folder (docs/runs.md): the one writer and reader of what `regress` and `finetune` leave.

::

    runs/NAME/run.json  predictions.csv  metrics.json  [curve.csv]  models/

A run is written under the lock of its folder (`writing`): into a new sibling folder that takes
the place of NAME when the run has finished, so a stopped run never leaves NAME half-replaced.
One format for every writer: JSON is strict (NaN/inf written as null) and replaced atomically, CSV
floats are Python's shortest round-trip text (``repr``; ``nan`` where unknown), and `versions`
names the same packages for every run. A prediction's kind (`KINDS`) is written by the runner and
read back, never guessed, by `evaluate` and `serve`.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import logging
import math
import os
import platform
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np

from evoked import __version__
from evoked.data.text import parse_float, parse_int, parse_json_object
from evoked.errors import ConfigError, DatasetError, EvokedError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("model", "id", "fold", "split", "valence_true", "arousal_true", "valence_pred",
                    "arousal_pred", "category_true")  # fmt: skip
#: what a run writes at the top of its folder; its models and checkpoints go to models/
RUN_FILES = ("run.json", "predictions.csv", "metrics.json", "curve.csv", "layers.csv", "layers.png")
#: which eval set a row belongs to ("" = the training side) and its kind
EVAL_COLUMNS = ("eval", "kind")
PREDICTION_COLUMNS = REQUIRED_COLUMNS + EVAL_COLUMNS
CURVE_KEYS = ("model", "setting", "n_labels", "seed")
CURVE_METRICS = ("r_valence", "r_arousal", "mse_valence", "mse_arousal")
CURVE_COLUMNS = CURVE_KEYS + CURVE_METRICS
PRED_P, TRUE_P = "pred_p_", "true_p_"

#: The kinds of a prediction. The first three are rows of predictions.csv (the runner writes them);
#: the last two are the saved model's prediction of an item that has no such row (`evoked serve`),
#: told apart by the ids the model was fitted on (`models/MODEL.fitted_ids.json`).
KINDS = {
    "oof": "out of fold: predicted by the CV fold's model, which never saw the item",
    "held-out": "a held-out split row, predicted by a model trained on the other splits",
    "transfer": "a row of an eval set (--eval), predicted by the saved model",
    "fitted": "predicted by the saved model, which was trained on the item (in-sample)",
    "unseen": "predicted by the saved model, which was never trained on the item",
}
ROW_KINDS = ("oof", "held-out", "transfer")

_PACKAGES = ("numpy", "scipy", "scikit-learn", "torch", "torchvision", "open_clip_torch", "lightgbm",
             "faiss-cpu", "faiss-gpu", "h5py", "joblib")  # fmt: skip


def versions() -> dict[str, str]:
    """Versions of evoked, Python and the libraries a run depends on (read without importing them)."""
    out = {"evoked": __version__, "python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def items_fingerprint(ids: Iterable[str], fold: Iterable[int], split: Iterable[str]) -> str:
    """sha256 of the lines ``id<TAB>fold<TAB>split`` sorted by id, joined with newlines (UTF-8)."""
    rows = sorted(zip((str(i) for i in ids), (int(f) for f in fold), (str(s) for s in split)))
    text = "\n".join(f"{i}\t{f}\t{s}" for i, f, s in rows)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- writing


@contextmanager
def _replacing(path: Path) -> Iterator[IO[str]]:
    """A text file written beside `path` and moved over it when complete (no half-written file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        yield f
    os.replace(tmp, path)


def json_safe(o: Any) -> Any:
    """A strict-JSON copy: NaN/inf -> null, numpy scalars and arrays -> Python, tuples -> lists."""
    if isinstance(o, Mapping):
        return {str(k): json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return json_safe(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def write_json(path: Path, obj: Any) -> None:
    """`obj` as strict, indented UTF-8 JSON (NaN/inf as null; other objects as their text)."""
    with _replacing(path) as f:
        f.write(json.dumps(json_safe(obj), indent=2, allow_nan=False, default=str) + "\n")


def format_value(x: Any) -> str:
    """A CSV cell: floats as their shortest round-trip text (``nan``/``inf`` when not finite)."""
    if isinstance(x, (float, np.floating)):
        return repr(float(x))
    if isinstance(x, np.generic):
        x = x.item()
    return "" if x is None else str(x)


def write_table(path: Path, header: Sequence[str], rows: Iterable[Mapping]) -> int:
    """A CSV file of `header` (a cell a row lacks is empty), atomically; returns the row count."""
    n = 0
    with _replacing(path) as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([format_value(r.get(c, "")) for c in header])
            n += 1
    return n


def write_predictions(path: Path, rows: Iterable[Mapping], extra: Sequence[str] = ()) -> int:
    """predictions.csv: `PREDICTION_COLUMNS`, then `extra` (``pred_p_*``/``true_p_*``) columns."""
    return write_table(path, PREDICTION_COLUMNS + tuple(extra), rows)


def write_curve(path: Path, rows: Iterable[Mapping]) -> None:
    write_table(path, CURVE_COLUMNS, ({c: r.get(c, math.nan) for c in CURVE_COLUMNS} for r in rows))


def _column_rows(predictions: Mapping[str, Mapping[str, Sequence]]) -> Iterator[dict]:
    for model, cols in predictions.items():
        for i in range(len(cols["id"])):
            row = {"model": model, **{c: v[i] for c, v in cols.items()}}
            row["kind"] = row.get("kind") or infer_kind(int(row["fold"]), str(row.get("eval") or ""))
            yield row


def check_out(
    out: str | os.PathLike, overwrite: bool, resume: Path | None = None, resumable: bool = False
) -> Path:
    """A run's --out, checked before any work: a file is refused, a folder with files needs
    --overwrite (or --resume, where `resumable`); with `resume`, the checkpoint it names must exist."""
    path = Path(out)
    if _siblings(Path(os.path.realpath(path)), "old") or _siblings(Path(os.path.realpath(path)), "partial"):
        from evoked.features.lock import output_lock

        with output_lock(path):  # a stopped writer's leftovers: put the previous run back first
            _recover(Path(os.path.realpath(path)))
    if resume is not None:
        if overwrite:
            raise ConfigError("--resume continues a run and --overwrite replaces it; pass one of them")
        if not resume.is_file():
            raise ConfigError(f"--resume: {resume} does not exist; start the run without --resume")
    elif path.exists() and not path.is_dir():
        raise ConfigError(f"--out {str(path)!r} is a file; give a run folder")
    elif path.is_dir() and any(path.iterdir()) and not overwrite:
        resuming = "--resume to continue it, " if resumable else ""
        raise ConfigError(f"--out {str(path)!r} already exists; pass {resuming}--overwrite to replace it, or "
                          "choose another --out")  # fmt: skip
    return path


def _is_run_file(p: Path, top: Path) -> bool:
    """A file a run writes (what --overwrite replaces); anything else in a run folder is the user's."""
    if p.parent == top:
        return p.name in RUN_FILES or p.name == "models"
    return p.parent == top / "models" and p.suffix in (".joblib", ".json", ".pt")


def _siblings(out: Path, tag: str) -> list[Path]:
    return sorted(out.parent.glob(f".{glob.escape(out.name)}.{tag}-*"))


def _keep_user_files(old: Path, out: Path) -> None:
    """Move what the user kept in the replaced run folder `old` into the new one `out` (never a
    file the new run wrote), then remove `old`."""
    for sub in (old / "models", old):
        if not sub.is_dir() or sub.is_symlink():
            continue
        dest = out / sub.relative_to(old)
        for p in sub.iterdir():
            if not _is_run_file(p, old) and not (dest / p.name).exists():
                dest.mkdir(parents=True, exist_ok=True)
                os.replace(p, dest / p.name)
    shutil.rmtree(old)


def _recover(out: Path) -> None:
    """Under --out's lock, finish or undo what a killed writer left beside `out`: an interrupted
    swap (the old run is put back, or its user files moved on) and unfinished work folders."""
    for old in _siblings(out, "old"):
        if out.exists():
            log.info("finishing an interrupted replacement of %s (moving its other files)", out)
            _keep_user_files(old, out)
        else:
            log.warning("%s: a replacement was interrupted before the new run was in place; restoring the "
                        "previous run from %s", out, old.name)  # fmt: skip
            os.rename(old, out)
    for partial in _siblings(out, "partial"):
        log.info("removing %s, the unfinished work of a run that was stopped", partial)
        shutil.rmtree(partial, ignore_errors=True)


@contextmanager
def writing(out: str | os.PathLike, *, swap: bool = True) -> Iterator[Path]:
    """Hold the lock of run folder `out` for the run (a second writer gets a `ConfigError` naming
    the first) and yield the folder to write in.

    With `swap`, that is a new sibling ``.NAME.partial-PID``, put in the place of `out` when the
    body ends without an error: a run stopped at any point (even by ``kill -9``) leaves the previous
    run in `out` as it was, and a replaced run leaves none of its files behind. The user's other
    files in `out` move to the new folder. Without `swap` (a run that continues a checkpoint in
    `out`), the run writes in `out` itself.
    """
    from evoked.features.lock import output_lock

    out = Path(os.path.realpath(out))
    with output_lock(out):
        _recover(out)
        if not swap:
            (out / "models").mkdir(parents=True, exist_ok=True)
            yield out
            return
        work = out.with_name(f".{out.name}.partial-{os.getpid()}")
        (work / "models").mkdir(parents=True)
        try:
            yield work
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        _swap_in(work, out)


def _swap_in(work: Path, out: Path) -> None:
    """`work` becomes `out`; a previous `out` is renamed aside first, so a stop between the two
    renames is undone by the next writer (`_recover`), and its user files are moved over after."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        if not out.is_dir():
            raise ConfigError(f"--out {str(out)!r} became a file during the run; the run is in {work}")
        os.rename(out, old)
    os.rename(work, out)
    if old.exists():
        _keep_user_files(old, out)


def write_run(
    path: str | Path,
    meta: Mapping,
    predictions: Mapping[str, Mapping[str, Sequence]],
    curve: Sequence[Mapping] | None = None,
) -> Path:
    """Write run.json, predictions.csv (and curve.csv) in the format of docs/runs.md.

    `predictions` maps a model name to columns: ``id, fold, split, valence_true, arousal_true,
    valence_pred, arousal_pred, category_true``, and optionally ``eval`` (the eval set of a
    row, "" for the training side), ``kind`` (one of `ROW_KINDS`; `infer_kind` when absent),
    ``pred_p_<category>`` and ``true_p_<category>``. run.json gets ``models``, ``name``, ``evals`` (empty) and
    ``items_sha256`` (of the first model's training-side items) unless `meta` sets them.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    models = list(predictions)
    if not models:
        raise ConfigError("write_run needs predictions of at least one model")
    extra = sorted({c for cols in predictions.values() for c in cols if c.startswith((PRED_P, TRUE_P))})
    write_predictions(path / "predictions.csv", _column_rows(predictions), extra)
    first = predictions[models[0]]
    side = [k for k in range(len(first["id"])) if not ("eval" in first and first["eval"][k])]
    fingerprint = items_fingerprint(*([first[c][k] for k in side] for c in ("id", "fold", "split")))
    write_json(path / "run.json", {"name": path.name, "models": models, "items_sha256": fingerprint,
                                   "evals": [], **dict(meta)})  # fmt: skip
    if curve:
        write_curve(path / "curve.csv", curve)
    return path


# ---------------------------------------------------------------------------------------------- reading


@dataclass
class Predictions:
    """One model's rows of predictions.csv, in file order."""

    ids: np.ndarray  # (n,) str
    fold: np.ndarray  # (n,) int
    split: np.ndarray  # (n,) str
    true: np.ndarray  # (n, 2) valence, arousal; NaN unknown
    pred: np.ndarray  # (n, 2)
    category: np.ndarray  # (n,) str, "" unknown
    p_true: np.ndarray | None = None  # (n, K) over `true_categories`
    true_categories: tuple[str, ...] = ()
    p_pred: np.ndarray | None = None  # (n, K') over `pred_categories`
    pred_categories: tuple[str, ...] = ()
    kind: np.ndarray | None = None  # (n,) str: one of ROW_KINDS


@dataclass
class Run:
    path: Path
    name: str
    meta: dict
    predictions: dict[str, Predictions]  # model -> training-side rows (eval "")
    curve: list[dict] = field(default_factory=list)
    evals: dict[str, dict[str, Predictions]] = field(default_factory=dict)  # eval name -> model -> rows


def infer_kind(fold: int, eval_name: str) -> str:
    """The kind of a row given without one: a hand-written run (`write_run`), or a file from before
    the ``kind`` column, whose writers fixed the kind by the fold and eval set (docs/runs.md)."""
    if eval_name:
        return "transfer"
    return "oof" if fold >= 0 else "held-out"


def _kind(row: dict, fold: int, where: str) -> str:
    kind = row.get("kind", "").strip() or infer_kind(fold, row.get("eval", "").strip())
    if kind not in ROW_KINDS:
        raise DatasetError(f"{where}: kind {kind!r} is not one of {', '.join(ROW_KINDS)} (see docs/runs.md)")
    return kind


def _table(path: Path, needed: Sequence[str], what: str) -> Iterator[tuple[str, list[str], dict]]:
    """(where, header, row) of each row of a CSV file that has the `needed` columns."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in needed if c not in header]
        if missing:
            raise DatasetError(f"{path}: missing column(s) {', '.join(missing)}; {what} needs "
                               f"{', '.join(needed)} (see docs/runs.md)")  # fmt: skip
        for lineno, raw in enumerate(reader, 2):
            yield f"{path}:{lineno}", header, {k.strip(): (v or "") for k, v in raw.items() if k is not None}


def read_predictions(path: Path) -> dict[str, Predictions]:
    """predictions.csv -> {model: Predictions} of the training-side rows (``eval`` empty or absent)."""
    return read_prediction_groups(path).get("", {})


def read_prediction_groups(path: Path) -> dict[str, dict[str, Predictions]]:
    """predictions.csv -> {eval name: {model: Predictions}}; "" is the training side; {} for a run
    that evaluated nothing (``--cv 0``).

    Raises `DatasetError` naming the file and line.
    """
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    cats: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
    for where, header, row in _table(path, REQUIRED_COLUMNS, "predictions.csv"):
        pred_cats = tuple(c[len(PRED_P) :] for c in header if c.startswith(PRED_P))
        true_cats = tuple(c[len(TRUE_P) :] for c in header if c.startswith(TRUE_P))
        cats = (pred_cats, true_cats)
        model, item, eval_name = row["model"].strip(), row["id"], row.get("eval", "").strip()
        if not model or item == "":
            raise DatasetError(f"{where}: empty model or id; every row names its model and item id")
        r = rows.setdefault((eval_name, model), {k: [] for k in ("ids", "fold", "split", "true", "pred",
                                                                 "cat", "pt", "pp", "kind")})  # fmt: skip
        if item in r.setdefault("seen", set()):
            in_set = f" in eval set {eval_name!r}" if eval_name else ""
            raise DatasetError(f"{where}: model {model!r} predicts item {item!r} twice{in_set}; each model "
                               "has one row per item (per eval set)")  # fmt: skip
        r["seen"].add(item)
        fold = parse_int(row["fold"], where, "fold")
        r["kind"].append(_kind(row, fold, where))
        r["ids"].append(item)
        r["fold"].append(fold)
        r["split"].append(row["split"].strip())
        r["true"].append([parse_float(row[f"{d}_true"], where, f"{d}_true") for d in ("valence", "arousal")])
        r["pred"].append([parse_float(row[f"{d}_pred"], where, f"{d}_pred") for d in ("valence", "arousal")])
        r["cat"].append(row["category_true"].strip())
        r["pt"].append([parse_float(row[TRUE_P + c], where, TRUE_P + c) for c in true_cats])
        r["pp"].append([parse_float(row[PRED_P + c], where, PRED_P + c) for c in pred_cats])
    out: dict[str, dict[str, Predictions]] = {}
    for (eval_name, model), r in rows.items():
        out.setdefault(eval_name, {})[model] = _predictions(r, *cats)
    return out


def _predictions(r: dict[str, list], pred_cats: tuple[str, ...], true_cats: tuple[str, ...]) -> Predictions:
    n = len(r["ids"])
    p_true = np.array(r["pt"], dtype=np.float64).reshape(n, -1) if true_cats else None
    p_pred = np.array(r["pp"], dtype=np.float64).reshape(n, -1) if pred_cats else None
    # the columns are shared by all models of the file: a model that left them empty has none
    p_true = None if p_true is not None and np.isnan(p_true).all() else p_true
    p_pred = None if p_pred is not None and np.isnan(p_pred).all() else p_pred
    return Predictions(
        kind=np.array(r["kind"], dtype=object),
        ids=np.array(r["ids"], dtype=object),
        fold=np.array(r["fold"], dtype=np.int64),
        split=np.array(r["split"], dtype=object),
        true=np.array(r["true"], dtype=np.float64).reshape(n, 2),
        pred=np.array(r["pred"], dtype=np.float64).reshape(n, 2),
        category=np.array(r["cat"], dtype=object),
        p_true=p_true,
        true_categories=true_cats if p_true is not None else (),
        p_pred=p_pred,
        pred_categories=pred_cats if p_pred is not None else (),
    )


def read_curve(path: Path) -> list[dict]:
    """curve.csv -> rows with n_labels/seed as int and metrics as float (absent metrics are NaN)."""
    return [
        {
            "model": row["model"].strip(),
            "setting": row["setting"].strip(),
            "n_labels": parse_int(row["n_labels"], where, "n_labels"),
            "seed": parse_int(row["seed"], where, "seed"),
            **{m: parse_float(row.get(m, ""), where, m) for m in CURVE_METRICS},
        }
        for where, _, row in _table(path, CURVE_KEYS, "curve.csv")
    ]


def read_run_meta(path: str | os.PathLike, error: type[EvokedError] = DatasetError) -> dict:
    """The run.json of run folder `path`; `error` names the folder and the fix when it is not one."""
    meta_path = Path(path) / "run.json"
    if not meta_path.is_file():
        raise error(f"{path} is not a run folder (no run.json); give a folder written by `evoked regress` or "
                    "`evoked finetune` (see docs/runs.md)")  # fmt: skip
    return parse_json_object(meta_path.read_text("utf-8"), str(meta_path), error)


def read_run(path: str | os.PathLike) -> Run:
    """One run directory: run.json, predictions.csv and, when present, curve.csv."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"run directory {str(path)!r} does not exist")
    meta = read_run_meta(path)
    pred_path = path / "predictions.csv"
    if not pred_path.is_file():
        raise DatasetError(f"{path} has no predictions.csv; was the run interrupted before it finished?")
    groups = read_prediction_groups(pred_path)
    predictions = groups.pop("", {})
    present = set(predictions) | {m for g in groups.values() for m in g}
    absent = [str(m) for m in meta.get("models") or [] if str(m) not in present]
    if absent:
        log.warning("%s: run.json lists model(s) %s without rows in predictions.csv", path, ", ".join(absent))
    curve = read_curve(path / "curve.csv") if (path / "curve.csv").is_file() else []
    return Run(path=path, name=path.resolve().name, meta=meta, predictions=predictions, curve=curve,
               evals=groups)  # fmt: skip


# ------------------------------------------------------------------------------------ image paths


def image_path_text(path: str | os.PathLike) -> str:
    """How a predictions file names an image: its absolute path, so the file means the same
    wherever it is read from (`evoked predict` writes this)."""
    return os.path.abspath(os.path.expanduser(str(path)))


def image_path_key(text: str, folder: Path) -> str:
    """The image a predictions file's ``path`` names: absolute, or relative to the file's `folder`
    (a hand-written file), resolved and case-normalised for matching."""
    q = Path(text).expanduser()
    return os.path.normcase(os.path.realpath(q if q.is_absolute() else folder / q))
