"""Training targets from a store's labels: VA ratings, or category-derived VA through a lexicon.

`make_targets` returns y (n, 2), the mask of rows that have the needed label, and a JSON-ready
description (with the lexicon's `describe()`). Rows without the label are never imputed: they are
left out of training and counted by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from evoked.data.lexicon import load_lexicon
from evoked.errors import ConfigError, LabelError

TARGET_KINDS = ("va", "category-va")
AUX_KINDS = ("distribution", "category")


@dataclass
class Targets:
    """y (n, 2), which rows have it, why the others do not, and what it is."""

    y: np.ndarray
    mask: np.ndarray
    description: dict
    missing: dict[str, int] = field(default_factory=dict)  # reason -> rows without the label

    @property
    def n(self) -> int:
        return int(self.mask.sum())


def va_ratings(labels: dict) -> np.ndarray:
    """(n, 2) valence and arousal ratings, NaN where unknown."""
    return np.stack([labels["valence"], labels["arousal"]], axis=1).astype(np.float64)


def make_targets(
    labels: dict,
    kind: str = "va",
    *,
    lexicon: str | None = None,
    soft: bool = False,
    category_map: Sequence[str] | dict[str, str] | None = None,
) -> Targets:
    """Targets of every row of a store (`FeatureStore.labels()`); see `TARGET_KINDS`.

    ``va``: the ratings, usable where both valence and arousal are known. ``category-va``: the
    hard category through `lexicon` (default ``nrc``), or with `soft` the expected VA of the label
    distribution. `category_map` aliases dataset labels to lexicon words (``["happy=joy"]``).
    """
    if kind not in TARGET_KINDS:
        raise ConfigError(f"unknown --target {kind!r}; use one of {', '.join(TARGET_KINDS)}")
    if kind == "va":
        if soft or lexicon or category_map:
            raise ConfigError(
                "--lexicon, --soft and --category-map only apply to --target category-va; drop them or "
                "change the target"
            )
        y = va_ratings(labels)
        mask = ~np.isnan(y).any(axis=1)
        return Targets(y, mask, {"kind": "va"}, {"no VA rating": int((~mask).sum())})

    lex = load_lexicon(lexicon or "nrc", category_map)
    desc = {"kind": "category-va", "lexicon": lex.describe(), "soft": bool(soft)}
    if not soft:
        cats = np.asarray(labels["category"], dtype=object)
        y = lex.hard([str(c) if c else "" for c in cats])
        mask = ~np.isnan(y).any(axis=1)
        return Targets(y, mask, desc, {"no category": int((~mask).sum())})

    if "distribution" not in labels:
        raise ConfigError(
            "--soft needs label distributions, and this store has none; drop --soft to use the hard "
            "category, or extract from a dataset with distributions (e.g. emotion6, FlickrLDL)"
        )
    dist = np.asarray(labels["distribution"], dtype=np.float64)
    categories = list(labels["categories"])
    present = ~np.isnan(dist).all(axis=1)
    empty = present & (np.nan_to_num(dist).sum(axis=1) <= 0)
    rows = present & ~empty
    y = np.full((len(dist), 2), np.nan)
    if rows.any():
        try:
            y[rows] = lex.soft(dist[rows], categories)
        except LabelError as e:
            raise LabelError(f"soft category-va targets: {e}") from e
    mask = ~np.isnan(y).any(axis=1)
    missing = {"no distribution": int((~present).sum())}
    if empty.any():
        missing["distribution sums to 0"] = int(empty.sum())
    return Targets(y, mask, {**desc, "categories": categories}, missing)


def aux_matrix(labels: dict, kind: str) -> np.ndarray:
    """Auxiliary targets (n, k) for multi-task models: the label distribution, or the one-hot hard
    category. Rows without the label are NaN (the loss ignores them)."""
    if kind == "distribution":
        if "distribution" not in labels:
            raise ConfigError("--aux distribution: this store has no label distributions; use --aux category")
        return np.asarray(labels["distribution"], dtype=np.float64)
    if kind == "category":
        cats = np.asarray(labels["category"], dtype=object).astype(str)
        names = sorted({c for c in cats if c})
        if not names:
            raise ConfigError("--aux category: no item has a category label")
        out = np.full((len(cats), len(names)), np.nan)
        known = cats != ""
        out[known] = (cats[known, None] == np.array(names)[None, :]).astype(float)
        return out
    raise ConfigError(f"--aux {kind!r}: use one of {', '.join(AUX_KINDS)}")
