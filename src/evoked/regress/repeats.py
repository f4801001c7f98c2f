"""`evoked regress --repeats N`: the same run on N split seeds, to show how much a score owes to
one draw of the split (or of the CV folds).

Repeat 0 is the run itself, on the store's own split or folds, written to OUT as always. Repeat r
(r = 1..N-1) redraws them with seed S + r (`protocol.redraw_assignment`: the split within each
category, or the CV folds) and is written to ``OUT/repeats/seed-<S+r>/``, a complete run folder.
OUT's run.json lists them under ``repeats``; `evoked evaluate OUT` reads them and reports each
system's r and MSE over the repeats beside its bootstrap interval.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from typing import Any

from evoked import runfolder
from evoked.errors import ConfigError

log = logging.getLogger(__name__)

REPEATS_DIR = "repeats"


def repeat_folder(seed: int) -> str:
    return f"{REPEATS_DIR}/seed-{seed}"


def run_repeats(
    store: str | os.PathLike,
    repeats: int,
    *,
    on_progress: Callable[[int, int, str], None] | None = None,
    **options: Any,
):
    """Run `run_regress` `repeats` times (split seeds S, S+1, ...); return the first run's result."""
    from evoked.regress.runner import run_regress

    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"--repeats {repeats!r}: give a whole number >= 1 (e.g. 5)")
    if repeats > 1 and options.get("cv") == 0:
        raise ConfigError("--repeats needs an evaluation to repeat: use --cv K or --split test, not --cv 0")
    first = run_regress(store, on_progress=on_progress, **options)
    if repeats == 1:
        return first
    seed = int(options.get("seed") or 0)
    seeds = [seed + r for r in range(1, repeats)]
    for s in seeds:
        log.info("repeat with split seed %d of %d", s, seeds[-1])
        out = first.out / repeat_folder(s)
        name = f"{first.out.name}@seed-{s}"
        run_regress(
            store,
            on_progress=on_progress,
            **{**options, "seed": s, "split_seed": s, "out": out, "name": name},
        )
    meta = json.loads((first.out / "run.json").read_text(encoding="utf-8"))
    meta["repeats"] = {
        "n": repeats,
        "seeds": [seed, *seeds],
        "runs": [repeat_folder(s) for s in seeds],
        "how": "repeat 0 on the store's split/folds; the others redraw them (the split within each category)",
    }
    runfolder.write_json(first.out / "run.json", meta)
    first.run["repeats"] = meta["repeats"]
    return first
