"""Fine-tuning never trains a constant silently; two_stage inherits stage 1; --eval; the rating scale."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from conftest import make_image
from evoked.errors import ConfigError, LabelError
from evoked.evaluate.runs import read_run
from evoked.finetune import finetune
from evoked.finetune.evals import parse_eval_spec
from evoked.finetune.model import VANet, build_encoder, folded_norm_layers
from evoked.finetune.train import constant_prediction

COLORS = {
    "joy": ((230, 200, 40), 7.5, 6.0),
    "sadness": ((30, 40, 160), 2.5, 3.0),
    "anger": ((200, 20, 20), 2.0, 7.0),
}
SPLITS = ["train"] * 4 + ["val"] * 2 + ["test"] * 2
FAST = dict(size=32, epochs=1, batch_size=4, device="cpu", check_workers=1)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_csv(path: Path, rows: list[dict]) -> str:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return "csv:" + str(path)


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ftx")
    rng = np.random.default_rng(0)
    dim, other, unrated = [], [], []
    for ci, (c, (color, v, a)) in enumerate(COLORS.items()):
        for k in range(8):
            make_image(root / f"{c}_{k}.png", size=(32, 32), color=color, seed=ci * 10 + k)
            row = {"id": f"{c}_{k}", "path": f"{c}_{k}.png", "category": c}
            va = {"valence": v + rng.normal(0, 0.4), "arousal": a + rng.normal(0, 0.4)}
            dim.append({**row, **va, "split": SPLITS[k]})
        for k in range(3):  # another dataset: other ids, a 0..1 scale would be refused, so 1..9 here
            make_image(root / f"o_{c}_{k}.png", size=(32, 32), color=color, seed=100 + ci * 10 + k)
            other.append({"id": f"o_{c}_{k}", "path": f"o_{c}_{k}.png", "valence": v, "arousal": a})
            unrated.append({"id": f"o_{c}_{k}", "path": f"o_{c}_{k}.png"})
    return {
        "root": root,
        "dim": _write_csv(root / "dim.csv", dim),
        "other": _write_csv(root / "other.csv", other),
        "unrated": _write_csv(root / "unrated.csv", unrated),
        "rows": dim,
    }


def _folded_resnet18(path: Path) -> Path:
    """resnet18 weights whose batch norm looks folded: weight 1, mean 0, var 1 - eps, a non-zero bias."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.running_mean.zero_()
                m.running_var.fill_(1.0 - m.eps)
                m.bias.uniform_(-0.5, 0.5)
    torch.save(model.state_dict(), path)
    return path


def test_folded_batch_norm_is_detected_and_fresh_batch_norm_is_not(tmp_path):
    folded = build_encoder("resnet18", str(_folded_resnet18(tmp_path / "folded.pth")))
    fresh = build_encoder("resnet18", "random")
    assert len(folded_norm_layers(VANet(folded.module, 512))) == 20  # every BatchNorm2d of resnet18
    assert folded_norm_layers(VANet(fresh.module, 512)) == []  # zero bias: an untrained layer, trains fine


def test_constant_prediction_is_relative_to_the_ratings_spread():
    true = np.array([[2.0, 3.0], [5.0, 6.0], [8.0, 4.0]])
    assert constant_prediction(true, np.full((3, 2), 4.2))
    assert constant_prediction(true, np.array([[4.2, 5.0], [4.2004, 5.0001], [4.2001, 5.0]]))
    assert constant_prediction(true, np.array([[np.nan, 1.0], [2.0, 3.0], [4.0, 5.0]]))
    assert not constant_prediction(true, np.array([[4.0, 5.0], [4.5, 5.2], [5.1, 4.8]]))
    one = np.array([[3.0, 4.0]])  # one validation item: its ratings do not vary, nothing to judge
    assert not constant_prediction(one, np.array([[5.0, 5.0]]))
    assert constant_prediction(one, np.array([[np.nan, 5.0]]))


def test_folded_batch_norm_turns_freeze_bn_on_and_two_stage_inherits_it(ds, tmp_path):
    weights = str(_folded_resnet18(tmp_path / "folded.pth"))
    one = finetune(
        categorical=ds["dim"],
        dimensional=ds["dim"],
        out=tmp_path / "one",
        mode="one_stage",
        task="single",
        backbone="resnet18",
        weights=weights,
        **FAST,
    )
    assert one.meta["freeze_bn"] is True and "folded" in one.meta["freeze_bn_reason"]
    assert one.meta["batch_norm"]["folded_layers"] == 20
    two = finetune(
        dimensional=ds["dim"],
        out=tmp_path / "two",
        mode="two_stage",
        task="single",
        from_run=tmp_path / "one",
        **{k: v for k, v in FAST.items() if k != "size"},
    )
    assert two.meta["freeze_bn"] is True and two.meta["batch_norm"]["freeze_bn_from"] == "stage 1"
    assert two.meta["inherited"]["freeze_bn"] is True and two.meta["inherited"]["size"] == 32
    off = finetune(
        dimensional=ds["dim"],
        out=tmp_path / "off",
        mode="two_stage",
        task="single",
        from_run=tmp_path / "one",
        freeze_bn=False,
        **FAST,
    )
    assert off.meta["freeze_bn"] is False and off.meta["freeze_bn_reason"] == "--no-freeze-bn given"
    fresh = finetune(
        categorical=ds["dim"],
        dimensional=ds["dim"],
        out=tmp_path / "fresh",
        mode="one_stage",
        task="single",
        backbone="resnet18",
        weights="random",
        **FAST,
    )
    assert fresh.meta["freeze_bn"] is False and fresh.meta["batch_norm"]["freeze_bn_from"] == "default"
    sel = fresh.meta["selection"]["epoch"]
    assert "val split" in sel["rows"] and sel["n"] == 6  # the epoch is chosen on val, never test


def test_a_network_that_predicts_a_constant_stops_with_the_cause(ds, tmp_path):
    """Weights whose convolutions are all zero give every image the same features: nothing to keep."""
    model = torchvision.models.resnet18()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
    torch.save(model.state_dict(), tmp_path / "dead.pth")
    out = tmp_path / "dead"
    with pytest.raises(ConfigError, match="predicts a constant.*--freeze-bn"):
        finetune(
            categorical=ds["dim"],
            dimensional=ds["dim"],
            out=out,
            mode="one_stage",
            task="single",
            backbone="resnet18",
            weights=str(tmp_path / "dead.pth"),
            lr=1e-12,
            **FAST,
        )
    assert not (out / "run.json").exists()  # no NaN metrics written as if they were a result
    assert (out / "models" / "last.pt").is_file()


def test_eval_sets_are_predicted_and_described(ds, tmp_path):
    out = tmp_path / "ev"
    result = finetune(
        categorical=ds["dim"],
        dimensional=ds["dim"],
        out=out,
        mode="one_stage",
        task="single",
        backbone="resnet18",
        weights="random",
        evals=[ds["other"], ds["unrated"], ds["dim"] + ":test"],
        **FAST,
    )
    text = (out / "run.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"run.json holds {c}"))  # strict JSON
    evals = {e["name"]: e for e in result.meta["evals"]}
    assert list(evals) == ["other", "unrated", "dim:test"]
    assert evals["other"]["has_ratings"] and not evals["unrated"]["has_ratings"]
    assert (
        evals["other"]["n_items"] == 9
        and evals["dim:test"]["n_items"] == 6
        and evals["dim:test"]["split"] == "test"
    )
    run = read_run(out)
    name = result.model
    assert sorted(run.predictions[name].ids) == sorted(r["id"] for r in ds["rows"] if r["split"] == "test")
    assert set(run.predictions[name].kind) == {"held-out"}
    assert set(run.evals) == {"other", "unrated", "dim:test"}
    assert set(run.evals["other"][name].kind) == {"transfer"} and set(run.evals["other"][name].fold) == {-1}
    assert np.isnan(run.evals["unrated"][name].true).all()
    assert np.isfinite(run.evals["unrated"][name].pred).all()
    metrics = json.loads((out / "metrics.json").read_text())[name]["evals"]
    assert metrics["other"]["valence"]["n"] == 9 and "skipped" in metrics["unrated"]
    # the same item predicted in two groups: the test split and the dim:test eval agree
    test = dict(zip(run.predictions[name].ids, run.predictions[name].pred[:, 0]))
    again = dict(zip(run.evals["dim:test"][name].ids, run.evals["dim:test"][name].pred[:, 0]))
    assert all(abs(test[i] - again[i]) < 1e-5 for i in test)


def test_eval_spec_takes_a_split_only_after_an_existing_path(ds, tmp_path):
    spec = ds["other"]
    assert parse_eval_spec(spec) == (spec, None)
    assert parse_eval_spec(spec + ":test") == (spec, "test")
    with pytest.raises(ConfigError, match="no 'nope' items"):
        finetune(
            categorical=ds["dim"],
            dimensional=ds["dim"],
            out=tmp_path / "x",
            mode="one_stage",
            task="single",
            backbone="resnet18",
            weights="random",
            evals=[spec + ":nope"],
            **FAST,
        )


def test_ratings_outside_the_scale_are_refused_before_training(ds, tmp_path):
    rows = [dict(r) for r in ds["rows"]]
    rows[3]["valence"] = 12.0
    bad = _write_csv(ds["root"] / "bad.csv", rows)
    kw = dict(
        categorical=ds["dim"], mode="one_stage", task="single", backbone="resnet18", weights="random", **FAST
    )
    with pytest.raises(LabelError, match=r"'joy_3' valence=12"):
        finetune(dimensional=bad, out=tmp_path / "bad", **kw)
    assert not (tmp_path / "bad" / "models").exists()
    with pytest.raises(LabelError, match="outside the scale"):
        finetune(dimensional=ds["dim"], evals=[bad], out=tmp_path / "bad2", **kw)
    ok = finetune(dimensional=bad, out=tmp_path / "wide", va_range="0,20", **kw)
    assert ok.meta["va_range"] == [0.0, 20.0]


def test_cli_eval_and_va_range(ds, tmp_path, capsys):
    from evoked.cli import main

    out = tmp_path / "cli"
    argv = ["finetune", "--categorical", ds["dim"], "--dimensional", ds["dim"], "--mode", "one_stage"]
    argv += [
        "--task",
        "single",
        "--backbone",
        "resnet18",
        "--weights",
        "random",
        "--size",
        "32",
        "--epochs",
        "1",
    ]
    argv += ["--batch-size", "4", "--device", "cpu", "--eval", ds["other"], "--eval", ds["unrated"]]
    assert main([*argv, "--va-range", "1,9", "--no-freeze-bn", "--out", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert (
        "eval other (9 items): valence r" in printed
        and "eval unrated: " in printed
        and "predicted only" in printed
    )
    assert main([*argv, "--va-range", "nine", "--out", str(tmp_path / "bad"), "-q"]) == 2
    assert "--va-range 'nine'" in capsys.readouterr().err
