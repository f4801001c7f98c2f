"""`evaluate`: one comparison report for the systems (RUN/MODEL) of several run directories.

The public API behind ``evoked evaluate``. It reads the runs, refuses runs made on different items,
scores every system with bootstrap CIs and paired tests against a reference, and (given `out`) writes
report.md, report.json, report.csv and PNG plots.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evoked import __version__
from evoked.clock import utc_now
from evoked.data.lexicon import CategoryMap, Lexicon, load_lexicon
from evoked.errors import ConfigError
from evoked.evaluate import tables
from evoked.evaluate.bootstrap import check_resamples
from evoked.evaluate.compare import check_every_run_compared, compare_systems, resolve_reference
from evoked.evaluate.evalsets import eval_sets, membership_notes, unique_name
from evoked.evaluate.markdown import markdown_report, protocol_text
from evoked.evaluate.metrics import DIMENSIONS
from evoked.evaluate.plots import FORMATS
from evoked.evaluate.runs import Items, System, align_systems
from evoked.runfolder import CURVE_METRICS, Run, items_fingerprint, read_run, write_json

log = logging.getLogger(__name__)

NEAREST = ("cosine", "euclidean")
#: Every figure a report may draw; saved as FIGURE.png/.pdf/.svg (the formats asked for)
FIGURES = (
    "scatter_valence", "scatter_arousal", "va_plane", "residuals", "confusion", "forest", "curve", "training",
)  # fmt: skip
#: Every file a report may write; the ones a new report does not write are removed from `out`.
REPORT_FILES = ("report.md", "report.json", "report.csv", "report.tex") + tuple(
    f"{name}.{ext}" for name in FIGURES for ext in FORMATS
)
MAX_SCATTER_PANELS = 12
MAX_PLANE_SYSTEMS = 3


@dataclass(frozen=True)
class PlotOptions:
    """What the figures show: `systems` (names or patterns, in order; None = the default choice,
    `selection.choose_systems`) and the file `formats` of every figure."""

    systems: tuple[str, ...] | None = None
    formats: tuple[str, ...] = ("png",)

    @classmethod
    def build(cls, systems: Sequence[str] | None, formats: Sequence[str] | str | None) -> PlotOptions:
        if isinstance(formats, str):
            formats = [f.strip() for f in formats.split(",") if f.strip()]
        fmts = tuple(dict.fromkeys(f.lower().lstrip(".") for f in (formats or ["png"])))
        bad = [f for f in fmts if f not in FORMATS]
        if bad or not fmts:
            raise ConfigError(
                f"--format {','.join(bad) or '(empty)'}: choose from {', '.join(FORMATS)} (comma-separated, e.g. png,pdf)"
            )
        return cls(tuple(systems) if systems else None, fmts)


def evaluate(
    run_dirs: Sequence[str | Path],
    out: str | Path | None = None,
    lexicon: str = "nrc",
    nearest: str = "cosine",
    bootstrap: int = 1000,
    seed: int = 0,
    reference: str | None = None,
    *,
    categories: Sequence[str] | None = None,
    category_map: CategoryMap | None = None,
    plots: bool = True,
    systems: Sequence[str] | None = None,
    formats: Sequence[str] | str = ("png",),
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Compare every model of every run directory on the same items; return the report as a dict.

    Systems are ranked by valence Pearson r. CIs are 95% percentile bootstrap intervals over
    `bootstrap` resamples of the items (0 turns CIs and tests off); every system is tested against
    `reference` (``RUN/MODEL``; default: the best one). Category accuracy maps each predicted VA point
    to the nearest of `categories` (default: the distinct true labels) in `lexicon` by `nearest`
    distance. With `out`, the report files are written there (existing report files are replaced):
    the figures show `systems` (names or shell patterns, in that order; default: the best of each
    model family and every fine-tuned network) in each of `formats` (png, pdf, svg).
    """
    if not run_dirs:
        raise ConfigError("no run directories given; pass one or more runs/NAME directories")
    if nearest not in NEAREST:
        raise ConfigError(f"--nearest {nearest!r} is not one of {', '.join(NEAREST)}")
    check_resamples(bootstrap)
    paths = [Path(p) for p in run_dirs]
    seen = [p.resolve() for p in paths]
    twice = sorted({str(p) for p, r in zip(paths, seen) if seen.count(r) > 1})
    if twice:
        raise ConfigError(f"run director{'ies' if len(twice) > 1 else 'y'} {', '.join(twice)} given twice")
    lex = load_lexicon(lexicon, category_map)
    _check_out(out)
    plot_options = PlotOptions.build(systems, formats)
    return evaluate_runs(
        [read_run(p) for p in paths],
        plot_options=plot_options,
        out=out,
        lexicon=lex,
        nearest=nearest,
        bootstrap=int(bootstrap),
        seed=seed,
        reference=reference,
        categories=categories,
        plots=plots,
        on_progress=on_progress,
    )


def evaluate_predictions(
    files: Sequence[str | Path],
    truth: str,
    out: str | Path | None = None,
    lexicon: str = "nrc",
    *,
    category_map: CategoryMap | None = None,
    va_range: str | Sequence[float] | None = None,
    **kw: Any,
) -> dict:
    """Score predictions files (``evoked predict`` output, or any predictions.csv) against `truth`.

    `truth` is ``DATASET`` or ``DATASET:SPLIT``; rows join to its items by id, else by resolved path
    (`evoked.evaluate.truth`). Several files are compared with each other on the same items. Truths
    outside `va_range` (default 1,9) and predictions on another scale are refused.
    """
    from evoked.data import load_dataset
    from evoked.data.va_range import parse_va_range
    from evoked.evaluate.evalsets import parse_eval_spec
    from evoked.evaluate.truth import predictions_run

    if not files:
        raise ConfigError("--truth scores predictions files: pass --predictions P.csv")
    check_resamples(kw.get("bootstrap", 0))
    scale = parse_va_range(va_range)
    spec, split = parse_eval_spec(str(truth))
    m = load_dataset(spec)
    if not m.has_va.any():
        raise ConfigError(
            f"--truth {truth}: the dataset {m.name!r} has no VA ratings; give a dataset with valence/arousal"
        )
    lex = load_lexicon(lexicon, category_map)
    kw["plot_options"] = PlotOptions.build(kw.pop("systems", None), kw.pop("formats", None))
    runs, used = [], set[str]()
    for f in files:
        name = unique_name(Path(f).stem, used)  # two files named alike stay two systems
        used.add(name)
        runs.append(predictions_run(f, m, split, name=name, va_range=scale))
    _check_out(out)
    notes = [n for r in runs for n in r.meta["notes"]]
    truth_info = {"truth": {"dataset": m.name, "spec": spec, "split": split}}
    return evaluate_runs(runs, out=out, lexicon=lex, extra_notes=notes, extra=truth_info, **kw)


def _check_out(out: str | Path | None) -> None:
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a directory for the report")


def evaluate_runs(
    runs: Sequence[Run],
    *,
    lexicon: Lexicon,
    out: str | Path | None = None,
    nearest: str = "cosine",
    bootstrap: int = 1000,
    seed: int = 0,
    reference: str | None = None,
    categories: Sequence[str] | None = None,
    plots: bool = True,
    plot_options: PlotOptions = PlotOptions(),
    on_progress: Callable[[int, int], None] | None = None,
    extra_notes: Sequence[str] = (),
    extra: Mapping | None = None,
) -> dict:
    """`evaluate` on runs already read: the training side, then every eval set (docs/evaluate.md).

    The training side (rows with an empty ``eval``) is compared as always. Each eval set, matched
    across runs by its items (`evalsets.eval_sets`), gets its own ranked comparison in
    ``report["eval_sets"]``. When the runs' training sides cannot be compared (other items) but they
    share eval sets, the training side is left out with the reason in the notes; the top level of
    the report is then the first eval set (``report["eval_set"]`` names it, "" = training side).
    """
    kw = dict(
        lexicon=lexicon,
        nearest=nearest,
        categories=categories,
        bootstrap=check_resamples(bootstrap),
        seed=seed,
        on_progress=on_progress,
    )
    sets = eval_sets(runs)
    notes: list[str] = []
    top = None
    side = [r for r in runs if r.predictions]
    if side:
        try:
            top = _compare_group(side, reference=reference, given_reference=True, **kw)
        except ConfigError as e:
            if not sets:
                raise
            notes.append(f"training side not compared (each run's own rows): {e}")
        else:
            top["report"]["eval_set"] = ""
    elif not sets:
        raise ConfigError("the runs have no prediction rows to compare")
    subs = []
    for es in sets:
        try:
            group = _compare_group(es.runs(), reference=reference, given_reference=False, **kw)
        except ConfigError as e:
            raise ConfigError(f"eval set {es.name!r}: {e}") from e
        sub = group["report"]
        sub.update(eval_set=es.name, names=es.names, fingerprint=es.fingerprint)
        sub["notes"] = membership_notes(es, runs) + sub["notes"]
        if top is None and "skipped" not in sub:
            top = group
        else:
            subs.append(sub)
    if top is None:
        raise ConfigError(
            "nothing to score: the training sides cannot be compared and no eval set has ratings ("
            + "; ".join(notes + [f"{s['eval_set']}: {s['skipped']}" for s in subs])
            + ")"
        )
    check_every_run_compared(runs, top["systems"], top["report"]["eval_set"])  # none left out silently
    if top["report"]["eval_set"] == "":
        _add_repeats(top["report"], runs)
    report = {
        "evoked_version": __version__,
        "created": utc_now(),
        **top["report"],
        "runs": [_run_summary(r) for r in runs],
        "curves": curve_summary(runs),
        "training": training_summary(runs),
        "eval_sets": subs,
    }
    report["notes"] = report["notes"] + notes + list(extra_notes) + _protocol_notes(runs)
    report.update(extra or {})
    if out is not None:
        report["files"] = write_report(
            report, Path(out), top["items"], top["systems"], lexicon, plots=plots, options=plot_options
        )
    return report


def _add_repeats(group: dict, runs: Sequence[Run]) -> None:
    """Each repeated system's scores over its repeats (`evaluate.repeats`), beside its bootstrap CIs."""
    from evoked.evaluate.repeats import repeat_summary

    over = repeat_summary(runs)
    for entry in group["systems"]:
        entry["repeats"] = over.get(entry["system"])


def _compare_group(runs: Sequence[Run], *, reference: str | None, given_reference: bool, **kw) -> dict:
    """Align and score one group (the training side or one eval set): {report, items, systems}.

    `reference` must name a system of the training side; an eval set uses it when it holds that
    system, else its best one.
    """
    items, systems, notes = align_systems(runs)
    names = [s.name for s in systems]
    per_run = {r.name: [f"{r.name}/{m}" for m in r.predictions] for r in runs}
    try:
        ref = resolve_reference(reference, names, per_run)
    except ConfigError:
        if given_reference:
            raise
        ref = None
        notes.append(f"--reference {reference} has no predictions here; the best system is the reference")
    if not np.isfinite(items.true).any() and not (items.category != "").any():
        return {
            "report": {
                "skipped": "no item has a rating: predictions only, nothing to score",
                "items": {"n": len(items)},
                "systems": [{"system": s.name, "run": s.run, "model": s.model} for s in systems],
                "notes": notes,
            },
            "items": items,
            "systems": systems,
        }
    result = compare_systems(items, systems, reference=ref, **kw)
    report = {
        **{k: v for k, v in result.items() if k not in ("notes", "scored")},
        "items": _items_summary(items, result),
        "notes": notes + result["notes"],
    }
    return {"report": report, "items": items, "systems": systems}


# ---------------------------------------------------------------------------------------------- summaries


def _items_summary(items: Items, result: dict) -> dict:
    splits, split_counts = np.unique(items.split.astype(str), return_counts=True)
    folds, fold_counts = np.unique(items.fold, return_counts=True)
    return {
        "n": len(items),
        "fingerprint": items_fingerprint(items.ids, items.fold, items.split),
        "splits": {str(s) or "(none)": int(c) for s, c in zip(splits, split_counts)},
        "folds": {str(int(f)): int(c) for f, c in zip(folds, fold_counts)},
        "with_valence": int(np.isfinite(items.true[:, 0]).sum()),
        "with_arousal": int(np.isfinite(items.true[:, 1]).sum()),
        "with_category": int((items.category != "").sum()),
        "with_distribution": int((~np.isnan(items.p_true).any(axis=1)).sum())
        if items.p_true is not None
        else 0,
        "scored": result["scored"],
    }


def _run_summary(run: Run) -> dict:
    m = run.meta
    keys = (
        "kind",
        "dataset",
        "protocol",
        "target",
        "features",
        "store",
        "created",
        "items_sha256",
        "versions",
    )
    return {
        "name": run.name,
        "path": str(run.path),
        **{k: m.get(k) for k in keys},
        "models": list(run.predictions),
    }


def _protocol_notes(runs: Sequence[Run]) -> list[str]:
    texts = {protocol_text(r.meta.get("protocol")) for r in runs}
    datasets = {str(r.meta.get("dataset")) for r in runs}
    notes = []
    if len(texts) > 1:
        notes.append(
            "the runs record different protocols (" + "; ".join(sorted(texts)) + ") on the same items"
        )
    if len(datasets) > 1:
        notes.append(
            "the runs name different datasets (" + ", ".join(sorted(datasets)) + ") for the same items"
        )
    return notes


#: run.json keys that differ between runs of one configuration (outcomes, bookkeeping, the seed)
_NOT_SETTINGS = frozenset(
    {
        "name", "models", "created", "seconds", "fit_seconds", "history", "versions", "evoked_version",
        "items_sha256", "seed", "seeds", "epochs_run", "best_epoch", "best_val_r_valence", "stopped_early",
        "n_items", "n_labels", "n_train", "counts", "excluded", "bad_images", "target_missing", "checkpoint",
        "init", "device", "selection", "parameters", "freeze_bn_reason", "batch_norm", "inherited", "evals",
        "default_model", "model_info", "curve", "metrics", "out", "path",
    }
)  # fmt: skip


def _settings(meta: Mapping, prefix: str = "") -> dict[str, str]:
    """run.json flattened to ``a.b -> value`` without the keys of `_NOT_SETTINGS` (at any depth)."""
    out: dict[str, str] = {}
    for k, v in meta.items():
        if k in _NOT_SETTINGS:
            continue
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_settings(v, key + "."))
        else:
            out[key] = v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
    return out


def _shown(value: str) -> str:
    return value if len(value) <= 40 else value[:37] + "..."


def curve_summary(runs: Sequence[Run]) -> list[dict]:
    """Low-resource curves: mean and sample std over seeds per (series, setting, n_labels).

    A series is ``RUN/MODEL`` when one run holds the whole curve (regress --n-labels). When a model's
    curve is spread over several runs that each hold one n_labels (one fine-tuning run per n_labels
    and seed), runs that differ in their seed alone are pooled into one series, ``MODEL (K runs)``;
    runs whose other settings differ (run.json, outcomes aside: e.g. --freeze-bn) make separate
    series named by what differs, ``MODEL [freeze_bn=true] (K runs)``.
    """
    rows_of: dict[tuple[str, str], list[tuple[Run, dict]]] = {}
    for run in runs:
        for row in run.curve:
            rows_of.setdefault((row["model"], row["setting"]), []).append((run, row))
    out = []
    for (model, setting), rows in rows_of.items():
        per_run: dict[str, set] = {}
        for run, row in rows:
            per_run.setdefault(run.name, set()).add(row["n_labels"])
        pooled = len(per_run) > 1 and all(len(v) == 1 for v in per_run.values())
        series_of: dict[str, str] = {run.name: f"{run.name}/{model}" for run, _ in rows}
        if pooled:
            configs = {run.name: _settings(run.meta) for run, _ in rows}
            keys = sorted({k for c in configs.values() for k in c})
            differing = [k for k in keys if len({c.get(k, "-") for c in configs.values()}) > 1]
            groups: dict[tuple, list[str]] = {}
            for name, c in configs.items():
                groups.setdefault(tuple(c.get(k, "-") for k in differing), []).append(name)
            for values, names in groups.items():
                label = ", ".join(f"{k}={_shown(v)}" for k, v in zip(differing, values))
                series = f"{model} [{label}] ({len(names)} runs)" if label else f"{model} ({len(names)} runs)"
                series_of.update({n: series for n in names})
        cells: dict[tuple[str, int], list[dict]] = {}
        for run, row in rows:
            cells.setdefault((series_of[run.name], row["n_labels"]), []).append(row)
        for (series, n_labels), group in cells.items():
            entry = {"system": series, "setting": setting, "n_labels": n_labels, "seeds": len(group)}
            for m in CURVE_METRICS:
                v = np.array([r[m] for r in group], dtype=float)
                v = v[np.isfinite(v)]
                entry[f"{m}_mean"] = float(v.mean()) if v.size else float("nan")
                entry[f"{m}_std"] = float(v.std(ddof=1)) if v.size > 1 else 0.0 if v.size else float("nan")
            out.append(entry)
    return sorted(out, key=lambda e: (e["system"], e["setting"], e["n_labels"]))


def training_summary(runs: Sequence[Run]) -> list[dict]:
    """Each fine-tuning run's per-epoch history (run.json ``history``): system, best epoch, epochs."""
    out = []
    for run in runs:
        history = run.meta.get("history")
        if not isinstance(history, list) or not history:
            continue
        keys = ("epoch", "train_loss", "val_r_valence", "val_r_arousal", "improved")
        rows = [{k: h.get(k) for k in keys} for h in history if isinstance(h, Mapping) and "epoch" in h]
        if rows:
            model = next(iter(run.predictions), None) or next(iter(run.meta.get("models") or []), "")
            out.append(
                {"system": f"{run.name}/{model}", "best_epoch": run.meta.get("best_epoch"), "history": rows}
            )
    return out


# ---------------------------------------------------------------------------------------------- writing


def write_report(
    report: dict,
    out: Path,
    items: Items,
    systems: Sequence[System],
    lexicon: Lexicon,
    plots: bool = True,
    options: PlotOptions = PlotOptions(),
) -> dict[str, str]:
    """Write report.md/json/csv/tex and the figures into `out`; remove report files this report does not make."""
    from evoked.evaluate.latex import latex_report

    out.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    written: set[str] = set()
    if plots:
        files.update(_write_plots(report, out, items, systems, lexicon, options))
        written = {f"{Path(f).stem}.{ext}" for f in files.values() for ext in options.formats}
    files.update({"markdown": "report.md", "json": "report.json", "csv": "report.csv", "latex": "report.tex"})
    headers, rows = tables.csv_rows(report)
    rows = [[*r, report.get("eval_set", "")] for r in rows]
    for sub in report.get("eval_sets", []):
        if "skipped" not in sub:
            rows += [[*r, sub["eval_set"]] for r in tables.csv_rows(sub)[1]]
    with (out / "report.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow([*headers, "eval_set"])
        w.writerows([["" if isinstance(c, float) and math.isnan(c) else c for c in r] for r in rows])
    report["files"] = files
    (out / "report.md").write_text(markdown_report(report), encoding="utf-8")
    (out / "report.tex").write_text(latex_report(report), encoding="utf-8")
    write_json(out / "report.json", report)
    for name in REPORT_FILES:
        if name not in files.values() and name not in written and (out / name).is_file():
            (out / name).unlink()  # a stale plot from an earlier report would contradict this one
    log.info("report written to %s", out)
    return files


def _write_plots(
    report: dict, out: Path, items: Items, systems: Sequence[System], lexicon, options: PlotOptions
) -> dict[str, str]:
    """Every figure of the report in `options.formats`; returns {figure: file of its first format}."""
    from evoked.evaluate import diagnostics, plots
    from evoked.evaluate.selection import choose_systems, colors_for, merge_identical, system_color

    ranked = report["systems"]
    kinds = {r["name"]: str(r.get("kind") or "") for r in report["runs"]}
    groups, same_notes = merge_identical([s["system"] for s in ranked], {s.name: s.pred for s in systems})
    report["notes"].extend(same_notes)
    chosen = choose_systems(ranked, kinds, options.systems)
    group_of = {m: g for g in groups for m in g.members}
    shown = list({id(group_of[n]): group_of[n] for n in chosen}.values())[:MAX_SCATTER_PANELS]
    if len(chosen) > MAX_SCATTER_PANELS:
        report["notes"].append(
            f"the figures show the first {MAX_SCATTER_PANELS} of the {len(chosen)} systems chosen"
        )
    if options.systems is None and len(shown) < len(groups):
        report["notes"].append(
            f"the figures show {len(shown)} of {len(groups)} systems: the best of each model family and every "
            "fine-tuned network (--systems chooses others)"
        )
    # a system's own colour (its name's hash); the systems drawn side by side are kept apart
    colors = {s["system"]: system_color(s["system"]) for s in ranked}
    colors.update(colors_for([g.members[0] for g in shown]))
    colors.update({g.label: colors[g.members[0]] for g in shown})  # a merged system: its first member's
    fmt = options.formats
    files: dict[str, str] = {}

    def saved(key: str, path: Path) -> None:
        files[key] = path.name

    labels = items.category.astype(str) if (items.category != "").any() else None
    r_of = {s["system"]: s for s in ranked}
    for k, dim in enumerate(DIMENSIONS):
        if not report["items"]["scored"][dim]:
            report["notes"].append(f"no scatter plot of {dim}: no item has a true {dim} and predictions")
            continue
        scored = np.full(len(items), np.nan)
        keep = np.isfinite(items.true[:, k])
        scored[keep] = items.true[keep, k]
        panels = [(g.label, g.pred[:, k], r_of[g.members[0]][dim]["r"]) for g in shown]
        saved(
            f"scatter_{dim}",
            plots.scatter_plot(out / f"scatter_{dim}.png", dim, scored, panels, labels, fmt, colors),
        )
    cats = report["category"].get("categories")
    anchors = {c: tuple(lexicon.va(c)) for c in cats} if cats else None
    plane = shown[:MAX_PLANE_SYSTEMS]
    saved(
        "va_plane",
        plots.va_plane_plot(
            out / "va_plane.png", items.true, [(g.label, g.pred) for g in plane], labels=labels, anchors=anchors,
            anchor_source=f"lexicon {lexicon.name}", n_systems=len(groups), formats=fmt,
        ),
    )  # fmt: skip
    if labels is not None and any(report["items"]["scored"].values()):
        path = diagnostics.residual_plot(
            out / "residuals.png", items.true, labels, [(g.label, g.pred) for g in shown], colors, fmt
        )
        saved("residuals", path)
    with_conf = [
        (g.label, r_of[g.members[0]]["category"]["confusion"])
        for g in shown
        if r_of[g.members[0]]["category"]
    ]
    if cats and with_conf:
        how = f"{report['category']['nearest']}-nearest in lexicon {lexicon.name}"
        saved(
            "confusion",
            diagnostics.confusion_plot(out / "confusion.png", with_conf[:MAX_SCATTER_PANELS], cats, how, fmt),
        )
    saved("forest", diagnostics.forest_plot(out / "forest.png", ranked, colors, fmt))
    if report["curves"]:
        saved("curve", plots.curve_plot(out / "curve.png", report["curves"], fmt))
    if report.get("training"):
        runs = [(t["system"], t["history"]) for t in report["training"]]
        colors.update(colors_for([n for n, _ in runs]))
        saved("training", diagnostics.training_plot(out / "training.png", runs, colors, fmt))
    return files


def console_table(report: dict) -> str:
    """The ranked table for a terminal (two decimals, fewer columns than report.md)."""
    headers, rows = tables.ranked_rows(report, digits=2, compact=True)
    return tables.plain(headers, rows)


def group_title(report: dict) -> str:
    """How a report (or one of its eval sets) names the items it scores."""
    name = report.get("eval_set", "")
    truth = report.get("truth")
    if truth and not name:  # a predictions file scored against a dataset
        return truth["dataset"] + (f", {truth['split']} split" if truth.get("split") else "")
    return "training side" if not name else f"eval set {name}"
