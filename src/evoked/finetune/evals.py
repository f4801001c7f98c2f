"""`finetune --eval DATASET[:SPLIT]`: datasets the fine-tuned network predicts after training.

Each eval set is scored like an eval store of `evoked regress --eval` (docs/runs.md): its rows go
into predictions.csv with ``eval`` = its name and ``kind`` = ``transfer``, and run.json ``evals``
describes it, so `evoked evaluate` compares the network with classical regressors on the same items.
The network never trains or chooses anything on these rows.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evoked.data import Manifest, load_dataset
from evoked.data.datasets import spec_path
from evoked.data.va_range import check_va_range
from evoked.errors import ConfigError
from evoked.evaluate.evalsets import parse_eval_spec, unique_name
from evoked.finetune.data import Part, make_part

log = logging.getLogger(__name__)


@dataclass
class EvalSet:
    name: str  # unique within the run: the dataset's stem, ":SPLIT" appended when one is given
    spec: str  # as given (without the split)
    split: str | None
    part: Part
    has_ratings: bool
    splits: tuple[str, ...]  # each item's split in the eval dataset ("" if none)

    def describe(self) -> dict:
        from evoked.runfolder import items_fingerprint

        return {
            "name": self.name,
            "store": self.spec,
            "store_uuid": None,
            "split": self.split,
            "n_items": len(self.part),
            "has_ratings": self.has_ratings,
            "items_sha256": items_fingerprint(self.part.ids, [-1] * len(self.part), self.splits),
        }

    def subset(self, keep: np.ndarray) -> EvalSet:
        """The eval set without the rows `keep` is False for (unreadable images under --skip-bad-images)."""
        rows = np.flatnonzero(keep)
        splits = tuple(self.splits[i] for i in rows)
        return EvalSet(self.name, self.spec, self.split, self.part.subset(rows), self.has_ratings, splits)


def _stem(spec: str | Manifest) -> str:
    if isinstance(spec, Manifest):
        return spec.name
    p = Path(spec_path(spec))
    return (p.stem if p.suffix else p.name) or "eval"


def load_evals(
    specs: Sequence[str | Manifest],
    *,
    training_ids: Sequence[str],
    va_range: tuple[float, float],
) -> list[EvalSet]:
    """Read every --eval dataset; refuse an empty split and out-of-scale ratings; warn on overlap."""
    out: list[EvalSet] = []
    used: set[str] = set()
    train_ids = {str(i) for i in training_ids}
    for raw in specs:
        if isinstance(raw, Manifest):
            spec, split, m = raw.name, None, raw
        else:
            spec, split = parse_eval_spec(str(raw))
            m = load_dataset(spec)
        base = _stem(raw if isinstance(raw, Manifest) else spec) + (f":{split}" if split else "")
        name = unique_name(base, used)
        used.add(name)
        rows = np.arange(len(m)) if split is None else np.flatnonzero(m.split == split)
        if not len(rows):
            raise ConfigError(
                f"--eval {raw!s}: the dataset {m.name!r} has no {split!r} items (splits: {m.split_counts()}); "
                "name a split it has, or leave out :SPLIT to predict every item"
            )
        va = np.stack([m.valence[rows], m.arousal[rows]], axis=1).astype(np.float64)
        has_ratings = bool(np.isfinite(va).any())
        if has_ratings:
            check_va_range(m.ids[rows], va[:, 0], va[:, 1], va_range, source=f"--eval {raw!s}")
        else:
            log.warning(
                "--eval %s: %s has no VA ratings; its %d items are predicted, not scored",
                raw,
                m.name,
                len(rows),
            )
        overlap = sum(1 for i in m.ids[rows].tolist() if str(i) in train_ids)
        if overlap:
            log.warning(
                "--eval %s: %d of its %d ids are also training/validation items (the same photo on both "
                "sides); their transfer scores are optimistic",
                raw,
                overlap,
                len(rows),
            )
        part = make_part(m, rows, va=va, cls=None, n_classes=0, source="eval", keep_distribution=True)
        splits = tuple(str(s) for s in m.split[rows].tolist())
        out.append(EvalSet(name, str(spec), split, part, has_ratings, splits))
    return out
