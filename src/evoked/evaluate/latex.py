"""report.tex: the report's tables as LaTeX (booktabs), ready to \\input into a paper.

Needs ``\\usepackage{booktabs}``. Each table is a ``table`` float with a caption and a label
(``tab:ranking``, ``tab:per-category``, ``tab:eval-sets``).
"""

from __future__ import annotations

from collections.abc import Sequence

from evoked.evaluate import tables
from evoked.evaluate.percategory import per_category_rows

_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}  # fmt: skip


def escape(text: str) -> str:
    """`text` with LaTeX's special characters escaped; Unicode minus, Δ and ± as math."""
    out = "".join(_SPECIAL.get(c, c) for c in str(text))
    return out.replace("\u0394", r"$\Delta$").replace("\u00b1", r"$\pm$").replace("\u00b2", r"$^2$")


def booktabs(
    headers: Sequence[str], rows: Sequence[Sequence[str]], caption: str, label: str, align: str = ""
) -> str:
    """One booktabs table float: left-aligned text columns, right-aligned numbers by default."""
    align = align or "".join("l" if i < 2 else "r" for i in range(len(headers)))
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{escape(caption)}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(escape(h) for h in headers) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(escape(c) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def latex_report(report: dict) -> str:
    """The ranking, the per-category table and the cross-dataset table of `report` as LaTeX."""
    b = report["bootstrap"]
    how = (
        f"95% bootstrap intervals ({b['resamples']} resamples of the items)"
        if b["resamples"]
        else "no intervals"
    )
    parts = [
        "% evoked evaluate: tables of the report (needs \\usepackage{booktabs})",
        booktabs(
            *tables.ranked_rows(report),
            caption=f"Systems ranked by {report['ranking']} on {report['items']['n']} items; {how}.",
            label="tab:ranking",
        ),
    ]
    headers, rows = per_category_rows(report["systems"])
    if rows:
        parts.append(
            booktabs(
                headers,
                rows,
                caption="Per true category: Pearson r within the category, MSE, and bias (mean predicted minus rated).",
                label="tab:per-category",
                align="ll" + "r" * (len(headers) - 2),
            )
        )
    cross = tables.cross_dataset_rows(report)
    if cross:
        parts.append(
            booktabs(*cross, caption="Pearson r valence / arousal on each scored set.", label="tab:eval-sets")
        )
    return "\n".join(parts)
