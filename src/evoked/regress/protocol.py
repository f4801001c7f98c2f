"""Which rows train and which are evaluated: cross-validation, a named split, or fit only.

Evaluation is always against the VA ratings of the evaluated items, whatever the training target.
Rows are left out for a reason, and every reason is counted (`Plan.counts`):

- ``failed features``: the image failed (or is pending) in the store;
- ``non-finite features``: the row is ok but has NaN/inf values;
- ``no training label``: the target has no value for the row (no rating, no category, ...);
- ``not evaluable (no VA rating)``: cannot be scored (may still train with a category target);
- ``outside the store's folds`` / ``outside the splits``: the store's assignment leaves them out;
- ``test split (left out of the CV)``: under ``--cv K`` on a store with a split, the test rows
  neither train nor are scored, unless ``--cv-include-test``.

`Plan.excluded` marks the rows no fit of the run trains on (the test split, or the evaluated
split): stage 1 of ``--stage1 same`` and the category-labelled extra rows respect it too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from evoked.data.splits import assign_folds
from evoked.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass
class Fold:
    """One fit: rows to train on and rows to predict (indices into the store)."""

    index: int
    train: np.ndarray
    eval: np.ndarray


@dataclass
class Plan:
    folds: list[Fold]
    final_train: np.ndarray  # rows of the model that is saved (and used by `evoked predict`)
    eval_fold: dict[int, int]  # evaluated row -> its fold (-1 under a split)
    eval_split: str  # "" under CV
    protocol: dict  # as recorded in run.json
    counts: dict[str, int] = field(default_factory=dict)
    excluded: np.ndarray | None = None  # bool per row: no fit of the run trains on it

    @property
    def eval_rows(self) -> np.ndarray:
        return np.array(sorted(self.eval_fold), dtype=np.int64)

    @property
    def train_rows(self) -> np.ndarray:
        """Every row that trains in some fold (the stage-1 pool of ``--stage1 same``)."""
        rows = [f.train for f in self.folds] + [self.final_train]
        return np.unique(np.concatenate(rows)) if rows else np.zeros(0, dtype=np.int64)


def usable_rows(ok: np.ndarray, finite: np.ndarray, has_target: np.ndarray, has_va: np.ndarray) -> dict:
    """Masks of rows that can train (features + label) and be evaluated (features + VA)."""
    feat = ok & finite
    return {"features": feat, "train": feat & has_target, "eval": feat & has_va}


def _counts(ok, finite, has_target, has_va) -> dict[str, int]:
    """Rows left out, by reason (a row with failed features is counted there only)."""
    feat = ok & finite
    counts = {"items": int(len(ok)), "failed features": int((~ok).sum())}
    if (ok & ~finite).any():
        counts["non-finite features"] = int((ok & ~finite).sum())
    counts["no training label"] = int((feat & ~has_target).sum())
    counts["not evaluable (no VA rating)"] = int((feat & ~has_va).sum())
    return counts


def plan_cv(
    k: int,
    *,
    ok: np.ndarray,
    finite: np.ndarray,
    has_target: np.ndarray,
    has_va: np.ndarray,
    store_fold: np.ndarray,
    category: np.ndarray,
    split: np.ndarray | None = None,
    include_test: bool = False,
    seed: int = 0,
) -> Plan:
    """K-fold CV over the evaluable rows; the store's own folds when it has exactly K of them.

    Rows with a training label but no VA rating (a category target) train in every fold. On a
    store with a split the test rows are left out (neither trained on nor scored; the saved model
    never sees them) unless `include_test`.
    """
    m = usable_rows(ok, finite, has_target, has_va)
    counts = _counts(ok, finite, has_target, has_va)
    split = np.asarray(split if split is not None else [""] * len(ok), dtype=object).astype(str)
    excluded = (split == "test") if not include_test else np.zeros(len(ok), dtype=bool)
    if (excluded & m["features"]).any():
        counts["test split (left out of the CV)"] = int((excluded & m["features"]).sum())
    m = {k: v & ~excluded for k, v in m.items()}
    evaluable = m["eval"]
    present = sorted(set(store_fold[store_fold >= 0].tolist()))
    if present == list(range(k)):
        folds = store_fold.copy()
        outside = evaluable & (folds < 0)
        if outside.any():
            counts["outside the store's folds"] = int(outside.sum())
        evaluable = evaluable & (folds >= 0)
        source = "store"
    else:
        if present:
            log.warning(
                "the store has %d folds, not %d: assigning %d new folds (seed %d); other systems using the "
                "store's folds will not see the same ones", len(present), k, k, seed,
            )  # fmt: skip
        rows = np.flatnonzero(evaluable)
        if len(rows) < k:
            raise ConfigError(
                f"--cv {k}: only {len(rows)} items have features and VA ratings; use fewer folds or more data"
            )
        cats = category[rows].astype(str)
        labels = cats if all(cats) else None
        folds = np.full(len(ok), -1, dtype=np.int64)
        folds[rows] = assign_folds(labels, k, seed, len(rows))
        source = "assigned"
    extra = m["train"] & ~has_va  # category-labelled rows without ratings: training only
    eval_rows = np.flatnonzero(evaluable)
    plan_folds = []
    for f in range(k):
        train = np.flatnonzero((evaluable & m["train"] & (folds != f)) | extra)
        plan_folds.append(Fold(f, train, eval_rows[folds[eval_rows] == f]))
    final = np.flatnonzero((evaluable & m["train"]) | extra)
    protocol = {"kind": "cv", "folds": int(k), "seed": int(seed), "folds_source": source}
    protocol["includes_test"] = bool(include_test or "test" not in split)
    if extra.any():
        counts["training only (no VA rating)"] = int(extra.sum())
    counts["evaluated"] = int(len(eval_rows))
    eval_fold = {int(r): int(folds[r]) for r in eval_rows}
    return Plan(plan_folds, final, eval_fold, "", protocol, counts, excluded)


def plan_split(
    name: str,
    *,
    ok: np.ndarray,
    finite: np.ndarray,
    has_target: np.ndarray,
    has_va: np.ndarray,
    split: np.ndarray,
) -> Plan:
    """Train on the splits before `name` (train, and val when evaluating on test); evaluate on `name`."""
    if name not in ("test", "val"):
        raise ConfigError(
            f"--split {name!r}: evaluate on 'test' (train on train+val) or 'val' (train on train)"
        )
    split = np.asarray(split, dtype=object).astype(str)
    if not any(split):
        raise ConfigError(
            "--split: this store has no train/val/test split. Run `evoked data split DATASET --out M.csv`, "
            "extract from that manifest, or use --cv K"
        )
    train_splits = ["train", "val"] if name == "test" else ["train"]
    m = usable_rows(ok, finite, has_target, has_va)
    counts = _counts(ok, finite, has_target, has_va)
    unassigned = m["features"] & (split == "")
    if unassigned.any():
        counts["outside the splits"] = int(unassigned.sum())
    train = np.flatnonzero(m["train"] & np.isin(split, train_splits))
    eval_rows = np.flatnonzero(m["eval"] & (split == name))
    if not len(eval_rows):
        raise ConfigError(f"--split {name}: no {name} item has features and VA ratings to evaluate")
    if not len(train):
        raise ConfigError(
            f"--split {name}: no {'/'.join(train_splits)} item has features and a training label"
        )
    counts["evaluated"] = int(len(eval_rows))
    protocol = {"kind": "split", "train": train_splits, "eval": name}
    excluded = ~np.isin(split, train_splits)
    plan = Plan(
        [Fold(0, train, eval_rows)], train, {int(r): -1 for r in eval_rows}, name, protocol, counts, excluded
    )
    return plan


def plan_fit_only(*, ok: np.ndarray, finite: np.ndarray, has_target: np.ndarray, has_va: np.ndarray) -> Plan:
    """No evaluation (``--cv 0``): one model on every row with features and a training label."""
    m = usable_rows(ok, finite, has_target, has_va)
    counts = _counts(ok, finite, has_target, has_va)
    train = np.flatnonzero(m["train"])
    if not len(train):
        raise ConfigError("no item has both features and a training label; check --target and the store")
    counts["evaluated"] = 0
    return Plan([], train, {}, "", {"kind": "fit-only"}, counts, np.zeros(len(ok), dtype=bool))


def selection_folds(
    plan: Plan, split: np.ndarray, has_va: np.ndarray, seed: int, k: int = 5
) -> tuple[list[Fold], str]:
    """Folds that choose the default model under a split, on the training rows only: fitted on
    train and scored on val when the evaluated split is test (and val has rated rows), else a
    `k`-fold CV over the training rows (never the evaluated rows)."""
    split = np.asarray(split, dtype=object).astype(str)
    train = plan.final_train
    rated = train[has_va[train]]
    if plan.protocol.get("eval") == "test":
        fit, score = train[split[train] == "train"], rated[split[rated] == "val"]
        if len(fit) and len(score):
            return [Fold(0, fit, score)], "the val rows, models fitted on the train rows"
    k = min(k, len(rated))
    if k < 2:
        return [], "none (too few rated training rows)"
    folds = assign_folds(None, k, seed, len(rated))
    unrated = train[~has_va[train]]
    out = [Fold(f, np.sort(np.r_[rated[folds != f], unrated]), rated[folds == f]) for f in range(k)]
    return out, f"{k}-fold CV over the {'+'.join(plan.protocol['train'])} rows"


def redraw_assignment(labels: dict, seed: int) -> dict:
    """`labels` with the split redrawn by `seed` and the store's folds dropped (one repeat of
    ``regress --repeats``): within each category, the rows of the train/val/test splits swap their
    split labels at random, so every category keeps its count in every split. The CV then assigns
    folds with the run's seed (a repeat's seed), never the store's."""
    split = np.asarray(labels["split"], dtype=object).astype(str)
    category = np.asarray(labels["category"], dtype=object).astype(str)
    rng = np.random.default_rng(seed)
    new = split.copy()
    for c in sorted(set(category.tolist())):
        rows = np.flatnonzero((category == c) & (split != ""))
        new[rows] = split[rows][rng.permutation(len(rows))]
    return {**labels, "split": new.astype(object), "fold": np.full(len(split), -1, dtype=np.int64)}
