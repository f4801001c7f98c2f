"""Other stores a run is scored on (``--eval STORE[:SPLIT]``) or learns stage 1 from (``--stage1``).

Features are matched by name and must be the same extraction as the training store's: the same
recorded extractor configuration (backbone spec, weights tag and sha256, preprocessing: the
comparison `evoked extract --resume` makes) and the same dimensions. Every item of an eval store
(of its split, when one is named) that has features is predicted by each saved model; items
without features are counted and named in a warning, ratings are checked against the scale, an
eval store without ratings is predicted only, and ids also in the training store are counted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evoked.data.va_range import check_va_range
from evoked.errors import ConfigError
from evoked.evaluate.evalsets import parse_eval_spec, unique_name
from evoked.extract.registry import comparable_config
from evoked.features.store import OK, FeatureStore
from evoked.regress.chunks import ChunkRows, MemoryRows
from evoked.regress.targets import va_ratings

log = logging.getLogger(__name__)


def check_same_extraction(
    main: FeatureStore, other: FeatureStore, features: Sequence[str], what: str
) -> None:
    """Raise ConfigError naming the difference when `other`'s `features` are not the same extraction."""
    for group in sorted({f.split("/")[0] for f in features}):
        # outputs left out: a store may hold more; the features used are compared by dimension
        a = comparable_config(main.extractors.get(group, {}).get("config", {}), outputs=False)
        b = comparable_config(other.extractors.get(group, {}).get("config", {}), outputs=False)
        if a != b:
            diff = [k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            raise ConfigError(
                f"{what}: feature group {group!r} was extracted differently than in {main.path.name}: "
                f"{', '.join(diff)} {[b.get(k) for k in diff]} there, {[a.get(k) for k in diff]} in "
                f"{main.path.name}; extract both with the same backbone, weights and preprocessing"
            )
    for f in features:
        if other.dataset(f).shape[1] != main.dataset(f).shape[1]:
            raise ConfigError(
                f"{what}: {f} has {other.dataset(f).shape[1]} dimensions, {main.dataset(f).shape[1]} in "
                f"{main.path.name}; extract both with the same backbone and outputs"
            )


def resolve_in(other: FeatureStore, features: Sequence[str], what: str) -> list[str]:
    try:
        return other.resolve_features(list(features))
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}; it needs the same features as the training store") from e


def parse_eval(spec: str) -> tuple[Path, str | None]:
    """``B.h5`` -> (B.h5, None); ``B.h5:test`` -> (B.h5, "test"), as ``finetune --eval`` reads them."""
    store, split = parse_eval_spec(str(spec))
    path = Path(store)
    if not path.is_file():
        raise ConfigError(f"--eval {spec!r}: no such feature store {str(path)!r}; give STORE or STORE:SPLIT")
    return path, split


def eval_names(specs: Sequence[str]) -> list[str]:
    """The stem of each store (``B``), with ``:SPLIT`` when given, made unique (``B``, ``B-2``)."""
    out: list[str] = []
    for spec in specs:
        path, split = parse_eval(spec)
        out.append(unique_name(path.stem + (f":{split}" if split else ""), out))
    return out


@dataclass
class EvalSet:
    """The predicted rows of one eval store."""

    name: str
    path: Path
    store_uuid: str | None
    split: str | None
    rows: np.ndarray  # store rows that are predicted
    ids: np.ndarray
    va: np.ndarray  # (n, 2), NaN where not rated
    item_split: np.ndarray
    category: np.ndarray
    features: list[str]
    data: MemoryRows | ChunkRows | None = None  # over the eval store, set by the runner
    p_true: np.ndarray | None = None  # distribution targets: (n, K) true distributions, set by the runner

    @property
    def has_ratings(self) -> bool:
        return bool((~np.isnan(self.va).any(axis=1)).any())

    def describe(self) -> dict:
        from evoked.runfolder import items_fingerprint

        return {
            "name": self.name,
            "store": str(self.path.resolve()),
            "store_uuid": self.store_uuid,
            "split": self.split,
            "n_items": int(len(self.rows)),
            "has_ratings": self.has_ratings,
            "items_sha256": items_fingerprint(self.ids.tolist(), [-1] * len(self.ids), list(self.item_split)),
        }


def open_eval(
    spec: str,
    name: str,
    other: FeatureStore,
    main: FeatureStore,
    features: Sequence[str],
    train_ids: set,
    va_range: tuple[float, float],
) -> EvalSet:
    """Check one eval store against the training store and select the rows it predicts."""
    what = f"--eval {spec}"
    path, split = parse_eval(spec)
    if other.attrs.get("store_uuid") == main.attrs.get("store_uuid"):
        raise ConfigError(
            f"{what} is the training store itself; score its own rows with --cv K or --split test"
        )
    resolved = resolve_in(other, features, what)
    check_same_extraction(main, other, resolved, what)
    labels = other.labels()
    ids = other.ids.astype(str)
    item_split = np.asarray(labels["split"], dtype=object).astype(str)
    selected = np.ones(len(ids), dtype=bool) if split is None else item_split == split
    if not selected.any():
        present = sorted(set(item_split) - {""})
        raise ConfigError(
            f"{what}: {path.name} has no {split!r} items (its splits: {', '.join(present) or 'none'}); "
            f"give another split, or the store alone to predict all its items"
        )
    ok = other.status == OK
    missing = selected & ~ok
    if missing.any():
        log.warning(
            "%s: %d item(s) have no features (failed or pending extraction) and are not predicted, e.g. %s",
            what, int(missing.sum()), ", ".join(ids[missing][:3]),
        )  # fmt: skip
    rows = np.flatnonzero(selected & ok)
    if not len(rows):
        raise ConfigError(f"{what}: no item of {path.name} has features; complete its extraction first")
    va = va_ratings(labels)[rows]
    check_va_range(ids[rows].tolist(), va[:, 0], va[:, 1], va_range, source=str(path))
    overlap = int(np.isin(ids[rows], list(train_ids)).sum())
    if overlap:
        log.warning(
            "%s: %d of its %d items have ids that are also in the training store (the same photo on both "
            "sides?); their scores are not transfer", what, overlap, len(rows),
        )  # fmt: skip
    out = EvalSet(name, path, other.attrs.get("store_uuid"), split, rows, ids[rows], va, item_split[rows],
                  np.asarray(labels["category"], dtype=object)[rows], resolved)  # fmt: skip
    if not out.has_ratings:
        log.warning("%s: %s has no VA ratings: its items are predicted only, not scored", what, path.name)
    return out
