"""Plots of a report: predicted vs true per dimension, the VA plane, the low-resource curve.

Figures are drawn with matplotlib's object API on an Agg canvas: no pyplot state, no GUI backend,
nothing changed for a caller that uses pyplot itself. Each is saved in every format asked for
(png, pdf, svg; raster at 300 dpi). Points are coloured by true category, systems by
`selection.colors_for` (the same colour for a system name in every report).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

SCALE = (1.0, 9.0)
_ONE_COLOR = "#0072B2"  # points without categories


def _spaced_labels(xs: list, log: bool) -> list[str]:
    """Tick labels for budgets xs, blank where a label would overprint its neighbour (the largest kept).

    The labels are drawn rotated, so only labels a few percent of the axis apart collide: 1,188 and
    1,386 (the network's and the regressors' full budgets) both keep their labels.
    """
    labels = [str(x) for x in xs]
    kept = None
    for i, x in enumerate(xs):
        if kept is None or x <= 0 or xs[kept] <= 0:
            close = False
        else:
            close = x / xs[kept] < 1.1 if log else x - xs[kept] < 0.02 * (xs[-1] - xs[0])
        if close and kept is not None:
            labels[kept if i == len(xs) - 1 else i] = ""
        if not close or i == len(xs) - 1:
            kept = i
    return labels


FORMATS = ("png", "pdf", "svg")
RASTER_DPI = 300


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path, formats: Sequence[str] = ("png",)) -> Path:
    """Save `fig` as `path` with each of `formats` as its suffix; return the first file written."""
    files = [Path(path).with_suffix("." + f) for f in formats]
    for f in files:
        fig.savefig(f, dpi=RASTER_DPI if f.suffix == ".png" else None, metadata=_metadata(f.suffix))
    return files[0]


def _metadata(suffix: str) -> dict | None:
    """No creation date in PDF/SVG files: the same report makes the same bytes."""
    if suffix == ".pdf":
        return {"CreationDate": None}
    if suffix == ".svg":
        return {"Date": None}
    return None


def category_colors(cats: Sequence[str]) -> dict[str, str]:
    """One colour per category, in sorted order (Okabe & Ito, then more)."""
    from evoked.evaluate.selection import PALETTE

    return {c: PALETTE[i % len(PALETTE)] for i, c in enumerate(sorted(cats))}


def _by_category(
    ax, x: np.ndarray, y: np.ndarray, labels: np.ndarray | None, color_of: dict[str, str], size: float
) -> dict[str, Any]:
    """Scatter points coloured by category, drawn in a random (seeded) order so that no category
    hides another; returns a legend handle per category."""
    ok = np.isfinite(x) & np.isfinite(y)
    order = np.random.default_rng(0).permutation(np.flatnonzero(ok))
    if labels is None:
        ax.scatter(x[order], y[order], s=size, alpha=_alpha(len(order)), color=_ONE_COLOR, lw=0, zorder=2)
        return {}
    lab = np.asarray(labels).astype(str)[order]
    colors = [color_of.get(c, "0.6") for c in lab]
    ax.scatter(x[order], y[order], s=size, alpha=_alpha(len(order)), c=colors, lw=0, zorder=2)
    return {c or "no category": color_of.get(c, "0.6") for c in sorted(set(lab.tolist()))}


def _legend_handles(colors: dict[str, str]) -> list:
    from matplotlib.lines import Line2D

    return [Line2D([], [], ls="", marker="o", ms=6, color=c) for c in colors.values()]


def _limits(*arrays: np.ndarray) -> tuple[float, float]:
    """The 1..9 scale, widened when a value falls outside it, with a small margin."""
    values = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays])
    values = values[np.isfinite(values)]
    lo = min(SCALE[0], values.min()) if values.size else SCALE[0]
    hi = max(SCALE[1], values.max()) if values.size else SCALE[1]
    return lo - 0.25, hi + 0.25


def _alpha(n: int) -> float:
    return float(np.clip(400 / max(n, 1), 0.12, 0.8))


def _title_lines(name: str, width: int = 30) -> list[str]:
    """`name` in lines of at most `width` characters, broken only after a space or a separator.

    System names are often one long token ("two_stage/resnet50+color"): they break after ``/ + : , _``
    or a space, never inside a word; a word longer than `width` keeps a line of its own.
    """
    tokens = [t for t in re.split(r"(?<=[\s/+:,_])", name) if t]
    lines: list[str] = []
    for tok in tokens:
        if lines and len(lines[-1]) + len(tok.rstrip()) <= width:
            lines[-1] += tok
        else:
            lines.append(tok)
    return [ln.strip() for ln in lines if ln.strip()] or [name]


def _title(name: str, width: int = 30) -> str:
    return "\n".join(_title_lines(name, width))


def _grid(k: int, max_cols: int = 4) -> tuple[int, int]:
    cols = min(max_cols, k)
    return math.ceil(k / cols), cols


def scatter_plot(
    path: Path,
    dimension: str,
    truth: np.ndarray,
    systems: Sequence[tuple[str, np.ndarray, float]],
    labels: np.ndarray | None = None,
    formats: Sequence[str] = ("png",),
    system_colors: dict[str, str] | None = None,
) -> Path:
    """Predicted vs true `dimension`: one panel per (name, predictions, r), identity line dashed.

    Points are coloured by their true category (`labels`), with one legend below the panels; a panel
    title takes its system's colour (`system_colors`).
    """
    rows, cols = _grid(len(systems))
    title_lines = max(len(_title_lines(name)) for name, _, _ in systems) + 1  # + the r line
    cats = sorted({str(c) for c in labels if c}) if labels is not None else []
    legend_h = 0.45 + 0.2 * math.ceil((len(cats) + 1) / max(1, min(len(cats) + 1, 3 * cols))) if cats else 0.0
    height = (3.15 + 0.17 * title_lines) * rows + 0.5 + legend_h
    fig = _figure(3.3 * cols, height)
    lim = _limits(truth, *[p for _, p, _ in systems])
    color_of = category_colors(cats)
    legend: dict[str, str] = {}
    for k, (name, pred, r) in enumerate(systems):
        ax = fig.add_subplot(rows, cols, k + 1)
        ok = np.isfinite(truth) & np.isfinite(pred)
        ax.plot(lim, lim, ls="--", color="0.45", lw=1, zorder=1)
        legend.update(
            _by_category(ax, np.where(ok, truth, np.nan), pred, labels if cats else None, color_of, 6)
        )
        rtxt = "r = -" if r is None or np.isnan(r) else f"r = {r:.3f}"
        title = f"{_title(name)}\n{rtxt} (n = {int(ok.sum())})"
        xlabel = f"true {dimension}" if k >= len(systems) - cols else ""
        _square_axes(ax, lim, title, xlabel, f"predicted {dimension}" if k % cols == 0 else "")
        if system_colors and name in system_colors:
            ax.title.set_color(system_colors[name])
    fig.suptitle(f"Predicted vs true {dimension}", fontsize=12)
    _bottom_legend(fig, legend, "true category", height, legend_h, 3 * cols)
    return save_figure(fig, path, formats)


def _bottom_legend(
    fig, colors: dict[str, str], title: str, height: float, legend_h: float, max_cols: int
) -> None:
    """A legend of coloured markers below the panels (tight layout above it), or just a tight layout."""
    if not colors:
        fig.tight_layout()
        return
    legend = fig.legend(
        _legend_handles(colors),
        list(colors),
        loc="lower center",
        ncol=min(len(colors), max_cols),
        fontsize=8,
        title=title,
        title_fontsize=8,
        frameon=False,
    )
    fig.tight_layout(rect=(0, legend_h / height, 1, 1))
    legend.set_bbox_to_anchor((0.5, 0.0), transform=fig.transFigure)


def _draw_anchors(ax, anchors: dict[str, tuple[float, float]], color_of: dict[str, str]) -> None:
    """Each category's lexicon VA as a labelled star, labels placed apart (`_label_offsets`)."""
    for (word, (v, a)), offset in zip(anchors.items(), _label_offsets(anchors)):
        ax.scatter(
            [v], [a], marker="*", s=130, color=color_of.get(word, "k"), edgecolor="k", lw=0.8, zorder=5
        )
        ax.annotate(
            word,
            (v, a),
            xytext=offset,
            textcoords="offset points",
            fontsize=7,
            ha="center",
            va="center",
            bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.75},
            arrowprops={"arrowstyle": "-", "color": "0.4", "lw": 0.5, "shrinkA": 0, "shrinkB": 4},
            zorder=6,
        )


def _square_axes(ax, lim: tuple[float, float], title: str, xlabel: str, ylabel: str) -> None:
    """A square panel on the 1..9 grid; an empty label is left out."""
    ax.set_xlim(lim)
    ax.set_ylim(lim)
    ax.set_aspect("equal")
    ax.set_xticks(range(1, 10, 2))
    ax.set_yticks(range(1, 10, 2))
    ax.grid(alpha=0.25)
    ax.set_title(title, fontsize=9)
    if ylabel:
        ax.set_ylabel(ylabel)
    if xlabel:
        ax.set_xlabel(xlabel)


def va_plane_plot(
    path: Path,
    truth: np.ndarray,
    systems: Sequence[tuple[str, np.ndarray]],
    labels: np.ndarray | None = None,
    anchors: dict[str, tuple[float, float]] | None = None,
    anchor_source: str = "",
    n_systems: int | None = None,
    formats: Sequence[str] = ("png",),
) -> Path:
    """True and predicted points on the valence x arousal plane, one panel each, coloured by category.

    Points are small and drawn in a random order (no category hides another); each category's mean
    is a large circle, so its place reads even where points pile up. `anchors` (category -> VA from
    the lexicon) are labelled stars: the points that VA -> nearest-category accuracy compares
    predictions with. `n_systems`, the number of systems the report has: when the plot shows fewer,
    the title says how many (the panels name them).
    """
    has_truth = bool(np.isfinite(truth).all(axis=1).any())
    panels = [("true VA", truth)] * has_truth + list(systems)
    rows, cols = _grid(len(panels))
    cats = sorted({str(c) for c in labels if c}) if labels is not None else []
    width = max(3.5 * cols, 6.0)
    legend_cols = max(1, min(len(cats) + 1, int(width / 1.15)))
    legend_h = (0.35 + 0.22 * math.ceil((len(cats) + 1) / legend_cols)) if cats else 0.0
    height = 3.6 * rows + 0.7 + legend_h
    fig = _figure(width, height)
    lim = _limits(*[p for _, p in panels])
    color_of = category_colors(cats)
    legend: dict[str, str] = {}
    for k, (name, va) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, k + 1)
        legend.update(_by_category(ax, va[:, 0], va[:, 1], labels if cats else None, color_of, 3))
        for c in cats:
            m = (labels == c) & np.isfinite(va).all(axis=1)
            if m.any():
                mv, ma = va[m].mean(axis=0)
                ax.scatter([mv], [ma], s=70, color=color_of[c], edgecolor="k", lw=0.9, zorder=4)
        _draw_anchors(ax, anchors or {}, color_of)
        xlabel = "valence" if k >= len(panels) - cols else ""
        _square_axes(ax, lim, _title(name), xlabel, "arousal" if k % cols == 0 else "")
    title = "Valence-arousal plane"
    if n_systems is not None and n_systems > len(systems):
        title += f", showing {len(systems)} of {n_systems} systems"
    marks = ["circles: category means"] * bool(cats) + [f"stars: category VA from {anchor_source}"] * bool(
        anchors
    )
    if marks:
        title += "\n(" + "; ".join(marks) + ")"
    fig.suptitle(title, fontsize=10)
    _bottom_legend(fig, legend, "true category", height, legend_h, legend_cols)
    return save_figure(fig, path, formats)


# label positions tried around a star, in points: right, left, up, down, then the diagonals
_CANDIDATES = [(14, 0), (-14, 0), (0, 11), (0, -11), (12, 9), (-12, 9), (12, -9), (-12, -9)]


def _label_offsets(anchors: dict[str, tuple[float, float]] | None) -> list[tuple[float, float]]:
    """Text offsets (points) for each anchor's label: of a few places around the star, the one
    farthest from the other stars and the labels already placed, and inside the 1..9 square.

    Positions are compared in data units at about 22 points per unit (a 3.5 inch panel over 1..9),
    so two labels near each other (fear and anger in NRC) go to opposite sides.
    """
    if not anchors:
        return []
    per_unit = 22.0
    pts = np.array(list(anchors.values()), dtype=float)
    placed: list[np.ndarray] = []
    out = []
    for i, (v, a) in enumerate(pts):
        best, best_score = _CANDIDATES[0], -np.inf
        for dx, dy in _CANDIDATES:
            c = np.array([v + dx / per_unit, a + dy / per_unit])
            others = [p for j, p in enumerate(pts) if j != i] + placed
            gap = min((float(np.hypot(*(c - o) * [0.6, 1.0])) for o in others), default=9.0)
            inside = 1.0 <= c[0] + np.sign(dx) * 0.4 <= 9.0 and 1.0 <= c[1] <= 9.0
            score = gap - (5.0 if not inside else 0.0)
            if score > best_score:
                best, best_score = (dx, dy), score
        placed.append(np.array([v + best[0] / per_unit, a + best[1] / per_unit]))
        out.append((float(best[0]), float(best[1])))
    return out


def curve_plot(path: Path, summary: Sequence[dict], formats: Sequence[str] = ("png",)) -> Path:
    """Metric mean +- std over seeds vs the number of VA-labelled training items.

    `summary` rows: system, setting, n_labels, and ``<metric>_mean`` / ``<metric>_std`` for
    r_valence, r_arousal, mse_valence, mse_arousal. Colour = system, line style = setting.
    """
    metrics = [m for m in ("r_valence", "r_arousal", "mse_valence", "mse_arousal") if _has(summary, m)]
    rows, cols = _grid(len(metrics), 2)
    fig = _figure(5.2 * cols, 3.6 * rows + 0.8)
    systems = list(dict.fromkeys(r["system"] for r in summary))
    settings = list(dict.fromkeys(r["setting"] for r in summary))
    # two_stage solid, stage2_only dashed (any other setting: the next style in turn)
    order = sorted(settings, key=lambda s: (s != "two_stage", s != "stage2_only", s))
    styles = {s: ("-", "--", ":", "-.")[k % 4] for k, s in enumerate(order)}
    markers = {s: ("o", "s", "^", "D", "v")[k % 5] for k, s in enumerate(order)}
    xs = sorted({r["n_labels"] for r in summary})
    from evoked.evaluate.selection import colors_for

    system_color = colors_for(systems)
    lines: dict[str, Any] = {}
    for k, metric in enumerate(metrics):
        ax = fig.add_subplot(rows, cols, k + 1)
        spread: list[float] = []
        for system in systems:
            for setting in settings:
                pts = sorted(
                    (r for r in summary if r["system"] == system and r["setting"] == setting),
                    key=lambda r: r["n_labels"],
                )
                pts = [r for r in pts if np.isfinite(r[f"{metric}_mean"])]
                if not pts:
                    continue
                x = np.array([r["n_labels"] for r in pts], dtype=float)
                y = np.array([r[f"{metric}_mean"] for r in pts])
                e = np.array([np.nan_to_num(r[f"{metric}_std"]) for r in pts])
                color = system_color[system]
                (ln,) = ax.plot(x, y, ls=styles[setting], marker=markers[setting], ms=4, color=color, lw=1.5)
                if len(x) > 1:
                    ax.fill_between(x, y - e, y + e, color=color, alpha=0.12, lw=0)
                else:  # one budget: a band would have no width, so the spread is an error bar
                    ax.errorbar(x, y, yerr=e, fmt="none", ecolor=color, elinewidth=1.2, capsize=4)
                spread.extend(np.concatenate([y - e, y + e]).tolist())
                lines.setdefault(f"{system}: {setting}", ln)
        positive = [x for x in xs if x > 0]
        if positive and xs[-1] / positive[0] >= 8:
            # log spacing for budgets like 25..1386; symlog keeps n = 0 (stage 1 alone) on the axis
            if xs[0] > 0:
                ax.set_xscale("log")
            else:
                ax.set_xscale("symlog", linthresh=positive[0], linscale=0.5)
        ax.set_xticks(xs)
        ax.set_xticklabels(_spaced_labels(xs, ax.get_xscale() != "linear"), fontsize=7, rotation=60)
        ax.minorticks_off()
        ax.grid(alpha=0.25)
        what, dim = metric.split("_", 1)
        log_y = what == "mse" and _wide_positive(spread)
        if log_y:
            # stage 1 alone (n = 0) often has an MSE several times the rest: on a linear axis it would
            # squash every other point into a line at the bottom
            from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_locator(NullLocator())
        ax.set_title(
            f"{'Pearson r' if what == 'r' else 'MSE'} of {dim}" + (" (log scale)" if log_y else ""),
            fontsize=10,
        )
        ax.set_ylabel(f"{'r' if what == 'r' else 'MSE'} ({dim})")
        ax.set_xlabel("VA-labelled training items")
    fig.suptitle("Low-resource curve: mean \u00b1 std over seeds", fontsize=11)
    fig.legend(
        list(lines.values()),
        list(lines),
        loc="lower center",
        ncol=min(3, max(1, len(lines))),
        fontsize=8,
        frameon=False,
    )
    legend_rows = math.ceil(len(lines) / min(3, max(1, len(lines))))
    fig.tight_layout(rect=(0, min(0.4, 0.035 * legend_rows + 0.03) * (2 / (rows + 1)), 1, 1))
    return save_figure(fig, path, formats)


def _wide_positive(values: Sequence[float], ratio: float = 4.0) -> bool:
    """True when positive values span more than `ratio` (max / min): a log axis then reads better."""
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=float)
    return bool(v.size and (v > 0).all() and v.max() / v.min() > ratio)


def _has(summary: Sequence[dict], metric: str) -> bool:
    return any(np.isfinite(r.get(f"{metric}_mean", np.nan)) for r in summary)
