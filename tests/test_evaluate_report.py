"""`evaluate` / `evoked evaluate`: reading run directories, refusing mismatched runs, the report files."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import EMOTION6, needs_emotion6
from evoked.cli import main
from evoked.data import load_lexicon
from evoked.errors import ConfigError, DatasetError, LabelError
from evoked.evaluate import evaluate, read_run, write_run
from evoked.evaluate.metrics import regression_metrics

CATS = ["anger", "fear", "joy", "sadness"]
PROTOCOL = {"kind": "cv", "folds": 3, "seed": 0}


def _truth(n=60, seed=0):
    rng = np.random.default_rng(seed)
    cat = np.array(CATS)[np.arange(n) % len(CATS)]
    va = np.clip(load_lexicon("nrc").matrix(list(cat)) * 0.5 + 2.5 + rng.normal(0, 0.5, (n, 2)), 1, 9)
    ids = [f"{c}/{i}.jpg" for i, c in enumerate(cat)]
    return ids, np.arange(n) % 3, va, cat


def _columns(ids, fold, va, cat, noise, seed, split=None):
    rng = np.random.default_rng(seed)
    pred = va + rng.normal(0, noise, va.shape)
    return {
        "id": ids,
        "fold": fold,
        "split": split if split is not None else [""] * len(ids),
        "valence_true": va[:, 0],
        "arousal_true": va[:, 1],
        "valence_pred": pred[:, 0],
        "arousal_pred": pred[:, 1],
        "category_true": cat,
    }


def _make_runs(tmp_path: Path, n=60, curve=False) -> tuple[Path, Path]:
    ids, fold, va, cat = _truth(n)
    a = write_run(
        tmp_path / "runs" / "feats",
        {"kind": "regress", "dataset": "toy", "protocol": PROTOCOL, "features": ["color/stats"]},
        {"good": _columns(ids, fold, va, cat, 0.3, 1), "poor": _columns(ids, fold, va, cat, 1.5, 2)},
        curve=[
            {
                "model": "good",
                "setting": s,
                "n_labels": k,
                "seed": seed,
                "r_valence": 0.1 * k**0.3,
                "r_arousal": 0.3,
            }
            for s in ("stage2_only", "two_stage")
            for k in (10, 20, 40)
            for seed in (0, 1)
        ]
        if curve
        else None,
    )
    b = write_run(
        tmp_path / "runs" / "net",
        {"kind": "finetune", "dataset": "toy", "protocol": PROTOCOL},
        {"two_stage": _columns(ids, fold, va, cat, 0.6, 3)},
    )
    return a, b


def _write_raw(run: Path, header: str, lines: list[str], meta: dict | None = None) -> Path:
    """A run directory written by hand, independent of `write_run`."""
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps(meta or {"kind": "regress", "name": run.name, "models": ["m"]}))
    (run / "predictions.csv").write_text(header + "\n" + "\n".join(lines) + "\n")
    return run


HEADER = "model,id,fold,split,valence_true,arousal_true,valence_pred,arousal_pred,category_true"


def test_hand_written_runs_are_scored_as_the_metrics_say(tmp_path: Path):
    rng = np.random.default_rng(0)
    t = rng.uniform(1, 9, (12, 2))
    pa, pb = t + rng.normal(0, 0.5, t.shape), t + rng.normal(0, 1.5, t.shape)
    rows_a = [f"m,img{i},-1,test,{t[i, 0]},{t[i, 1]},{pa[i, 0]},{pa[i, 1]},joy" for i in range(12)]
    # the other run lists its rows in another order: items are joined by id
    rows_b = [f"m,img{i},-1,test,{t[i, 0]},{t[i, 1]},{pb[i, 0]},{pb[i, 1]}," for i in reversed(range(12))]
    a = _write_raw(tmp_path / "A", HEADER, rows_a)
    b = _write_raw(tmp_path / "B", HEADER, rows_b)
    report = evaluate([b, a], bootstrap=200)
    names = [s["system"] for s in report["systems"]]
    assert names == ["A/m", "B/m"]  # ranked by valence r
    got = report["systems"][1]["valence"]
    want = regression_metrics(t[:, 0], pb[:, 0])
    for k in ("mse", "mae", "r", "ccc", "r2", "spearman"):
        assert got[k] == pytest.approx(want[k]), k
    assert report["systems"][0]["vs_reference"] is None and report["reference"] == "A/m"
    lo, hi = report["systems"][0]["valence"]["ci"]["r"]
    assert lo <= report["systems"][0]["valence"]["r"] <= hi
    assert report["items"]["n"] == 12 and report["items"]["splits"] == {"test": 12}
    # one category only: accuracy is skipped, with a note saying why
    assert report["systems"][0]["category"] is None
    assert any("only one category" in n for n in report["notes"])


def test_runs_on_different_items_are_refused(tmp_path: Path):
    ids, fold, va, cat = _truth(30)
    write_run(tmp_path / "A", {}, {"m": _columns(ids, fold, va, cat, 0.5, 0)})
    write_run(tmp_path / "B", {}, {"m": _columns(ids[3:], fold[3:], va[3:], cat[3:], 0.5, 0)})
    other = fold.copy()
    other[:5] = (other[:5] + 1) % 3
    write_run(tmp_path / "C", {}, {"m": _columns(ids, other, va, cat, 0.5, 0)})
    with pytest.raises(ConfigError) as e:
        evaluate([tmp_path / "A", tmp_path / "B"])
    msg = str(e.value)
    assert "B/m" in msg and "A/m" in msg and "3 ids only in A/m" in msg and "0 ids only in B/m" in msg
    assert "evoked data split" in msg and "--split test" in msg
    with pytest.raises(ConfigError, match="5 ids with a different fold/split"):
        evaluate([tmp_path / "A", tmp_path / "C"])
    split = ["test"] * len(ids)
    write_run(tmp_path / "D", {}, {"m": _columns(ids, [-1] * len(ids), va, cat, 0.5, 0, split)})
    with pytest.raises(ConfigError, match="30 ids with a different fold/split"):
        evaluate([tmp_path / "A", tmp_path / "D"])


def test_models_of_one_run_on_different_items_are_refused(tmp_path: Path):
    ids, fold, va, cat = _truth(20)
    write_run(
        tmp_path / "A",
        {},
        {
            "x": _columns(ids, fold, va, cat, 0.5, 0),
            "y": _columns(ids[:-1], fold[:-1], va[:-1], cat[:-1], 0.5, 0),
        },
    )
    with pytest.raises(ConfigError, match="1 ids only in A/x"):
        evaluate([tmp_path / "A"])


def test_runs_with_different_truths_are_refused(tmp_path: Path):
    ids, fold, va, cat = _truth(20)
    write_run(tmp_path / "A", {}, {"m": _columns(ids, fold, va, cat, 0.5, 0)})
    va2 = va.copy()
    va2[4, 1] += 1
    write_run(tmp_path / "B", {}, {"m": _columns(ids, fold, va2, cat, 0.5, 0)})
    with pytest.raises(ConfigError, match="disagree on the true valence/arousal of 1 item"):
        evaluate([tmp_path / "A", tmp_path / "B"])


def test_unknown_truths_and_missing_predictions_leave_the_same_items_out_for_all(tmp_path: Path):
    ids, fold, va, cat = _truth(40)
    va[:4, 0] = np.nan  # unknown valence
    a = _columns(ids, fold, va, cat, 0.5, 0)
    b = _columns(ids, fold, va, cat, 0.9, 1)
    b["arousal_pred"] = np.array(b["arousal_pred"])
    b["arousal_pred"][10:12] = np.nan  # B has no arousal prediction for two items
    write_run(tmp_path / "A", {}, {"m": a})
    write_run(tmp_path / "B", {}, {"m": b})
    report = evaluate([tmp_path / "A", tmp_path / "B"], bootstrap=100)
    for s in report["systems"]:
        assert s["valence"]["n"] == 36 and s["arousal"]["n"] == 38
    keep = np.ones(40, bool)
    keep[10:12] = False
    sa = next(s for s in report["systems"] if s["system"] == "A/m")
    assert sa["arousal"]["mse"] == pytest.approx(
        regression_metrics(va[keep, 1], np.array(a["arousal_pred"])[keep])["mse"]
    )
    notes = " ".join(report["notes"])
    assert (
        "4 item(s) without a true valence" in notes and "B/m has no arousal prediction for 2 item(s)" in notes
    )
    assert report["items"]["scored"]["dropped"]["arousal"]["missing_prediction"] == 2


def test_reference_and_paired_tests(tmp_path: Path):
    a, b = _make_runs(tmp_path, n=120)
    report = evaluate([a, b], bootstrap=300, reference="feats/poor")
    assert report["reference"] == "feats/poor" and report["reference_is"] == "given"
    by = {s["system"]: s for s in report["systems"]}
    assert by["feats/poor"]["vs_reference"] is None
    good = by["feats/good"]["vs_reference"]
    assert good["valence_r"]["diff"] > 0 and good["valence_r"]["p"] < 0.05
    assert good["valence_mse"]["diff"] < 0
    assert set(good) >= {"valence_r", "arousal_r", "valence_ccc", "category_accuracy"}
    assert [s["system"] for s in report["systems"]] == ["feats/good", "net/two_stage", "feats/poor"]
    # a run with one model can be named by the run alone
    assert evaluate([a, b], bootstrap=0, reference="net")["reference"] == "net/two_stage"
    with pytest.raises(ConfigError, match="feats/good, feats/poor, net/two_stage"):
        evaluate([a, b], reference="feats")


def test_same_seed_same_intervals(tmp_path: Path):
    a, b = _make_runs(tmp_path)
    r1 = evaluate([a, b], bootstrap=200, seed=7)
    r2 = evaluate([a, b], bootstrap=200, seed=7)
    r3 = evaluate([a, b], bootstrap=200, seed=8)
    ci = [s["arousal"]["ci"]["mse"] for s in r1["systems"]]
    assert ci == [s["arousal"]["ci"]["mse"] for s in r2["systems"]]
    assert ci != [s["arousal"]["ci"]["mse"] for s in r3["systems"]]
    r0 = evaluate([a, b], bootstrap=0)
    assert "ci" not in r0["systems"][0]["valence"] and r0["systems"][1]["vs_reference"] is None


def test_category_accuracy_through_the_lexicon(tmp_path: Path):
    lex = load_lexicon("nrc")
    ids, fold, va, cat = _truth(40)
    exact = _columns(ids, fold, va, cat, 0.0, 0)
    exact["valence_pred"], exact["arousal_pred"] = lex.hard(cat)[:, 0], lex.hard(cat)[:, 1]
    write_run(tmp_path / "A", {}, {"anchor": exact, "noisy": _columns(ids, fold, va, cat, 0.5, 1)})
    report = evaluate([tmp_path / "A"], bootstrap=100, nearest="euclidean")
    by = {s["system"]: s for s in report["systems"]}
    assert by["A/anchor"]["category"]["accuracy"] == 1.0  # predicting each category's own VA
    assert report["category"]["categories"] == CATS and report["category"]["nearest"] == "euclidean"
    assert report["category"]["lexicon"]["name"] == "nrc"
    assert report["category"]["majority_accuracy"] == pytest.approx(0.25)
    # --categories restricts the choice; items outside it are counted out
    r = evaluate([tmp_path / "A"], bootstrap=0, categories=["joy", "sadness"])
    assert r["systems"][0]["category"]["n"] == 20 and any("not in --categories" in n for n in r["notes"])
    with pytest.raises(LabelError, match="unicorn"):
        evaluate([tmp_path / "A"], categories=["joy", "unicorn"])


def test_category_accuracy_skipped_for_words_outside_the_lexicon(tmp_path: Path, capsys):
    ids, fold, va, _ = _truth(20)
    cat = np.array(["happy", "mad"])[np.arange(20) % 2]
    write_run(tmp_path / "A", {}, {"m": _columns(ids, fold, va, cat, 0.5, 0)})
    report = evaluate([tmp_path / "A"], bootstrap=0)
    assert report["systems"][0]["category"] is None
    assert any("happy, mad" in n and "--category-map" in n for n in report["notes"])
    mapped = evaluate([tmp_path / "A"], bootstrap=0, category_map={"happy": "joy", "mad": "anger"})
    assert mapped["systems"][0]["category"]["n"] == 20
    args = ["evaluate", str(tmp_path / "A"), "--out", str(tmp_path / "rep"), "--bootstrap", "0", "--no-plots"]
    args += ["--category-map", "happy=joy", "--category-map", "mad=anger", "--json", "-q"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["systems"][0]["category"]["n"] == 20


def test_distribution_columns(tmp_path: Path):
    ids, fold, va, cat = _truth(30)
    rng = np.random.default_rng(0)
    p_true = rng.dirichlet(np.ones(3), 30)
    cols = _columns(ids, fold, va, cat, 0.5, 0)
    for k, c in enumerate(("joy", "fear", "neutral")):
        cols[f"true_p_{c}"] = p_true[:, k]
        cols[f"pred_p_{c}"] = p_true[:, k]  # a perfect distribution
    write_run(tmp_path / "A", {}, {"m": cols, "va_only": _columns(ids, fold, va, cat, 0.5, 1)})
    report = evaluate([tmp_path / "A"], bootstrap=100)
    by = {s["system"]: s for s in report["systems"]}
    d = by["A/m"]["distribution"]
    assert d["n"] == 30 and d["kl"] == pytest.approx(0, abs=1e-9) and d["intersection"] == pytest.approx(1)
    assert d["ci"]["kl"][1] == pytest.approx(0, abs=1e-9)
    assert by["A/va_only"]["distribution"] is None
    assert report["distribution"]["categories"] == ["fear", "joy", "neutral"]


def test_bad_run_directories(tmp_path: Path):
    with pytest.raises(DatasetError, match="does not exist"):
        evaluate([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no run.json"):
        evaluate([tmp_path / "empty"])
    bad = _write_raw(tmp_path / "bad", "model,id,valence_pred", ["m,a,5"])
    with pytest.raises(DatasetError, match="missing column.*fold"):
        read_run(bad)
    dup = _write_raw(tmp_path / "dup", HEADER, ["m,a,0,,5,5,5,5,joy", "m,a,0,,5,5,4,4,joy"])
    with pytest.raises(DatasetError, match=r"predicts item 'a' twice"):
        read_run(dup)
    word = _write_raw(tmp_path / "word", HEADER, ["m,a,0,,five,5,5,5,joy"])
    with pytest.raises(DatasetError, match=r"predictions.csv:2: valence_true 'five'"):
        read_run(word)
    a, _ = _make_runs(tmp_path)
    with pytest.raises(ConfigError, match="given twice"):
        evaluate([a, a])
    with pytest.raises(ConfigError, match="--nearest"):
        evaluate([a], nearest="manhattan")
    with pytest.raises(ConfigError, match="--bootstrap"):
        evaluate([a], bootstrap=-1)


def test_report_files(tmp_path: Path):
    a, b = _make_runs(tmp_path, curve=True)
    out = tmp_path / "report"
    report = evaluate([a, b], out=out, bootstrap=200)
    names = {"report.md", "report.json", "report.csv", "scatter_valence.png", "scatter_arousal.png"}
    names |= {"va_plane.png", "curve.png", "report.tex", "residuals.png", "confusion.png", "forest.png"}
    assert {p.name for p in out.iterdir()} == names
    for png in out.glob("*.png"):
        with Image.open(png) as im:
            assert im.width > 600 and im.height > 300
    data = json.loads((out / "report.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert [s["system"] for s in data["systems"]] == [s["system"] for s in report["systems"]]
    rows = list(csv.DictReader((out / "report.csv").open()))
    assert [r["system"] for r in rows] == [s["system"] for s in report["systems"]]
    assert float(rows[0]["r_valence"]) == pytest.approx(report["systems"][0]["valence"]["r"])
    assert float(rows[0]["r_valence_lo"]) <= float(rows[0]["r_valence"]) <= float(rows[0]["r_valence_hi"])
    md = (out / "report.md").read_text()
    assert "| # | system | n | r valence [95% CI]" in md and "](scatter_valence.png)" in md
    assert "](curve.png)" in md and "lexicon **nrc**" in md and "3-fold cross-validation" in md
    good = [c for c in report["curves"] if c["system"] == "feats/good" and c["setting"] == "two_stage"]
    assert [c["n_labels"] for c in good] == [10, 20, 40] and good[0]["seeds"] == 2
    # a later report without a curve removes the stale curve.png
    evaluate([b], out=out, bootstrap=0)
    assert not (out / "curve.png").exists() and (out / "va_plane.png").exists()


def test_cli_prints_the_table_and_exits_2_on_mismatch(tmp_path: Path, capsys):
    a, b = _make_runs(tmp_path)
    out = tmp_path / "rep"
    assert (
        main(["evaluate", str(a), str(b), "--out", str(out), "--bootstrap", "100", "-q", "--no-plots"]) == 0
    )
    text = capsys.readouterr().out
    assert "r valence [95% CI]" in text and "feats/good" in text and "report:" in text
    assert not list(out.glob("*.png")) and (out / "report.md").is_file()
    assert main(["evaluate", str(a), "--out", str(out), "--json", "--bootstrap", "0", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["systems"][0]["system"] == "feats/good"
    ids, fold, va, cat = _truth(59)
    c = write_run(tmp_path / "runs" / "short", {}, {"m": _columns(ids, fold, va, cat, 0.5, 0)})
    assert main(["evaluate", str(a), str(c), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("evoked: error:") and "1 ids only in feats/good" in err


def test_differing_recorded_fingerprints_are_noted_not_refused(tmp_path: Path):
    ids, fold, va, cat = _truth(20)
    write_run(tmp_path / "A", {"items_sha256": "aaaa"}, {"m": _columns(ids, fold, va, cat, 0.5, 0)})
    write_run(tmp_path / "B", {"items_sha256": "bbbb"}, {"m": _columns(ids, fold, va, cat, 0.5, 1)})
    report = evaluate([tmp_path / "A", tmp_path / "B"], bootstrap=0)
    assert any("record different items_sha256" in n for n in report["notes"])


@needs_emotion6
def test_emotion6_labels_with_synthetic_predictions(tmp_path: Path):
    from evoked.data import load_dataset

    m = load_dataset(f"emotion6:{EMOTION6}")
    n = len(m)
    rng = np.random.default_rng(0)
    true = np.stack([m.valence, m.arousal], axis=1)
    cols = {
        "id": m.ids,
        "fold": np.arange(n) % 5,
        "split": [""] * n,
        "valence_true": m.valence,
        "arousal_true": m.arousal,
        "category_true": m.category,
    }
    oracle = {**cols, "valence_pred": true[:, 0], "arousal_pred": true[:, 1]}
    noisy = {**cols, "valence_pred": true[:, 0] + rng.normal(0, 1, n), "arousal_pred": true[:, 1]}
    for k, c in enumerate(m.categories):
        noisy[f"true_p_{c}"] = m.distribution[:, k]
        noisy[f"pred_p_{c}"] = np.full(n, m.distribution.mean(axis=0)[k])  # the average distribution
    write_run(tmp_path / "e6", {"dataset": "emotion6"}, {"oracle": oracle, "noisy": noisy})
    report = evaluate([tmp_path / "e6"], bootstrap=200, nearest="cosine")
    by = {s["system"]: s for s in report["systems"]}
    assert report["items"]["n"] == n == 1980 and by["e6/oracle"]["rank"] == 1
    assert by["e6/oracle"]["valence"]["r"] == pytest.approx(1.0)
    assert report["category"]["categories"] == sorted(set(m.category))  # the 6 keywords
    # the true VA's own accuracy is what a perfect predictor scores
    assert by["e6/oracle"]["category"]["accuracy"] == pytest.approx(report["category"]["true_va_accuracy"])
    assert 0 < by["e6/noisy"]["distribution"]["kl"] < 2
    assert by["e6/noisy"]["vs_reference"]["valence_r"]["p"] < 0.01


def test_a_system_without_any_arousal_is_left_out_of_arousal_only(tmp_path: Path):
    ids, fold, va, cat = _truth(40)
    valence_only = _columns(ids, fold, va, cat, 0.5, 1)
    valence_only["arousal_pred"] = [float("nan")] * 40
    write_run(tmp_path / "A", {}, {"full": _columns(ids, fold, va, cat, 0.5, 0), "v": valence_only})
    report = evaluate([tmp_path / "A"], bootstrap=100)
    by = {s["system"]: s for s in report["systems"]}
    assert by["A/full"]["arousal"]["n"] == 40 and by["A/v"]["arousal"]["n"] == 0
    assert by["A/v"]["valence"]["n"] == 40 and by["A/v"]["category"] is None
    assert by["A/full"]["category"]["n"] == 40
    assert any("A/v predicts no arousal at all" in n for n in report["notes"])


def test_a_curve_spread_over_runs_is_pooled_by_model(tmp_path: Path):
    ids, fold, va, cat = _truth(30)
    runs = []
    for k, (n_labels, seed) in enumerate([(10, 0), (10, 1), (20, 0), (20, 1)]):
        row = {"model": "ft", "setting": "two_stage", "n_labels": n_labels, "seed": seed}
        row |= {"r_valence": 0.01 * n_labels + 0.01 * seed, "r_arousal": 0.2}
        runs.append(
            write_run(
                tmp_path / f"ft-{n_labels}-{seed}", {}, {"ft": _columns(ids, fold, va, cat, 0.5, k)}, [row]
            )
        )
    whole = [
        {
            "model": "ridge",
            "setting": "stage2_only",
            "n_labels": n,
            "seed": 0,
            "r_valence": 0.3,
            "r_arousal": 0.2,
        }
        for n in (10, 20)
    ]
    runs.append(write_run(tmp_path / "reg", {}, {"ridge": _columns(ids, fold, va, cat, 0.5, 9)}, whole))
    out = tmp_path / "rep"
    report = evaluate(runs, out=out, bootstrap=0)
    series = {(c["system"], c["n_labels"]): c for c in report["curves"]}
    assert set(series) == {("ft (4 runs)", 10), ("ft (4 runs)", 20), ("reg/ridge", 10), ("reg/ridge", 20)}
    pooled = series[("ft (4 runs)", 20)]
    assert pooled["seeds"] == 2 and pooled["r_valence_mean"] == pytest.approx(0.205)
    assert pooled["r_valence_std"] == pytest.approx(np.std([0.2, 0.21], ddof=1))
    assert (out / "curve.png").is_file()


def test_a_run_without_items_in_common_is_refused_not_dropped(tmp_path: Path, capsys):
    """Failure 4 of issue 21: a CV run and a transfer run whose training sides are other items used to
    be reported as the transfer run's eval set alone (exit 0), the CV run dropped without an error."""
    ids, fold, va, cat = _truth(12)
    cv = write_run(tmp_path / "runs" / "va", {"kind": "regress", "dataset": "A", "protocol": PROTOCOL},
                   {"ridge": _columns(ids, fold, va, cat, 0.3, 1)})  # fmt: skip
    t_ids, t_fold, t_va, t_cat = _truth(20, seed=1)
    e_ids, _, e_va, e_cat = _truth(8, seed=2)
    side = _columns([f"t-{i}" for i in t_ids], t_fold, t_va, t_cat, 0.3, 2)
    evals = _columns([f"e-{i}" for i in e_ids], [-1] * 8, e_va, e_cat, 0.3, 3)
    cols = {k: list(side[k]) + list(evals[k]) for k in side}
    cols["eval"] = [""] * 20 + ["B"] * 8
    transfer = write_run(tmp_path / "runs" / "e6-transfer",
                         {"kind": "regress", "dataset": "T", "protocol": PROTOCOL, "evals": [{"name": "B"}]},
                         {"ridge": cols})  # fmt: skip
    with pytest.raises(ConfigError) as err:
        evaluate([cv, transfer], bootstrap=0, plots=False)
    msg = str(err.value)
    assert "va" in msg and "e6-transfer" in msg and "12 training-side items" in msg
    assert "20 training-side items" in msg and "eval set 'B' (8 items)" in msg and "on its own" in msg
    assert main(["evaluate", str(cv), str(transfer), "-q", "--bootstrap", "0"]) == 2
    assert "share no evaluated items" in capsys.readouterr().err
