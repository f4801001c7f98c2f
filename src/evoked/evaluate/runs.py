"""Line up the systems of run directories (docs/runs.md) item by item.

A *system* is one model of one run, named ``RUN/MODEL`` where RUN is the run directory's name.
`align_systems` checks that all systems evaluated the same items with the same fold/split and the
same truths, and returns their predictions in one common item order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from evoked.errors import ConfigError

# the run folder's reader and writer live in evoked.runfolder; the old names stay importable from here
from evoked.runfolder import Predictions, Run, items_fingerprint, read_predictions, read_run, write_run  # noqa: F401

_SAME_ITEMS_FIX = (
    "Compare runs made on the same items: make the split once (`evoked data split`) and train every run "
    "on it, use --cv with the store's folds in every run, or evaluate every run with --split test."
)


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
    p_true, p_true_from = None, ""
    true_cats: tuple[str, ...] = ()
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
