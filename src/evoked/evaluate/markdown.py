"""report.md: the ranked table with CIs, the paired tests, the protocol, the items, notes and plots."""

from __future__ import annotations

import json
import math

from evoked.evaluate import tables
from evoked.evaluate.distribution import DISTRIBUTION_LABELS, DISTRIBUTION_METRICS
from evoked.evaluate.metrics import DIMENSIONS
from evoked.evaluate.percategory import per_category_rows
from evoked.runfolder import CURVE_METRICS


def protocol_text(p: object) -> str:
    """A run.json protocol in words."""
    if not isinstance(p, dict):
        return "not recorded"
    if p.get("kind") == "cv":
        return f"{p.get('folds', '?')}-fold cross-validation (seed {p.get('seed', '?')}), out-of-fold predictions"
    if p.get("kind") == "split":
        train = p.get("train")
        train = "+".join(train) if isinstance(train, list) else str(train)
        return f"trained on {train}, evaluated on {p.get('eval', '?')}"
    return json.dumps(p)


def markdown_report(report: dict) -> str:
    """report.md: the ranked table with CIs, the tests, the protocol, the items, notes and plots."""
    b = report["bootstrap"]
    it = report["items"]
    systems = report["systems"]
    runs = report["runs"]
    dataset = ", ".join(sorted({str(r["dataset"]) for r in runs}))
    protocols = "; ".join(sorted({protocol_text(r["protocol"]) for r in runs}))
    lines = [
        "# Evaluation report",
        "",
        f"{len(systems)} system(s) from {len(runs)} run(s), scored on the same {it['n']} items of {dataset} "
        f"({protocols}"
        + (f"; eval set {report['eval_set']}" if report.get("eval_set") else "")
        + f"). Created {report['created']} by evoked {report['evoked_version']}.",
        "",
        f"Ranked by **{report['ranking']}**. "
        + (
            f"Brackets are {b['level']:.0%} {b['interval']} bootstrap intervals from {b['resamples']} resamples "
            f"of the items (seed {b['seed']}), the same resamples for every system. "
            f"p r_v, p r_a (p acc): paired bootstrap test of the difference in r (accuracy) against "
            f"**{report['reference']}** "
            f"({'the best system' if report['reference_is'] == 'best' else 'the chosen reference'}), "
            f"two-sided, not corrected for multiple comparisons; the smallest p with {b['resamples']} resamples "
            f"is {2 / (b['resamples'] + 1):.3f}."
            if b["resamples"]
            else "No bootstrap (--bootstrap 0): no intervals and no tests."
        ),
        "",
        "## Ranking",
        "",
        tables.markdown(*tables.ranked_rows(report)),
        "",
    ]
    lines += _eval_sets_section(report)
    lines += _cross_dataset_section(report)
    lines += _repeats_section(report)
    lines += _paired_section(report)
    lines += _category_section(report)
    lines += _per_category_section(report)
    lines += _distribution_section(report)
    lines += _all_metrics_section(report)
    lines += _curve_section(report)
    lines += _training_section(report)
    files = report.get("files", {})
    plots = [
        ("forest", "Every system's r with its 95% interval"),
        ("scatter_valence", "Predicted vs true valence"),
        ("scatter_arousal", "Predicted vs true arousal"),
        ("va_plane", "Truth and predictions on the valence-arousal plane"),
        ("residuals", "Mean residual by true category"),
        ("confusion", "VA -> nearest category confusion matrices"),
    ]
    if any(k in files for k, _ in plots):
        lines += ["## Plots", ""]
        lines += [f"![{title}]({files[k]})\n" for k, title in plots if k in files]
    lines += _items_section(report)
    lines += ["## Runs", ""]
    for r in runs:
        lines.append(
            f"- **{r['name']}** (`{r['path']}`): {r['kind'] or 'kind not recorded'} on {r['dataset']}; "
        )
        lines[-1] += protocol_text(r["protocol"])
        if r.get("target"):
            lines[-1] += f"; target {json.dumps(r['target'])}"
        if r.get("features"):
            lines[-1] += f"; features {', '.join(map(str, r['features']))}"
        lines[-1] += f"; models {', '.join(r['models'])}"
        if r.get("created"):
            lines[-1] += f"; created {r['created']}"
    lines.append("")
    if report["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


def _per_category_section(report: dict) -> list[str]:
    headers, rows = per_category_rows(report["systems"])
    if not rows:
        return []
    return [
        "## Per category",
        "",
        "Within each true category: Pearson r (does the system order the items of one category?), MSE, "
        "and bias = mean predicted minus mean rated (positive: the system rates the category too high).",
        "",
        tables.markdown(headers, rows, "ll" + "r" * (len(headers) - 2)),
        "",
    ]


def _cross_dataset_section(report: dict) -> list[str]:
    cross = tables.cross_dataset_rows(report)
    if not cross:
        return []
    return ["## Across scored sets", "", "Pearson r valence / arousal, one column per scored set.", "",
            tables.markdown(*cross), ""]  # fmt: skip


def _repeats_section(report: dict) -> list[str]:
    entries = [s for s in report["systems"] if s.get("repeats")]
    if not entries:
        return []
    headers = [
        "system",
        "repeats",
        "r valence: mean \u00b1 sd [95% CI over repeats]",
        "bootstrap CI over items",
    ]
    headers += ["r arousal: mean \u00b1 sd [95% CI over repeats]", "bootstrap CI"]
    rows = []
    for s in entries:
        row = [s["system"], str(s["repeats"]["n"])]
        for dim in DIMENSIONS:
            r = s["repeats"][dim]["r"]
            ci = s[dim].get("ci", {}).get("r")
            row += [f"{tables.num(r['mean'])} \u00b1 {tables.num(r['sd'])} [{tables.num(r['ci'][0])}, {tables.num(r['ci'][1])}]",
                    f"[{tables.num(ci[0])}, {tables.num(ci[1])}]" if ci else "-"]  # fmt: skip
        rows.append(row)
    first = entries[0]["repeats"]
    return [
        "## Repeated splits",
        "",
        f"The runs were repeated with {first['n']} split seeds ({', '.join(map(str, first['seeds']))}; "
        "`evoked regress --repeats`). Mean and sample sd over the repeats of each system's r, and a 95% "
        "t interval of the mean over repeats, beside the bootstrap interval over items of the first seed. "
        "The repeats share most of their training items, so their interval is optimistic about a new dataset.",
        "",
        tables.markdown(headers, rows, "lr" + "r" * 4),
        "",
    ]


def _training_section(report: dict) -> list[str]:
    runs = report.get("training") or []
    if not runs:
        return []
    lines = ["## Fine-tuning", "", "Training loss and validation r per epoch (run.json history); the kept epoch "
             "has the best validation valence r.", ""]  # fmt: skip
    if "training" in report.get("files", {}):
        lines += [f"![Fine-tuning curves]({report['files']['training']})", ""]
    headers = [
        "system",
        "epochs",
        "kept epoch",
        "train loss (first -> last)",
        "val r valence (kept)",
        "val r arousal (kept)",
    ]
    rows = []
    for t in runs:
        h = t["history"]
        kept = next((x for x in h if x["epoch"] == t.get("best_epoch")), h[-1])
        rows.append([t["system"], str(len(h)), str(t.get("best_epoch") or "-"),
                     f"{tables.num(h[0]['train_loss'])} -> {tables.num(h[-1]['train_loss'])}",
                     tables.num(kept.get("val_r_valence")), tables.num(kept.get("val_r_arousal"))])  # fmt: skip
    return lines + [tables.markdown(headers, rows, "lrrrrr"), ""]


def _eval_sets_section(report: dict) -> list[str]:
    """One ranked table per further eval set (rows of another store/dataset, matched by their items)."""
    lines: list[str] = []
    for sub in report.get("eval_sets", []):
        names = sub.get("names") or [sub["eval_set"]]
        lines += [f"## Eval set {sub['eval_set']}", ""]
        if "skipped" in sub:
            lines += [f"{sub['items']['n']} items: {sub['skipped']}.", ""]
        else:
            lines += [
                f"{len(sub['systems'])} system(s) on the same {sub['items']['n']} items (named "
                f"{', '.join(names)}; items fingerprint {sub['fingerprint'][:12]}), ranked by {sub['ranking']}; "
                f"p against **{sub['reference']}**.",
                "",
                tables.markdown(*tables.ranked_rows(sub)),
                "",
            ]
        lines += [f"- {n}" for n in sub["notes"]] + ([""] if sub["notes"] else [])
    return lines


def _paired_section(report: dict) -> list[str]:
    if not report["bootstrap"]["resamples"] or len(report["systems"]) < 2:
        return []
    keys = [("valence_r", "r valence"), ("arousal_r", "r arousal"), ("valence_mse", "MSE valence")]
    keys += [("arousal_mse", "MSE arousal")]
    if any(s["category"] for s in report["systems"]):
        keys.append(("category_accuracy", "accuracy"))
    headers = ["system"] + [f"\u0394 {label} [95% CI], p" for _, label in keys]
    rows = []
    for s in report["systems"]:
        tests = s["vs_reference"]
        if tests is None:
            continue
        row = [s["system"]]
        for k, _ in keys:
            t = tests.get(k)
            row.append(f"{tables.with_ci(t['diff'], t['ci'], 3)}, p {tables.pvalue(t['p'])}" if t else "-")
        rows.append(row)
    return [
        f"## Paired tests against {report['reference']}",
        "",
        "Difference = system minus reference, on the same bootstrap resamples of the same items "
        "(for MSE a negative difference is better).",
        "",
        tables.markdown(headers, rows, "l" + "r" * len(keys)),
        "",
    ]


def _category_section(report: dict) -> list[str]:
    c = report["category"]
    lex = c["lexicon"]
    if not c.get("categories"):
        return []
    rows = [
        [
            s["system"],
            str(s["category"]["n"]),
            tables.with_ci(s["category"]["accuracy"], s["category"].get("ci", {}).get("accuracy")),
        ]
        for s in report["systems"]
        if s["category"]
    ]
    return [
        "## Category accuracy through VA",
        "",
        f"Each predicted VA point is mapped to the **{c['nearest']}**-nearest of the categories "
        f"{', '.join(c['categories'])} in lexicon **{lex['name']}** ({lex['source']}), and compared with "
        f"the true category on {c['n']} items. For scale: the true VA gives {tables.num(c['true_va_accuracy'])} "
        f"through the same mapping (what a perfect VA predictor would score), and always answering the most "
        f"frequent category gives {tables.num(c['majority_accuracy'])}.",
        "",
        tables.markdown(["system", "n", "accuracy [95% CI]"], rows, "lrr"),
        "",
    ]


def _distribution_section(report: dict) -> list[str]:
    d = report["distribution"]
    entries = [s for s in report["systems"] if s["distribution"]]
    if not d or not entries:
        return []
    names = [
        (k, f"{DISTRIBUTION_LABELS[k]} ({'higher' if higher else 'lower'})")
        for k, higher in DISTRIBUTION_METRICS.items()
    ]
    rows = []
    for s in entries:
        dd = s["distribution"]
        rows.append(
            [s["system"], str(dd["n"])] + [tables.with_ci(dd[k], dd.get("ci", {}).get(k)) for k, _ in names]
        )
    return [
        "## Label distributions",
        "",
        f"Predicted vs true distributions over {', '.join(d['categories'])}, averaged over items; "
        f"KL(p_true || p_pred) in nats, with both clipped to {d['eps']:g} and renormalised.",
        "",
        tables.markdown(["system", "n"] + [label for _, label in names], rows, "lr" + "r" * len(names)),
        "",
    ]


def _all_metrics_section(report: dict) -> list[str]:
    headers = ["system", "dimension", "n", "MSE", "RMSE", "MAE", "r (p)", "Spearman", "CCC", "R\u00b2"]
    rows = []
    for s in report["systems"]:
        for dim in DIMENSIONS:
            m = s[dim]
            rows.append(
                [
                    s["system"],
                    dim,
                    str(m["n"]),
                    tables.num(m["mse"]),
                    tables.num(m["rmse"]),
                    tables.num(m["mae"]),
                ]
                + [f"{tables.num(m['r'])} ({_p_small(m['r_p'])})", tables.num(m["spearman"])]
                + [tables.num(m["ccc"]), tables.num(m["r2"])]
            )
    return ["## All metrics (point estimates)", "", tables.markdown(headers, rows), ""]


def _p_small(p) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return f"p {p:.1e}" if p < 0.001 else f"p {p:.3f}"


def _curve_section(report: dict) -> list[str]:
    curves = report["curves"]
    if not curves:
        return []
    headers = [
        "system",
        "setting",
        "n_labels",
        "seeds",
        "r valence",
        "r arousal",
        "MSE valence",
        "MSE arousal",
    ]
    rows = [
        [c["system"], c["setting"], str(c["n_labels"]), str(c["seeds"])]
        + [f"{tables.num(c[f'{m}_mean'])} \u00b1 {tables.num(c[f'{m}_std'])}" for m in CURVE_METRICS]
        for c in curves
    ]
    lines = ["## Low-resource curve", "", "Mean \u00b1 sample std over seeds.", ""]
    if "curve" in report.get("files", {}):
        lines += [f"![Low-resource curve]({report['files']['curve']})", ""]
    return lines + [tables.markdown(headers, rows, "llrr" + "r" * 4), ""]


def _items_section(report: dict) -> list[str]:
    it = report["items"]
    sc = it["scored"]
    splits = ", ".join(f"{k} {v}" for k, v in it["splits"].items())
    folds = ", ".join(f"{k}: {v}" for k, v in it["folds"].items())
    return [
        "## Items",
        "",
        f"- {it['n']} items (splits: {splits}; folds: {folds}); fingerprint `{it['fingerprint']}`",
        f"- scored: valence {sc['valence']}, arousal {sc['arousal']}, category {sc['category']}"
        + (f", distribution {it['with_distribution']}" if it["with_distribution"] else ""),
        f"- known: valence {it['with_valence']}, arousal {it['with_arousal']}, category {it['with_category']}",
        "",
    ]
