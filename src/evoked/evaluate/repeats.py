"""Scores over repeated splits (``evoked regress --repeats N``): each system's r and MSE on every
repeat, their mean and sample sd, and a 95% t interval of the mean, beside the bootstrap interval.

Each repeat is scored on its own evaluated items (a redrawn test split is another set of photos),
the same way the ranked table scores the first: Pearson r and MSE of each dimension.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

from evoked.errors import ConfigError
from evoked.evaluate.metrics import DIMENSIONS, regression_metrics
from evoked.runfolder import Run, read_run

METRICS = ("r", "mse")


def repeat_runs(run: Run) -> list[Run]:
    """The run and its repeats (run.json ``repeats``), in seed order; just the run when it has none."""
    spec = run.meta.get("repeats")
    if not isinstance(spec, dict) or not spec.get("runs"):
        return [run]
    out = [run]
    for rel in spec["runs"]:
        path = run.path / str(rel)
        if not (path / "run.json").is_file():
            raise ConfigError(
                f"{run.path}: run.json lists the repeat {rel}, but {path} holds no run; rerun "
                "`evoked regress ... --repeats N --overwrite`"
            )
        out.append(read_run(path))
    return out


def summarize(values: Sequence[float], level: float = 0.95) -> dict:
    """Mean, sample sd, and the t interval of the mean of `values` (NaNs left out)."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if not v.size:
        return {"values": list(values), "mean": float("nan"), "sd": float("nan"), "ci": [float("nan")] * 2}
    mean = float(v.mean())
    sd = float(v.std(ddof=1)) if v.size > 1 else float("nan")
    half = (
        float(stats.t.ppf(0.5 + level / 2, v.size - 1) * sd / math.sqrt(v.size))
        if v.size > 1
        else float("nan")
    )
    return {"values": [float(x) for x in values], "mean": mean, "sd": sd, "ci": [mean - half, mean + half]}


def repeat_summary(runs: Sequence[Run]) -> dict[str, dict]:
    """{system name: {n, seeds, valence: {r: summary, mse: summary}, arousal: ...}} for every model of
    every run with repeats; systems of runs without repeats are absent."""
    out: dict[str, dict] = {}
    for run in runs:
        reps = repeat_runs(run)
        if len(reps) < 2:
            continue
        for model in run.predictions:
            per: dict[str, dict[str, list[float]]] = {d: {m: [] for m in METRICS} for d in DIMENSIONS}
            for rep in reps:
                p = rep.predictions.get(model)
                for k, dim in enumerate(DIMENSIONS):
                    if p is None:
                        scores = {m: float("nan") for m in METRICS}
                    else:
                        ok = np.isfinite(p.true[:, k]) & np.isfinite(p.pred[:, k])
                        scores = regression_metrics(p.true[ok, k], p.pred[ok, k])
                    for m in METRICS:
                        per[dim][m].append(scores[m])
            out[f"{run.name}/{model}"] = {
                "n": len(reps),
                "seeds": list(run.meta["repeats"].get("seeds", [])),
                **{dim: {m: summarize(per[dim][m]) for m in METRICS} for dim in DIMENSIONS},
            }
    return out
