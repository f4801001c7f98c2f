"""Eval sets across runs: the rows of predictions.csv with a non-empty ``eval`` (docs/runs.md).

Runs are compared per eval set. Two runs' eval groups are the same eval set when their items are
the same: the fingerprint of (id, fold, split) over the group's rows, as `items_fingerprint`
computes it, not the name (a regress run's ``--eval B.h5`` and a finetune run's
``--eval csv:B.csv`` over the same ids are one eval set; ``B`` and ``B:test`` are two).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from evoked.data.datasets import spec_path
from evoked.evaluate.runs import differences
from evoked.runfolder import Run, items_fingerprint

_SPLIT = re.compile(r"^[A-Za-z0-9_-]+$")


def parse_eval_spec(value: str) -> tuple[str, str | None]:
    """``csv:B.csv:test`` -> (``csv:B.csv``, ``test``); ``csv:B.csv`` -> (``csv:B.csv``, None).

    A trailing ``:WORD`` is a split when the text before it names an existing path and the whole
    text does not (a dataset path may itself hold a colon). Used by ``finetune --eval`` and
    ``evaluate --truth``.
    """
    head, sep, tail = value.rpartition(":")
    if sep and _SPLIT.match(tail) and head:
        if not os.path.exists(spec_path(value)) and os.path.exists(spec_path(head)):
            return head, tail
    return value, None


def unique_name(base: str, used: Collection[str]) -> str:
    """`base`, else `base-2`, `base-3`, ...: the first not in `used` (eval names are unique in a run)."""
    name, k = base, 2
    while name in used:
        name, k = f"{base}-{k}", k + 1
    return name


@dataclass
class EvalSet:
    name: str  # the first run's name for it
    fingerprint: str
    members: list[tuple[Run, str]] = field(default_factory=list)  # (run, its name for the eval set)

    @property
    def names(self) -> list[str]:
        return sorted({n for _, n in self.members})

    def runs(self) -> list[Run]:
        """One pseudo-run per member whose predictions are that member's rows of this eval set."""
        return [
            Run(path=r.path, name=r.name, meta=r.meta, predictions=r.evals[n], curve=[])
            for r, n in self.members
        ]


def group_fingerprint(run: Run, name: str) -> str:
    """The fingerprint of one run's eval group, from its rows (the first model's; every model of a
    run predicts the same eval items)."""
    p = next(iter(run.evals[name].values()))
    return items_fingerprint(p.ids, p.fold, p.split)


def eval_sets(runs: Sequence[Run]) -> list[EvalSet]:
    """The eval sets of `runs`, matched by items, in order of first appearance."""
    out: dict[str, EvalSet] = {}
    for run in runs:
        for name in run.evals:
            fp = group_fingerprint(run, name)
            out.setdefault(fp, EvalSet(name=name, fingerprint=fp)).members.append((run, name))
    return list(out.values())


def membership_notes(es: EvalSet, runs: Sequence[Run]) -> list[str]:
    """What a reader needs to know about how this eval set was matched."""
    notes = []
    if len(es.names) > 1:
        notes.append(
            f"eval set {es.name!r} is named {', '.join(repr(n) for n in es.names)} in different runs; matched "
            "by its items (the same ids, folds and splits)"
        )
    inside = {r.name for r, _ in es.members}
    first_run, first_name = es.members[0]
    mine = next(iter(first_run.evals[first_name].values()))
    for r in runs:
        if r.name in inside or es.name not in r.evals:
            continue
        only_here, only_there, moved = differences(mine, next(iter(r.evals[es.name].values())))
        notes.append(
            f"run {r.name}'s eval set {es.name!r} is over other items ({only_here} ids only in {first_run.name}'s, "
            f"{only_there} only in {r.name}'s, {moved} with another fold/split): it is compared separately; "
            "score every run on the same eval store or dataset (and the same :SPLIT) to compare them"
        )
    without = [r.name for r in runs if r.name not in inside]
    if without:
        notes.append(
            f"runs {', '.join(without)} have no eval set over these items (another eval set, another split of "
            "it, or none): they are not part of this comparison"
        )
    return notes
