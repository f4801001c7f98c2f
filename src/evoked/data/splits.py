"""Deterministic stratified splits: train/val/test and k folds, by seed.

Splits are stored in the manifest (``split`` and ``fold`` columns) and from there in the feature
store, so every later stage (regressors, fine-tuning, evaluation) uses the same items.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Literal

import numpy as np
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from evoked.data.manifest import Manifest
from evoked.errors import ConfigError

log = logging.getLogger(__name__)

Stratify = Literal["auto", "category", "valence", "none"]


def stratification_labels(manifest: Manifest, stratify: Stratify = "auto") -> tuple[np.ndarray | None, str]:
    """Labels to stratify on and the name of what they are.

    ``auto`` uses the hard category when every item has one, else valence quintiles when every
    item has valence, else nothing.
    """
    has_cat = all(manifest.category)
    has_val = not np.isnan(manifest.valence).any()
    if stratify == "auto":
        stratify = "category" if has_cat else "valence" if has_val else "none"
    if stratify == "category":
        if not has_cat:
            raise ConfigError(
                "--stratify category: some items have no category; use --stratify valence or none"
            )
        return manifest.category.astype(str), "category"
    if stratify == "valence":
        if not has_val:
            raise ConfigError(
                "--stratify valence: some items have no valence; use --stratify category or none"
            )
        edges = np.quantile(manifest.valence, [0.2, 0.4, 0.6, 0.8])
        return np.digitize(manifest.valence, edges), "valence quintile"
    if stratify == "none":
        return None, "none"
    raise ConfigError(f"unknown --stratify {stratify!r}; use auto, category, valence or none")


def parse_ratios(text: str | tuple[float, float, float]) -> tuple[float, float, float]:
    """``"0.7,0.1,0.2"`` -> (0.7, 0.1, 0.2); they must be >= 0 and sum to 1."""
    try:
        parts = tuple(float(x) for x in text.split(",")) if isinstance(text, str) else tuple(text)
    except ValueError:
        raise ConfigError(
            f"--ratios {text!r}: expected three numbers TRAIN,VAL,TEST such as 0.7,0.1,0.2"
        ) from None
    if len(parts) != 3 or min(parts) < 0 or abs(sum(parts) - 1) > 1e-6 or parts[0] <= 0:
        raise ConfigError(f"--ratios {text!r}: need three non-negative fractions TRAIN,VAL,TEST summing to 1")
    return parts


def split_manifest(
    manifest: Manifest,
    *,
    ratios: tuple[float, float, float] | str = (0.7, 0.1, 0.2),
    folds: int = 0,
    seed: int = 0,
    stratify: Stratify = "auto",
    overwrite: bool = False,
) -> Manifest:
    """A copy of `manifest` with ``split`` (and ``fold`` when `folds` > 1) assigned.

    The same manifest, ratios and seed always give the same assignment. A dataset whose layout
    already defines a split keeps it unless `overwrite` is set; folds are then drawn within the
    training part.
    """
    train, val, test = parse_ratios(ratios)
    n = len(manifest)
    labels, _ = stratification_labels(manifest, stratify)
    idx = np.arange(n)
    split = manifest.split.copy()
    has_split = bool(any(manifest.split))
    if overwrite or not has_split:  # else the dataset's own split is kept
        _check_sizes(n, (train, val, test))
        split[:] = "train"
        rest_frac = val + test
        if rest_frac > 0:
            tr, rest = _split(idx, labels, rest_frac, seed)
            split[rest] = "test"
            if val > 0 and test > 0:
                sub_labels = None if labels is None else labels[rest]
                va, _ = _split(rest, sub_labels, test / rest_frac, seed + 1)
                split[va] = "val"
            elif val > 0:
                split[rest] = "val"
    fold = np.full(n, -1, dtype=np.int64)
    if folds and folds > 1:
        pool = idx[split == "train"] if has_split and not overwrite else idx
        fold[pool] = assign_folds(None if labels is None else labels[pool], folds, seed, len(pool))
    elif folds == 1:
        raise ConfigError("--folds 1 makes no sense; use 0 (no folds) or at least 2")
    return replace(manifest, split=split, fold=fold, notes=list(manifest.notes))


def _check_sizes(n: int, ratios: tuple[float, float, float]) -> None:
    """Every part with a positive ratio gets at least one item (as train_test_split counts them)."""
    train, val, test = ratios
    rest = math.ceil((val + test) * n - 1e-9) if val + test > 0 else 0
    n_test = math.ceil(test / (val + test) * rest - 1e-9) if val > 0 and test > 0 else (rest if test else 0)
    sizes = {"train": n - rest, "val": rest - n_test, "test": n_test}
    empty = [k for k, r in zip(sizes, ratios) if r > 0 and sizes[k] < 1]
    if empty:
        raise ConfigError(
            f"cannot split {n} items at ratios {train:g},{val:g},{test:g}: the {' and '.join(empty)} part would "
            "be empty; add items or change --ratios (e.g. --ratios 1,0,0 keeps every item for training)"
        )


def _split(
    idx: np.ndarray, labels: np.ndarray | None, frac: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    strat = labels
    if strat is not None:
        classes, counts = np.unique(strat, return_counts=True)
        n_b = int(np.ceil(frac * len(idx)))
        # stratifying needs two items per class and room for every class on both sides
        if counts.min() < 2 or min(n_b, len(idx) - n_b) < len(classes):
            log.warning(
                "too few items (%d) for a split stratified over %d classes; drawing this part unstratified",
                len(idx),
                len(classes),
            )
            strat = None
    try:
        a, b = train_test_split(idx, test_size=frac, random_state=seed, shuffle=True, stratify=strat)
    except ValueError as e:  # too few items for the parts asked for
        raise ConfigError(
            f"cannot split {len(idx)} items into parts of {1 - frac:.2f} and {frac:.2f}: {e}; "
            "add items or change --ratios (e.g. --ratios 1,0,0 keeps every item for training)"
        ) from e
    return np.sort(a), np.sort(b)


def assign_folds(labels: np.ndarray | None, k: int, seed: int, n: int | None = None) -> np.ndarray:
    """Fold number (0..k-1) of each item, stratified on `labels` when given."""
    n = len(labels) if labels is not None else int(n or 0)
    if n < k:
        raise ConfigError(f"cannot make {k} folds from {n} items; use fewer folds")
    fold = np.empty(n, dtype=np.int64)
    counts = None if labels is None else np.unique(labels, return_counts=True)[1]
    if counts is not None and counts.min() >= k:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        parts = splitter.split(np.zeros(n), labels)
    else:
        parts = KFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(n))
    for f, (_, test_idx) in enumerate(parts):
        fold[test_idx] = f
    return fold
