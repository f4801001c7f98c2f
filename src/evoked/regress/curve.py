"""The low-resource curve: how good is a model with only n VA-rated items, alone or after stage 1?

For each seed and each fold, n items are drawn from the fold's VA-rated training items (the
first n of one random order per seed and fold, so the samples are nested: the 50 items include
the 25). Two settings are fitted on the same sample:

- ``stage2_only``: the model family fitted on the n items alone (not defined for n = 0);
- ``two_stage``: stage 1 (fitted once per fold on the category-derived VA of all the fold's
  training items) adapted with the n items (`TwoStageRegressor`, ``prefit=True``).

The out-of-fold predictions of all folds are pooled and scored per (setting, n, seed); the summary
gives the mean and the standard deviation over seeds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator

from evoked.errors import ConfigError
from evoked.evaluate.metrics import va_metrics
from evoked.regress.protocol import Plan
from evoked.regress.two_stage import TwoStageRegressor

log = logging.getLogger(__name__)

ALL = "all"
SETTINGS = ("stage2_only", "two_stage")


def parse_n_labels(value: str | Sequence[int | str]) -> list[int | str]:
    """``"0,25,50,all"`` -> ``[0, 25, 50, "all"]`` (sorted, no duplicates)."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out: list[int | str] = []
    for item in items:
        text = str(item).strip().lower()
        if not text:
            continue
        if text == ALL:
            out.append(ALL)
            continue
        try:
            n = int(text)
        except ValueError:
            raise ConfigError(
                f"--n-labels {item!r}: expected whole numbers and 'all', e.g. 0,25,50,100,all"
            ) from None
        if n < 0:
            raise ConfigError(f"--n-labels {n}: must be >= 0")
        out.append(n)
    if not out:
        raise ConfigError("--n-labels is empty; e.g. --n-labels 0,25,50,100,200,400,all")
    numbers = sorted({n for n in out if n != ALL})
    return numbers + ([ALL] if ALL in out else [])


@dataclass(frozen=True)
class CurveSpec:
    ns: tuple[int | str, ...]
    seeds: tuple[int, ...]
    rated_per_fold: tuple[int, ...]

    @classmethod
    def build(cls, ns: list[int | str], rated_per_fold: list[int], n_seeds: int, base_seed: int) -> CurveSpec:
        """Check every n against the VA-rated training items of the smallest fold."""
        smallest = min(rated_per_fold) if rated_per_fold else 0
        too_big = [n for n in ns if n != ALL and int(n) > smallest]
        if too_big:
            raise ConfigError(
                f"--n-labels {too_big[0]}: a fold has only {smallest} VA-rated training items; use at most "
                f"{smallest}, or 'all'"
            )
        return cls(tuple(ns), tuple(base_seed + s for s in range(n_seeds)), tuple(rated_per_fold))

    def value(self, n: int | str) -> int:
        """The number of items n stands for (``all``: the mean per fold, rounded)."""
        return int(round(float(np.mean(self.rated_per_fold)))) if n == ALL else int(n)

    def n_fits(self, n_folds: int, two_stage: bool) -> int:
        per_seed = sum((1 if two_stage else 0) + (1 if n != 0 else 0) for n in self.ns)
        return per_seed * n_folds * len(self.seeds)

    def describe(self) -> dict:
        return {
            "n_labels": [n if n == ALL else int(n) for n in self.ns],
            "all_means": self.value(ALL),
            "seeds": list(self.seeds),
            "rated_per_fold": list(self.rated_per_fold),
        }


def run_curve(
    *,
    model: str,
    make: Callable[[], BaseEstimator],
    X: np.ndarray,
    va: np.ndarray,
    plan: Plan,
    spec: CurveSpec,
    stage1: dict[int, BaseEstimator] | None,
    method: str = "residual",
    on_fit: Callable[[str], None] | None = None,
) -> list[dict]:
    """One row per (setting, n, seed): r and MSE of the pooled out-of-fold predictions."""
    eval_rows = plan.eval_rows
    pos = {int(r): i for i, r in enumerate(eval_rows)}
    rated_mask = ~np.isnan(va).any(axis=1)
    rated = {f.index: f.train[rated_mask[f.train]] for f in plan.folds}
    settings = [s for s in SETTINGS if s == "stage2_only" or stage1 is not None]
    rows = []
    for seed in spec.seeds:
        order = {i: np.random.default_rng((seed, i)).permutation(r) for i, r in rated.items()}
        for n in spec.ns:
            for setting in settings:
                if setting == "stage2_only" and n == 0:
                    continue  # nothing to fit: the curve starts at the first n > 0
                pred = np.full((len(eval_rows), 2), np.nan)
                for fold in plan.folds:
                    sample = order[fold.index] if n == ALL else order[fold.index][: int(n)]
                    try:
                        if setting == "stage2_only":
                            est = make().fit(X[sample], va[sample])
                        else:
                            assert stage1 is not None  # the two_stage setting runs only with stage 1
                            est = TwoStageRegressor(stage1[fold.index], method=method, prefit=True)
                            est.fit(X[sample], va[sample])
                        pred[[pos[int(r)] for r in fold.eval]] = est.predict(X[fold.eval])
                    except ValueError as e:  # e.g. too few items for the model: reported, scored NaN
                        log.warning("curve: %s %s with n=%s (seed %d, fold %d) failed: %s",
                                    model, setting, n, seed, fold.index, e)  # fmt: skip
                    if on_fit is not None:
                        on_fit(f"curve {model} {setting} n={n} seed {seed}")
                m = _score(va[eval_rows], pred)
                rows.append(
                    {
                        "model": model,
                        "setting": setting,
                        "n_labels": spec.value(n),
                        "seed": seed,
                        "r_valence": m["valence"]["r"],
                        "r_arousal": m["arousal"]["r"],
                        "mse_valence": m["valence"]["mse"],
                        "mse_arousal": m["arousal"]["mse"],
                    }
                )
    return rows


def _score(truth: np.ndarray, pred: np.ndarray) -> dict:
    if np.isnan(pred).all():  # every fit failed: nothing to score
        nan = {"r": float("nan"), "mse": float("nan")}
        return {"valence": nan, "arousal": dict(nan)}
    return va_metrics(truth, pred)


def summarize_curve(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation (ddof=1) over seeds per (model, setting, n)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["setting"], r["n_labels"]), []).append(r)
    out = []
    for (model, setting, n), rs in groups.items():
        entry = {"model": model, "setting": setting, "n_labels": n, "seeds": len(rs)}
        for key in ("r_valence", "r_arousal", "mse_valence", "mse_arousal"):
            vals = np.array([r[key] for r in rs], dtype=float)
            finite = vals[np.isfinite(vals)]
            entry[key] = float(finite.mean()) if finite.size else float("nan")
            entry[key + "_std"] = (
                float(finite.std(ddof=1)) if finite.size > 1 else 0.0 if finite.size else float("nan")
            )
        out.append(entry)
    order = {s: i for i, s in enumerate(SETTINGS)}
    return sorted(out, key=lambda e: (e["model"], e["n_labels"], order[e["setting"]]))
