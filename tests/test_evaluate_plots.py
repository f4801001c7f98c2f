"""Report plots read at a glance: titles, the systems a plane shows, the curve's spread and axes."""

import re

import numpy as np
import pytest

from evoked.evaluate import plots


@pytest.fixture
def figures(monkeypatch):
    """Every figure the plots draw, kept for inspection."""
    made = []
    real = plots._figure

    def keep(*a, **k):
        made.append(real(*a, **k))
        return made[-1]

    monkeypatch.setattr(plots, "_figure", keep)
    return made


@pytest.mark.parametrize(
    "name",
    [
        "two_stage/resnet50+color+clip-vit-b-32_scene",
        "knn:clip-vit-b-32/embed (k=20, cosine)",
        "a" * 50,
        "svr",
    ],
)
def test_titles_break_only_between_words(name):
    lines = plots._title_lines(name, 20)
    assert "".join(lines).replace(" ", "") == name.replace(" ", "")
    words = [w for w in re.split(r"[\s/+:,_]", name) if w]
    assert all(any(w in line for line in lines) for w in words)  # no word cut in two
    # a line runs over the width only when it is one token that cannot be broken
    assert all(len(line) <= 20 or len(re.split(r"(?<=[\s/+:,_])", line)) == 1 for line in lines)


def _summary(ns, mse0=6.0):
    rows = []
    for n in ns:
        m = mse0 if n == 0 else 1.0 + 3 / np.sqrt(n)
        rows.append(
            dict(
                system="ridge",
                setting="two_stage",
                n_labels=n,
                r_valence_mean=0.4,
                r_valence_std=0.05,
                mse_valence_mean=m,
                mse_valence_std=0.1,
            )
        )
    return rows


def test_the_curve_keeps_the_mse_panel_readable_when_n0_is_far_off(tmp_path, figures):
    plots.curve_plot(tmp_path / "c.png", _summary([0, 25, 100, 400]))
    r_ax, mse_ax = figures[-1].axes[:2]
    assert r_ax.get_yscale() == "linear" and mse_ax.get_yscale() == "log" and "log" in mse_ax.get_title()
    plots.curve_plot(tmp_path / "d.png", _summary([25, 100, 400]))
    assert figures[-1].axes[1].get_yscale() == "linear"  # no n = 0, no need


def test_a_curve_with_one_budget_shows_its_spread(tmp_path, figures):
    plots.curve_plot(tmp_path / "c.png", _summary([100]))
    ax = figures[-1].axes[0]
    (bars,) = ax.containers
    lo, hi = bars.lines[2][0].get_segments()[0][:, 1]
    assert (lo, hi) == pytest.approx((0.35, 0.45))


def test_the_va_plane_says_which_systems_it_shows(tmp_path, figures):
    truth = np.random.default_rng(0).uniform(1, 9, (40, 2))
    systems = [(f"sys{k}", truth + 0.1 * k) for k in range(3)]
    plots.va_plane_plot(tmp_path / "p.png", truth, systems, n_systems=9)
    title = figures[-1]._suptitle.get_text()
    assert "showing 3 of 9 systems" in title and title.count("\n") <= 1  # the panels name them
    assert [ax.get_title() for ax in figures[-1].axes[1:]] == ["sys0", "sys1", "sys2"]
    plots.va_plane_plot(tmp_path / "q.png", truth, systems, n_systems=3)
    assert "showing" not in figures[-1]._suptitle.get_text()


def test_scatter_titles_do_not_reach_into_the_row_above(tmp_path, figures):
    rng = np.random.default_rng(0)
    truth = rng.uniform(1, 9, 50)
    names = [
        "two_stage/resnet50+color+clip-vit-b-32_scene+lbp",
        "svr",
        "ridge:a/b+c/d+e/f+g/h+i/j",
        "knn",
        "mlp",
    ]
    plots.scatter_plot(
        tmp_path / "s.png", "valence", truth, [(n, truth + rng.normal(0, 1, 50), 0.5) for n in names]
    )
    fig = figures[-1]
    renderer = fig.canvas.get_renderer()
    top, bottom = fig.axes[:4], fig.axes[4:]
    for ax in bottom:
        title = ax.title.get_window_extent(renderer)
        for above in top:
            box = above.get_tightbbox(renderer)  # tick labels and x label included
            if box.x0 < title.x1 and title.x0 < box.x1:  # the same column
                assert title.y1 < box.y0
