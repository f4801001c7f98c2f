"""Figures beyond predicted-vs-true: residuals by category, the VA -> category confusion matrices,
a forest plot of every system's r with its intervals, and fine-tuning curves per epoch.

All take plain numbers (from the report dict and the aligned predictions) and save with
`plots.save_figure` in the report's formats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from evoked.evaluate.metrics import DIMENSIONS
from evoked.evaluate.plots import _figure, _grid, _title, save_figure


def residual_plot(
    path: Path,
    truth: np.ndarray,
    category: np.ndarray,
    systems: Sequence[tuple[str, np.ndarray]],
    colors: Mapping[str, str],
    formats: Sequence[str] = ("png",),
) -> Path:
    """Mean residual (predicted minus rated) per true category with its 95% interval (mean +- 1.96
    standard errors), one dot per system beside each other, one panel per dimension."""
    cats = sorted({str(c) for c in category if c})
    width = max(6.0, 0.25 * len(cats) * len(systems) + 2.5)
    fig = _figure(width, 3.2 * len(DIMENSIONS) + 0.4 + 0.18 * math.ceil(len(systems) / 3))
    step = 0.8 / max(1, len(systems))
    for k, dim in enumerate(DIMENSIONS):
        ax = fig.add_subplot(len(DIMENSIONS), 1, k + 1)
        ax.axhline(0, color="0.4", lw=0.8)
        for j, (name, pred) in enumerate(systems):
            res = pred[:, k] - truth[:, k]
            x, m, e = [], [], []
            for i, c in enumerate(cats):
                r = res[(category == c) & np.isfinite(res)]
                if r.size:
                    x.append(i - 0.4 + step * (j + 0.5))
                    m.append(r.mean())
                    e.append(1.96 * r.std(ddof=1) / math.sqrt(r.size) if r.size > 1 else 0.0)
            ax.errorbar(x, m, yerr=e, fmt="o", ms=4, color=colors[name], elinewidth=1, capsize=2, label=name)
        ax.set_xticks(range(len(cats)))
        ax.set_xticklabels(cats, fontsize=8)
        ax.set_ylabel(f"{dim}: predicted - rated")
        ax.grid(alpha=0.25, axis="y")
        ax.set_title(f"Mean {dim} residual by true category (95% interval)", fontsize=10)
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(3, len(labels)), fontsize=7, frameon=False)
    rows = math.ceil(len(labels) / 3)
    fig.tight_layout(rect=(0, min(0.35, (0.2 * rows + 0.1) / fig.get_figheight()), 1, 1))
    return save_figure(fig, path, formats)


def confusion_plot(
    path: Path,
    confusions: Sequence[tuple[str, Mapping[str, Mapping[str, int]]]],
    categories: Sequence[str],
    how: str,
    formats: Sequence[str] = ("png",),
) -> Path:
    """One matrix per system: true category (rows) -> nearest category of the predicted VA (columns),
    shaded by the share of the row, with the counts written in."""
    rows, cols = _grid(len(confusions), 3)
    size = 0.42 * len(categories) + 1.3
    fig = _figure(size * cols + 0.6, (size + 0.35) * rows + 0.6)
    for k, (name, table) in enumerate(confusions):
        ax = fig.add_subplot(rows, cols, k + 1)
        m = np.array([[table.get(t, {}).get(p, 0) for p in categories] for t in categories], dtype=float)
        share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
        ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
        for i in range(len(categories)):
            for j in range(len(categories)):
                if m[i, j]:
                    ax.text(j, i, str(int(m[i, j])), ha="center", va="center", fontsize=6,
                            color="white" if share[i, j] > 0.55 else "black")  # fmt: skip
        ax.set_xticks(range(len(categories)))
        ax.set_yticks(range(len(categories)))
        ax.set_xticklabels(categories, rotation=60, fontsize=7)
        ax.set_yticklabels(categories, fontsize=7)
        ax.set_title(_title(name, 28), fontsize=8)
        if k % cols == 0:
            ax.set_ylabel("true", fontsize=8)
        if k >= len(confusions) - cols:
            ax.set_xlabel("nearest to predicted VA", fontsize=8)
    fig.suptitle(f"VA -> category confusion ({how})", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))  # the title above the panels' titles
    return save_figure(fig, path, formats)


def forest_plot(
    path: Path, systems: Sequence[Mapping], colors: Mapping[str, str], formats: Sequence[str] = ("png",)
) -> Path:
    """Every system's Pearson r with its bootstrap interval (dot and bar) and, when the runs were
    repeated, the interval over repeats (open square and thin bar below it); ranked top down."""
    n = len(systems)
    fig = _figure(9.0, 0.26 * n + 1.4)
    labels = [str(s["system"]) for s in systems]
    for k, dim in enumerate(DIMENSIONS):
        ax = fig.add_subplot(1, 2, k + 1)
        for i, s in enumerate(systems):
            y = n - 1 - i
            d = s[dim]
            color = colors[s["system"]]
            ci = d.get("ci", {}).get("r")
            if ci and all(np.isfinite(ci)):
                ax.plot(ci, [y, y], color=color, lw=1.6)
            ax.plot([d["r"]], [y], "o", color=color, ms=5)
            rep = ((s.get("repeats") or {}).get(dim) or {}).get("r")
            if rep and np.isfinite(rep["mean"]):
                ax.plot(rep["ci"], [y - 0.3, y - 0.3], color=color, lw=0.8)
                ax.plot([rep["mean"]], [y - 0.3], "s", mfc="white", color=color, ms=4)
        ax.set_yticks(range(n))
        ax.set_yticklabels(labels[::-1] if k == 0 else [""] * n, fontsize=7)
        ax.set_ylim(-0.8, n - 0.4)
        ax.grid(alpha=0.25, axis="x")
        ax.set_xlabel(f"Pearson r, {dim}")
    repeats = any(s.get("repeats") for s in systems)
    fig.suptitle(
        "r with 95% bootstrap interval" + (" (dots); squares: over repeated splits" if repeats else ""),
        fontsize=10,
    )
    fig.tight_layout()
    return save_figure(fig, path, formats)


def training_plot(
    path: Path,
    runs: Sequence[tuple[str, Sequence[Mapping]]],
    colors: Mapping[str, str],
    formats: Sequence[str] = ("png",),
) -> Path:
    """Fine-tuning per epoch: training loss, and validation r of valence and arousal; the best epoch
    (the one kept) is marked."""
    fig = _figure(11.0, 3.6)
    panels = [("train_loss", "training loss"), ("val_r_valence", "validation r, valence")]
    panels.append(("val_r_arousal", "validation r, arousal"))
    for k, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, 3, k + 1)
        for name, history in runs:
            pts = [(h["epoch"], float(h[key])) for h in history if h.get(key) is not None]
            pts = [(e, v) for e, v in pts if math.isfinite(v)]
            if not pts:
                continue
            x, y = zip(*pts)
            ax.plot(x, y, marker="o", ms=3, color=colors[name], lw=1.3, label=name)
            best = [h["epoch"] for h in history if h.get("improved")]
            if best and key != "train_loss":
                b = best[-1]
                ax.plot([b], [dict(pts).get(b, np.nan)], "*", ms=10, color=colors[name], mec="k", mew=0.5)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.25)
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = fig.axes[0].get_legend_handles_labels()
    fig.suptitle("Fine-tuning per epoch (stars: the epoch kept, best validation valence r)", fontsize=10)
    fig.legend(
        handles, labels, loc="lower center", ncol=min(3, max(1, len(labels))), fontsize=7, frameon=False
    )
    fig.tight_layout(rect=(0, 0.07 * math.ceil(max(1, len(labels)) / 3) + 0.02, 1, 1))
    return save_figure(fig, path, formats)
