"""One table reader, one set of missing-value tokens: manifests, prediction files, run folders and
lexicons read a number cell the same way."""

import math

import pytest

from evoked.data import load_dataset, load_lexicon
from evoked.data.text import MISSING, parse_float, parse_int, read_rows
from evoked.errors import DatasetError, LabelError
from evoked.evaluate.truth import read_prediction_rows
from evoked.runfolder import read_curve, read_prediction_groups


@pytest.mark.parametrize("token", ["", " ", "NaN", "nan", "NA", "n/a", "None", "null", None])
def test_every_missing_token_is_nan(token):
    assert math.isnan(parse_float(token, "f:2", "valence"))
    assert parse_int(token, "f:2", "fold") == -1


def test_bad_cells_name_the_place_and_the_value():
    with pytest.raises(DatasetError, match=r"f:2: valence 'high' is not a number"):
        parse_float("high", "f:2", "valence")
    with pytest.raises(LabelError, match=r"f:2: valence 'inf' is infinite"):
        parse_float("inf", "f:2", "valence", error=LabelError)
    with pytest.raises(DatasetError, match=r"f:2: no arousal value"):
        parse_float("NA", "f:2", "arousal", required=True)
    with pytest.raises(DatasetError, match=r"f:2: seed '1\.5' must be a whole number"):
        parse_int("1.5", "f:2", "seed")
    assert parse_int("3.0", "f:2", "fold", minimum=0) == 3


def test_manifest_prediction_file_and_run_folder_agree_on_missing(tmp_path):
    """On main `NA` was missing in a run's predictions.csv but 'not a number' in a manifest."""
    (tmp_path / "m.csv").write_text("path,valence,arousal,fold\na.jpg,NA,null,n/a\nb.jpg,5,6,1\n")
    m = load_dataset(f"csv:{tmp_path / 'm.csv'}")
    assert math.isnan(m.valence[0]) and math.isnan(m.arousal[0]) and m.fold.tolist() == [-1, 1]

    (tmp_path / "p.csv").write_text("id,model,valence_pred,arousal_pred\na.jpg,ridge,NA,N/A\n")
    row = read_prediction_rows(tmp_path / "p.csv")[0]
    assert math.isnan(row["valence_pred"]) and math.isnan(row["arousal_pred"])

    (tmp_path / "predictions.csv").write_text(
        "model,id,fold,split,valence_true,arousal_true,valence_pred,arousal_pred,category_true\n"
        "ridge,a.jpg,n/a,,null,NA,5,6,\n"
    )
    p = read_prediction_groups(tmp_path / "predictions.csv")[""]["ridge"]
    assert p.fold.tolist() == [-1] and all(math.isnan(x) for x in p.true[0])


def test_a_run_file_with_a_fractional_count_is_refused(tmp_path):
    """On main `n_labels` 12.7 was silently read as 12."""
    (tmp_path / "curve.csv").write_text("model,setting,n_labels,seed\nridge,cv,12.7,0\n")
    with pytest.raises(DatasetError, match=r"curve\.csv:2: n_labels '12\.7' must be a whole number"):
        read_curve(tmp_path / "curve.csv")


def test_lexicon_refuses_a_missing_value_token(tmp_path):
    (tmp_path / "lex.csv").write_text("word,valence,arousal\njoy,8,NA\n")
    with pytest.raises(LabelError, match=r"lex\.csv:2: no arousal value"):
        load_lexicon(str(tmp_path / "lex.csv"))


def test_read_rows_reads_csv_tsv_and_jsonl_alike(tmp_path):
    (tmp_path / "t.csv").write_text("a, b\n1,x\n")
    (tmp_path / "t.tsv").write_text("a\tb\n1\tx\n")
    (tmp_path / "t.jsonl").write_text('{"a": 1, "b": "x"}\n\n')
    for name in ("t.csv", "t.tsv", "t.jsonl"):
        rows, _ = read_rows(tmp_path / name)
        assert parse_float(rows[0]["a"], name, "a") == 1 and rows[0]["b"] == "x"
    assert MISSING >= {"", "nan", "na", "none", "null"}
