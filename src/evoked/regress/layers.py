"""Layer probes: regress VA on every layer of a backbone, and on the best layer (or run of adjacent
layers) chosen on training rows only.

- `LayerSet`: the layer datasets a run reads (``--feature mobilenet_v2/layers``), in depth order,
  with their column ranges in the concatenated matrix.
- `LayerWeights`: after standardisation, each layer's columns are divided by sqrt(its width), so
  every layer has the same total variance and wide layers do not dominate the concatenation.
- `OnColumns`: a model fitted on one range of columns (one layer), for the per-layer table.
- `LayerSearch`: picks a layer (``span=False``) or a run of adjacent layers (``span=True``) by
  inner K-fold CV on the rows it is fitted on, then fits the model there. Fitted inside each fold of
  the run, it never sees the rows it is scored on; it is the ``best-layer:M`` / ``best-span:M`` system.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.base import BaseEstimator, RegressorMixin, TransformerMixin, clone
from sklearn.model_selection import KFold
from sklearn.utils.validation import check_is_fitted

from evoked.errors import ConfigError

#: the systems a ``--per-layer`` run adds for each model M (``best-layer:ridge``)
BEST_LAYER, BEST_SPAN = "best-layer:", "best-span:"
#: inner folds of the layer choice
INNER_FOLDS = 5


@dataclass(frozen=True)
class LayerSet:
    """The layers among a run's features: name, relative depth, width and columns of each."""

    features: tuple[str, ...]
    layers: tuple[str, ...]
    depths: tuple[float, ...]
    dims: tuple[int, ...]
    ranges: tuple[tuple[int, int], ...]  # columns of each feature in the concatenated matrix

    @classmethod
    def from_store(cls, store, resolved: Sequence[str]) -> LayerSet | None:
        """The run's features as layers (every feature a block, in the given order), or None when
        none of them is a layer dataset."""
        infos = [store.layer_info(f) for f in resolved]
        if not any(infos):
            return None
        dims = [int(store.dataset(f).shape[1]) for f in resolved]
        stops = np.cumsum(dims).tolist()
        ranges = tuple((int(b - d), int(b)) for b, d in zip(stops, dims))
        names = tuple(i["layer"] if i else f for i, f in zip(infos, resolved))
        depths = tuple(float(i["depth"]) if i else float("nan") for i in infos)
        return cls(tuple(resolved), names, depths, tuple(dims), ranges)

    @property
    def all_layers(self) -> bool:
        return all(np.isfinite(self.depths))

    def describe(self) -> list[dict]:
        return [
            {"feature": f, "layer": n, "depth": d, "dim": k, "columns": list(r)}
            for f, n, d, k, r in zip(self.features, self.layers, self.depths, self.dims, self.ranges)
        ]


def check_per_layer(layer_set: LayerSet | None, features: Sequence[str], extractors_with_layers: Sequence[str]):
    """``--per-layer`` needs features that are all layers; say which feature names would do."""
    if layer_set is not None and layer_set.all_layers:
        return
    have = ", ".join(f"{e}/layers" for e in extractors_with_layers)
    raise ConfigError(
        f"--per-layer: the features {', '.join(features)} are not layers of a backbone; "
        + (f"use --feature {have}" if have else "extract them first with --backbone SPEC@layers (docs/extract.md)")
    )


class LayerWeights(TransformerMixin, BaseEstimator):
    """Multiplies the columns of each range by 1/sqrt(range width) (after a StandardScaler: every
    layer then carries the same total variance)."""

    def __init__(self, ranges: tuple[tuple[int, int], ...] = ()):
        self.ranges = ranges

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> LayerWeights:
        w = np.ones(np.shape(X)[1])
        for a, b in self.ranges:
            w[a:b] = 1.0 / np.sqrt(b - a)
        self.weights_ = w
        self.n_features_in_ = np.shape(X)[1]
        return self

    def transform(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "weights_")
        return np.asarray(X) * self.weights_.astype(np.asarray(X).dtype, copy=False)


def _span_ranges(ranges: Sequence[tuple[int, int]], first: int, last: int) -> tuple:
    """Columns of layers first..last, and their ranges relative to the span's own columns."""
    start = ranges[first][0]
    cols = np.arange(start, ranges[last][1])
    rel = tuple((a - start, b - start) for a, b in ranges[first : last + 1])
    return cols, rel


def _with_ranges(estimator, rel: tuple):
    """A clone of `estimator` whose LayerWeights step (if any) weighs the span's layers."""
    est = clone(estimator)
    if hasattr(est, "named_steps") and "layers" in est.named_steps:
        est.set_params(layers__ranges=rel)
    return est


class OnColumns(RegressorMixin, BaseEstimator):
    """`estimator` fitted on layers first..last of `ranges` only."""

    def __init__(self, estimator=None, ranges: tuple = (), first: int = 0, last: int = 0):
        self.estimator = estimator
        self.ranges = ranges
        self.first = first
        self.last = last

    def fit(self, X: np.ndarray, y: np.ndarray) -> OnColumns:
        cols, rel = _span_ranges(self.ranges, self.first, self.last)
        self.columns_ = cols
        self.estimator_ = _with_ranges(self.estimator, rel).fit(np.asarray(X)[:, cols], y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "estimator_")
        return self.estimator_.predict(np.asarray(X)[:, self.columns_])


def _mean_r(y: np.ndarray, p: np.ndarray) -> float:
    y, p = np.asarray(y, float).reshape(len(y), -1), np.asarray(p, float).reshape(len(p), -1)
    rs = []
    for k in range(y.shape[1]):
        keep = np.isfinite(y[:, k]) & np.isfinite(p[:, k])
        a, b = y[keep, k], p[keep, k]
        rs.append(float(np.corrcoef(a, b)[0, 1]) if len(a) > 2 and a.std() > 0 and b.std() > 0 else 0.0)
    return float(np.mean(rs))


class LayerSearch(RegressorMixin, BaseEstimator):
    """Choose a layer (or, with `span`, a run of adjacent layers) by inner K-fold CV on the rows
    given to `fit`, scored by the mean Pearson r over the targets; then fit `estimator` on it.

    The span grows from the best single layer, one neighbour at a time, while the inner score
    improves. `layers` names the ranges in the fitted description (``chosen_``)."""

    def __init__(self, estimator=None, ranges: tuple = (), layers: tuple = (), span: bool = False,
                 cv: int = INNER_FOLDS, seed: int = 0):  # fmt: skip
        self.estimator = estimator
        self.ranges = ranges
        self.layers = layers
        self.span = span
        self.cv = cv
        self.seed = seed

    def _score(self, X: np.ndarray, y: np.ndarray, first: int, last: int) -> float:
        cols, rel = _span_ranges(self.ranges, first, last)
        pred = np.full(np.shape(y), np.nan)
        folds = KFold(min(self.cv, len(X)), shuffle=True, random_state=self.seed)
        for tr, ev in folds.split(X):
            est = _with_ranges(self.estimator, rel).fit(X[np.ix_(tr, cols)], y[tr])
            pred[ev] = np.asarray(est.predict(X[np.ix_(ev, cols)])).reshape(len(ev), -1)
        return _mean_r(y, pred)

    def fit(self, X: np.ndarray, y: np.ndarray) -> LayerSearch:
        X, y = np.asarray(X), np.asarray(y)
        if len(X) < 2 * self.cv:
            raise ConfigError(f"the layer choice needs at least {2 * self.cv} training rows, got {len(X)}")
        n = len(self.ranges)
        singles = [self._score(X, y, i, i) for i in range(n)]
        best = int(np.argmax(singles))
        first, last, score = best, best, singles[best]
        tried = {(best, best): score}
        while self.span:
            options = [(first - 1, last)] if first > 0 else []
            options += [(first, last + 1)] if last < n - 1 else []
            scored = {o: tried[o] if o in tried else self._score(X, y, *o) for o in options}
            tried.update(scored)
            if not scored or max(scored.values()) <= score:
                break
            (first, last), score = max(scored.items(), key=lambda kv: kv[1])
        self.inner_scores_ = singles
        self.span_scores_ = {f"{a}-{b}": s for (a, b), s in tried.items()}
        self.first_, self.last_, self.score_ = first, last, score
        names = self.layers or tuple(str(i) for i in range(n))
        self.chosen_ = list(names[first : last + 1])
        self.model_ = OnColumns(self.estimator, self.ranges, first, last).fit(X, y)
        return self

    def predict(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self, "model_")
        return self.model_.predict(X)


# ------------------------------------------------------------------------------ the per-layer table

#: layers.csv: one row per model, layer and scored set ("" = the run's own held-out / out-of-fold rows)
LAYER_COLUMNS = ("model", "eval", "layer", "feature", "depth", "dim", "n", "valence_r", "valence_mse",
                 "valence_ccc", "arousal_r", "arousal_mse", "arousal_ccc")  # fmt: skip


def _metric_row(metrics: dict) -> dict:
    out: dict = {"n": min((metrics.get(d, {}).get("n", 0) for d in ("valence", "arousal")), default=0)}
    for dim in ("valence", "arousal"):
        for m in ("r", "mse", "ccc"):
            out[f"{dim}_{m}"] = metrics.get(dim, {}).get(m, float("nan"))
    return out


def per_layer_rows(layer_set: LayerSet, models: Sequence[str], fit_layer) -> list[dict]:
    """Every model on every layer alone. `fit_layer(model, i)` fits and scores layer i and returns
    ``{eval name: va_metrics}`` ("" for the run's own scored rows); the rows of layers.csv."""
    rows = []
    for i, (feature, layer, depth, dim) in enumerate(
        zip(layer_set.features, layer_set.layers, layer_set.depths, layer_set.dims)
    ):
        for m in models:
            for ev, metrics in fit_layer(m, i).items():
                rows.append({"model": m, "eval": ev, "layer": layer, "feature": feature, "depth": depth,
                             "dim": dim, **_metric_row(metrics)})  # fmt: skip
    return rows


def layer_plot(path, rows: Sequence[dict], chosen: dict[str, list[str]] | None = None):
    """Pearson r against relative depth, valence and arousal side by side, one line per model
    (solid: the run's own scored rows; dashed: each --eval store). `chosen`: model -> the layers its
    ``best-span`` system chose, marked on the curve."""
    from matplotlib import colormaps

    from evoked.evaluate.plots import _figure

    fig = _figure(10.0, 4.0)
    models = list(dict.fromkeys(r["model"] for r in rows))
    evals = list(dict.fromkeys(r["eval"] for r in rows))
    styles = {e: ("-", "--", ":", "-.")[k % 4] for k, e in enumerate(evals)}
    for k, dim in enumerate(("valence", "arousal")):
        ax = fig.add_subplot(1, 2, k + 1)
        for mi, m in enumerate(models):
            color = colormaps["tab10"](mi % 10)
            for ev in evals:
                pts = sorted((r for r in rows if r["model"] == m and r["eval"] == ev), key=lambda r: r["depth"])
                if not pts:
                    continue
                x = [r["depth"] for r in pts]
                y = [r[f"{dim}_r"] for r in pts]
                label = m + (f" ({ev})" if ev else "")
                ax.plot(x, y, ls=styles[ev], marker="o", ms=3, lw=1.4, color=color, label=label)
                picked = [r for r in pts if ev == "" and r["layer"] in (chosen or {}).get(m, [])]
                if picked:
                    ax.plot([r["depth"] for r in picked], [r[f"{dim}_r"] for r in picked], "o", ms=8,
                            mfc="none", mec=color, mew=1.5)  # fmt: skip
        ax.set_xlim(0, 1.02)
        ax.set_xlabel("relative depth of the layer")
        ax.set_ylabel(f"Pearson r, {dim}")
        ax.set_title(dim)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle("Per-layer probe (open circles: the layers chosen on training rows)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path
