"""Category accuracy of VA predictions: each predicted VA point -> the nearest category in a lexicon.

This is how the two-stage paper scores a VA regressor on a categorical set: the lexicon gives each
category word a VA point, the prediction takes the category whose point is nearest (cosine of the raw
1..9 vectors by default), and accuracy counts agreement with the true label.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from evoked.data.lexicon import Lexicon, normalize_word


def category_word(lexicon: Lexicon, word: str) -> str:
    """The lexicon word a label stands for (case, spacing and aliases resolved)."""
    w = normalize_word(word)
    return normalize_word(lexicon.aliases.get(w, w))


def nearest_categories(
    va_pred: np.ndarray, lexicon: Lexicon, categories: Sequence[str], metric: str = "cosine"
) -> np.ndarray:
    """(n,) predicted category words ("" where the prediction has a NaN)."""
    return lexicon.nearest(np.asarray(va_pred, dtype=np.float64), list(categories), metric)


def category_correct(
    category_true: Sequence[str] | np.ndarray,
    va_pred: np.ndarray,
    lexicon: Lexicon,
    categories: Sequence[str],
    metric: str = "cosine",
) -> tuple[np.ndarray, np.ndarray]:
    """Per item: whether the nearest category is right (bool), and the predicted word.

    The comparison goes through the lexicon's own keys, so an alias (``happy`` -> ``joy``) and a
    differently cased label count as the same word.
    """
    predicted = nearest_categories(va_pred, lexicon, categories, metric)
    truth = np.asarray(category_true, dtype=object)
    correct = np.array(
        [
            bool(t) and bool(p) and category_word(lexicon, t) == category_word(lexicon, p)
            for t, p in zip(truth, predicted)
        ],
        dtype=bool,
    )
    return correct, predicted


def category_accuracy(
    category_true: Sequence[str] | np.ndarray,
    va_pred: np.ndarray,
    lexicon: Lexicon,
    categories: Sequence[str],
    metric: str = "cosine",
) -> dict:
    """Accuracy over the items with a known category in `categories`, with per-category counts.

    Returns ``n``, ``accuracy`` and ``confusion`` (true word -> predicted word -> count).
    """
    truth = np.asarray(category_true, dtype=object)
    keys = {category_word(lexicon, c) for c in categories}
    keep = np.array([bool(t) and category_word(lexicon, t) in keys for t in truth], dtype=bool)
    keep &= ~np.isnan(np.asarray(va_pred, dtype=np.float64)).any(axis=1)
    correct, predicted = category_correct(truth[keep], np.asarray(va_pred)[keep], lexicon, categories, metric)
    confusion: dict[str, dict[str, int]] = {}
    for t, p in zip(truth[keep], predicted):
        row = confusion.setdefault(str(t), {})
        row[str(p)] = row.get(str(p), 0) + 1
    return {
        "n": int(keep.sum()),
        "accuracy": float(correct.mean()) if correct.size else float("nan"),
        "confusion": confusion,
    }
