import json
from pathlib import Path

import numpy as np

from conftest import EMOTION6, needs_emotion6
from evoked.cli import main
from evoked.data import load_dataset, load_lexicon


def test_inspect_reports_every_bad_file(folder_dataset: Path, capsys):
    (folder_dataset / "joy" / "empty.jpg").write_bytes(b"")
    (folder_dataset / "fear" / "text.png").write_text("hello")
    good = (folder_dataset / "joy" / "0.jpg").read_bytes()
    (folder_dataset / "joy" / "cut.jpg").write_bytes(good[: len(good) // 2])
    assert main(["data", "inspect", f"folder:{folder_dataset}", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"] == 15
    reasons = {Path(f["path"]).name: f["reason"] for f in report["failures"]}
    assert set(reasons) == {"empty.jpg", "text.png", "cut.jpg"}
    assert "empty file" in reasons["empty.jpg"] and "not a recognised" in reasons["text.png"]
    assert "truncated" in reasons["cut.jpg"] or "corrupt" in reasons["cut.jpg"]
    assert main(["data", "inspect", f"folder:{folder_dataset}", "--strict"]) == 1
    text = capsys.readouterr().out
    assert "failures 3" in text and "empty.jpg: empty file" in text


def test_inspect_missing_file_in_manifest(tmp_path: Path, capsys):
    (tmp_path / "m.csv").write_text("path,valence,arousal\nnot-there.jpg,5,5\n")
    main(["data", "inspect", str(tmp_path / "m.csv"), "--json"])
    report = json.loads(capsys.readouterr().out)
    assert report["failures"][0]["reason"] == "file not found"


def test_split_writes_a_manifest_that_reads_back(folder_dataset: Path, tmp_path: Path, capsys):
    out = tmp_path / "splits" / "ds.csv"
    assert (
        main(
            [
                "data",
                "split",
                f"folder:{folder_dataset}",
                "--out",
                str(out),
                "--ratios",
                "0.5,0.25,0.25",
                "--folds",
                "3",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    assert "csv:" in capsys.readouterr().out
    m = load_dataset(f"csv:{out}")
    assert m.split_counts() == {"train": 6, "val": 3, "test": 3}
    assert set(m.fold) == {0, 1, 2}
    # the same call writes the same split
    main(
        [
            "data",
            "split",
            f"folder:{folder_dataset}",
            "--out",
            str(tmp_path / "again.csv"),
            "--ratios",
            "0.5,0.25,0.25",
            "--folds",
            "3",
            "--seed",
            "1",
        ]
    )
    assert list(load_dataset(str(tmp_path / "again.csv")).split) == list(m.split)


def test_errors_are_one_clear_line(tmp_path: Path, capsys):
    assert main(["data", "inspect", f"folder:{tmp_path / 'nope'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("evoked: error:") and "does not exist" in err and "Traceback" not in err


@needs_emotion6
def test_emotion6_inspect(capsys):
    assert main(["data", "inspect", f"emotion6:{EMOTION6}", "--json", "--header-only"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["items"] == 1980 and r["failures"] == []
    assert r["categories"] == {c: 330 for c in ("anger", "disgust", "fear", "joy", "sadness", "surprise")}
    assert (r["valence"]["min"], r["valence"]["max"]) == (1.0, 8.6)


@needs_emotion6
def test_emotion6_category_derived_va_tracks_true_valence():
    m = load_dataset(f"emotion6:{EMOTION6}")
    lex = load_lexicon("nrc")
    hard = lex.hard(m.category)
    soft = lex.soft(m.distribution, m.categories)
    r_hard = np.corrcoef(hard[:, 0], m.valence)[0, 1]
    r_soft = np.corrcoef(soft[:, 0], m.valence)[0, 1]
    assert round(r_hard, 2) == 0.71 and round(r_soft, 2) == 0.93


def test_version_and_doctor(capsys, monkeypatch, tmp_path):
    import pytest

    from evoked import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"evoked {__version__}"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert main(["doctor", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["evoked"] == __version__ and "cuda_available" in d["torch"] and d["faiss"]["available"]
    assert d["caches"]["torch_hub"] == str(tmp_path / "hub")
    assert all(not w["present"] for w in d["weights"]["torchvision"])  # an empty cache has none
    assert main(["doctor"]) == 0
    assert "pretrained weights present locally" in capsys.readouterr().out
