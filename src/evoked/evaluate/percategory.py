"""Per-category scores of VA predictions: within each true category, r, MSE and bias.

A system can rank well overall by placing the categories apart while getting the order of photos
inside a category wrong, or by being right on average while pushing one category up and another
down. The per-category view shows both: Pearson r *within* a category, MSE, and the bias (mean of
predicted minus rated) per dimension. Works for any category set: the categories are the distinct
true labels of the scored items, whatever they are and however many.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evoked.evaluate.metrics import DIMENSIONS, pearson


def categories_of(category: np.ndarray) -> list[str]:
    """The distinct non-empty category labels, sorted."""
    return sorted({str(c) for c in category if c})


def category_scores(truth: np.ndarray, pred: np.ndarray) -> dict[str, float | int]:
    """n, Pearson r, MSE and bias (mean predicted minus rated) of one dimension on one category."""
    ok = np.isfinite(truth) & np.isfinite(pred)
    t, p = truth[ok], pred[ok]
    if not t.size:
        return {
            "n": 0,
            "r": float("nan"),
            "mse": float("nan"),
            "bias": float("nan"),
            "mean_true": float("nan"),
        }
    return {
        "n": int(t.size),
        "r": pearson(t, p)[0],
        "mse": float(np.mean((p - t) ** 2)),
        "bias": float(np.mean(p - t)),
        "mean_true": float(t.mean()),
    }


def per_category(
    true: np.ndarray, category: np.ndarray, pred: np.ndarray, masks: dict[str, np.ndarray]
) -> dict[str, dict[str, dict]]:
    """{category: {dimension: scores}} of one system on the rows each dimension is scored on.

    `masks` are the rows every system is scored on per dimension (as in the ranked table), so the
    per-category numbers add up to the overall ones.
    """
    out: dict[str, dict[str, dict]] = {}
    for c in categories_of(category):
        inside = category == c
        out[c] = {
            dim: category_scores(true[inside & masks[dim], k], pred[inside & masks[dim], k])
            for k, dim in enumerate(DIMENSIONS)
        }
    return out


def per_category_rows(systems: Sequence[dict], digits: int = 3) -> tuple[list[str], list[list[str]]]:
    """Headers and cells of the per-category table: one row per (system, category)."""
    from evoked.evaluate.tables import num

    headers = ["system", "category", "n"]
    for dim in DIMENSIONS:
        headers += [f"r {dim}", f"MSE {dim}", f"bias {dim}"]
    rows = []
    for s in systems:
        for cat, dims in (s.get("per_category") or {}).items():
            v = dims["valence"]
            n = str(v["n"]) if v["n"] == dims["arousal"]["n"] else f"{v['n']}/{dims['arousal']['n']}"
            row = [s["system"], cat, n]
            for dim in DIMENSIONS:
                d = dims[dim]
                bias = d["bias"]
                row += [
                    num(d["r"], digits),
                    num(d["mse"], digits),
                    "-" if np.isnan(bias) else f"{bias:+.{digits}f}",
                ]
            rows.append(row)
    return headers, rows
