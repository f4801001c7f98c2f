"""The rating scale: VA ratings outside it are refused before any training, naming item and value."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evoked.errors import LabelError

DEFAULT_VA_RANGE: tuple[float, float] = (1.0, 9.0)  # the SAM / rating-study scale


def parse_va_range(value: str | Sequence[float] | None) -> tuple[float, float]:
    """`"1,9"` or `(1, 9)` -> (1.0, 9.0); None -> the default 1-9 scale."""
    if value is None:
        return DEFAULT_VA_RANGE
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        lo, hi = (float(p) for p in parts)
    except (TypeError, ValueError) as e:
        raise LabelError(f"--va-range {value!r} is not LO,HI (two numbers, e.g. --va-range 1,9)") from e
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise LabelError(f"--va-range {value!r}: need finite LO < HI, e.g. --va-range 1,9")
    return lo, hi


def _outside(
    ids: Sequence[str], valence: np.ndarray, arousal: np.ndarray, lo: float, hi: float
) -> tuple[int, list[str]]:
    """How many known values lie outside lo..hi (inf always does), and the first five, named."""
    bad: list[str] = []
    n_bad = 0
    for dim, values in (("valence", np.asarray(valence, float)), ("arousal", np.asarray(arousal, float))):
        out = ~np.isnan(values) & ~((values >= lo) & (values <= hi))
        n_bad += int(out.sum())
        for i in np.flatnonzero(out)[: 5 - len(bad)]:
            bad.append(f"{ids[i]!r} {dim}={values[i]:g}")
    return n_bad, bad


def check_va_range(
    ids: Sequence[str],
    valence: np.ndarray,
    arousal: np.ndarray,
    va_range: tuple[float, float] = DEFAULT_VA_RANGE,
    *,
    source: str,
) -> None:
    """Raise LabelError naming the first offending items when a known rating lies outside va_range.

    NaN means "not rated" and is allowed; +-inf is not a rating and is refused.
    """
    lo, hi = va_range
    n_bad, bad = _outside(ids, valence, arousal, lo, hi)
    if n_bad:
        raise LabelError(
            f"{source}: {n_bad} rating(s) outside the scale {lo:g}..{hi:g}: {', '.join(bad)}"
            f"{' ...' if n_bad > len(bad) else ''}. Fix the ratings, or pass --va-range LO,HI "
            f"if the dataset uses another scale."
        )


def check_prediction_scale(
    ids: Sequence[str],
    pred: np.ndarray,
    va_range: tuple[float, float] = DEFAULT_VA_RANGE,
    *,
    source: str,
) -> None:
    """Raise LabelError when predictions lie far off the rating scale (x100, 0..1000, 1e308).

    A regressor may overshoot the scale a little; a prediction more than the scale's width beyond
    either end is on another scale, and scoring it against the ratings would mean nothing.
    """
    lo, hi = va_range
    width = hi - lo
    pred = np.asarray(pred, float)
    n_bad, bad = _outside(ids, pred[:, 0], pred[:, 1], lo - width, hi + width)
    if n_bad:
        raise LabelError(
            f"{source}: {n_bad} prediction(s) far outside the rating scale {lo:g}..{hi:g} (beyond "
            f"{lo - width:g}..{hi + width:g}): {', '.join(bad)}{' ...' if n_bad > len(bad) else ''}. "
            "The predictions are on another scale: rescale them to the ratings' scale, or pass "
            "--va-range LO,HI if the ratings use another one."
        )
