"""Metrics, bootstrap CIs and paired tests for aligned systems (the numbers behind a report).

Every system is scored on exactly the same items: a row with an unknown truth, or without a prediction
from some system, is left out of that dimension for all systems (and counted in the notes).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from evoked.data.lexicon import Lexicon, normalize_word
from evoked.errors import ConfigError, LabelError
from evoked.evaluate import bootstrap as bs
from evoked.evaluate.category import category_accuracy, category_correct, category_word
from evoked.evaluate.distribution import DISTRIBUTION_METRICS, EPS, distribution_values
from evoked.evaluate.metrics import DIMENSIONS, regression_metrics
from evoked.evaluate.percategory import per_category
from evoked.evaluate.runs import Items, System
from evoked.runfolder import Run

log = logging.getLogger(__name__)

#: Metrics compared by the paired test against the reference, as (dimension or group, metric).
PAIRED = (
    ("valence", "r"),
    ("arousal", "r"),
    ("valence", "ccc"),
    ("arousal", "ccc"),
    ("valence", "mse"),
    ("arousal", "mse"),
    ("category", "accuracy"),
)


def category_setup(
    items: Items, lexicon: Lexicon, categories: Sequence[str] | None, notes: list[str]
) -> list[str] | None:
    """The category vocabulary for accuracy, or None (with a note saying why) when it cannot be scored."""
    known = sorted({c for c in items.category if c})
    if categories:
        cats = [normalize_word(c) for c in categories]
        lexicon.check(cats)  # the user named them: an unknown word is an error, not a skip
    else:
        if not known:
            notes.append("category accuracy skipped: no item has a category_true label")
            return None
        try:
            lexicon.check(known)
        except LabelError:
            missing = [c for c in known if c not in lexicon]
            notes.append(
                f"category accuracy skipped: the categories {', '.join(missing)} are not words of lexicon "
                f"{lexicon.name!r}; map them with --category-map LABEL=WORD or pass --lexicon PATH"
            )
            return None
        cats = known
    if len(cats) < 2:
        notes.append(f"category accuracy skipped: only one category ({', '.join(cats)})")
        return None
    return cats


def check_every_run_compared(runs: Sequence[Run], systems: Sequence[System], group: str) -> None:
    """Refuse a report that would leave a run out: every run must have items in the compared
    group (`group`: "" for the training side, else an eval set's name), never dropped silently."""
    inside = {s.run for s in systems}
    left = [r.name for r in runs if r.name not in inside]
    if not left:
        return

    def items(r: Run) -> str:
        side = len(next(iter(r.predictions.values())).ids) if r.predictions else 0
        sets = [f"eval set {n!r} ({len(next(iter(g.values())).ids)} items)" for n, g in r.evals.items()]
        return f"{r.name}: {side} training-side items" + (", " + ", ".join(sets) if sets else ", no eval set")

    what = f"eval set {group!r}" if group else "the training side"
    raise ConfigError(
        f"run(s) {', '.join(left)} share no evaluated items with {', '.join(sorted(inside))} ({what}), so "
        f"they cannot be compared ({'; '.join(items(r) for r in runs)}). Evaluate each run on its own "
        f"(`evoked evaluate RUN`), or evaluate every run on the same items: the same split or folds of one "
        "dataset, or the same eval store or dataset (`regress --eval STORE`, `finetune --eval DATASET`)"
    )


def _ranking(results: Sequence[dict]) -> tuple[str, Callable[[dict], tuple]]:
    """Rank by valence r; on a set without VA ratings (a categorical set) by category accuracy."""

    def value(x: float | None) -> float:
        return -np.inf if x is None or np.isnan(x) else float(x)

    if any(np.isfinite(e["valence"]["r"]) for e in results) or not any(e["category"] for e in results):
        return "valence Pearson r, highest first (ties: arousal r)", lambda e: (
            -value(e["valence"]["r"]),
            -value(e["arousal"]["r"]),
            e["system"],
        )
    return "category accuracy, highest first (no item has a valence rating)", lambda e: (
        -value((e["category"] or {}).get("accuracy")),
        e["system"],
    )


def resolve_reference(reference: str | None, names: Sequence[str], runs: dict[str, list[str]]) -> str | None:
    """A system name from ``RUN/MODEL`` (or ``RUN`` when that run has one model); None keeps the best."""
    if reference is None:
        return None
    if reference in names:
        return reference
    if reference in runs and len(runs[reference]) == 1:
        return runs[reference][0]
    raise ConfigError(
        f"--reference {reference!r} is not one of the systems: {', '.join(names)}; name a system as RUN/MODEL"
    )


def _scored_rows(items: Items, systems: Sequence[System], notes: list[str]) -> tuple[dict, dict, np.ndarray]:
    """Per dimension, the rows every system is scored on; what was dropped; which systems predict it.

    A row counts when its truth is known and every system has a prediction for it. A system that
    predicts nothing at all for a dimension is left out of that dimension instead (with a note).
    """
    preds = np.stack([s.pred for s in systems])  # (S, n, 2)
    active = np.isfinite(preds).any(axis=1)  # (S, 2)
    masks, dropped = {}, {}
    for k, dim in enumerate(DIMENSIONS):
        notes += [
            f"{s.name} predicts no {dim} at all; it is not scored on {dim}"
            for s, on in zip(systems, active[:, k])
            if not on
        ]
        known = ~np.isnan(items.true[:, k])
        no_pred = np.isnan(preds[:, :, k]) & known[None, :] & active[:, k, None]
        masks[dim] = known & ~no_pred.any(axis=0)
        dropped[dim] = {
            "unknown_truth": int((~known).sum()),
            "missing_prediction": int(no_pred.any(axis=0).sum()),
        }
        if dropped[dim]["unknown_truth"]:
            notes.append(
                f"{dropped[dim]['unknown_truth']} item(s) without a true {dim} are left out of its metrics"
            )
        for s, row in zip(systems, no_pred):
            if row.any():
                notes.append(
                    f"{s.name} has no {dim} prediction for {int(row.sum())} item(s); those items are left out of "
                    f"{dim} metrics for every system, to keep the comparison on the same items"
                )
    return masks, dropped, active


def _category_rows(
    items: Items,
    systems: Sequence[System],
    active: np.ndarray,
    cats: list[str],
    lexicon: Lexicon,
    nearest: str,
    notes: list[str],
) -> tuple[np.ndarray, dict]:
    """Rows scored for accuracy (a category in `cats`, a VA prediction from every system) and context."""
    keys = {category_word(lexicon, c) for c in cats}
    in_set = np.array([bool(c) and category_word(lexicon, c) in keys for c in items.category], dtype=bool)
    outside = int(((items.category != "") & ~in_set).sum())
    if outside:
        notes.append(f"{outside} item(s) whose category is not in --categories are left out of accuracy")
    preds = np.stack([s.pred for s, row in zip(systems, active) if row.all()])
    mask = in_set & ~np.isnan(preds).any(axis=(0, 2))
    oracle = category_accuracy(items.category[mask], items.true[mask], lexicon, cats, nearest)
    labels, counts = np.unique(items.category[mask].astype(str), return_counts=True)
    info = {
        "n": int(mask.sum()),
        "true_va_accuracy": oracle["accuracy"],
        "majority_accuracy": float(counts.max() / counts.sum()) if counts.size else float("nan"),
        "counts": {str(c): int(k) for c, k in zip(labels, counts)},
    }
    return mask, info


def _distribution_rows(
    items: Items, systems: Sequence[System], notes: list[str]
) -> tuple[dict, np.ndarray | None, dict | None]:
    """Predicted distributions aligned with the true categories ({system index: (n, K)}), rows, context."""
    if items.p_true is None:
        if any(s.p_pred is not None for s in systems):
            notes.append(
                "predicted distributions found but no true_p_<category> columns: distribution metrics skipped"
            )
        return {}, None, None
    aligned = {}
    for i, s in enumerate(systems):
        if s.p_pred is None:
            continue
        if set(s.pred_categories) != set(items.true_categories):
            notes.append(
                f"{s.name}: predicted distribution over {', '.join(s.pred_categories)} does not match the "
                f"true one over {', '.join(items.true_categories)}; distribution metrics skipped for it"
            )
            continue
        aligned[i] = s.p_pred[:, [s.pred_categories.index(c) for c in items.true_categories]]
    mask = ~np.isnan(items.p_true).any(axis=1)
    for p in aligned.values():
        mask &= ~np.isnan(p).any(axis=1)
    info = {
        "categories": list(items.true_categories),
        "eps": EPS,
        "systems": len(aligned),
        "n": int(mask.sum()),
    }
    return aligned, mask, info


def _paired_tests(results: list[dict], boot: list[dict], ref: int, level: float) -> None:
    """Fill each result's ``vs_reference`` with the paired bootstrap test against result `ref`."""
    for i, entry in enumerate(results):
        if i == ref:
            continue
        tests = {}
        for group, metric in PAIRED:
            if group in boot[i] and group in boot[ref]:
                tests[f"{group}_{metric}"] = bs.paired_difference(
                    boot[i][group][metric],
                    boot[ref][group][metric],
                    entry[group][metric],
                    results[ref][group][metric],
                    level,
                )
        entry["vs_reference"] = tests


@dataclass
class _Rows:
    """Which rows each system is scored on, per dimension, for accuracy and for distributions."""

    masks: dict[str, np.ndarray]
    active: np.ndarray  # (S, 2): does system s predict dimension k at all
    cats: list[str] | None
    cat_mask: np.ndarray | None
    dist_pred: dict[int, np.ndarray]
    dmask: np.ndarray | None


def _add(blocks: list[np.ndarray], x: np.ndarray) -> slice:
    """Append columns whose resampled sums give CIs (all in one matrix product); their slice."""
    start = sum(b.shape[1] for b in blocks)
    blocks.append(x)
    return slice(start, start + x.shape[1])


def _score(
    i: int, s: System, items: Items, rows: _Rows, lexicon: Lexicon, nearest: str, blocks: list[np.ndarray]
) -> tuple[dict, dict[str, slice]]:
    """System `i`'s point estimates, and the slices of its bootstrap columns by metric group."""
    entry: dict = {"system": s.name, "run": s.run, "model": s.model, "category": None, "distribution": None}
    sl: dict[str, slice] = {}
    own: dict[str, np.ndarray] = {}
    for k, dim in enumerate(DIMENSIONS):
        m = own[dim] = rows.masks[dim] & rows.active[i, k]
        entry[dim] = regression_metrics(items.true[m, k], s.pred[m, k])
        sl[dim] = _add(blocks, bs.va_columns(np.where(m, items.true[:, k], np.nan), s.pred[:, k]))
    entry["per_category"] = per_category(items.true, items.category, s.pred, own) or None
    cm, cats = rows.cat_mask, rows.cats
    if cm is not None and cats is not None and rows.active[i].all():
        entry["category"] = category_accuracy(items.category[cm], s.pred[cm], lexicon, cats, nearest)
        correct = np.zeros(len(items))
        correct[cm], _ = category_correct(items.category[cm], s.pred[cm], lexicon, cats, nearest)
        sl["category"] = _add(blocks, bs.mean_columns(correct, cm))
    if i in rows.dist_pred and rows.dmask is not None and items.p_true is not None:
        dm = rows.dmask
        values = distribution_values(
            np.where(dm[:, None], items.p_true, 1.0), np.where(dm[:, None], rows.dist_pred[i], 1.0)
        )
        entry["distribution"] = {"n": int(dm.sum())}
        for name, v in values.items():
            entry["distribution"][name] = float(v[dm].mean()) if dm.any() else float("nan")
            sl[f"distribution.{name}"] = _add(blocks, bs.mean_columns(v, dm))
    return entry, sl


def _bootstrap_cis(
    results: list[dict], slices: list[dict[str, slice]], sums: np.ndarray, level: float
) -> list[dict]:
    """Fill each result's ``ci``s from the resampled column `sums`; return the resampled statistics
    per system (for the paired tests)."""
    boot = []
    for entry, sl in zip(results, slices):
        b = {dim: bs.va_from_sums(sums[:, sl[dim]]) for dim in DIMENSIONS}
        if "category" in sl:
            b["category"] = {"accuracy": bs.mean_from_sums(sums[:, sl["category"]])}
        prefix = "distribution."
        dist = {
            k[len(prefix) :]: bs.mean_from_sums(sums[:, v]) for k, v in sl.items() if k.startswith(prefix)
        }
        if dist:
            b["distribution"] = dist
        for group, stats in b.items():
            entry[group]["ci"] = {name: list(bs.percentile_ci(v, level)) for name, v in stats.items()}
        boot.append(b)
    return boot


_HIGHER_IS_BETTER = (
    dict.fromkeys(("mse", "rmse", "mae"), False)
    | dict.fromkeys(("r", "spearman", "ccc", "r2", "accuracy"), True)
    | DISTRIBUTION_METRICS
)


def compare_systems(
    items: Items,
    systems: Sequence[System],
    *,
    lexicon: Lexicon,
    nearest: str = "cosine",
    categories: Sequence[str] | None = None,
    bootstrap: int = 1000,
    seed: int = 0,
    reference: str | None = None,
    level: float = 0.95,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Score every system; return the ranked per-system results and what the report says about them.

    `reference` is an already resolved system name (see `resolve_reference`); without it the best
    system (highest valence r) is the reference of the paired tests.
    """
    notes: list[str] = []
    masks, dropped, active = _scored_rows(items, systems, notes)
    cats = category_setup(items, lexicon, categories, notes)
    category_info: dict = {"lexicon": lexicon.describe(), "nearest": nearest, "categories": cats}
    cat_mask = None
    if cats is not None:
        cat_mask, info = _category_rows(items, systems, active, cats, lexicon, nearest, notes)
        category_info.update(info)
    dist_pred, dmask, dist_info = _distribution_rows(items, systems, notes)
    rows = _Rows(masks, active, cats, cat_mask, dist_pred, dmask)

    blocks: list[np.ndarray] = []
    scored = [_score(i, s, items, rows, lexicon, nearest, blocks) for i, s in enumerate(systems)]
    results, slices = [e for e, _ in scored], [sl for _, sl in scored]
    t0 = time.perf_counter()
    boot: list[dict] = []
    if bootstrap > 0:
        progress = (lambda done: on_progress(done, bootstrap)) if on_progress else None
        sums = bs.resampled_sums(np.concatenate(blocks, axis=1), bootstrap, seed, on_progress=progress)
        boot = _bootstrap_cis(results, slices, sums, level)
    elapsed = time.perf_counter() - t0
    msg = "bootstrap: %d resamples x %d systems x %d items in %.2f s"
    log.info(msg, bootstrap, len(systems), len(items), elapsed)

    # rank, then test every system against the reference on the same resamples
    ranking, rank_key = _ranking(results)
    order = sorted(range(len(results)), key=lambda i: rank_key(results[i]))
    ref_index = order[0] if reference is None else [s.name for s in systems].index(reference)
    for entry in results:
        entry["vs_reference"] = None
    if boot:
        _paired_tests(results, boot, ref_index, level)
    return {
        "systems": [{"rank": rank, **results[i]} for rank, i in enumerate(order, 1)],
        "reference": systems[ref_index].name,
        "reference_is": "best" if reference is None else "given",
        "ranking": ranking,
        "bootstrap": {
            "resamples": int(bootstrap),
            "seed": int(seed),
            "level": level,
            "interval": "percentile",
            "resampling": "items with replacement; the same resamples for every system (paired)",
            "p_value": "two-sided, 2 * min(#(d <= 0) + 1, #(d >= 0) + 1) / (B + 1) over bootstrap differences d",
            "seconds": round(elapsed, 3),
        },
        "scored": {
            "valence": int(masks["valence"].sum()),
            "arousal": int(masks["arousal"].sum()),
            "category": int(cat_mask.sum()) if cat_mask is not None else 0,
            "dropped": dropped,
        },
        "category": category_info,
        "distribution": dist_info,
        "higher_is_better": dict(_HIGHER_IS_BETTER),
        "notes": notes,
    }
