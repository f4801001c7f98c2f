"""One lexicon + category-map loader: regress targets, finetune and evaluate accept the same inputs."""

import numpy as np
import pytest

from evoked.data.lexicon import load_lexicon, parse_category_map
from evoked.errors import LabelError
from evoked.evaluate import evaluate, write_run
from evoked.regress.targets import make_targets
from test_evaluate_report import _columns, _truth


@pytest.mark.parametrize(
    "mapping", [["Happy=JOY", "mad = anger"], {"Happy": "JOY", "mad ": "anger"}, "happy=joy"]
)
def test_a_map_as_list_dict_or_one_item_means_the_same(mapping):
    lex = load_lexicon("nrc", mapping)
    np.testing.assert_allclose(lex.va("happy"), load_lexicon("nrc").va("joy"))
    assert parse_category_map(mapping)["happy"] == "joy"


def test_an_alias_to_an_unknown_word_is_refused():
    with pytest.raises(LabelError, match="unicorn"):
        load_lexicon("nrc", ["happy=unicorn"])
    with pytest.raises(LabelError, match="expected LABEL=WORD"):
        load_lexicon("nrc", ["happy"])


def test_evaluate_takes_the_cli_form_of_a_category_map(tmp_path):
    """On main `evaluate(category_map=["happy=joy"])` failed: it accepted a dict only, unlike regress."""
    ids, fold, va, _ = _truth(20)
    cat = np.array(["happy", "mad"])[np.arange(20) % 2]
    write_run(tmp_path / "A", {}, {"m": _columns(ids, fold, va, cat, 0.5, 0)})
    report = evaluate([tmp_path / "A"], bootstrap=0, plots=False, category_map=["happy=joy", "mad=anger"])
    assert report["systems"][0]["category"]["n"] == 20


def test_regress_targets_take_the_dict_form():
    labels = {"category": np.array(["happy", "mad"], dtype=object)}
    t = make_targets(labels, "category-va", category_map={"Happy": "joy", "mad": "anger"})
    np.testing.assert_allclose(t.y[0], load_lexicon("nrc").va("joy"))
