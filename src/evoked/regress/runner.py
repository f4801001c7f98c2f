"""`run_regress`: fit and evaluate VA regressors on cached features, and write a run folder.

The steps, in order: check every option (before reading any feature), open the store, build the
targets, plan the protocol (CV folds, a split, or fit only), fit each model on each fold and
predict the held-out items, fit the model that is saved, optionally the two-stage models and the
low-resource curve, then write ``run.json``, ``predictions.csv``, ``metrics.json``, ``curve.csv``
and ``models/`` as docs/runs.md describes.
"""

from __future__ import annotations

import ast
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evoked.errors import ConfigError
from evoked.evaluate.metrics import va_metrics
from evoked.features.store import OK, FeatureStore, open_store
from evoked.regress import rundir
from evoked.regress.curve import CurveSpec, parse_n_labels, run_curve, summarize_curve
from evoked.regress.describe import accepts_aux, describe_fitted
from evoked.regress.protocol import Plan, plan_cv, plan_fit_only, plan_split
from evoked.regress.registry import build_pipeline, check_regressor_names, make_regressor, parse_pca
from evoked.regress.targets import AUX_KINDS, Targets, aux_matrix, make_targets, va_ratings
from evoked.regress.transforms import check_probabilities, probability_features, probability_ranges
from evoked.regress.two_stage import METHODS, TwoStageRegressor

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]
TWO_STAGE_PREFIX = "two_stage:"


@dataclass
class ModelResult:
    name: str
    metrics: dict  # va_metrics of the out-of-fold / test predictions ({} when nothing is evaluated)
    fit_seconds: float  # all fits of this model (folds + the saved one)
    n_train: float  # training rows per fit (mean over folds)
    n_eval: int
    info: dict = field(default_factory=dict)


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


# ---------------------------------------------------------------------------------------- options


def parse_features(features: Sequence[str]) -> list[str]:
    """``["a/x,b/y", "c"]`` -> ``["a/x", "b/y", "c"]`` (repeatable and comma-separated)."""
    out = [f.strip() for item in features for f in str(item).split(",") if f.strip()]
    if not out:
        raise ConfigError("no --feature given; name one or more store outputs, e.g. --feature resnet50/pool")
    return out


def parse_models(models: Sequence[str] | str) -> list[str]:
    items = [models] if isinstance(models, str) else list(models)
    out = [m.strip() for item in items for m in str(item).split(",") if m.strip()]
    if not out:
        raise ConfigError("no --model given; e.g. --model ridge,svr")
    if len(set(out)) != len(out):
        raise ConfigError(f"--model lists a model twice: {','.join(out)}")
    check_regressor_names(out)
    return out


def parse_params(items: Sequence[str] | dict | None, models: Sequence[str]) -> dict[str, dict]:
    """``["svr.C=3", "mlp.hidden_layer_sizes=(512,256)"]`` -> ``{"svr": {"C": 3}, ...}``."""
    if isinstance(items, dict):
        out = {k: dict(v) for k, v in items.items()}
    else:
        out: dict[str, dict] = {}
        for item in items or ():
            key, sep, value = item.partition("=")
            model, dot, param = key.strip().partition(".")
            if not sep or not dot or not param:
                raise ConfigError(f"--param {item!r}: expected MODEL.NAME=VALUE, e.g. svr.C=3")
            try:
                parsed = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                parsed = value.strip()  # a bare word is a string (e.g. knn.weights=uniform)
            out.setdefault(model, {})[param] = parsed
    for model in out:
        if model not in models:
            raise ConfigError(f"--param for {model!r}, which is not in --model {','.join(models)}")
    return out


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
    }


def _read_features(store: FeatureStore, features: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(X, ok, finite): every row's features (NaN where not ok), its status, and finiteness."""
    X = store.read(features)
    ok = store.status == OK
    finite = np.isfinite(X).all(axis=1)
    return X, ok, finite


@dataclass
class _Stage1Source:
    """Where stage 1 learns: this store (``same``) or another store, with its targets."""

    kind: str  # "same" or "store"
    targets: Targets
    X: np.ndarray | None = None  # other store only
    rows: np.ndarray | None = None  # other store: usable rows
    description: dict = field(default_factory=dict)


def _open_stage1_store(
    path: str,
    resolved: list[str],
    main: FeatureStore,
    target_kind: str,
    target_kw: dict,
    eval_ids: set[str],
) -> _Stage1Source:
    other_path = Path(path)
    with open_store(other_path) as other:
        if other.attrs.get("store_uuid") == main.attrs.get("store_uuid"):
            raise ConfigError(f"--stage1 {path} is the evaluated store itself; use --stage1 same")
        try:
            other_features = other.resolve_features(resolved)
        except ConfigError as e:
            raise ConfigError(
                f"--stage1 {path}: {e}; it needs the same features as the evaluated store"
            ) from e
        for group in sorted({f.split("/")[0] for f in resolved}):
            a, b = extractor_config(main, group), extractor_config(other, group)
            if a != b:
                raise ConfigError(
                    f"--stage1 {path}: feature group {group!r} was extracted with another configuration "
                    f"({b}) than in {main.path.name} ({a}); extract both with the same backbone, weights and "
                    "preprocessing"
                )
        for f in resolved:
            if other.dataset(f).shape[1] != main.dataset(f).shape[1]:
                raise ConfigError(f"--stage1 {path}: {f} has another dimension than in {main.path.name}")
        targets = make_targets(other.labels(), target_kind, **target_kw)
        X, ok, finite = _read_features(other, other_features)
        overlap = np.isin(other.ids.astype(str), list(eval_ids))
        rows = np.flatnonzero(ok & finite & targets.mask & ~overlap)
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
    return _Stage1Source("store", targets, X, rows, desc)


# ----------------------------------------------------------------------------------------- fitting


def _fit(est, X, y, **fit_params):
    t0 = time.perf_counter()
    est.fit(X, y, **fit_params)
    return est, time.perf_counter() - t0


class _Progress:
    def __init__(self, total: int, fn: ProgressFn | None):
        self.total, self.done, self.fn = total, 0, fn

    def step(self, what: str) -> None:
        self.done += 1
        if self.fn is not None:
            self.fn(self.done, self.total, what)


def _stage1_rows(plan: Plan, fold_train: np.ndarray | None, usable: np.ndarray, has_va: np.ndarray, split):
    """Stage-1 rows of ``--stage1 same`` for one fit: never an evaluated item of that fit.

    CV: the fold's training rows plus rows that have no VA rating (they are never evaluated).
    Split: the training splits. The saved model (fold_train None): every usable row.
    """
    if fold_train is None:
        return np.flatnonzero(usable)
    if plan.protocol["kind"] == "split":
        return np.flatnonzero(usable & np.isin(split, plan.protocol["train"]))
    in_train = np.zeros(len(usable), dtype=bool)
    in_train[fold_train] = True
    return np.flatnonzero(usable & (in_train | ~has_va))


# ------------------------------------------------------------------------------------- run folder


def write_outputs(
    out_path: Path,
    results: Sequence[ModelResult],
    predictions: dict[str, np.ndarray],
    va: np.ndarray,
    eval_rows: np.ndarray,
    eval_ids: np.ndarray,
    eval_folds: Sequence[int],
    split_col: Sequence[str],
    categories: np.ndarray,
    extra_metrics: dict | None = None,
) -> str:
    """predictions.csv and metrics.json of a run; returns the default model (the best r valence +
    r arousal, else the first)."""
    order = [r.name for r in results]

    def prediction_rows():
        for name in order:
            p = predictions[name]
            for i, r in enumerate(eval_rows):
                yield {
                    "model": name,
                    "id": eval_ids[i],
                    "fold": eval_folds[i],
                    "split": split_col[i],
                    "valence_true": va[r, 0],
                    "arousal_true": va[r, 1],
                    "valence_pred": p[i, 0],
                    "arousal_pred": p[i, 1],
                    "category_true": str(categories[r] or ""),
                }

    rundir.write_predictions(out_path / "predictions.csv", prediction_rows())
    rundir.write_json(
        out_path / "metrics.json", {**{r.name: r.metrics for r in results}, **(extra_metrics or {})}
    )
    scored = [r for r in results if r.metrics]
    if not scored:
        return order[0]
    best = max(
        scored, key=lambda r: np.nan_to_num(r.metrics["valence"]["r"] + r.metrics["arousal"]["r"], nan=-9)
    )
    return best.name


def run_record(
    name: str,
    store_info: dict,
    resolved: Sequence[str],
    targets,
    protocol: dict,
    items_sha256: str,
    results: Sequence[ModelResult],
    default_model: str,
    model_params: dict,
    seed: int,
    counts: dict,
    *,
    pca,
    log_probs: Sequence[str],
    aux,
) -> dict:
    """run.json of a regression run (docs/runs.md), without the fields one runner alone adds."""
    return {
        "kind": "regress",
        "name": name,
        "created": rundir.now(),
        "evoked_version": rundir.versions()["evoked"],
        "dataset": store_info["dataset"],
        "store": store_info["store"],
        "store_uuid": store_info["store_uuid"],
        "features": list(resolved),
        "target": targets.description,
        "protocol": protocol,
        "items_sha256": items_sha256,
        "models": [r.name for r in results],
        "versions": rundir.versions(),
        # fields beyond docs/runs.md
        "default_model": default_model,
        "feature_dims": store_info["feature_dims"],
        "extractors": store_info["extractors"],
        "extractor_configs": store_info["extractor_configs"],
        "pca": pca,
        "log_probs": list(log_probs),
        "aux": aux,
        "params": model_params,
        "seed": seed,
        "counts": counts,
        "target_missing": targets.missing,
        "fit_seconds": {r.name: round(r.fit_seconds, 3) for r in results},
        "n_train": {r.name: r.n_train for r in results},
        "model_info": {r.name: r.info for r in results},
    }


# -------------------------------------------------------------------------------------------- main


def run_regress(
    store: str | os.PathLike,
    *,
    features: Sequence[str],
    out: str | os.PathLike,
    models: Sequence[str] | str = ("ridge",),
    target: str = "va",
    lexicon: str | None = None,
    soft: bool = False,
    category_map: Sequence[str] | dict | None = None,
    cv: int | None = None,
    split: str | None = None,
    pca: int | float | str | None = None,
    params: Sequence[str] | dict | None = None,
    seed: int = 0,
    stage1: str | None = None,
    stage1_target: str = "category-va",
    two_stage_method: str = "residual",
    n_labels: Sequence[int | str] | str | None = None,
    seeds: int = 5,
    log_probs: bool = True,
    aux: str | None = None,
    overwrite: bool = False,
    name: str | None = None,
    on_progress: ProgressFn | None = None,
) -> RegressResult:
    """Fit `models` on `features` of a store, evaluate them, and write the run folder `out`.

    Protocols: ``cv=K`` (5 when neither is given; the store's folds when it has K), ``split="test"`` (train on
    train+val, evaluate on test) or ``cv=0`` (fit only). Evaluation is always against the VA ratings.
    Two-stage (`stage1` = ``"same"`` or another store): every model M is also run as
    ``two_stage:M``. `n_labels` (``"0,25,100,all"``) adds the low-resource curve over `seeds` seeds.
    `log_probs`: probability outputs (``*/probs``, ``*/scene``) enter the models as log(p + 1e-4).
    `aux` (``"distribution"`` or ``"category"``): auxiliary targets learnt alongside VA by the models
    that can (mlp, mlp-kim, and the mlp member of ensemble), in the main evaluation and the saved model.
    """
    t_start = time.perf_counter()
    # -- every option first, before any feature is read -------------------------------------------
    feature_names = parse_features(features)
    model_names = parse_models(models)
    model_params = parse_params(params, model_names)
    pca = parse_pca(pca)
    for m in model_names:  # unknown parameters fail here, not after minutes of fitting
        make_regressor(m, **model_params.get(m, {}))
    if split is not None and cv is not None:
        raise ConfigError("--split and --cv are alternatives; give one of them")
    if split is None:
        cv = 5 if cv is None else int(cv)
        if cv < 0 or cv == 1:
            raise ConfigError(f"--cv {cv}: use K >= 2 folds, or 0 to fit without evaluation")
    if two_stage_method not in METHODS:
        raise ConfigError(f"--two-stage-method {two_stage_method!r}: use one of {', '.join(METHODS)}")
    curve_ns = parse_n_labels(n_labels) if n_labels not in (None, "", ()) else None
    if curve_ns is not None and seeds < 1:
        raise ConfigError(f"--seeds {seeds}: must be at least 1")
    if stage1 is not None:
        if target != "va":
            raise ConfigError(
                "two-stage adapts on VA ratings: use --target va with --stage1 (the category-derived VA "
                "of stage 1 is set by --stage1-target, --lexicon and --soft)"
            )
        if stage1_target != "category-va":
            raise ConfigError(f"--stage1-target {stage1_target!r}: only category-va is supported")
        if stage1 != "same" and not Path(stage1).is_file():
            raise ConfigError(f"--stage1 {stage1!r}: use 'same' or the path of another feature store")
    if curve_ns is not None and split is None and cv == 0:
        raise ConfigError("--n-labels needs an evaluation: use --cv K or --split test")
    if aux not in (None, *AUX_KINDS):
        raise ConfigError(f"--aux {aux!r}: use one of {', '.join(AUX_KINDS)}")
    if aux is not None:
        takers = [m for m in model_names if accepts_aux(make_regressor(m, **model_params.get(m, {})))]
        if not takers:
            raise ConfigError(
                f"--aux: none of {', '.join(model_names)} learns auxiliary targets; use mlp or mlp-kim"
            )
        ignored = [m for m in model_names if m not in takers]
        if ignored:
            log.warning("--aux %s is used by %s only, not by %s", aux, ", ".join(takers), ", ".join(ignored))
    out_path = rundir.prepare_out(out, overwrite)
    target_kw = {"lexicon": lexicon, "soft": soft, "category_map": category_map}

    with open_store(store) as st:
        resolved = st.resolve_features(feature_names)
        labels = st.labels()
        main_kw = target_kw if stage1 is None else {}
        targets = make_targets(labels, target, **main_kw)
        # label problems (unknown words, no distributions) fail here, before the features are read
        t1 = make_targets(labels, stage1_target, **target_kw) if stage1 == "same" else None
        aux_targets = aux_matrix(labels, aux) if aux else None
        X, ok, finite = _read_features(st, resolved)
        ids = st.ids.astype(str)
        va = va_ratings(labels)
        has_va = ~np.isnan(va).any(axis=1)
        common = dict(ok=ok, finite=finite, has_target=targets.mask, has_va=has_va)
        if split is not None:
            plan = plan_split(split, split=labels["split"], **common)
        elif cv == 0:
            plan = plan_fit_only(**common)
        else:
            plan = plan_cv(cv, store_fold=labels["fold"], category=labels["category"], seed=seed, **common)
        eval_rows = plan.eval_rows
        source = None
        if t1 is not None:
            source = _Stage1Source("same", t1, description={"source": "same", "items": int(t1.n)})
        elif stage1 is not None:
            source = _open_stage1_store(stage1, resolved, st, stage1_target, target_kw, set(ids[eval_rows]))
        store_info = describe_store(st, store, resolved)
    log_ranges = probability_ranges(resolved, store_info["feature_dims"]) if log_probs else ()
    log_features = probability_features(resolved) if log_probs else []
    check_probabilities(X, log_ranges, log_features)
    curve_spec = None
    if curve_ns is not None:
        rated = [np.intersect1d(f.train, np.flatnonzero(has_va)) for f in plan.folds]
        curve_spec = CurveSpec.build(curve_ns, [len(r) for r in rated], seeds, seed)
    log.info(
        "%s: %d features (%d dims), %s, %d evaluated items",
        Path(store).name,
        len(resolved),
        X.shape[1],
        plan.protocol,
        len(eval_rows),
    )

    # -- fitting ----------------------------------------------------------------------------------
    n_fits_model = len(plan.folds) + (0 if plan.protocol["kind"] == "split" else 1)
    total = len(model_names) * n_fits_model * (2 if source else 1)
    if curve_spec is not None:
        total += len(model_names) * curve_spec.n_fits(len(plan.folds), two_stage=source is not None)
    progress = _Progress(total, on_progress)
    rundir.start_run_dir(out_path)
    models_dir = out_path / "models"
    y_train = targets.y
    results: list[ModelResult] = []
    predictions: dict[str, np.ndarray] = {}
    stage1_fitted: dict[tuple[str, int], object] = {}  # (model, fold) -> fitted stage-1 pipeline
    saved_meta_common = {
        "features": resolved,
        "target": targets.description,
        "protocol": plan.protocol,
        "pca": pca,
        "log_probs": log_features,
        "aux": aux,
        **store_info,
    }

    def fitted_model_meta(name: str, family: str, est, n_rows: int, what: str, extra: dict | None = None):
        return {
            "family": family,
            "params": model_params.get(family, {}),
            "seed": seed,
            **saved_meta_common,
            "fitted_on": {"items": int(n_rows), "what": what},
            "info": describe_fitted(est),
            "versions": rundir.versions(),
            "created": rundir.now(),
            **(extra or {}),
        }

    final_what = {
        "cv": "every usable item (the CV folds only measure it)",
        "split": f"the {'+'.join(plan.protocol.get('train', []))} items",
        "fit-only": "every usable item",
    }[plan.protocol["kind"]]

    for m in model_names:
        make = lambda m=m: build_pipeline(  # noqa: E731
            m, pca=pca, params=model_params.get(m), seed=seed, log_ranges=log_ranges
        )
        pred = np.full((len(eval_rows), 2), np.nan)
        pos = {int(r): i for i, r in enumerate(eval_rows)}
        seconds, sizes = 0.0, []
        est = None

        def fit_kw(rows, est):
            return {"model__aux": aux_targets[rows]} if aux_targets is not None and accepts_aux(est) else {}

        for fold in plan.folds:
            est = make()
            est, s = _fit(est, X[fold.train], y_train[fold.train], **fit_kw(fold.train, est))
            seconds += s
            sizes.append(len(fold.train))
            pred[[pos[int(r)] for r in fold.eval]] = est.predict(X[fold.eval])
            progress.step(f"{m} fold {fold.index}")
        if plan.protocol["kind"] != "split":
            est = make()
            est, s = _fit(
                est, X[plan.final_train], y_train[plan.final_train], **fit_kw(plan.final_train, est)
            )
            seconds += s
            progress.step(f"{m} final")
            if not sizes:
                sizes.append(len(plan.final_train))
        info = describe_fitted(est)
        rundir.save_model(models_dir, m, est, fitted_model_meta(m, m, est, len(plan.final_train), final_what))
        predictions[m] = pred
        results.append(
            ModelResult(
                m,
                va_metrics(va[eval_rows], pred) if len(eval_rows) else {},
                seconds,
                float(np.mean(sizes)),
                len(eval_rows),
                info,
            )
        )
        log.info("%s: %.1f s", m, seconds)

        if source is None:
            continue
        # -- two-stage: stage 1 on category-derived VA, stage 2 on the VA-rated training items ---
        ts_name = TWO_STAGE_PREFIX + m
        pred2 = np.full((len(eval_rows), 2), np.nan)
        seconds2 = 0.0
        s1_usable = None
        if source.kind == "same":
            s1_usable = ok & finite & source.targets.mask
        else:
            s1_fit, s = _fit(make(), source.X[source.rows], source.targets.y[source.rows])
            seconds2 += s
        fits = [(fold.index, fold.train, fold.eval) for fold in plan.folds]
        if plan.protocol["kind"] != "split":
            fits.append((-1, plan.final_train, None))
        for index, train, ev in fits:
            if source.kind == "same":
                rows1 = _stage1_rows(
                    plan, train if ev is not None else None, s1_usable, has_va, labels["split"]
                )
                s1, s = _fit(make(), X[rows1], source.targets.y[rows1])
                seconds2 += s
            else:
                s1 = s1_fit
            stage1_fitted[(m, index)] = s1
            rated = np.intersect1d(train, np.flatnonzero(has_va))
            est2, s = _fit(TwoStageRegressor(s1, method=two_stage_method, prefit=True), X[rated], va[rated])
            seconds2 += s
            if ev is not None:
                pred2[[pos[int(r)] for r in ev]] = est2.predict(X[ev])
            progress.step(f"{ts_name} {'final' if ev is None else f'fold {index}'}")
        s1_rows = (
            len(source.rows)
            if source.kind == "store"
            else int(len(_stage1_rows(plan, None, s1_usable, has_va, labels["split"])))
        )
        extra = {
            "two_stage": {
                "method": two_stage_method,
                "stage1": {**source.description, "target": source.targets.description, "items": s1_rows},
                "stage2_items": int(len(np.intersect1d(plan.final_train, np.flatnonzero(has_va)))),
            }
        }
        rundir.save_model(
            models_dir,
            ts_name,
            est2,
            fitted_model_meta(ts_name, m, est2, len(plan.final_train), final_what, extra),
        )
        predictions[ts_name] = pred2
        results.append(
            ModelResult(
                ts_name,
                va_metrics(va[eval_rows], pred2) if len(eval_rows) else {},
                seconds2,
                float(np.mean(sizes)),
                len(eval_rows),
                describe_fitted(est2),
            )
        )

    # -- low-resource curve --------------------------------------------------------------------------
    curve_rows: list[dict] = []
    curve_summary: list[dict] = []
    if curve_spec is not None:
        for m in model_names:
            curve_rows += run_curve(
                model=m,
                make=lambda m=m: build_pipeline(
                    m, pca=pca, params=model_params.get(m), seed=seed, log_ranges=log_ranges
                ),
                X=X,
                va=va,
                plan=plan,
                spec=curve_spec,
                stage1={f.index: stage1_fitted[(m, f.index)] for f in plan.folds} if source else None,
                method=two_stage_method,
                on_fit=progress.step,
            )
        curve_summary = summarize_curve(curve_rows)

    # -- the run folder --------------------------------------------------------------------------------
    eval_ids = ids[eval_rows]
    eval_folds = [plan.eval_fold[int(r)] for r in eval_rows]
    split_col = [plan.eval_split] * len(eval_rows)
    extra_metrics = {"_curve": curve_summary} if curve_summary else {}
    default_model = write_outputs(
        out_path,
        results,
        predictions,
        va,
        eval_rows,
        eval_ids,
        eval_folds,
        split_col,
        labels["category"],
        extra_metrics,
    )
    if curve_rows:
        rundir.write_curve(out_path / "curve.csv", curve_rows)
    run = run_record(
        name or out_path.name,
        store_info,
        resolved,
        targets,
        plan.protocol,
        rundir.items_fingerprint(eval_ids, eval_folds, split_col),
        results,
        default_model,
        model_params,
        seed,
        plan.counts,
        pca=pca,
        log_probs=log_features,
        aux=aux,
    )
    if source is not None:
        run["two_stage"] = {
            "method": two_stage_method,
            "stage1": {**source.description, "target": source.targets.description},
        }
    if curve_spec is not None:
        run["curve"] = curve_spec.describe()
    rundir.write_json(out_path / "run.json", run)
    seconds = time.perf_counter() - t_start
    return RegressResult(out_path, run, results, plan.counts, curve_summary, seconds)
