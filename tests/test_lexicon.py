from pathlib import Path

import numpy as np
import pytest

from evoked.data.lexicon import CATEGORY_SETS, load_lexicon, parse_category_map
from evoked.errors import LabelError


def test_builtin_tables_cover_every_category_set():
    for name in ("nrc", "warriner"):
        lex = load_lexicon(name)
        for words in CATEGORY_SETS.values():
            lex.check(words)


def test_nrc_is_scaled_as_the_two_stage_paper_does():
    lex = load_lexicon("nrc")
    np.testing.assert_allclose(lex.va("awe"), [0.469 * 8 + 1, 0.740 * 8 + 1])
    np.testing.assert_allclose(load_lexicon("warriner").va("awe"), [6.85, 3.83])
    assert lex.describe()["name"] == "nrc" and "v*8+1" in lex.describe()["source"]


def test_hard_labels_with_missing_and_case():
    lex = load_lexicon("warriner")
    out = lex.hard(["Joy", "", None, "fear"])
    np.testing.assert_allclose(out[0], [8.21, 5.55])
    assert np.isnan(out[1]).all() and np.isnan(out[2]).all()
    np.testing.assert_allclose(out[3], [2.93, 6.14])


def test_soft_is_the_expected_va():
    lex = load_lexicon("warriner")
    cats = ["joy", "fear"]
    dist = np.array([[1.0, 0.0], [0.5, 0.5], [2.0, 2.0], [np.nan, np.nan]])
    out = lex.soft(dist, cats)
    np.testing.assert_allclose(out[0], [8.21, 5.55])
    np.testing.assert_allclose(out[1], [(8.21 + 2.93) / 2, (5.55 + 6.14) / 2])
    np.testing.assert_allclose(out[2], out[1])  # counts are renormalised
    assert np.isnan(out[3]).all()
    with pytest.raises(LabelError, match="shape"):
        lex.soft(dist, ["joy"])


def test_inverse_cosine_and_euclidean():
    lex = load_lexicon("nrc")
    cats = list(CATEGORY_SETS["ekman7"])
    m = lex.matrix(cats)
    # each category's own VA maps back to itself under both metrics
    assert list(lex.nearest(m, cats, "euclidean")) == cats
    cos = lex.nearest(m * 1.7, cats, "cosine")  # cosine ignores length
    assert all(
        lex.va(c) @ lex.va(w) / np.linalg.norm(lex.va(c)) / np.linalg.norm(lex.va(w)) > 0.999
        for c, w in zip(cats, cos)
    )
    assert lex.nearest(np.array([[np.nan, 5.0]]), cats)[0] == ""
    with pytest.raises(LabelError, match="cosine"):
        lex.nearest(m, cats, "manhattan")


def test_unknown_word_names_the_known_words_and_the_flag():
    lex = load_lexicon("nrc")
    with pytest.raises(LabelError) as e:
        lex.hard(["joy", "happyish"])
    msg = str(e.value)
    assert "'happyish'" in msg and "amusement" in msg and "--lexicon" in msg and "--category-map" in msg


def test_aliases_map_dataset_labels():
    lex = load_lexicon("nrc").with_aliases(parse_category_map(["happy=joy"]))
    np.testing.assert_allclose(lex.va("Happy"), load_lexicon("nrc").va("joy"))
    with pytest.raises(LabelError):
        load_lexicon("nrc").with_aliases({"x": "not-a-word"})
    with pytest.raises(LabelError, match="LABEL=WORD"):
        parse_category_map(["happy"])


def test_nrc_file_v1_and_v2(tmp_path: Path):
    v1 = tmp_path / "NRC-VAD-Lexicon.txt"
    v1.write_text("Word\tValence\tArousal\tDominance\njoy\t0.980\t0.824\t0.794\nugly\t0.100\t0.500\t0.400\n")
    lex = load_lexicon(str(v1))
    np.testing.assert_allclose(lex.va("ugly"), [1.8, 5.0])
    assert lex.sha256 and "v1" in lex.scale
    v2 = tmp_path / "nrc_v2.txt"
    v2.write_text("term\tvalence\tarousal\tdominance\njoy\t0.96\t0.65\t0.59\nugly\t-1.0\t0.0\t0.0\n")
    np.testing.assert_allclose(load_lexicon(str(v2)).va("ugly"), [1.0, 5.0])
    bad = tmp_path / "bad.txt"
    bad.write_text("joy\t3.5\t4\t4\n")
    with pytest.raises(LabelError, match="0..1"):
        load_lexicon(str(bad))


def test_generic_csv(tmp_path: Path):
    f = tmp_path / "norms.csv"
    f.write_text("word,valence,arousal\nbliss,8.5,4.0\n")
    np.testing.assert_allclose(load_lexicon(str(f)).va("bliss"), [8.5, 4.0])
    f.write_text("word,valence\nbliss,8.5\n")
    with pytest.raises(LabelError, match="word,valence,arousal"):
        load_lexicon(str(f))
    f.write_text("word,valence,arousal\nbliss,0.9,0.4\n")
    with pytest.raises(LabelError, match="outside 1..9"):
        load_lexicon(str(f))


def test_unknown_lexicon_spec():
    with pytest.raises(LabelError, match="nrc, warriner"):
        load_lexicon("no-such-table")
