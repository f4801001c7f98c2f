"""`evoked predict`: features extracted as the run's store recorded them, VA per image, bad images reported."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image
from evoked.cli import main
from evoked.errors import ConfigError
from evoked.extract.runner import extract
from evoked.regress.predict import collect_images, predict_images
from evoked.regress.runner import run_regress


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """Colour features of joy (yellow) and fear (dark blue) images; ridge on keyword-derived VA."""
    root = tmp_path_factory.mktemp("predict")
    ds = root / "ds"
    for ci, (cat, color) in enumerate((("joy", (230, 200, 40)), ("fear", (20, 20, 90)))):
        for k in range(8):
            make_image(ds / cat / f"{k}.jpg", color=color, seed=ci * 10 + k)
    store = root / "color.h5"
    extract(f"folder:{ds}", store, ["color"], device="cpu", batch_size=8, workers=0)
    run = root / "run"
    run_regress(store, features=["color/stats"], out=run, target="category-va", lexicon="nrc", cv=0)
    return run, store


def test_predict_images_gives_joy_a_higher_valence_than_fear(trained, tmp_path: Path):
    run, _ = trained
    joy = make_image(tmp_path / "new" / "yellow.png", color=(235, 205, 45), seed=99)
    fear = make_image(tmp_path / "new" / "navy.jpg", color=(15, 25, 95), seed=98)
    (tmp_path / "new" / "notes.txt").write_text("not an image")
    result = predict_images([tmp_path / "new"], run)
    assert result.model == "ridge" and sorted(result.paths) == sorted([str(joy), str(fear)])
    va = dict(zip(result.paths, result.va))
    assert va[str(joy)][0] > va[str(fear)][0] + 2  # joy is ~8.7 in NRC, fear ~2
    assert any("not images" in n for n in result.notes)


def test_predict_reports_bad_images_and_strict_fails(trained, tmp_path: Path, capsys):
    run, _ = trained
    good = make_image(tmp_path / "a.jpg", color=(230, 200, 40))
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"\xff\xd8 truncated")
    assert main(["predict", str(good), str(bad), "--run", str(run), "-q"]) == 0
    captured = capsys.readouterr()
    rows = list(csv.DictReader(io.StringIO(captured.out)))
    assert len(rows) == 1 and rows[0]["path"] == str(good) and rows[0]["id"] == str(good)
    assert rows[0]["model"] == "ridge"
    v, a = float(rows[0]["valence_pred"]), float(rows[0]["arousal_pred"])
    assert 1 <= v <= 9 and 1 <= a <= 9
    assert f"cannot read {bad}" in captured.err and "1 failed" in captured.err
    assert main(["predict", str(good), str(bad), "--run", str(run), "--strict", "-q"]) == 1
    capsys.readouterr()
    assert main(["predict", str(good), "--run", str(run), "--json", "-q"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["predictions"][0]["path"] == str(good) and printed["failures"] == {}


def test_predict_without_the_store_uses_the_saved_configuration(trained, tmp_path: Path):
    run, store = trained
    img = make_image(tmp_path / "x.jpg", color=(230, 200, 40))
    before = predict_images([img], run).va
    moved = store.with_name("moved.h5")
    store.rename(moved)
    try:
        after = predict_images([img], run).va
    finally:
        moved.rename(store)
    np.testing.assert_allclose(after, before)


def test_predict_errors(trained, tmp_path: Path):
    run, _ = trained
    with pytest.raises(ConfigError, match="not an image file, a folder or a dataset spec"):
        collect_images([tmp_path / "missing.jpg"])
    with pytest.raises(ConfigError, match="not a run folder"):
        predict_images([tmp_path], tmp_path)
    with pytest.raises(ConfigError, match="'svr' is not in"):
        predict_images([tmp_path], run, model="svr")


def test_predict_output_is_a_predictions_file_evaluate_scores(trained, tmp_path: Path, capsys):
    """`predict` CSV -> `evaluate --predictions --truth`: rows join by id, else by the image's path."""
    run, _ = trained
    ds = run.parent / "ds"
    rows = [
        {
            "id": f"{c}/{k}.jpg",
            "path": str(ds / c / f"{k}.jpg"),
            "valence": v + 0.1 * k,
            "arousal": 5.0 + 0.1 * k,
        }
        for c, v in (("joy", 7.0), ("fear", 2.5))
        for k in range(8)
    ]
    with (tmp_path / "truth.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    by_id, by_path = tmp_path / "by_id.csv", tmp_path / "by_path.csv"
    assert main(["predict", f"folder:{ds}", "--run", str(run), "--out", str(by_id), "-q"]) == 0
    files = [str(ds / "joy" / f"{k}.jpg") for k in range(8)] + [
        str(ds / "fear" / f"{k}.jpg") for k in range(8)
    ]
    assert main(["predict", *files, "--run", str(run), "--out", str(by_path), "-q"]) == 0
    written = list(csv.DictReader(by_id.open()))
    assert list(written[0]) == ["id", "path", "model", "valence_pred", "arousal_pred"]
    assert sorted(r["id"] for r in written) == sorted(r["id"] for r in rows)  # the folder dataset's ids
    assert all(r["id"] == r["path"] for r in csv.DictReader(by_path.open()))  # files: ids are their paths
    capsys.readouterr()
    args = ["--truth", f"csv:{tmp_path / 'truth.csv'}", "--bootstrap", "0", "--no-plots", "--json", "-q"]
    for p in (by_id, by_path):
        assert main(["evaluate", "--predictions", str(p), "--out", str(tmp_path / "rep"), *args]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["items"]["n"] == 16 and report["systems"][0]["valence"]["r"] > 0.9


def test_predict_then_evaluate_round_trips_from_relative_paths(trained, tmp_path: Path, monkeypatch, capsys):
    """Failure 3 of issue 21: `predict FOLDER --out preds/x.csv` from one working directory, then
    `evaluate --predictions preds/x.csv --truth DATASET`: the rows join the dataset by their paths."""
    run, _ = trained
    ds = run.parent / "ds"
    truth = tmp_path / "truth.csv"
    with truth.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "valence", "arousal"])
        for k in range(8):  # ids the folder's own ids ("3.jpg") do not match: only paths join
            w.writerow([f"e6-fear-{k}", str(ds / "fear" / f"{k}.jpg"), 2.0 + 0.3 * k, 4.0 + 0.2 * k])
    monkeypatch.chdir(run.parent)
    assert main(["predict", "ds/fear", "--run", str(run), "--out", "preds/fear.csv", "-q"]) == 0
    capsys.readouterr()
    args = ["--truth", f"csv:{truth}", "--bootstrap", "0", "--no-plots", "--json", "-q"]
    assert main(["evaluate", "--predictions", "preds/fear.csv", *args]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"]["n"] == 8
