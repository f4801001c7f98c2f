"""Formatting of report numbers as Markdown, plain-text and CSV tables."""

from __future__ import annotations

import math
from collections.abc import Sequence

from evoked.evaluate.distribution import DISTRIBUTION_METRICS
from evoked.evaluate.metrics import DIMENSIONS


def num(x: float | None, digits: int = 3) -> str:
    """A number with `digits` decimals; "-" for a missing value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x:.{digits}f}"


def with_ci(x: float | None, ci: Sequence[float | None] | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if not ci or any(c is None or math.isnan(c) for c in ci):
        return num(x, digits)
    return f"{num(x, digits)} [{num(ci[0], digits)}, {num(ci[1], digits)}]"


def pvalue(p: float | None) -> str:
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _ci(entry: dict | None, group_metric: str):
    return (entry or {}).get("ci", {}).get(group_metric)


def _n(s: dict) -> str:
    nv, na = s["valence"]["n"], s["arousal"]["n"]
    return str(nv) if nv == na else f"{nv}/{na}"


def ranked_rows(result: dict, digits: int = 3, compact: bool = False) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the ranked table (``compact``: fewer columns, for a terminal)."""
    systems = result["systems"]
    has_acc = any(s["category"] for s in systems)
    ref = result["reference"]
    if compact:
        headers = ["#", "system", "n", "r valence [95% CI]", "r arousal [95% CI]", "CCC v/a", "MSE v/a"]
    else:
        headers = [
            "#",
            "system",
            "n",
            "r valence [95% CI]",
            "r arousal [95% CI]",
            "CCC v / a",
            "MSE valence [95% CI]",
            "MSE arousal [95% CI]",
            "MAE v / a",
        ]
    if has_acc:
        headers.append("accuracy" if compact else "accuracy [95% CI]")
    keys = ("valence_r", "arousal_r", "category_accuracy") if has_acc else ("valence_r", "arousal_r")
    headers += ["p r_v", "p r_a", "p acc"][: len(keys)]
    rows = []
    for s in systems:
        v, a = s["valence"], s["arousal"]
        row = [str(s["rank"]), s["system"] + (" (ref)" if s["system"] == ref else ""), _n(s)]
        row += [with_ci(v["r"], _ci(v, "r"), digits), with_ci(a["r"], _ci(a, "r"), digits)]
        row.append(f"{num(v['ccc'], digits)} / {num(a['ccc'], digits)}")
        if compact:
            row.append(f"{num(v['mse'], digits)} / {num(a['mse'], digits)}")
        else:
            row += [with_ci(v["mse"], _ci(v, "mse"), digits), with_ci(a["mse"], _ci(a, "mse"), digits)]
            row.append(f"{num(v['mae'], digits)} / {num(a['mae'], digits)}")
        if has_acc:
            c = s["category"]
            if not c:
                row.append("-")
            elif compact:
                row.append(num(c["accuracy"], digits))
            else:
                row.append(with_ci(c["accuracy"], _ci(c, "accuracy"), digits))
        tests = s["vs_reference"] or {}
        for key in keys:
            row.append(pvalue(tests[key]["p"]) if key in tests else "-")
        rows.append(row)
    return headers, rows


def markdown(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A GitHub Markdown table; `align` is one letter per column (l or r), numbers right by default."""
    align = align or "".join("l" if i < 2 else "r" for i in range(len(headers)))
    sep = ["---:" if a == "r" else ":---" for a in align]
    esc = [[c.replace("|", "\\|") for c in r] for r in [list(headers), *map(list, rows)]]
    lines = ["| " + " | ".join(esc[0]) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    return "\n".join(lines)


def plain(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns padded to align in a terminal; the first two left-aligned, the rest right-aligned."""
    table = [list(headers), *map(list, rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
        ).rstrip()

    return "\n".join([line(table[0]), "  ".join("-" * w for w in widths), *map(line, table[1:])])


def csv_rows(result: dict) -> tuple[list[str], list[list]]:
    """One row per system with every point estimate, CI bound and reference p-value (raw numbers)."""
    metrics = ("n", "mse", "rmse", "mae", "r", "r_p", "spearman", "ccc", "r2")
    with_cis = ("mse", "rmse", "mae", "r", "ccc", "r2")
    headers = ["rank", "system", "run", "model"]
    for dim in DIMENSIONS:
        for m in metrics:
            headers.append(f"{m}_{dim}")
            if m in with_cis:
                headers += [f"{m}_{dim}_lo", f"{m}_{dim}_hi"]
    headers += ["accuracy_n", "accuracy", "accuracy_lo", "accuracy_hi"]
    dist = tuple(DISTRIBUTION_METRICS)
    headers += ["distribution_n"] + [f"{d}{sfx}" for d in dist for sfx in ("", "_lo", "_hi")]
    headers += ["reference"] + [
        f"p_{k}_vs_reference" for k in ("valence_r", "arousal_r", "category_accuracy")
    ]
    rows = []
    for s in result["systems"]:
        row: list = [s["rank"], s["system"], s["run"], s["model"]]
        for dim in DIMENSIONS:
            d = s[dim]
            for m in metrics:
                row.append(d[m])
                if m in with_cis:
                    row += list(d.get("ci", {}).get(m, ["", ""]))
        c = s["category"]
        row += [c["n"], c["accuracy"], *c.get("ci", {}).get("accuracy", ["", ""])] if c else ["", "", "", ""]
        dd = s["distribution"]
        row.append(dd["n"] if dd else "")
        for name in dist:
            row += [dd[name], *dd.get("ci", {}).get(name, ["", ""])] if dd else ["", "", ""]
        tests = s["vs_reference"] or {}
        row.append(result["reference"])
        row += [tests[k]["p"] if k in tests else "" for k in ("valence_r", "arousal_r", "category_accuracy")]
        rows.append(row)
    return headers, rows


def cross_dataset_rows(report: dict, digits: int = 3) -> tuple[list[str], list[list[str]]] | None:
    """One row per system, one column per scored set (the training side, then each eval set):
    r valence / r arousal. None when the report scores fewer than two sets."""
    groups = [report] + [s for s in report.get("eval_sets", []) if "skipped" not in s]
    if len(groups) < 2:
        return None

    def column(g: dict) -> str:
        name = g.get("eval_set", "")
        return f"{name} (n {g['items']['n']})" if name else f"training side (n {g['items']['n']})"

    cells = [
        {
            s["system"]: f"{num(s['valence']['r'], digits)} / {num(s['arousal']['r'], digits)}"
            for s in g["systems"]
        }
        for g in groups
    ]
    names = list(dict.fromkeys(s["system"] for g in groups for s in g["systems"]))
    return ["system"] + [column(g) for g in groups], [[n] + [c.get(n, "-") for c in cells] for n in names]
