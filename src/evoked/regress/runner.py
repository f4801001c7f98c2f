"""`run_regress`: fit and evaluate VA regressors on cached features, and write a run folder.

One path for every run. The steps, in order: check every option (`RegressOptions`, before reading
any feature), open the training store and every ``--eval`` store (same extraction, checked), build
the targets and refuse ratings outside the scale, plan the protocol (CV folds over the training
side, a split, or fit only), then for each model: fit it on each fold and predict the held-out
items, fit the model that is saved (on training-side rows only), predict every item of each eval
store; optionally the two-stage models and the low-resource curve. The run's default model is
chosen on training-side rows only. Then ``run.json``, ``predictions.csv``, ``metrics.json``,
``curve.csv`` and ``models/`` as docs/runs.md describes.

The rows come from one of two sources (`evoked.regress.chunks`): the feature matrix in memory, or
the store read a chunk at a time (``stream=True``, or ``max_memory`` smaller than the matrix) for
the families that fit from chunks. The same ``--model`` means the same estimator and the same
hyperparameters either way.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from evoked import runfolder
from evoked.clock import utc_now
from evoked.data.va_range import check_va_range
from evoked.errors import ConfigError
from evoked.evaluate.metrics import va_metrics
from evoked.features.store import OK, FeatureStore, open_store
from evoked.regress import rundir
from evoked.regress.chunks import ChunkRows, MemoryRows, StoreSource, chunk_rows_for, streaming_needed
from evoked.regress.curve import CurveSpec, run_curve, summarize_curve
from evoked.regress.describe import accepts_aux, describe_fitted
from evoked.regress.distribution import SOFTMAX_CV
from evoked.regress.evals import EvalSet, check_same_extraction, eval_names, open_eval, parse_eval, resolve_in
from evoked.regress.layers import (
    BEST_LAYER,
    BEST_SPAN,
    LAYER_COLUMNS,
    LayerSearch,
    LayerSet,
    OnColumns,
    check_per_layer,
    layer_plot,
    per_layer_rows,
)  # fmt: skip
from evoked.regress.options import DEFAULT_MAX_MEMORY, RegressOptions, parse_features
from evoked.regress.protocol import (
    Fold,
    Plan,
    plan_cv,
    plan_fit_only,
    plan_split,
    redraw_assignment,
    selection_folds,
)
from evoked.regress.registry import DISTRIBUTION_MODELS, build_pipeline
from evoked.regress.targets import Targets, aux_matrix, distribution_targets, make_targets, va_ratings
from evoked.regress.transforms import check_probabilities, probability_features, probability_ranges
from evoked.regress.two_stage import TwoStageRegressor

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]
TWO_STAGE_PREFIX = "two_stage:"
SELECTION_METRIC = "mean Pearson r over valence and arousal"
DISTRIBUTION_SELECTION_METRIC = "mean KL divergence of the label distributions (lower is better)"


@dataclass
class ModelResult:
    name: str
    metrics: dict  # va_metrics of the out-of-fold / test predictions ({} when nothing is evaluated)
    fit_seconds: float  # all fits of this model (folds + the saved one)
    n_train: float  # training rows per fit (mean over folds)
    n_eval: int
    info: dict = field(default_factory=dict)
    eval_metrics: dict = field(default_factory=dict)  # eval name -> va_metrics on its rated items


@dataclass
class RegressResult:
    """What `run_regress` did; the same numbers are in the run folder."""

    out: Path
    run: dict
    models: list[ModelResult]
    counts: dict[str, int]
    curve: list[dict] = field(default_factory=list)  # summary rows (means and std over seeds)
    seconds: float = 0.0

    def metrics(self) -> dict:
        return {m.name: m.metrics for m in self.models}


# ------------------------------------------------------------------------------------------- data


def extractor_config(store: FeatureStore, group: str) -> dict:
    """The part of an extractor's recorded configuration that must match to mix two stores."""
    cfg = dict(store.extractors.get(group, {}).get("config", {}))
    w = cfg.get("weights", {}) or {}
    return {
        "spec": cfg.get("spec"),
        "weights": {k: w.get(k) for k in ("tag", "sha256") if w.get(k) is not None},
        "preprocess": cfg.get("preprocess"),
    }


def describe_store(st: FeatureStore, path: str | os.PathLike, resolved: Sequence[str]) -> dict:
    """What a run records of the store it read: where, which, the feature sizes and extractors."""
    groups = sorted({f.split("/")[0] for f in resolved})
    return {
        "store": str(Path(path).resolve()),
        "store_uuid": st.attrs.get("store_uuid"),
        "dataset": st.attrs.get("dataset"),
        "feature_dims": {f: int(st.dataset(f).shape[1]) for f in resolved},
        "extractors": {g: extractor_config(st, g) for g in groups},
        # the full recorded configurations: `evoked predict` rebuilds the backbones from them
        "extractor_configs": {g: st.extractors.get(g, {}).get("config", {}) for g in groups},
        "extractor_precisions": {g: st.extractors.get(g, {}).get("precision", "fp32") for g in groups},
    }


@dataclass
class _Training:
    """The training store, read: labels, targets and the rows' source (in memory or chunks)."""

    resolved: list[str]
    labels: dict
    targets: Targets
    ids: np.ndarray
    va: np.ndarray
    ok: np.ndarray
    finite: np.ndarray
    data: MemoryRows | ChunkRows
    info: dict
    log_ranges: tuple
    log_features: list[str]
    budget: int | None = None
    layer_set: LayerSet | None = None  # the features as layers (``NAME/layers``), when they are

    @property
    def layer_ranges(self) -> tuple[tuple[int, int], ...]:
        return self.layer_set.ranges if self.layer_set is not None else ()

    @property
    def has_va(self) -> np.ndarray:
        return ~np.isnan(self.va).any(axis=1)

    @property
    def distribution(self) -> bool:
        return self.targets.description["kind"] == "distribution"

    @property
    def scorable(self) -> np.ndarray:
        """Rows a prediction can be scored on: a VA rating, or (distribution targets) a distribution."""
        return self.targets.mask if self.distribution else self.has_va

    @property
    def X(self) -> np.ndarray:
        assert isinstance(self.data, MemoryRows), "the features are read in chunks"
        return self.data.X


def _read(st: FeatureStore, path, opts: RegressOptions) -> _Training:
    resolved = st.resolve_features(opts.feature_names)
    layer_set = _layer_set(st, resolved, opts)
    labels = st.labels()
    ids = st.ids.astype(str)
    targets = make_targets(labels, opts.target, ids=ids, **(opts.target_kw if opts.stage1 is None else {}))
    va = va_ratings(labels)
    check_va_range(ids.tolist(), va[:, 0], va[:, 1], opts.va_bounds, source=str(path))
    info = describe_store(st, path, resolved)
    log_ranges = probability_ranges(resolved, info["feature_dims"]) if opts.log_probs else ()
    log_features = probability_features(resolved) if opts.log_probs else []
    ok = st.status == OK
    if not opts.stream:
        X = st.read(resolved)
        check_probabilities(X, log_ranges, log_features)
        finite = np.isfinite(X).all(axis=1)
        return _Training(
            resolved, labels, targets, ids, va, ok, finite, MemoryRows(X), info, log_ranges, log_features,
            layer_set=layer_set,
        )  # fmt: skip
    from evoked.features.index_build import parse_bytes

    budget = parse_bytes(opts.max_memory or DEFAULT_MAX_MEMORY)
    d = sum(info["feature_dims"].values())
    rows_cap = max(st.block_size, budget // (16 * 4 * max(d, 1)))
    chunk = min(opts.chunk_rows or chunk_rows_for(d, st.block_size), rows_cap)
    source = StoreSource(st, resolved, log_ranges=log_ranges, chunk_rows=chunk)
    finite = np.zeros(len(ids), dtype=bool)
    for a, b in source.ranges():  # which ok rows are finite (the plan needs it), probabilities checked
        X = source.read_raw(a, b)
        finite[a:b] = np.isfinite(X).all(axis=1)
        check_probabilities(X[finite[a:b] & ok[a:b]], log_ranges, log_features)
    return _Training(resolved, labels, targets, ids, va, ok, finite, ChunkRows(source), info, log_ranges,
                     log_features, budget)  # fmt: skip


def _layer_set(st: FeatureStore, resolved: list[str], opts: RegressOptions) -> LayerSet | None:
    """The features as layers (each weighed by 1/sqrt(width) after standardisation), checked for
    ``--per-layer`` (all layers) and ``--stream`` (which cannot weigh them)."""
    layer_set = LayerSet.from_store(st, resolved)
    if opts.per_layer:
        with_layers = [e for e in st.extractors if st.layer_outputs(e)]
        check_per_layer(layer_set, opts.feature_names, with_layers)
    if layer_set is not None and opts.stream:
        raise ConfigError(
            "layer features are weighed per layer, which reading in chunks (--stream or a small --max-memory) "
            "cannot do; drop --stream (layers of one backbone fit in memory for most datasets)"
        )
    return layer_set


def _plan(opts: RegressOptions, tr: _Training) -> Plan:
    common = dict(ok=tr.ok, finite=tr.finite, has_target=tr.targets.mask, has_va=tr.scorable)
    if opts.split is not None:
        plan = plan_split(opts.split, split=tr.labels["split"], **common)
    elif opts.cv == 0:
        return plan_fit_only(**common)
    else:
        assert opts.cv is not None  # `RegressOptions.check` sets it when there is no split
        plan = plan_cv(
            opts.cv, store_fold=tr.labels["fold"], category=tr.labels["category"], split=tr.labels["split"],
            include_test=opts.cv_include_test, seed=opts.seed, **common,
        )  # fmt: skip
    if opts.split_seed is not None:
        plan.protocol["split_seed"] = int(opts.split_seed)
    return plan


@dataclass
class _Stage1Source:
    """Where stage 1 learns: this store (``same``) or another store, with its targets."""

    kind: str  # "same" or "store"
    targets: Targets
    X: np.ndarray | None = None  # other store only
    rows: np.ndarray | None = None  # other store: usable rows
    ids: np.ndarray | None = None  # other store: the ids of those rows
    description: dict = field(default_factory=dict)


def _open_stage1_store(
    path: str, resolved: list[str], main: FeatureStore, target_kind: str, target_kw: dict, eval_ids: set[str]
) -> _Stage1Source:
    other_path = Path(path)
    with open_store(other_path) as other:
        what = f"--stage1 {path}"
        if other.attrs.get("store_uuid") == main.attrs.get("store_uuid"):
            raise ConfigError(f"{what} is the evaluated store itself; use --stage1 same")
        other_features = resolve_in(other, resolved, what)
        check_same_extraction(main, other, other_features, what)
        targets = make_targets(other.labels(), target_kind, ids=other.ids.astype(str), **target_kw)
        X = other.read(other_features)
        ok, finite = other.status == OK, np.isfinite(X).all(axis=1)
        overlap = np.isin(other.ids.astype(str), list(eval_ids))
        rows = np.flatnonzero(ok & finite & targets.mask & ~overlap)
        ids = other.ids.astype(str)[rows]
        desc = {
            "source": str(other_path.resolve()),
            "store_uuid": other.attrs.get("store_uuid"),
            "dataset": other.attrs.get("dataset"),
            "items": int(len(rows)),
            "excluded": {
                "failed features": int((~ok).sum()),
                "non-finite features": int((ok & ~finite).sum()),
                "no training label": int((ok & finite & ~targets.mask).sum()),
                "also evaluated (same id)": int((ok & finite & targets.mask & overlap).sum()),
            },
        }
    if not len(rows):
        raise ConfigError(f"--stage1 {path}: no item has features and a {target_kind} label")
    return _Stage1Source("store", targets, X, rows, ids, desc)


def _open_evals(opts: RegressOptions, st: FeatureStore, tr: _Training, stack: ExitStack) -> list[EvalSet]:
    out = []
    train_ids = set(tr.ids.tolist())
    for spec, name in zip(opts.evals, eval_names(opts.evals)):
        other = stack.enter_context(open_store(parse_eval(spec)[0]))
        ev = open_eval(spec, name, other, st, tr.resolved, train_ids, opts.va_bounds)
        if isinstance(tr.data, ChunkRows):
            chunk = tr.data.source.chunk_rows
            ev.data = ChunkRows(StoreSource(other, ev.features, log_ranges=tr.log_ranges, chunk_rows=chunk))
        else:
            X = other.read(ev.features)
            finite = np.isfinite(X[ev.rows]).all(axis=1)
            if not finite.all():
                log.warning(
                    "--eval %s: %d item(s) have non-finite features and are not predicted",
                    spec,
                    int((~finite).sum()),
                )
                for key in ("rows", "ids", "va", "item_split", "category"):
                    setattr(ev, key, getattr(ev, key)[finite])
            ev.data = MemoryRows(X)
        if tr.distribution:
            ev.p_true = eval_distributions(other, ev, tr.targets.description["categories"], spec)
        out.append(ev)
    return out


def eval_distributions(other: FeatureStore, ev: EvalSet, categories: Sequence[str], spec: str) -> np.ndarray:
    """The label distributions of an eval set's rows over the training store's `categories` (by
    name, in that order); NaN when the eval store has none (its items are then predicted only)."""
    labels = other.labels()
    if "distribution" not in labels:
        log.warning("--eval %s: no label distributions; its items are predicted only, not scored", spec)
        return np.full((len(ev.rows), len(categories)), np.nan)
    theirs = [str(c) for c in labels["categories"]]
    if set(theirs) != set(categories):
        raise ConfigError(
            f"--eval {spec}: its distributions are over {', '.join(theirs)}, the training store's over "
            f"{', '.join(categories)}; evaluate distributions on a store with the same categories"
        )
    dist = np.asarray(labels["distribution"], dtype=np.float64)[:, [theirs.index(c) for c in categories]]
    return distribution_targets({"distribution": dist, "categories": list(categories)}, other.ids.astype(str),
                                what=f"--eval {spec}").y[ev.rows]  # fmt: skip


# ----------------------------------------------------------------------------------------- fitting


class _Progress:
    def __init__(self, total: int, fn: ProgressFn | None):
        self.total, self.done, self.fn = total, 0, fn
        if fn is not None:  # the total before the first fit, so a bar's clock starts with the fitting
            fn(0, total, "")

    def step(self, what: str) -> None:
        self.done += 1
        if self.fn is not None:
            self.fn(self.done, self.total, what)


class _Fitter:
    """Fits one model family (plain, or as the stage 2 of two-stage) on any set of training rows."""

    def __init__(self, opts: RegressOptions, tr: _Training, plan: Plan, source: _Stage1Source | None):
        self.opts, self.tr, self.plan, self.source = opts, tr, plan, source
        self.aux = aux_matrix(tr.labels, opts.aux) if opts.aux else None
        self.stage1_fitted: dict = {}  # (model, key) -> fitted stage-1 pipeline (the curve adapts them)
        self.layer_choices: dict = {}  # (best-layer/best-span system, key) -> the layers it chose
        self._s1_store: dict = {}

    def make(self, m: str):
        params = dict(self.opts.model_params.get(m, {}))
        pipe = build_pipeline(
            m, pca=self.opts.pca, params=params, seed=self.opts.seed, log_ranges=self.tr.log_ranges,
            layer_ranges=self.tr.layer_ranges, registry=self.opts.registry,
        )  # fmt: skip
        if (
            self.tr.budget is not None
            and "memory_budget" in pipe[-1].get_params()
            and "memory_budget" not in params
        ):
            pipe[-1].set_params(memory_budget=self.tr.budget)  # the k-NN index of a chunked run
        return pipe

    def make_stage1(self, m: str):
        """Stage 1 of ``two_stage:m``: model m on category-derived VA, or (``--stage1-target
        distribution``) distribution model m read as VA through the lexicon."""
        if self.opts.stage1_target != "distribution":
            return self.make(m)
        from evoked.regress.distribution import DistributionVA

        assert self.source is not None and self.source.targets.va_table is not None
        pipe = build_pipeline(
            m, pca=self.opts.pca, params=dict(self.opts.model_params.get(m, {})), seed=self.opts.seed,
            log_ranges=self.tr.log_ranges, registry=DISTRIBUTION_MODELS,
        )  # fmt: skip
        pipe.steps[-1] = ("model", DistributionVA(pipe.steps[-1][1], self.source.targets.va_table))
        return pipe

    def fit(self, m: str, rows: np.ndarray, key=None):
        est = self.make(m)
        kw = {"model__aux": self.aux[rows]} if self.aux is not None and accepts_aux(est) else {}
        return self.tr.data.fit(est, rows, self.tr.targets.y, **kw)

    def stage1_rows(self, train: np.ndarray) -> np.ndarray:
        """Stage-1 rows of ``--stage1 same`` for a fit: its training rows and the rows without VA
        rating (never evaluated), never a row the run leaves out (`Plan.excluded`)."""
        assert self.source is not None and self.plan.excluded is not None
        tr, t1 = self.tr, self.source.targets
        in_train = np.zeros(len(tr.ids), dtype=bool)
        in_train[train] = True
        usable = tr.ok & tr.finite & t1.mask & ~self.plan.excluded
        return np.flatnonzero(usable & (in_train | ~tr.has_va))

    def fit_two_stage(self, m: str, train: np.ndarray, key) -> TwoStageRegressor:
        tr, src = self.tr, self.source
        assert src is not None
        if src.kind == "same":
            rows1 = self.stage1_rows(train)
            s1 = MemoryRows(tr.X).fit(self.make_stage1(m), rows1, src.targets.y)
        else:
            if m not in self._s1_store:
                assert src.X is not None  # read by `_open_stage1_store`
                self._s1_store[m] = self.make_stage1(m).fit(src.X[src.rows], src.targets.y[src.rows])
            s1 = self._s1_store[m]
        self.stage1_fitted[(m, key)] = s1
        rated = train[tr.has_va[train]]
        return TwoStageRegressor(s1, method=self.opts.two_stage_method, prefit=True).fit(
            tr.X[rated], tr.va[rated]
        )

    def fit_layers(self, m: str, rows: np.ndarray, key, span: bool) -> LayerSearch:
        """The best layer (or run of adjacent layers) of model `m`, chosen by inner CV on `rows`."""
        ls = self.tr.layer_set
        assert ls is not None  # `_layer_set` checked --per-layer
        est = LayerSearch(self.make(m), ls.ranges, ls.layers, span=span, seed=self.opts.seed)
        fitted = self.tr.data.fit(est, rows, self.tr.targets.y)
        self.layer_choices[((BEST_SPAN if span else BEST_LAYER) + m, key)] = fitted.chosen_
        return fitted

    def fit_on_layer(self, m: str, i: int, rows: np.ndarray) -> OnColumns:
        ls = self.tr.layer_set
        assert ls is not None
        return self.tr.data.fit(OnColumns(self.make(m), ls.ranges, i, i), rows, self.tr.targets.y)

    def fitter(self, name: str):
        for prefix, span in ((BEST_LAYER, False), (BEST_SPAN, True)):
            if name.startswith(prefix):
                return lambda rows, key: self.fit_layers(name[len(prefix) :], rows, key, span)
        if name.startswith(TWO_STAGE_PREFIX):
            return lambda rows, key: self.fit_two_stage(name[len(TWO_STAGE_PREFIX) :], rows, key)
        return lambda rows, key: self.fit(name, rows, key)


def _cross(fit, data, folds: Sequence[Fold], step, label: str, key="fold"):
    """Fit on each fold's training rows and predict its held-out rows: (rows, predictions, fitted
    per fold, seconds, training sizes)."""
    rows, preds, fitted, seconds = [], [], {}, 0.0
    for fold in folds:
        t0 = time.perf_counter()
        est = fit(fold.train, (key, fold.index))
        seconds += time.perf_counter() - t0
        fitted[fold.index] = est
        if len(fold.eval):
            rows.append(fold.eval)
            preds.append(data.predict(est, fold.eval))
        step(f"{label} {key} {fold.index}")
    done = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    pred = np.concatenate(preds) if preds else np.zeros((0, 2))
    return done, pred, fitted, seconds, [len(f.train) for f in folds]


def _score(truth: np.ndarray, pred: np.ndarray) -> dict:
    rated = ~np.isnan(truth).any(axis=1)
    return va_metrics(truth[rated], pred[rated]) if rated.sum() >= 2 else {}


def _score_distribution(targets: Targets, p_true: np.ndarray, p_pred: np.ndarray, va_true: np.ndarray) -> dict:
    """The six LDL measures of predicted distributions, and (with a lexicon) the VA metrics of
    their expected VA."""
    from evoked.evaluate.distribution import distribution_metrics

    out = _score(va_true, targets.expected_va(p_pred)) if targets.va_table is not None else {}
    keep = ~(np.isnan(p_true).any(axis=1) | np.isnan(p_pred).any(axis=1))
    if keep.any():
        out["distribution"] = distribution_metrics(p_true[keep], p_pred[keep])
    return out


def _score_rows(tr: _Training, rows: np.ndarray, pred: np.ndarray) -> dict:
    """Metrics of a model's outputs for training-store `rows` (VA, or label distributions)."""
    if tr.distribution:
        return _score_distribution(tr.targets, tr.targets.y[rows], pred, tr.va[rows])
    return _score(tr.va[rows], pred)


def _mean_r(metrics: dict) -> float:
    """What the default model maximises: mean r over valence and arousal, or minus the mean KL."""
    if not metrics:
        return -9.0
    if "distribution" in metrics:
        return -float(np.nan_to_num(metrics["distribution"]["kl"], nan=9e9))
    return float(np.nan_to_num((metrics["valence"]["r"] + metrics["arousal"]["r"]) / 2, nan=-9))


def _selection_folds(
    names: Sequence[str], opts: RegressOptions, tr: _Training, plan: Plan
) -> tuple[list[Fold], str] | None:
    """The folds `_choose_default` fits every model on, and how they were drawn (None: it fits none)."""
    if len(names) < 2 or plan.protocol["kind"] != "split":
        return None
    return selection_folds(plan, tr.labels["split"], tr.scorable, opts.seed)


def _choose_default(results, fitter, selection, tr, plan, progress) -> tuple[str, dict]:
    """The run's default model, chosen on training-side rows only (never the scored rows of a
    split, never the test rows, never an eval store), and how."""
    names = [r.name for r in results]
    if len(names) == 1:
        return names[0], {"rows": "none (the only model)"}
    kind = plan.protocol["kind"]
    if kind == "fit-only":
        return names[0], {"rows": "none (no evaluation: the first model)"}
    if kind == "cv":
        scores = {r.name: _mean_r(r.metrics) for r in results}
        how = {"rows": "the CV rows, out of fold" + ("" if plan.protocol["includes_test"] else " (train+val; test left out)"),
               "n": int(len(plan.eval_rows))}  # fmt: skip
    else:
        folds, rows_how = selection
        if not folds:
            return names[0], {"rows": rows_how + ": the first model"}
        scores = {}
        for name in names:
            rows, pred, _, _, _ = _cross(
                fitter.fitter(name), tr.data, folds, progress.step, name, key="selection"
            )
            scores[name] = _mean_r(_score_rows(tr, rows, pred))
        how = {"rows": rows_how, "n": int(sum(len(f.eval) for f in folds))}
    best = max(names, key=lambda n: scores[n])
    metric = DISTRIBUTION_SELECTION_METRIC if tr.distribution else SELECTION_METRIC
    return best, {**how, "metric": metric, "scores": scores}


# ------------------------------------------------------------------------------------- run folder


@dataclass
class _Fitted:
    """One model, fitted: its result, its predictions (evaluated rows, each eval set), the saved model."""

    result: ModelResult
    pred: np.ndarray  # (len(plan.eval_rows), 2)
    final: Any  # the saved estimator
    eval_pred: dict[str, np.ndarray] = field(default_factory=dict)  # eval name -> (n, 2)
    dist: np.ndarray | None = None  # distribution targets: (len(plan.eval_rows), K) predicted
    eval_dist: dict[str, np.ndarray] = field(default_factory=dict)  # eval name -> (n, K)


def write_outputs(
    out_path: Path, fitted: Sequence[_Fitted], tr: _Training, plan: Plan, evals: Sequence[EvalSet],
    extra_metrics: dict | None = None,
) -> None:  # fmt: skip
    """predictions.csv (training-side rows, then each eval store's) and metrics.json of a run."""
    rows = plan.eval_rows
    kind = "oof" if plan.protocol["kind"] == "cv" else "held-out"
    cats = list(tr.targets.description["categories"]) if tr.distribution else []

    def with_dist(row: dict, pred: np.ndarray | None, true: np.ndarray | None) -> dict:
        """``pred_p_<category>`` and ``true_p_<category>`` cells of distribution targets."""
        if pred is not None and true is not None:
            row.update({f"{runfolder.PRED_P}{c}": pred[k] for k, c in enumerate(cats)})
            row.update({f"{runfolder.TRUE_P}{c}": true[k] for k, c in enumerate(cats)})
        return row

    def prediction_rows() -> Iterator[dict]:
        for f in fitted:
            name, p = f.result.name, f.pred
            for i, row in enumerate(rows):
                yield with_dist(
                    {"model": name, "id": tr.ids[row], "fold": plan.eval_fold[int(row)], "split": plan.eval_split,
                     "valence_true": tr.va[row, 0], "arousal_true": tr.va[row, 1], "valence_pred": p[i, 0],
                     "arousal_pred": p[i, 1], "category_true": str(tr.labels["category"][row] or ""),
                     "eval": "", "kind": kind},
                    None if f.dist is None else f.dist[i], tr.targets.y[row])  # fmt: skip
            for ev in evals:
                p, d = f.eval_pred[ev.name], f.eval_dist.get(ev.name)
                for i in range(len(ev.rows)):
                    yield with_dist(
                        {"model": name, "id": ev.ids[i], "fold": -1, "split": ev.item_split[i],
                         "valence_true": ev.va[i, 0], "arousal_true": ev.va[i, 1], "valence_pred": p[i, 0],
                         "arousal_pred": p[i, 1], "category_true": str(ev.category[i] or ""),
                         "eval": ev.name, "kind": "transfer"},
                        None if d is None else d[i], None if ev.p_true is None else ev.p_true[i])  # fmt: skip

    extra = [f"{runfolder.PRED_P}{c}" for c in cats] + [f"{runfolder.TRUE_P}{c}" for c in cats]
    runfolder.write_predictions(out_path / "predictions.csv", prediction_rows(), extra)
    metrics: dict = {f.result.name: f.result.metrics for f in fitted}
    if evals:
        metrics["_evals"] = {
            ev.name: {f.result.name: f.result.eval_metrics.get(ev.name, {}) for f in fitted} for ev in evals
        }
    runfolder.write_json(out_path / "metrics.json", {**metrics, **(extra_metrics or {})})


def run_record(
    name: str, tr: _Training, targets: Targets, plan: Plan, results: Sequence[ModelResult], default_model: str,
    opts: RegressOptions,
) -> dict:  # fmt: skip
    """run.json of a regression run (docs/runs.md)."""
    rows = plan.eval_rows
    folds = [plan.eval_fold[int(r)] for r in rows]
    versions = runfolder.versions()
    return {
        "kind": "regress",
        "name": name,
        "created": utc_now(),
        "evoked_version": versions["evoked"],
        "dataset": tr.info["dataset"],
        "store": tr.info["store"],
        "store_uuid": tr.info["store_uuid"],
        "features": list(tr.resolved),
        "target": targets.description,
        "protocol": plan.protocol,
        "items_sha256": runfolder.items_fingerprint(tr.ids[rows], folds, [plan.eval_split] * len(rows)),
        "models": [r.name for r in results],
        "versions": versions,
        # fields beyond docs/runs.md
        "default_model": default_model,
        "feature_dims": tr.info["feature_dims"],
        "extractors": tr.info["extractors"],
        "extractor_configs": tr.info["extractor_configs"],
        "extractor_precisions": tr.info["extractor_precisions"],
        "pca": opts.pca,
        "log_probs": list(tr.log_features),
        "aux": opts.aux,
        "params": opts.model_params,
        "seed": opts.seed,
        "va_range": list(opts.va_bounds),
        "counts": plan.counts,
        "target_missing": targets.missing,
        "fit_seconds": {r.name: round(r.fit_seconds, 3) for r in results},
        "n_train": {r.name: r.n_train for r in results},
        "model_info": {r.name: r.info for r in results},
    }


def _estimator_name(est) -> str:
    final = est.steps[-1][1] if hasattr(est, "steps") else est
    return f"{type(final).__module__}.{type(final).__qualname__}"


# -------------------------------------------------------------------------------------------- main


def run_regress(
    store: str | os.PathLike, *, on_progress: ProgressFn | None = None, **options: Any
) -> RegressResult:
    """Fit `models` on `features` of a store, evaluate them, and write the run folder `out`.

    Options are the fields of `RegressOptions` (the flags of `evoked regress`, docs/regress.md).
    Protocols: ``cv=K`` (5 when neither is given; the store's folds when it has K; a store's test
    split is left out unless ``cv_include_test``), ``split="test"`` (train on train+val, evaluate
    on test) or ``cv=0`` (fit only). Evaluation is always against the VA ratings. ``evals``
    (``["B.h5", "C.h5:test"]``): every item of each eval store is predicted by each saved model
    and scored against that store's ratings. Two-stage (`stage1` = ``"same"`` or another store):
    every model M is also run as ``two_stage:M``. `n_labels` (``"0,25,100,all"``) adds the
    low-resource curve over `seeds` seeds. ``stream=True`` (or a `max_memory` the features do
    not fit in) reads the features chunk by chunk.
    """
    t_start = time.perf_counter()
    opts = RegressOptions(**options)
    if not opts.stream and opts.max_memory is not None:
        opts.stream = streaming_needed(store, parse_features(opts.features), opts.max_memory)
    opts.check()
    for spec in opts.evals:
        eval_names([spec])  # a missing eval store fails before any work
    out_path = runfolder.check_out(opts.out, opts.overwrite)
    opts.name = opts.name or out_path.name  # the run is written in a work folder, then swapped in

    with ExitStack() as stack:
        work = stack.enter_context(runfolder.writing(out_path))  # locked; the old run kept until the end
        st = stack.enter_context(open_store(store))
        tr = _read(st, store, opts)
        if opts.split_seed is not None:
            tr.labels = redraw_assignment(tr.labels, opts.split_seed)
        t1 = make_targets(tr.labels, opts.stage1_target, **opts.target_kw) if opts.stage1 == "same" else None
        plan = _plan(opts, tr)
        evals = _open_evals(opts, st, tr, stack)
        source = None
        if t1 is not None:
            source = _Stage1Source("same", t1, description={"source": "same", "items": int(t1.n)})
        elif opts.stage1 is not None:
            eval_ids = set(tr.ids[plan.eval_rows]) | {i for ev in evals for i in ev.ids}
            source = _open_stage1_store(
                opts.stage1, tr.resolved, st, opts.stage1_target, opts.target_kw, eval_ids
            )
        result = _fit_and_write(opts, tr, plan, evals, source, work, on_progress)
    result.out = out_path
    result.seconds = time.perf_counter() - t_start
    return result


def _fit_and_write(
    opts: RegressOptions, tr: _Training, plan: Plan, evals: list[EvalSet], source: _Stage1Source | None,
    out_path: Path, on_progress: ProgressFn | None,
) -> RegressResult:  # fmt: skip
    """Fit every model, choose the default, save the models, run the curve, write the run folder."""
    curve_spec = None
    if opts.curve_ns is not None:
        rated = [np.intersect1d(f.train, np.flatnonzero(tr.has_va)) for f in plan.folds]
        curve_spec = CurveSpec.build(opts.curve_ns, [len(r) for r in rated], opts.seeds, opts.seed)
    log.info("%s: %d features, %s, %d evaluated items, %d eval stores, %s", Path(tr.info["store"]).name,
             len(tr.resolved), plan.protocol, len(plan.eval_rows), len(evals),
             "in chunks" if tr.data.chunked else "in memory")  # fmt: skip
    plain = set(opts.plain_models)
    names = [n for m in opts.model_names
             for n in ([m] if m in plain else []) + ([TWO_STAGE_PREFIX + m] if source else [])]  # fmt: skip
    if opts.per_layer:
        names += [p + m for p in (BEST_LAYER, BEST_SPAN) for m in opts.plain_models]
    n_fits = len(plan.folds) + (0 if plan.protocol["kind"] == "split" else 1)
    selection = _selection_folds(names, opts, tr, plan)
    total = len(names) * (n_fits + (len(selection[0]) if selection else 0))  # every fit the bar counts
    if opts.per_layer and tr.layer_set is not None:
        total += len(tr.layer_set.features) * len(opts.plain_models) * n_fits
    if curve_spec is not None:
        total += len(opts.model_names) * curve_spec.n_fits(len(plan.folds), two_stage=source is not None)
    progress = _Progress(total, on_progress)
    fitter = _Fitter(opts, tr, plan, source)
    fitted = [_fit_model(name, fitter, tr, plan, evals, progress) for name in names]
    results = [f.result for f in fitted]
    default_model, default_how = _choose_default(results, fitter, selection, tr, plan, progress)
    _save_models(out_path / "models", fitted, fitter, opts)
    curve_summary = _curve(out_path, opts, curve_spec, fitter, progress) if curve_spec is not None else []
    layers_run = _per_layer(out_path, opts, fitter, evals, progress) if opts.per_layer else None
    write_outputs(out_path, fitted, tr, plan, evals, {"_curve": curve_summary} if curve_summary else {})
    run = run_record(opts.name or out_path.name, tr, tr.targets, plan, results, default_model, opts)
    run["estimators"] = {r.name: r.info["estimator"] for r in results}
    run["evals"] = [ev.describe() for ev in evals]
    run["selection"] = _selection(opts, plan, default_how, tr)
    if source is not None:
        run["two_stage"] = {
            "method": opts.two_stage_method,
            "stage1": {**source.description, "target": source.targets.description},
        }
    if curve_spec is not None:
        run["curve"] = curve_spec.describe()
    if layers_run is not None:
        run["layers"] = layers_run
    if isinstance(tr.data, ChunkRows) and tr.budget is not None:
        run["streaming"] = {"chunk_rows": int(tr.data.source.chunk_rows), "max_memory": int(tr.budget)}
    runfolder.write_json(out_path / "run.json", run)
    return RegressResult(out_path, run, results, plan.counts, curve_summary)


def _fit_model(
    name: str, fitter: _Fitter, tr: _Training, plan: Plan, evals: Sequence[EvalSet], progress: _Progress
) -> _Fitted:
    """Fit `name` on each fold (predicting its held-out rows), fit the saved model, predict the evals."""
    fit = fitter.fitter(name)
    eval_rows = plan.eval_rows
    rows, p, fitted, seconds, sizes = _cross(fit, tr.data, plan.folds, progress.step, name)
    pos = np.full(len(tr.ids), -1, dtype=np.int64)
    pos[eval_rows] = np.arange(len(eval_rows))
    pred = np.full((len(eval_rows), tr.targets.y.shape[1] if tr.distribution else 2), np.nan)
    if len(rows):
        pred[pos[rows]] = p
    if plan.protocol["kind"] == "split":
        final = fitted[0]  # trained on the training split: the model that is saved
    else:
        t0 = time.perf_counter()
        final = fit(plan.final_train, ("fold", -1))
        seconds += time.perf_counter() - t0
        progress.step(f"{name} final")
        sizes = sizes or [len(plan.final_train)]
    info = {**describe_fitted(final), "estimator": _estimator_name(final)}
    res = ModelResult(name, _score_rows(tr, eval_rows, pred) if len(eval_rows) else {}, seconds,
                      float(np.mean(sizes)), len(eval_rows), info)  # fmt: skip
    if not tr.distribution:
        out = _Fitted(res, pred, final)
    else:  # predictions.csv gets the distribution and its expected VA (NaN without a lexicon)
        out = _Fitted(res, tr.targets.expected_va(pred), final, dist=pred)
    for ev in evals:
        assert ev.data is not None  # set by `_open_evals`
        p = ev.data.predict(final, ev.rows)
        if tr.distribution:
            assert ev.p_true is not None  # set by `_open_evals`
            out.eval_dist[ev.name], out.eval_pred[ev.name] = p, tr.targets.expected_va(p)
            res.eval_metrics[ev.name] = _score_distribution(tr.targets, ev.p_true, p, ev.va)
        else:
            out.eval_pred[ev.name] = p
            res.eval_metrics[ev.name] = _score(ev.va, p)
    log.info("%s: %.1f s", name, seconds)
    return out


def _save_models(models_dir: Path, fitted: Sequence[_Fitted], fitter: _Fitter, opts: RegressOptions) -> None:
    """models/: each saved model, its metadata and the ids it was trained on (docs/runs.md)."""
    tr, plan, source = fitter.tr, fitter.plan, fitter.source
    final_what = {
        "cv": "the training-side items the CV folds cover (the folds only measure it)",
        "split": f"the {'+'.join(plan.protocol.get('train', []))} items",
        "fit-only": "every usable item",
    }[plan.protocol["kind"]]
    common = {"features": tr.resolved, "target": tr.targets.description, "protocol": plan.protocol,
              "pca": opts.pca, "log_probs": tr.log_features, "aux": opts.aux, "streaming": tr.data.chunked,
              **tr.info}  # fmt: skip
    rated = np.intersect1d(plan.final_train, np.flatnonzero(tr.has_va))
    for f in fitted:
        name, ids = f.result.name, tr.ids[plan.final_train]
        family = name.removeprefix(TWO_STAGE_PREFIX)
        meta = {"family": family, "params": opts.model_params.get(family, {}), "seed": opts.seed, **common,
                "fitted_on": {"items": int(len(plan.final_train)), "what": final_what}, "info": f.result.info,
                "versions": runfolder.versions(), "created": utc_now()}  # fmt: skip
        if name.startswith(TWO_STAGE_PREFIX):
            assert source is not None
            s1_ids = source.ids if source.ids is not None else tr.ids[fitter.stage1_rows(plan.final_train)]
            ids = np.concatenate([tr.ids[rated], s1_ids])
            meta["two_stage"] = {
                "method": opts.two_stage_method,
                "stage1": {**source.description, "target": source.targets.description, "items": len(s1_ids)},
                "stage2_items": int(len(rated)),
            }
        rundir.save_model(models_dir, name, f.final, meta, fitted_ids=ids)


def _curve(
    out_path: Path, opts: RegressOptions, spec: CurveSpec, fitter: _Fitter, progress: _Progress
) -> list[dict]:
    """The low-resource curve: curve.csv, and its summary (means and spreads over seeds)."""
    tr, plan, two_stage = fitter.tr, fitter.plan, fitter.source is not None
    rows: list[dict] = []
    for m in opts.model_names:
        rows += run_curve(
            model=m, make=partial(fitter.make, m), X=tr.X, va=tr.va, plan=plan, spec=spec,
            stage1={f.index: fitter.stage1_fitted[(m, ("fold", f.index))] for f in plan.folds} if two_stage else None,
            method=opts.two_stage_method, on_fit=progress.step,
        )  # fmt: skip
    runfolder.write_curve(out_path / "curve.csv", rows)
    return summarize_curve(rows)


def _per_layer(
    out_path: Path, opts: RegressOptions, fitter: _Fitter, evals: Sequence[EvalSet], progress: _Progress
) -> dict:
    """``--per-layer``: every model on every layer alone (layers.csv, layers.png); returns run.json's
    ``layers`` section (the layers, and what the best-layer / best-span systems chose per fit)."""
    tr, plan = fitter.tr, fitter.plan
    ls = tr.layer_set
    assert ls is not None

    def fit_layer(m: str, i: int) -> dict[str, dict]:
        fit = lambda rows, key: fitter.fit_on_layer(m, i, rows)  # noqa: E731
        rows, pred, fitted, _, _ = _cross(fit, tr.data, plan.folds, progress.step, f"{m} {ls.layers[i]}")
        out = {"": _score(tr.va[rows], pred)}
        if evals:
            final = fitted[0] if plan.protocol["kind"] == "split" else fit(plan.final_train, None)
            for ev in evals:
                assert ev.data is not None
                out[ev.name] = _score(ev.va, ev.data.predict(final, ev.rows))
        if plan.protocol["kind"] != "split":
            progress.step(f"{m} {ls.layers[i]} final")
        return out

    rows = per_layer_rows(ls, opts.plain_models, fit_layer)
    runfolder.write_table(out_path / "layers.csv", LAYER_COLUMNS, rows)
    saved_key = ("fold", 0 if plan.protocol["kind"] == "split" else -1)  # the fit that is saved
    saved = {name[len(BEST_SPAN) :]: chosen for (name, key), chosen in fitter.layer_choices.items()
             if name.startswith(BEST_SPAN) and key == saved_key}  # fmt: skip
    layer_plot(out_path / "layers.png", rows, saved)
    choices: dict = {}
    for (name, key), chosen in sorted(fitter.layer_choices.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        label = "saved model" if key == saved_key else f"{key[0]} {key[1]}"
        choices.setdefault(name, {})[label] = chosen
    return {
        "layers": ls.describe(),
        "choice": f"inner {LayerSearch().cv}-fold CV on each fit's own training rows, mean Pearson r over the "
        "targets; best-span grows from the best layer while that score improves",
        "chosen": choices,
        "table": "layers.csv",
        "plot": "layers.png",
    }


def _selection(opts: RegressOptions, plan: Plan, default_how: dict, tr: _Training) -> dict:
    """Which rows each choice of the run used (run.json ``selection``)."""
    fits = "each fit's own training rows (the fold's under CV, the training split's, the saved model's)"
    out = {
        "default_model": default_how,
        "alpha": f"ridge (and two-stage's residual ridge): leave-one-out on {fits}",
        "early_stopping": f"mlp: a validation fraction of {fits}",
        "n_neighbors": f"knn: leave-one-out on {fits}",
        "svr_method": "svr: by the size of each fit's training rows",
        "members": "ensemble: fixed (ridge, svr, knn, mlp-kim), each with its own choices on the fit's rows",
        "saved_model": f"fitted on {len(plan.final_train)} training-side rows; eval stores never train",
    }
    if tr.distribution:
        out.update({
            "alpha": f"softmax: {SOFTMAX_CV}-fold mean KL on {fits}",  # its default folds
            "early_stopping": f"mlp: the validation KL on a validation fraction of {fits}",
            "n_neighbors": f"knn (AA-kNN): leave-one-out mean KL on {fits}",
        })  # fmt: skip
        for key in ("svr_method", "members"):
            out.pop(key)
    if plan.protocol["kind"] == "cv":
        out["cv"] = {"folds": plan.protocol["folds"], "includes_test": plan.protocol["includes_test"],
                     "left_out_test": int(plan.counts.get("test split (left out of the CV)", 0))}  # fmt: skip
    return out
