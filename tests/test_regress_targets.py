"""Training targets: VA ratings, category-derived VA (hard, soft, aliased), and what is missing."""

from __future__ import annotations

import numpy as np
import pytest

from evoked.data.lexicon import load_lexicon
from evoked.errors import ConfigError, LabelError
from evoked.regress.targets import make_targets


def labels(**over):
    base = {
        "category": np.array(["joy", "fear", "", "sadness"], dtype=object),
        "valence": np.array([7.0, 2.0, np.nan, 3.0]),
        "arousal": np.array([5.0, 6.0, 4.0, np.nan]),
        "split": np.array([""] * 4, dtype=object),
        "fold": np.full(4, -1),
    }
    base.update(over)
    return base


def test_va_uses_rows_with_both_ratings_and_counts_the_rest():
    t = make_targets(labels(), "va")
    np.testing.assert_array_equal(t.mask, [True, True, False, False])
    np.testing.assert_array_equal(t.y[:2], [[7, 5], [2, 6]])
    assert t.description == {"kind": "va"} and t.missing == {"no VA rating": 2} and t.n == 2


def test_category_va_hard_follows_the_lexicon():
    t = make_targets(labels(), "category-va", lexicon="nrc")
    nrc = load_lexicon("nrc")
    np.testing.assert_allclose(t.y[0], nrc.va("joy"))
    np.testing.assert_allclose(t.y[3], nrc.va("sadness"))
    np.testing.assert_array_equal(t.mask, [True, True, False, True])
    assert t.missing == {"no category": 1}
    assert t.description["kind"] == "category-va" and t.description["lexicon"]["name"] == "nrc"
    assert t.description["soft"] is False
    warriner = make_targets(labels(), "category-va", lexicon="warriner")
    assert not np.allclose(warriner.y[0], t.y[0])  # the table used matters, and is recorded
    assert warriner.description["lexicon"]["name"] == "warriner"


def test_category_map_aliases_dataset_labels():
    lab = labels(category=np.array(["happy", "fear", "", "sadness"], dtype=object))
    with pytest.raises(LabelError, match="unknown emotion category 'happy'.*--category-map"):
        make_targets(lab, "category-va")
    t = make_targets(lab, "category-va", category_map=["happy=joy"])
    np.testing.assert_allclose(t.y[0], load_lexicon("nrc").va("joy"))
    assert t.description["lexicon"]["aliases"] == {"happy": "joy"}


def test_soft_targets_are_expected_va_of_the_distribution():
    cats = ["joy", "fear"]
    dist = np.array([[1.0, 0.0], [0.5, 0.5], [np.nan, np.nan], [0.0, 0.0]])
    t = make_targets(labels(distribution=dist, categories=cats), "category-va", soft=True)
    m = load_lexicon("nrc").matrix(cats)
    np.testing.assert_allclose(t.y[0], m[0])
    np.testing.assert_allclose(t.y[1], m.mean(axis=0))
    np.testing.assert_array_equal(t.mask, [True, True, False, False])
    assert t.missing == {"no distribution": 1, "distribution sums to 0": 1}
    assert t.description["soft"] is True and t.description["categories"] == cats


def test_bad_target_options_are_config_errors():
    with pytest.raises(ConfigError, match="unknown --target 'valence'"):
        make_targets(labels(), "valence")
    with pytest.raises(ConfigError, match="only apply to --target category-va"):
        make_targets(labels(), "va", lexicon="nrc")
    with pytest.raises(ConfigError, match="--soft needs label distributions"):
        make_targets(labels(), "category-va", soft=True)
