"""Training targets from a store's labels: VA ratings, category-derived VA through a lexicon, or
the label distribution itself.

`make_targets` returns y (n, 2) (for ``distribution``: (n, K) over the store's categories), the
mask of rows that have the needed label, and a JSON-ready description (with the lexicon's
`describe()`). Rows without the label are never imputed: they are left out of training and counted
by the caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from evoked.data.lexicon import load_lexicon
from evoked.errors import ConfigError, LabelError

TARGET_KINDS = ("va", "category-va", "distribution")
#: How far a label distribution's sum may be from 1 before it is refused.
SUM_TOLERANCE = 1e-3
AUX_KINDS = ("distribution", "category")


@dataclass
class Targets:
    """y (n, 2), which rows have it, why the others do not, and what it is."""

    y: np.ndarray
    mask: np.ndarray
    description: dict
    missing: dict[str, int] = field(default_factory=dict)  # reason -> rows without the label
    #: distribution targets with a lexicon: the (K, 2) VA of each category (see `expected_va`)
    va_table: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.mask.sum())

    def expected_va(self, p: np.ndarray) -> np.ndarray:
        """(m, 2) expected VA, sum_k p_k VA_k, of (m, K) distributions (rows renormalised); NaN
        without a lexicon or where a row is NaN."""
        p = np.asarray(p, dtype=np.float64)
        if self.va_table is None:
            return np.full((len(p), 2), np.nan)
        q = np.clip(p, 0.0, None)
        return q / np.maximum(q.sum(axis=1, keepdims=True), 1e-12) @ self.va_table


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
    ids: Sequence[str] | np.ndarray | None = None,
) -> Targets:
    """Targets of every row of a store (`FeatureStore.labels()`); see `TARGET_KINDS`.

    ``va``: the ratings, usable where both valence and arousal are known. ``category-va``: the
    hard category through `lexicon` (default ``nrc``), or with `soft` the expected VA of the label
    distribution. `category_map` aliases dataset labels to lexicon words (``["happy=joy"]``).
    ``distribution``: the label distribution over the store's categories (see
    `distribution_targets`); `ids` name a bad row in the error.
    """
    if kind not in TARGET_KINDS:
        raise ConfigError(f"unknown --target {kind!r}; use one of {', '.join(TARGET_KINDS)}")
    if kind == "distribution":
        if soft:
            raise ConfigError("--soft applies to --target category-va; drop it with --target distribution")
        return distribution_targets(labels, ids, lexicon=lexicon, category_map=category_map)
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


def distribution_targets(
    labels: dict,
    ids: Sequence[str] | np.ndarray | None = None,
    *,
    lexicon: str | None = None,
    category_map: Sequence[str] | dict[str, str] | None = None,
    what: str = "--target distribution",
) -> Targets:
    """The label distributions (n, K) over ``labels["categories"]``, usable where known.

    A known row must be >= 0 and sum to 1 within `SUM_TOLERANCE` (a LabelError names the first bad
    row). With `lexicon`, ``va_table`` holds each category's VA (the lexicon must know every
    category; `category_map` aliases them), so the predicted distributions are also scored as VA.
    """
    if "distribution" not in labels or not len(labels.get("categories", ())):
        raise ConfigError(
            f"{what} needs label distributions, and this store has none; extract from a dataset with "
            "distributions (p_<category> columns, e.g. emotion6, FlickrLDL), or use --target va"
        )
    dist = np.asarray(labels["distribution"], dtype=np.float64)
    categories = [str(c) for c in labels["categories"]]
    names = np.asarray(ids if ids is not None else [f"row {i}" for i in range(len(dist))], dtype=object)
    present = np.asarray(~np.isnan(dist).any(axis=1), dtype=bool)
    _check_sums(dist[present], names[present], what)
    desc: dict = {"kind": "distribution", "categories": categories}
    va_table = None
    if lexicon is not None:
        lex = load_lexicon(lexicon, category_map)
        try:
            va_table = lex.matrix(categories)
        except LabelError as e:
            raise LabelError(f"{what} --lexicon {lexicon}: {e}") from e
        desc["lexicon"] = lex.describe()
        desc["va_table"] = va_table.tolist()  # each category's VA, as used (and by `evoked predict`)
    y = np.where(present[:, None], dist, np.nan)
    return Targets(y, present, desc, {"no distribution": int((~present).sum())}, va_table)


def _check_sums(dist: np.ndarray, names: np.ndarray, what: str) -> None:
    negative = (dist < 0).any(axis=1)
    if negative.any():
        i = int(np.argmax(negative))
        raise LabelError(
            f"{what}: the label distribution of {names[i]} has a negative value ({dist[i].min():g}); "
            "probabilities must be >= 0: fix that row of the dataset"
        )
    sums = dist.sum(axis=1)
    off = np.abs(sums - 1.0) > SUM_TOLERANCE
    if off.any():
        i = int(np.argmax(off))
        raise LabelError(
            f"{what}: the label distribution of {names[i]} sums to {sums[i]:.6g}, not 1 (tolerance "
            f"{SUM_TOLERANCE:g}; {int(off.sum())} such row(s)); normalise the dataset's distributions so "
            "that each row sums to 1"
        )
