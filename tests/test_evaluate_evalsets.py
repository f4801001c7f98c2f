"""`evaluate` per eval set (rows with an ``eval`` name, matched across runs by their items), the
`--predictions --truth` scorer, and the curve that pools only runs differing in their seed."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from evoked.cli import main
from evoked.errors import DatasetError
from evoked.evaluate import evaluate, read_run, write_run
from evoked.evaluate.metrics import regression_metrics
from evoked.evaluate.report import curve_summary, evaluate_predictions


def _cols(ids, va, pred, *, fold, split, eval_name="", kind=None):
    n = len(ids)
    cols = {
        "id": list(ids),
        "fold": [fold] * n if isinstance(fold, int) else list(fold),
        "split": [split] * n if isinstance(split, str) else list(split),
        "valence_true": va[:, 0],
        "arousal_true": va[:, 1],
        "valence_pred": pred[:, 0],
        "arousal_pred": pred[:, 1],
        "category_true": [""] * n,
        "eval": [eval_name] * n,
    }
    if kind:
        cols["kind"] = [kind] * n
    return cols


def _join(*groups):
    return {k: [v for g in groups for v in list(g[k])] for k in groups[0]}


@pytest.fixture
def transfer_runs(tmp_path):
    """A regress-like CV run on store A with --eval B (and a predict-only C), a finetune-like run on
    another dataset whose --eval over B's ids has another name: the training sides differ."""
    rng = np.random.default_rng(0)
    a_ids = [f"a{i}" for i in range(20)]
    b_ids = [f"b{i}" for i in range(15)]
    a_va, b_va = rng.uniform(1, 9, (20, 2)), rng.uniform(1, 9, (15, 2))
    nan = np.full((4, 2), np.nan)
    reg = write_run(
        tmp_path / "reg",
        {
            "kind": "regress",
            "dataset": "A",
            "protocol": {"kind": "cv", "folds": 5, "seed": 0},
            "evals": [{"name": "B", "has_ratings": True}],
        },
        {
            m: _join(
                _cols(
                    a_ids, a_va, a_va + rng.normal(0, s, a_va.shape), fold=list(np.arange(20) % 5), split=""
                ),
                _cols(b_ids, b_va, b_va + rng.normal(0, s, b_va.shape), fold=-1, split="test", eval_name="B"),
                _cols(
                    [f"c{i}" for i in range(4)],
                    nan,
                    rng.uniform(1, 9, (4, 2)),
                    fold=-1,
                    split="",
                    eval_name="C",
                ),
            )
            for m, s in (("ridge", 0.5), ("svr", 1.5))
        },
    )
    t_ids = [f"t{i}" for i in range(10)]
    t_va = rng.uniform(1, 9, (10, 2))
    ft = write_run(
        tmp_path / "ft",
        {
            "kind": "finetune",
            "dataset": "T",
            "protocol": {"kind": "split", "train": ["train"], "eval": "test"},
        },
        {
            "finetune:one_stage/single": _join(
                _cols(t_ids, t_va, t_va + 0.3, fold=-1, split="test", kind="held-out"),
                _cols(
                    b_ids,
                    b_va,
                    b_va + rng.normal(0, 1.0, b_va.shape),
                    fold=-1,
                    split="test",
                    eval_name="B-copy",
                    kind="transfer",
                ),
            )
        },
    )
    return reg, ft, b_va


def test_eval_sets_are_compared_across_runs_by_their_items(transfer_runs, tmp_path):
    reg, ft, b_va = transfer_runs
    run = read_run(reg)
    assert set(run.evals) == {"B", "C"} and set(run.predictions["ridge"].kind) == {"oof"}
    assert set(run.evals["B"]["ridge"].kind) == {"transfer"}
    report = evaluate([reg, ft], bootstrap=50, out=tmp_path / "rep", plots=False)
    # the training sides (A under CV, T's test split) are other items: left out, saying why
    assert any("training side not compared" in n for n in report["notes"])
    assert report["eval_set"] == "B" and report["items"]["n"] == 15
    assert {s["system"] for s in report["systems"]} == {
        "reg/ridge",
        "reg/svr",
        "ft/finetune:one_stage/single",
    }
    ridge = next(s for s in report["systems"] if s["system"] == "reg/ridge")
    pred = read_run(reg).evals["B"]["ridge"]
    order = np.argsort(pred.ids.astype(str))
    expect = regression_metrics(pred.true[order, 0], pred.pred[order, 0])
    assert ridge["valence"]["r"] == pytest.approx(expect["r"])
    assert any("'B', 'B-copy'" in n for n in report["notes"])  # matched by items, not by name
    # the predict-only eval set is reported as such
    (c,) = [s for s in report["eval_sets"] if s["eval_set"] == "C"]
    assert "no item has a rating" in c["skipped"]
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "## Eval set C" in md and "eval set B" in md
    rows = list(csv.DictReader((tmp_path / "rep" / "report.csv").open()))
    assert {r["eval_set"] for r in rows} == {"B"}
    json.loads((tmp_path / "rep" / "report.json").read_text())


def test_training_side_and_eval_sets_are_both_reported_when_runs_share_both(tmp_path):
    rng = np.random.default_rng(1)
    ids, va = [f"x{i}" for i in range(12)], rng.uniform(1, 9, (12, 2))
    e_ids, e_va = [f"e{i}" for i in range(8)], rng.uniform(1, 9, (8, 2))
    runs = []
    for name, noise in (("r1", 0.2), ("r2", 0.8)):
        runs.append(
            write_run(
                tmp_path / name,
                {"kind": "regress", "dataset": "X"},
                {
                    "m": _join(
                        _cols(
                            ids,
                            va,
                            va + rng.normal(0, noise, va.shape),
                            fold=list(np.arange(12) % 3),
                            split="",
                        ),
                        _cols(
                            e_ids,
                            e_va,
                            e_va + rng.normal(0, noise, e_va.shape),
                            fold=-1,
                            split="",
                            eval_name="E",
                        ),
                    )
                },
            )
        )
    report = evaluate(runs, bootstrap=0, plots=False)
    assert report["eval_set"] == "" and report["items"]["n"] == 12
    (e,) = report["eval_sets"]
    assert e["eval_set"] == "E" and e["items"]["n"] == 8 and len(e["systems"]) == 2
    assert e["systems"][0]["system"] == "r1/m"
    # one run's eval set "E" loses two items: two eval sets, each saying why they are apart
    cols = read_run(runs[1]).evals["E"]["m"]
    side = read_run(runs[1]).predictions["m"]
    keep = slice(0, 6)
    write_run(
        tmp_path / "r3",
        {"kind": "regress", "dataset": "X"},
        {
            "m": _join(
                _cols(side.ids, side.true, side.pred, fold=list(side.fold), split=""),
                _cols(cols.ids[keep], cols.true[keep], cols.pred[keep], fold=-1, split="", eval_name="E"),
            )
        },
    )
    report = evaluate([runs[0], tmp_path / "r3"], bootstrap=0, plots=False)
    assert [s["items"]["n"] for s in report["eval_sets"]] == [8, 6]
    assert any("2 ids only in r1's, 0 only in r3's" in n for n in report["eval_sets"][0]["notes"])


def test_predictions_file_against_a_truth_dataset(tmp_path, capsys):
    rng = np.random.default_rng(2)
    img = tmp_path / "imgs"
    img.mkdir()
    truth = []
    for i in range(10):
        (img / f"p{i}.jpg").write_bytes(b"")  # paths only: the scorer never decodes images
        truth.append(
            {
                "id": f"item{i}",
                "path": f"imgs/p{i}.jpg",
                "valence": 1 + 0.8 * i,
                "arousal": 5.0,
                "split": "test" if i < 6 else "train",
            }
        )
    with (tmp_path / "truth.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(truth[0]))
        w.writeheader()
        w.writerows(truth)
    pred = tmp_path / "P.csv"
    with pred.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "path", "model", "valence_pred", "arousal_pred"])
        for i in range(10):  # half joined by id, half by path (their ids are not the dataset's)
            w.writerow(
                [
                    f"item{i}" if i % 2 else f"x{i}",
                    str(img / f"p{i}.jpg"),
                    "m",
                    1 + 0.8 * i + rng.normal(0, 0.3),
                    5 + rng.normal(0, 1),
                ]
            )
    spec = f"csv:{tmp_path / 'truth.csv'}"
    args = [
        "evaluate",
        "--predictions",
        str(pred),
        "--bootstrap",
        "0",
        "--no-plots",
        "--out",
        str(tmp_path / "r"),
    ]
    assert main([*args, "--truth", spec, "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"]["n"] == 10 and report["systems"][0]["valence"]["r"] > 0.95
    assert main([*args, "--truth", spec + ":test", "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["items"]["n"] == 6 and any("outside the 'test' split" in n for n in report["notes"])
    assert report["truth"]["split"] == "test"
    # rows that match no item: an error naming the count and the ids
    with pred.open("a", newline="") as f:
        csv.writer(f).writerows([["ghost1", "", "m", 3, 3], ["ghost2", "nowhere.jpg", "m", 3, 3]])
    with pytest.raises(DatasetError, match=r"2 of 12 prediction row\(s\) match no item.*'ghost1', 'ghost2'"):
        evaluate_predictions([pred], spec, bootstrap=0, plots=False)
    capsys.readouterr()
    assert main(["evaluate", "--truth", spec, "-q"]) == 2
    assert "--predictions and --truth go together" in capsys.readouterr().err


def _curve_run(tmp_path, name, seed, r, **meta):
    return write_run(
        tmp_path / name,
        {"kind": "finetune", "mode": "two_stage", "task": "single", "seed": seed, "freeze_bn": False, **meta},
        {"m": _cols(["i0", "i1", "i2"], np.ones((3, 2)) * 5, np.ones((3, 2)) * 5, fold=-1, split="test")},
        curve=[
            {
                "model": "m",
                "setting": "two_stage",
                "n_labels": 50,
                "seed": seed,
                "r_valence": r,
                "r_arousal": r,
            }
        ],
    )


def test_curve_pools_only_runs_that_differ_in_their_seed(tmp_path):
    runs = [
        _curve_run(tmp_path, "s0", 0, 0.5),
        _curve_run(tmp_path, "s1", 1, 0.7),
        _curve_run(tmp_path, "bn0", 0, 0.1, freeze_bn=True),
        _curve_run(tmp_path, "bn1", 1, 0.3, freeze_bn=True),
    ]
    rows = curve_summary([read_run(r) for r in runs])
    assert len(rows) == 2
    by = {r["system"]: r for r in rows}
    off = next(r for name, r in by.items() if "freeze_bn=false" in name)
    on = next(r for name, r in by.items() if "freeze_bn=true" in name)
    assert off["seeds"] == on["seeds"] == 2
    assert off["r_valence_mean"] == pytest.approx(0.6) and on["r_valence_mean"] == pytest.approx(0.2)
    same = curve_summary([read_run(r) for r in runs[:2]])
    assert len(same) == 1 and same[0]["system"] == "m (2 runs)" and same[0]["seeds"] == 2
