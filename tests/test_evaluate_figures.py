"""The report a paper needs: per-category scores, figure choice and formats, colours that stay,
report.tex, fine-tuning curves, repeated splits and the cross-dataset table."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from evoked.cli import main
from evoked.errors import ConfigError
from evoked.evaluate import evaluate, read_run, write_run
from evoked.evaluate.plots import _label_offsets, _spaced_labels
from evoked.evaluate.selection import PALETTE, colors_for, system_color
from storeutil import make_store

CATS = ["calm", "tense", "odd"]  # not Emotion6's: nothing may assume its categories
PROTOCOL = {"kind": "cv", "folds": 3, "seed": 0}
WORDS = {"calm": "joy", "tense": "fear", "odd": "surprise"}  # their VA for category accuracy


def _truth(n=60):
    rng = np.random.default_rng(0)
    cat = np.array(CATS)[np.arange(n) % len(CATS)]
    centre = {"calm": (6.5, 3.0), "tense": (3.0, 7.0), "odd": (5.0, 5.0)}
    va = np.array([centre[c] for c in cat]) + rng.normal(0, 0.8, (n, 2))
    return [f"i{k:03d}" for k in range(n)], np.arange(n) % 3, va, cat


def _cols(ids, fold, va, cat, pred):
    return {"id": ids, "fold": fold, "split": [""] * len(ids), "valence_true": va[:, 0], "arousal_true": va[:, 1],
            "valence_pred": pred[:, 0], "arousal_pred": pred[:, 1], "category_true": cat}  # fmt: skip


def _runs(tmp_path: Path) -> tuple[list[Path], np.ndarray, np.ndarray, np.ndarray]:
    ids, fold, va, cat = _truth()
    rng = np.random.default_rng(1)
    good = va + rng.normal(0, 0.3, va.shape)
    good[cat == "calm", 0] += 1.0  # rates calm too high by 1
    poor = va + rng.normal(0, 1.5, va.shape)
    meta = {"kind": "regress", "dataset": "toy", "protocol": PROTOCOL}
    a = write_run(tmp_path / "runs" / "va", meta, {"ridge": _cols(ids, fold, va, cat, good),
                                                   "svr": _cols(ids, fold, va, cat, poor)})  # fmt: skip
    # the same ridge fitted again under another name: identical predictions
    b = write_run(tmp_path / "runs" / "two-stage", meta, {"ridge": _cols(ids, fold, va, cat, good),
                                                          "two_stage:ridge": _cols(ids, fold, va, cat, va + 0.5)})  # fmt: skip
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_r_valence": 0.3 + 0.1 * e, "val_r_arousal": 0.1,
                "improved": True} for e in (1, 2, 3)]  # fmt: skip
    c = write_run(tmp_path / "runs" / "ft", {"kind": "finetune", "dataset": "toy", "protocol": PROTOCOL,
                                              "history": history, "best_epoch": 3},
                  {"finetune:two_stage/single": _cols(ids, fold, va, cat, va + rng.normal(0, 2.5, va.shape))})  # fmt: skip
    return [a, b, c], va, cat, good


def test_per_category_r_mse_and_bias_for_any_category_set(tmp_path):
    runs, va, cat, good = _runs(tmp_path)
    report = evaluate(runs, bootstrap=0)
    ridge = next(s for s in report["systems"] if s["system"] == "va/ridge")
    assert sorted(ridge["per_category"]) == sorted(CATS)
    m = cat == "calm"
    calm = ridge["per_category"]["calm"]["valence"]
    assert calm["n"] == int(m.sum())
    assert calm["bias"] == pytest.approx(float(np.mean(good[m, 0] - va[m, 0])))
    assert calm["bias"] > 0.7  # the +1 put in
    assert calm["mse"] == pytest.approx(float(np.mean((good[m, 0] - va[m, 0]) ** 2)))
    assert calm["r"] == pytest.approx(float(np.corrcoef(good[m, 0], va[m, 0])[0, 1]))


def test_report_files_formats_tex_and_figures(tmp_path):
    runs, *_ = _runs(tmp_path)
    out = tmp_path / "rep"
    report = evaluate(runs, out=out, bootstrap=100, formats="png,pdf,svg", category_map=WORDS)
    for fig in (
        "scatter_valence",
        "scatter_arousal",
        "va_plane",
        "residuals",
        "confusion",
        "forest",
        "training",
    ):
        for ext in ("png", "pdf", "svg"):
            assert (out / f"{fig}.{ext}").is_file(), f"{fig}.{ext}"
    with Image.open(out / "forest.png") as im:
        assert round(im.info["dpi"][0]) == 300
    md = (out / "report.md").read_text()
    assert "## Per category" in md and "| va/ridge | calm |" in md and "](residuals.png)" in md
    assert "## Fine-tuning" in md and "](training.png)" in md and "](confusion.png)" in md
    tex = (out / "report.tex").read_text()
    assert "\\toprule" in tex and "\\label{tab:per-category}" in tex and "va/ridge" in tex
    assert report["training"][0]["system"] == "ft/finetune:two_stage/single"
    assert any("identical predictions" in n for n in report["notes"])
    # a later png-only report removes the pdf/svg files of the earlier one
    evaluate(runs, out=out, bootstrap=0)
    assert not list(out.glob("*.pdf")) and (out / "forest.png").is_file()
    with pytest.raises(ConfigError, match="--format jpg"):
        evaluate(runs, out=out, formats="png,jpg")


def test_default_systems_best_of_each_family_and_every_network(tmp_path, monkeypatch):
    from evoked.evaluate import plots

    runs, va, cat, _ = _runs(tmp_path)
    ids, fold = [f"i{k:03d}" for k in range(len(va))], np.arange(len(va)) % 3
    weak = va + np.random.default_rng(5).normal(0, 1.0, va.shape)
    runs.append(write_run(tmp_path / "runs" / "cat", {"kind": "regress", "dataset": "toy", "protocol": PROTOCOL},
                          {"ridge": _cols(ids, fold, va, cat, weak)}))  # fmt: skip
    seen = []
    real = plots.scatter_plot
    monkeypatch.setattr(
        plots, "scatter_plot", lambda *a, **k: seen.append([p[0] for p in a[3]]) or real(*a, **k)
    )
    report = evaluate(runs, out=tmp_path / "rep", bootstrap=0)
    # the best ridge (drawn once with its identical twin), not cat/ridge; the weak network all the same
    assert any(set(label.split(" = ")) == {"va/ridge", "two-stage/ridge"} for label in seen[0])
    assert "cat/ridge" not in seen[0]
    assert "ft/finetune:two_stage/single" in seen[0]
    assert any(n.startswith("the figures show 4 of 5 systems") for n in report["notes"]), report["notes"]


def test_systems_flag_chooses_and_orders_the_panels(tmp_path, monkeypatch):
    from evoked.evaluate import plots

    runs, *_ = _runs(tmp_path)
    seen = []
    real = plots.scatter_plot
    monkeypatch.setattr(
        plots, "scatter_plot", lambda *a, **k: seen.append([p[0] for p in a[3]]) or real(*a, **k)
    )
    evaluate(runs, out=tmp_path / "rep", bootstrap=0, systems=["va/svr", "*ridge"])
    assert seen[0][0] == "va/svr" and len(seen[0]) == 3  # in the order asked for
    assert set(seen[0][1:]) in ({"va/ridge = two-stage/ridge", "two-stage/two_stage:ridge"},
                                {"two-stage/ridge = va/ridge", "two-stage/two_stage:ridge"})  # fmt: skip
    with pytest.raises(ConfigError, match="names no system"):
        evaluate(runs, out=tmp_path / "rep", bootstrap=0, systems=["nope/x"])
    assert main(["evaluate", *map(str, runs), "--out", str(tmp_path / "c"), "--systems", "va/*",
                 "--format", "svg", "--bootstrap", "0", "-q"]) == 0  # fmt: skip
    assert (tmp_path / "c" / "scatter_valence.svg").is_file() and not (tmp_path / "c" / "forest.png").exists()


def test_a_system_keeps_its_colour_across_reports():
    assert system_color("va/ridge") == system_color("va/ridge") and system_color("va/ridge") in PALETTE
    names = [f"run{k}/model" for k in range(12)]
    colors = colors_for(names)
    assert len(set(colors.values())) == len(names)  # never two systems of one figure alike
    alone = colors_for(["run3/model"])["run3/model"]
    assert alone == system_color("run3/model")


def test_labels_of_close_anchors_go_apart_and_budgets_keep_their_labels():
    offsets = _label_offsets({"anger": (2.5, 7.9), "fear": (2.6, 7.8), "joy": (8.0, 6.9)})
    assert offsets[0] != offsets[1]
    assert np.dot(offsets[0], offsets[1]) < 0 or offsets[0][1] * offsets[1][1] < 0  # opposite sides
    assert _spaced_labels([25, 100, 400, 1188, 1386], log=True) == ["25", "100", "400", "1188", "1386"]


def _store(path: Path, n=60, seed=0, split=True):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6))
    va = np.clip(5 + x[:, :2] + rng.normal(0, 0.3, (n, 2)), 1, 9)
    cat = np.array(CATS)[np.arange(n) % 3].tolist()
    sp = (["train"] * 3 + ["val"] + ["test"] * 2) * (n // 6) if split else None
    ids = [f"s{seed}-{k:03d}.jpg" for k in range(n)]
    return make_store(path, {"f/x": x}, valence=va[:, 0], arousal=va[:, 1], category=cat, split=sp, ids=ids)


def test_regress_repeats_and_evaluate_over_them(tmp_path, capsys):
    store = _store(tmp_path / "a.h5")
    out = tmp_path / "runs" / "rep"
    assert main(["regress", str(store), "--feature", "f/x", "--model", "ridge", "--split", "test",
                 "--repeats", "3", "--out", str(out), "-q"]) == 0  # fmt: skip
    meta = json.loads((out / "run.json").read_text())
    assert meta["repeats"]["seeds"] == [0, 1, 2]
    first, second = read_run(out), read_run(out / "repeats" / "seed-1")
    test0 = set(first.predictions["ridge"].ids)
    test1 = set(second.predictions["ridge"].ids)
    assert test0 != test1 and len(test0) == len(test1) == 20  # another draw, the same size
    cats1 = [c for i, c in zip(second.predictions["ridge"].ids, second.predictions["ridge"].category)]
    assert sorted(cats1).count("calm") == sorted(first.predictions["ridge"].category.tolist()).count("calm")
    capsys.readouterr()
    report = evaluate([out], out=tmp_path / "rep", bootstrap=50)
    rep = report["systems"][0]["repeats"]
    assert rep["n"] == 3 and len(rep["valence"]["r"]["values"]) == 3
    lo, hi = rep["valence"]["r"]["ci"]
    assert lo <= rep["valence"]["r"]["mean"] <= hi
    assert rep["valence"]["r"]["values"][0] == pytest.approx(report["systems"][0]["valence"]["r"])
    assert "## Repeated splits" in (tmp_path / "rep" / "report.md").read_text()
    # under CV the repeats redraw the folds
    cv = tmp_path / "runs" / "cv"
    assert (
        main(
            ["regress", str(store), "--feature", "f/x", "--cv", "3", "--repeats", "2", "--out", str(cv), "-q"]
        )
        == 0
    )
    f0, f1 = (
        read_run(cv).predictions["ridge"].fold,
        read_run(cv / "repeats" / "seed-1").predictions["ridge"].fold,
    )
    assert not np.array_equal(f0, f1)
    with pytest.raises(ConfigError, match="--repeats"):
        from evoked.regress.repeats import run_repeats

        run_repeats(store, 2, features=["f/x"], cv=0, out=tmp_path / "x")


def test_a_cross_dataset_table_has_one_column_per_eval_store(tmp_path):
    a, b = _store(tmp_path / "a.h5", split=False), _store(tmp_path / "b.h5", seed=1, split=False)
    c = _store(tmp_path / "c.h5", seed=2, split=False)
    out = tmp_path / "runs" / "t"
    assert main(["regress", str(a), "--feature", "f/x", "--model", "ridge,knn", "--eval", str(b), "--eval", str(c),
                 "--out", str(out), "-q"]) == 0  # fmt: skip
    evaluate([out], out=tmp_path / "rep", bootstrap=0, plots=False)
    md = (tmp_path / "rep" / "report.md").read_text()
    table = md.split("## Across scored sets")[1].split("\n\n")[2]
    header = table.splitlines()[0]
    assert "training side" in header and "b" in header and "c" in header and header.count("|") == 5
    assert "\\label{tab:eval-sets}" in (tmp_path / "rep" / "report.tex").read_text()
