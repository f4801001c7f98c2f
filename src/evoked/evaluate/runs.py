"""Run directories (docs/runs.md): read them, write them, and line up their systems item by item.

A *system* is one model of one run, named ``RUN/MODEL`` where RUN is the run directory's name.
`align_systems` checks that all systems evaluated the same items with the same fold/split and the
same truths, and returns their predictions in one common item order.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evoked.data.text import parse_float, parse_int
from evoked.errors import ConfigError, DatasetError

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = (
    "model",
    "id",
    "fold",
    "split",
    "valence_true",
    "arousal_true",
    "valence_pred",
    "arousal_pred",
    "category_true",
)
#: optional columns (docs/runs.md): which eval set a row belongs to ("" = training side) and its kind
EVAL_COLUMNS = ("eval", "kind")
KINDS = ("oof", "held-out", "transfer")
CURVE_COLUMNS = ("model", "setting", "n_labels", "seed")
CURVE_METRICS = ("r_valence", "r_arousal", "mse_valence", "mse_arousal")
PRED_P = "pred_p_"
TRUE_P = "true_p_"

_SAME_ITEMS_FIX = (
    "Compare runs made on the same items: make the split once (`evoked data split`) and train every run "
    "on it, use --cv with the store's folds in every run, or evaluate every run with --split test."
)


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
    kind: np.ndarray | None = None  # (n,) str: oof, held-out or transfer


@dataclass
class Run:
    path: Path
    name: str
    meta: dict
    predictions: dict[str, Predictions]  # model -> training-side rows (eval "")
    curve: list[dict] = field(default_factory=list)
    evals: dict[str, dict[str, Predictions]] = field(default_factory=dict)  # eval name -> model -> rows

    def eval_info(self, name: str) -> dict:
        """The run.json ``evals`` entry of eval set `name` ({} when run.json does not describe it)."""
        for e in self.meta.get("evals") or []:
            if isinstance(e, dict) and e.get("name") == name:
                return e
        return {}


@dataclass
class System:
    name: str  # RUN/MODEL
    run: str
    model: str
    pred: np.ndarray  # (n, 2) in the common item order
    p_pred: np.ndarray | None
    pred_categories: tuple[str, ...]


@dataclass
class Items:
    """The items every system was evaluated on, sorted by id, with their truths."""

    ids: np.ndarray
    fold: np.ndarray
    split: np.ndarray
    true: np.ndarray
    category: np.ndarray
    p_true: np.ndarray | None
    true_categories: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)


def items_fingerprint(ids: Sequence[str], fold: Sequence[int], split: Sequence[str]) -> str:
    """sha256 of the lines ``id<TAB>fold<TAB>split`` sorted by id, joined with newlines (UTF-8)."""
    rows = sorted(zip((str(i) for i in ids), (int(f) for f in fold), (str(s) for s in split)))
    text = "\n".join(f"{i}\t{f}\t{s}" for i, f, s in rows)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- reading


def infer_kind(fold: int, split: str, eval_name: str) -> str:
    """The kind of a row written without a ``kind`` column (runs made before it existed)."""
    if eval_name:
        return "transfer"
    return "oof" if fold >= 0 else "held-out"


def read_predictions(path: Path) -> dict[str, Predictions]:
    """predictions.csv -> {model: Predictions} of the training-side rows (``eval`` empty or absent)."""
    return read_prediction_groups(path).get("", {})


def read_prediction_groups(path: Path) -> dict[str, dict[str, Predictions]]:
    """predictions.csv -> {eval name: {model: Predictions}}; "" is the training side.

    Raises `DatasetError` naming the file and line.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise DatasetError(
                f"{path}: missing column(s) {', '.join(missing)}; predictions.csv needs "
                f"{', '.join(REQUIRED_COLUMNS)} (see docs/runs.md)"
            )
        pred_cats = tuple(c[len(PRED_P) :] for c in header if c.startswith(PRED_P))
        true_cats = tuple(c[len(TRUE_P) :] for c in header if c.startswith(TRUE_P))
        rows: dict[tuple[str, str], dict[str, list]] = {}
        seen: dict[tuple[str, str], set] = {}
        for lineno, raw in enumerate(reader, 2):
            row = {k.strip(): (v or "") for k, v in raw.items() if k is not None}
            where = f"{path}:{lineno}"
            model, item = row["model"].strip(), row["id"]
            eval_name = row.get("eval", "").strip()
            if not model or item == "":
                raise DatasetError(f"{where}: empty model or id; every row names its model and item id")
            key = (eval_name, model)
            if item in seen.setdefault(key, set()):
                where_set = f" in eval set {eval_name!r}" if eval_name else ""
                raise DatasetError(
                    f"{where}: model {model!r} predicts item {item!r} twice{where_set}; each model has one "
                    "row per item (per eval set)"
                )
            seen[key].add(item)
            r = rows.setdefault(
                key, {k: [] for k in ("ids", "fold", "split", "true", "pred", "cat", "pt", "pp", "kind")}
            )
            fold = parse_int(row["fold"], where, "fold")
            kind = row.get("kind", "").strip() or infer_kind(fold, row["split"].strip(), eval_name)
            if kind not in KINDS:
                raise DatasetError(
                    f"{where}: kind {kind!r} is not one of {', '.join(KINDS)} (see docs/runs.md)"
                )
            r["kind"].append(kind)
            r["ids"].append(item)
            r["fold"].append(fold)
            r["split"].append(row["split"].strip())
            r["true"].append(
                [parse_float(row[f"{d}_true"], where, f"{d}_true") for d in ("valence", "arousal")]
            )
            r["pred"].append(
                [parse_float(row[f"{d}_pred"], where, f"{d}_pred") for d in ("valence", "arousal")]
            )
            r["cat"].append(row["category_true"].strip())
            r["pt"].append([parse_float(row[TRUE_P + c], where, TRUE_P + c) for c in true_cats])
            r["pp"].append([parse_float(row[PRED_P + c], where, PRED_P + c) for c in pred_cats])
    if not rows:
        raise DatasetError(f"{path} has no prediction rows")
    out: dict[str, dict[str, Predictions]] = {}
    for (eval_name, model), r in rows.items():
        n = len(r["ids"])
        p_true = np.array(r["pt"], dtype=np.float64).reshape(n, -1) if true_cats else None
        p_pred = np.array(r["pp"], dtype=np.float64).reshape(n, -1) if pred_cats else None
        # the columns are shared by all models of the file: a model that left them empty has none
        p_true = None if p_true is not None and np.isnan(p_true).all() else p_true
        p_pred = None if p_pred is not None and np.isnan(p_pred).all() else p_pred
        out.setdefault(eval_name, {})[model] = Predictions(
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
    return out


def read_curve(path: Path) -> list[dict]:
    """curve.csv -> rows with n_labels/seed as int and metrics as float (absent metrics are NaN)."""
    with Path(path).open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        header = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in CURVE_COLUMNS if c not in header]
        if missing:
            raise DatasetError(
                f"{path}: missing column(s) {', '.join(missing)}; curve.csv needs "
                f"{', '.join(CURVE_COLUMNS + CURVE_METRICS)} (see docs/runs.md)"
            )
        rows = []
        for lineno, raw in enumerate(reader, 2):
            row = {k.strip(): (v or "") for k, v in raw.items() if k is not None}
            where = f"{path}:{lineno}"
            rows.append(
                {
                    "model": row["model"].strip(),
                    "setting": row["setting"].strip(),
                    "n_labels": parse_int(row["n_labels"], where, "n_labels"),
                    "seed": parse_int(row["seed"], where, "seed"),
                    **{m: parse_float(row.get(m, ""), where, m) for m in CURVE_METRICS},
                }
            )
    return rows


def read_run(path: str | Path) -> Run:
    """One run directory: run.json, predictions.csv and, when present, curve.csv."""
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"run directory {str(path)!r} does not exist")
    meta_path = path / "run.json"
    if not meta_path.is_file():
        raise DatasetError(
            f"{path} has no run.json; pass run directories written by `evoked regress` or `evoked finetune` "
            "(see docs/runs.md)"
        )
    try:
        meta = json.loads(meta_path.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{meta_path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise DatasetError(f"{meta_path} must hold a JSON object")
    pred_path = path / "predictions.csv"
    if not pred_path.is_file():
        raise DatasetError(f"{path} has no predictions.csv; was the run interrupted before it finished?")
    groups = read_prediction_groups(pred_path)
    predictions = groups.pop("", {})
    listed = [str(m) for m in meta.get("models") or []]
    present = set(predictions) | {m for g in groups.values() for m in g}
    absent = [m for m in listed if m not in present]
    if absent:
        log.warning("%s: run.json lists model(s) %s without rows in predictions.csv", path, ", ".join(absent))
    curve = read_curve(path / "curve.csv") if (path / "curve.csv").is_file() else []
    return Run(
        path=path, name=path.resolve().name, meta=meta, predictions=predictions, curve=curve, evals=groups
    )


# ---------------------------------------------------------------------------------------------- writing


def json_safe(o):
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
    if isinstance(o, Path):
        return str(o)
    return o


def write_json(path: Path, obj) -> None:
    """Write `obj` as strict JSON (no NaN/Infinity: they become null), indented, UTF-8."""
    Path(path).write_text(json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n", encoding="utf-8")


def _fmt(x) -> str:
    if isinstance(x, (float, np.floating)):
        return "NaN" if math.isnan(x) else repr(float(x))
    return str(x)


def write_run(
    path: str | Path,
    meta: Mapping,
    predictions: Mapping[str, Mapping[str, Sequence]],
    curve: Sequence[Mapping] | None = None,
) -> Path:
    """Write run.json, predictions.csv (and curve.csv) in the format of docs/runs.md.

    `predictions` maps a model name to columns: ``id, fold, split, valence_true, arousal_true,
    valence_pred, arousal_pred, category_true`` and optionally ``eval`` (the eval set of a row, ""
    for the training side), ``kind`` (inferred from fold/eval when absent), ``pred_p_<category>``
    and ``true_p_<category>``. run.json gets ``models``, ``name``, ``evals`` (empty) and
    ``items_sha256`` (of the first model's training-side items) unless `meta` sets them; it is
    strict JSON (NaN written as null).
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    models = list(predictions)
    if not models:
        raise ConfigError("write_run needs predictions of at least one model")
    extra = sorted({c for cols in predictions.values() for c in cols if c.startswith((PRED_P, TRUE_P))})
    header = ["model", *REQUIRED_COLUMNS[1:], *EVAL_COLUMNS, *extra]
    with (path / "predictions.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for model, cols in predictions.items():
            n = len(cols["id"])
            for i in range(n):
                values = {c: _fmt(cols[c][i]) if c in cols else "" for c in header[1:]}
                if not values["kind"]:
                    values["kind"] = infer_kind(int(cols["fold"][i]), str(cols["split"][i]), values["eval"])
                w.writerow([model] + [values[c] for c in header[1:]])
    first = predictions[models[0]]
    side = [k for k in range(len(first["id"])) if not ("eval" in first and first["eval"][k])]
    full = {
        "name": path.name,
        "models": models,
        "items_sha256": items_fingerprint(
            [first["id"][k] for k in side],
            [first["fold"][k] for k in side],
            [first["split"][k] for k in side],
        ),
        "evals": [],
        **dict(meta),
    }
    write_json(path / "run.json", full)
    if curve:
        with (path / "curve.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            cols = list(CURVE_COLUMNS + CURVE_METRICS)
            w.writerow(cols)
            for row in curve:
                w.writerow([_fmt(row.get(c, math.nan)) for c in cols])
    return path


# ---------------------------------------------------------------------------------------------- aligning


def differences(a: Predictions, b: Predictions) -> tuple[int, int, int]:
    """(ids only in a, ids only in b, shared ids whose fold or split differ)."""
    ka = {i: (f, s) for i, f, s in zip(a.ids, a.fold, a.split)}
    kb = {i: (f, s) for i, f, s in zip(b.ids, b.fold, b.split)}
    only_a = len(ka.keys() - kb.keys())
    only_b = len(kb.keys() - ka.keys())
    moved = sum(1 for i in ka.keys() & kb.keys() if ka[i] != kb[i])
    return only_a, only_b, moved


def _check_same_items(systems: list[tuple[str, Run, Predictions]]) -> None:
    name0, run0, first = systems[0]
    problems = []
    for name, run, p in systems[1:]:
        only_a, only_b, moved = differences(first, p)
        if only_a or only_b or moved:
            problems.append(
                f"{name} ({run.path}) vs {name0} ({run0.path}): {only_a} ids only in {name0}, "
                f"{only_b} ids only in {name}, {moved} ids with a different fold/split"
            )
    if problems:
        raise ConfigError(
            "these systems were not evaluated on the same items, so their metrics cannot be compared: "
            + "; ".join(problems)
            + ". "
            + _SAME_ITEMS_FIX
        )


def _order(p: Predictions, ids: np.ndarray) -> np.ndarray:
    pos = {i: k for k, i in enumerate(p.ids)}
    return np.array([pos[i] for i in ids], dtype=np.int64)


def _check_truth(name0: str, name: str, what: str, a: np.ndarray, b: np.ndarray, ids: np.ndarray) -> None:
    same = np.isclose(a, b, rtol=1e-5, atol=1e-4) | (np.isnan(a) & np.isnan(b))
    if a.ndim > 1:
        same = same.all(axis=1)
    if not same.all():
        k = int(np.flatnonzero(~same)[0])
        raise ConfigError(
            f"{name} and {name0} disagree on the true {what} of {int((~same).sum())} item(s) "
            f"(e.g. {ids[k]!r}: {b[k]} vs {a[k]}); they were scored against different labels. "
            "Evaluate runs made from the same dataset and labels."
        )


def align_systems(runs: Sequence[Run]) -> tuple[Items, list[System], list[str]]:
    """Check that every system saw the same items and truths; return them in one item order.

    Returns the items (sorted by id), the systems in run order then model order, and notes for the
    report (e.g. differing recorded fingerprints, categories filled in from another run).
    Raises `ConfigError` when items, folds/splits or truths differ.
    """
    names = [r.name for r in runs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        paths = [str(r.path) for r in runs if r.name in dup]
        raise ConfigError(
            f"several run directories are named {', '.join(dup)} ({', '.join(paths)}); system names are "
            "RUN/MODEL, so give each run directory its own name (or pass each directory once)"
        )
    flat = [(f"{r.name}/{m}", r, p) for r in runs for m, p in r.predictions.items()]
    models = [m for r in runs for m in r.predictions]
    _check_same_items(flat)
    notes: list[str] = []

    name0, _, first = flat[0]
    order0 = np.argsort(first.ids.astype(str), kind="stable")
    ids = first.ids[order0]
    true = first.true[order0].copy()
    category = first.category[order0].copy()
    p_true, true_cats, p_true_from = None, (), ""
    for name, _, p in flat:
        k = _order(p, ids)
        _check_truth(name0, name, "valence/arousal", true, p.true[k], ids)
        cat = p.category[k]
        clash = (category != "") & (cat != "") & (category != cat)
        if clash.any():
            j = int(np.flatnonzero(clash)[0])
            raise ConfigError(
                f"{name} and {name0} disagree on the category of {int(clash.sum())} item(s) "
                f"(e.g. {ids[j]!r}: {cat[j]!r} vs {category[j]!r}); evaluate runs made from the same labels"
            )
        fill = (category == "") & (cat != "")
        if fill.any():
            category[fill] = cat[fill]
            notes.append(f"category_true of {int(fill.sum())} item(s) taken from {name}")
        if p.p_true is not None:
            if p_true is None:
                p_true, true_cats, p_true_from = p.p_true[k], p.true_categories, name
            elif set(p.true_categories) != set(true_cats):
                raise ConfigError(
                    f"{name} gives true distributions over {', '.join(p.true_categories)} but {p_true_from} "
                    f"over {', '.join(true_cats)}; evaluate runs made from the same labels"
                )
            else:
                other = p.p_true[k][:, [p.true_categories.index(c) for c in true_cats]]
                known = ~np.isnan(p_true).any(axis=1) & ~np.isnan(other).any(axis=1)
                _check_truth(p_true_from, name, "label distribution", p_true[known], other[known], ids[known])
                fill = np.isnan(p_true).any(axis=1) & ~np.isnan(other).any(axis=1)
                p_true = p_true.copy()
                p_true[fill] = other[fill]

    items = Items(
        ids=ids,
        fold=first.fold[order0],
        split=first.split[order0],
        true=true,
        category=category,
        p_true=p_true,
        true_categories=tuple(true_cats),
    )
    systems = []
    for (name, run, p), model in zip(flat, models):
        k = _order(p, ids)
        systems.append(
            System(
                name=name,
                run=run.name,
                model=model,
                pred=p.pred[k],
                p_pred=p.p_pred[k] if p.p_pred is not None else None,
                pred_categories=p.pred_categories,
            )
        )

    recorded = {r.name: str(r.meta["items_sha256"]) for r in runs if r.meta.get("items_sha256")}
    if len(set(recorded.values())) > 1:
        shown = ", ".join(f"{name} {sha[:12]}" for name, sha in recorded.items())
        notes.append(
            f"the runs record different items_sha256 ({shown}), but their predictions cover the same ids "
            "with the same folds/splits, compared id by id; the fingerprints may cover other rows or be "
            "computed differently"
        )
    return items, systems, notes
