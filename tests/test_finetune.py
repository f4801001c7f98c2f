"""The end-to-end network: four frameworks on tiny synthetic images, resume, freezing, losses, labels."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_image
from evoked.cli import main
from evoked.data import Manifest, load_dataset, load_lexicon
from evoked.errors import ConfigError, DatasetError, LabelError
from evoked.evaluate.runs import read_run
from evoked.extract.backbones.clip import write_model_config
from evoked.finetune import finetune, multi_hot_top, prepare_data, task_loss
from evoked.finetune.model import auto_freeze_point, build_encoder, feature_dim, resolve_freeze_point

# three colour-coded categories with well separated VA (the lexicon gives the categorical targets)
CATEGORIES = {
    "joy": ((230, 200, 40), 7.5, 6.0),
    "sadness": ((30, 40, 160), 2.5, 3.0),
    "anger": ((200, 20, 20), 2.0, 7.0),
}
SPLITS = ["train"] * 4 + ["val"] * 2 + ["test"] * 2
FAST = dict(
    backbone="resnet18", weights="random", size=32, epochs=1, batch_size=4, device="cpu", check_workers=1
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # a 2-core machine shared with other test runs: OpenMP threads spinning against each other are 10x slower
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_csv(path: Path, rows: list[dict]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def ds(tmp_path_factory) -> dict[str, str]:
    """24 images of 32x32 in 3 categories. ``dim``: VA ratings and a 12/6/6 split; ``cat``: the same
    ids with category labels and no split (so val/test ids must be removed from its training items)."""
    root = tmp_path_factory.mktemp("ft")
    rng = np.random.default_rng(0)
    dim, cat = [], []
    for ci, (c, (color, v, a)) in enumerate(CATEGORIES.items()):
        for k in range(8):
            make_image(root / f"{c}_{k}.png", size=(32, 32), color=color, seed=ci * 10 + k)
            row = {"id": f"{c}_{k}", "path": f"{c}_{k}.png", "category": c}
            cat.append(dict(row))
            dim.append(
                {
                    **row,
                    "valence": v + rng.normal(0, 0.4),
                    "arousal": a + rng.normal(0, 0.4),
                    "split": SPLITS[k],
                }
            )
    return {
        "root": str(root),
        "dim": "csv:" + str(_write_csv(root / "dim.csv", dim)),
        "cat": "csv:" + str(_write_csv(root / "cat.csv", cat)),
    }


def _test_ids(ds) -> list[str]:
    m = load_dataset(ds["dim"])
    return sorted(m.ids[m.split == "test"].tolist())


def _predictions(out: Path) -> list[dict]:
    with (out / "predictions.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def one_stage(ds, tmp_path_factory) -> dict[str, Path]:
    runs = tmp_path_factory.mktemp("runs")
    out = {}
    for task in ("single", "multi"):
        out[task] = runs / f"one_{task}"
        finetune(
            categorical=ds["cat"], dimensional=ds["dim"], out=out[task], mode="one_stage", task=task, **FAST
        )
    return out


@pytest.fixture(scope="module")
def two_stage(ds, one_stage, tmp_path_factory) -> dict[str, Path]:
    runs = tmp_path_factory.mktemp("runs2")
    out = {}
    fast = {k: v for k, v in FAST.items() if k not in ("backbone", "weights", "size")}
    for task in ("single", "multi"):
        out[task] = runs / f"two_{task}"
        finetune(
            categorical=ds["cat"],
            dimensional=ds["dim"],
            out=out[task],
            mode="two_stage",
            task=task,
            from_run=one_stage[task],
            n_labels=6,
            **fast,
        )
    return out


def _check_run_dir(out: Path, mode: str, task: str, test_ids: list[str]) -> dict:
    name = f"finetune:{mode}/{task}"
    rows = _predictions(out)
    assert sorted(r["id"] for r in rows) == test_ids
    assert {r["model"] for r in rows} == {name}
    assert {r["split"] for r in rows} == {"test"} and {r["fold"] for r in rows} == {"-1"}
    assert all(np.isfinite(float(r["valence_pred"])) and np.isfinite(float(r["arousal_pred"])) for r in rows)
    run = read_run(out)  # what `evoked evaluate` reads
    assert run.meta["kind"] == "finetune" and run.meta["mode"] == mode and run.meta["task"] == task
    assert run.meta["models"] == [name] and run.meta["epochs_run"] == 1 and run.meta["best_epoch"] == 1
    assert run.meta["lexicon"]["name"] == "nrc"
    metrics = json.loads((out / "metrics.json").read_text())[name]
    for dim in ("valence", "arousal"):
        assert metrics[dim]["n"] == len(test_ids) and "r" in metrics[dim] and metrics[dim]["mse"] >= 0
    assert metrics["category"]["categories"] == ["anger", "joy", "sadness"]
    assert 0.0 <= metrics["category"]["accuracy"] <= 1.0 and metrics["category"]["n"] == len(test_ids)
    assert (out / "models" / "last.pt").is_file() and (out / "models" / "best.pt").is_file()
    return run.meta


@pytest.mark.parametrize("task", ["single", "multi"])
def test_one_stage_trains_and_writes_a_run(ds, one_stage, task):
    meta = _check_run_dir(one_stage[task], "one_stage", task, _test_ids(ds))
    assert meta["n_items"] == {
        "train": 12,
        "train_categorical": 12,
        "train_dimensional": 0,
        "val": 6,
        "test": 6,
    }
    # the categorical set shares ids with the dimensional one: its val/test ids were left out
    assert meta["excluded"] == {"categorical_in_dimensional_eval": 12}
    assert meta["target"]["kind"] == "category-va" and meta["freeze_until"] == "none"
    if task == "multi":
        assert meta["classes"] == ["anger", "joy", "sadness"] and meta["alpha"] == 0.5
        assert "alpha*mse + (1-alpha)*ce" == meta["loss"]
        assert {f"pred_p_{c}" for c in CATEGORIES} <= set(_predictions(one_stage[task])[0])


@pytest.mark.parametrize("task", ["single", "multi"])
def test_two_stage_fine_tunes_a_checkpoint(ds, two_stage, task):
    meta = _check_run_dir(two_stage[task], "two_stage", task, _test_ids(ds))
    assert meta["init"]["from"] == "checkpoint" and meta["init"]["stage1_task"] == task
    assert meta["freeze_until"] == "layer4" and meta["n_labels"] == 6
    assert meta["excluded"]["dimensional_train_beyond_n_labels"] == 6
    n = meta["n_items"]
    assert n["train_dimensional"] == 6
    assert n["train_categorical"] == (12 if task == "multi" else 0)
    if task == "multi":
        assert meta["alpha"] == 0.9 and meta["init"]["category_head"] == "loaded"
    run = read_run(two_stage[task])
    assert [(c["setting"], c["n_labels"]) for c in run.curve] == [("two_stage", 6)]


def test_two_stage_changes_only_what_is_not_frozen(one_stage, two_stage):
    before = torch.load(one_stage["single"] / "models" / "best.pt", weights_only=True)["model"]
    after = torch.load(two_stage["single"] / "models" / "last.pt", weights_only=True)["model"]
    early = [k for k in before if k.startswith("encoder.") and not k.startswith("encoder.layer4.")]
    late = [
        k for k in before if k.startswith(("encoder.layer4.", "va_head.")) and after[k].is_floating_point()
    ]
    assert early and late
    # weights and batch-norm statistics of the frozen blocks stay as they were
    assert all(torch.equal(before[k], after[k]) for k in early)
    changed = [k for k in late if not torch.equal(before[k], after[k])]
    assert "va_head.weight" in changed and any(
        k.startswith("encoder.layer4.") and "conv" in k for k in changed
    )
    assert any(k.endswith("running_mean") for k in changed)  # layer4's batch norm still learns


def test_resume_gives_the_same_result_as_an_uninterrupted_run(ds, tmp_path):
    common = dict(categorical=ds["cat"], dimensional=ds["dim"], mode="one_stage", task="multi", **FAST)
    common.pop("epochs")
    finetune(out=tmp_path / "full", epochs=2, **common)
    finetune(out=tmp_path / "part", epochs=1, **common)
    result = finetune(out=tmp_path / "part", epochs=2, resume=True, **common)
    assert result.outcome.epochs_run == 2 and len(result.outcome.history) == 2
    full = torch.load(tmp_path / "full" / "models" / "last.pt", weights_only=True)
    part = torch.load(tmp_path / "part" / "models" / "last.pt", weights_only=True)
    assert full["model"].keys() == part["model"].keys()
    assert all(torch.equal(full["model"][k], part["model"][k]) for k in full["model"])
    assert (tmp_path / "full" / "predictions.csv").read_text() == (
        tmp_path / "part" / "predictions.csv"
    ).read_text()
    h_full = json.loads((tmp_path / "full" / "run.json").read_text())["history"]
    h_part = json.loads((tmp_path / "part" / "run.json").read_text())["history"]
    assert [h["train_loss"] for h in h_full] == [h["train_loss"] for h in h_part]
    # and a different seed gives different weights (the comparison above can fail)
    other = finetune(out=tmp_path / "seed1", epochs=1, seed=1, **{k: v for k, v in common.items()})
    w1 = torch.load(other.out / "models" / "last.pt", weights_only=True)["model"]["va_head.weight"]
    w0 = torch.load(tmp_path / "part" / "models" / "best.pt", weights_only=True)["model"]["va_head.weight"]
    assert not torch.equal(w0, w1)


# ---------------------------------------------------------------------------------------------- losses


def test_multi_loss_is_alpha_mse_plus_one_minus_alpha_ce():
    g = torch.Generator().manual_seed(0)
    va_pred, logits = torch.randn(5, 2, generator=g), torch.randn(5, 3, generator=g)
    va_true = torch.rand(5, 2, generator=g) * 8 + 1
    labels = torch.tensor([0, 2, 1, 1, 0])
    batch = {
        "va": va_true,
        "va_mask": torch.ones(5, dtype=torch.bool),
        "cls": F.one_hot(labels, 3).float(),
        "cls_mask": torch.ones(5, dtype=torch.bool),
    }
    loss, parts = task_loss({"va": va_pred, "logits": logits}, batch, alpha=0.3, cls_loss="ce")
    expected = 0.3 * F.mse_loss(va_pred, va_true) + 0.7 * F.cross_entropy(logits, labels)
    assert torch.allclose(loss, expected)
    assert parts["mse"] == pytest.approx(float(F.mse_loss(va_pred, va_true)), rel=1e-6)
    # single task: the MSE alone
    single, _ = task_loss({"va": va_pred}, batch, alpha=0.3)
    assert torch.allclose(single, F.mse_loss(va_pred, va_true))
    # two_stage/multi: categorical items give CE only, VA items MSE only
    va_mask = torch.tensor([True, True, False, False, False])
    mixed = {**batch, "va_mask": va_mask, "cls_mask": ~va_mask}
    loss, _ = task_loss({"va": va_pred, "logits": logits}, mixed, alpha=0.9, cls_loss="ce")
    expected = 0.9 * F.mse_loss(va_pred[:2], va_true[:2]) + 0.1 * F.cross_entropy(logits[2:], labels[2:])
    assert torch.allclose(loss, expected)
    # a batch without VA items: the MSE term is 0, not NaN
    loss, parts = task_loss(
        {"va": va_pred, "logits": logits}, {**batch, "va_mask": ~batch["va_mask"]}, alpha=0.5
    )
    assert parts["mse"] == 0.0 and torch.allclose(loss, 0.5 * F.cross_entropy(logits, labels))


def test_distribution_sets_use_bce_on_multi_hot_top_categories(tmp_path):
    dist = np.array([[0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [0.1, 0.1, 0.8]])
    hot = multi_hot_top(dist)
    assert hot.tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    g = torch.Generator().manual_seed(1)
    va_pred, logits, va_true = (
        torch.randn(3, 2, generator=g),
        torch.randn(3, 3, generator=g),
        torch.rand(3, 2) * 8,
    )
    batch = {
        "va": va_true,
        "va_mask": torch.ones(3, dtype=torch.bool),
        "cls": torch.from_numpy(hot),
        "cls_mask": torch.ones(3, dtype=torch.bool),
    }
    loss, parts = task_loss({"va": va_pred, "logits": logits}, batch, alpha=0.5, cls_loss="bce")
    bce = F.binary_cross_entropy(torch.sigmoid(logits), torch.from_numpy(hot))  # the paper: sigmoid + BCELoss
    assert torch.allclose(loss, 0.5 * F.mse_loss(va_pred, va_true) + 0.5 * bce, atol=1e-6)
    assert set(parts) == {"mse", "bce"}

    # a label-distribution set with --soft: expected VA as target, BCE on its top categories
    cats = ("joy", "sadness", "anger")
    n = 6
    m = Manifest.build(
        tmp_path,
        [f"{i}.png" for i in range(n)],
        valence=[5.0] * n,
        arousal=[5.0] * n,
        split=["train", "train", "val", "val", "test", "test"],
        distribution=np.vstack([dist, dist]),
        categories=cats,
    )
    lex = load_lexicon("nrc")
    data = prepare_data(categorical=m, dimensional=m, mode="one_stage", task="multi", lexicon=lex, soft=True)
    assert data.cls_loss == "bce" and data.classes == cats
    assert data.train.cls.tolist() == hot[:2].tolist()
    np.testing.assert_allclose(data.train.va, lex.soft(dist[:2], cats), rtol=1e-6)
    ce = prepare_data(
        categorical=m, dimensional=m, mode="one_stage", task="multi", lexicon=lex, soft=True, cls_loss="ce"
    )
    np.testing.assert_allclose(ce.train.cls, dist[:2], rtol=1e-6)  # soft-label cross-entropy


# ---------------------------------------------------------------------------------------------- data


def test_shared_ids_in_val_or_test_never_train_the_categorical_stage(ds):
    cat, dim = load_dataset(ds["cat"]), load_dataset(ds["dim"])
    lex = load_lexicon("nrc")
    data = prepare_data(categorical=cat, dimensional=dim, mode="one_stage", task="single", lexicon=lex)
    held_out = set(dim.ids[np.isin(dim.split, ("val", "test"))].tolist())
    assert len(held_out) == 12
    assert not set(data.train.ids.tolist()) & held_out
    assert data.excluded == {"categorical_in_dimensional_eval": 12} and len(data.train) == 12
    # category-derived VA: every joy item gets NRC's joy
    joy = data.train.category == "joy"
    np.testing.assert_allclose(data.train.va[joy], np.repeat(lex.hard(["joy"]), joy.sum(), 0), rtol=1e-6)
    # two_stage/multi mixes category-only and VA-only items
    mix = prepare_data(
        categorical=cat, dimensional=dim, mode="two_stage", task="multi", lexicon=lex, n_labels=5
    )
    src = mix.train.source
    assert (mix.train.cls_mask == (src == "categorical")).all() and (
        mix.train.va_mask == (src == "dimensional")
    ).all()
    assert (src == "dimensional").sum() == 5 and mix.excluded["dimensional_train_beyond_n_labels"] == 7


def _expect_before_training(tmp_path: Path, exc, match: str, **kwargs) -> None:
    out = tmp_path / "run"
    with pytest.raises(exc, match=match):
        finetune(out=out, **{**FAST, **kwargs})
    assert not (out / "models").exists()  # nothing trained


def test_impossible_configurations_fail_before_training(ds, tmp_path):
    root = Path(ds["root"])
    base = dict(categorical=ds["cat"], dimensional=ds["dim"], mode="one_stage", task="single")
    fast = {k: v for k, v in FAST.items() if k not in ("backbone", "weights", "size")}
    with pytest.raises(ConfigError, match="--checkpoint"):
        finetune(out=tmp_path / "r", **{**base, **fast, "mode": "two_stage"})
    with pytest.raises(ConfigError, match="--n-labels"):
        finetune(out=tmp_path / "r", n_labels=3, **base, **FAST)
    # labels that are not lexicon words: listed, with the flag that maps them
    odd = _write_csv(
        root / "odd.csv",
        [{"path": "joy_0.png", "category": "happy"}, {"path": "joy_1.png", "category": "blue"}],
    )
    _expect_before_training(
        tmp_path, LabelError, r"blue, happy.*--category-map", **{**base, "categorical": f"csv:{odd}"}
    )
    # multi task on a dataset without categories
    nocat = _write_csv(root / "nocat.csv", [{"path": "joy_0.png", "valence": 5, "arousal": 5}] * 1)
    _expect_before_training(
        tmp_path,
        LabelError,
        "no training items with category labels",
        **{**base, "categorical": f"csv:{nocat}", "task": "multi"},
    )
    # a dimensional set without a split
    _expect_before_training(tmp_path, ConfigError, "evoked data split", **{**base, "dimensional": ds["cat"]})
    _expect_before_training(tmp_path, ConfigError, "fp16 needs CUDA", precision="fp16", **base)
    _expect_before_training(
        tmp_path, ConfigError, "--freeze-until 'layer9'.*layer4", freeze_until="layer9", **base
    )
    _expect_before_training(
        tmp_path,
        ConfigError,
        "cannot load it as an evoked checkpoint",
        **{**base, "mode": "two_stage", "checkpoint": root / "dim.csv", "backbone": None},
    )
    # an unreadable image is listed by id before training (or left out with --skip-bad-images)
    (root / "broken.png").write_bytes(b"not an image")
    rows = list(csv.DictReader((root / "dim.csv").open()))
    rows[-1] = {**rows[-1], "id": "broken", "path": "broken.png"}
    broken = _write_csv(root / "broken.csv", rows)
    _expect_before_training(
        tmp_path, DatasetError, "broken.*--skip-bad-images", **{**base, "dimensional": f"csv:{broken}"}
    )
    # an existing run is neither overwritten nor resumed by accident
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "run.json").write_text("{}")
    with pytest.raises(ConfigError, match="--resume.*--overwrite"):
        finetune(out=tmp_path / "taken", **base, **FAST)
    with pytest.raises(ConfigError, match="last.pt does not exist"):
        finetune(out=tmp_path / "taken", resume=True, **base, **FAST)


def test_backbones_become_encoders(tmp_path):
    mobilenet = build_encoder("tv:mobilenet_v2", "random")
    assert feature_dim(mobilenet.module, 32) == 1280 and mobilenet.relu
    assert auto_freeze_point(mobilenet) == "features.14"
    clip_cfg = write_model_config(tmp_path / "clip-tiny.json")
    clip = build_encoder(f"clip:{clip_cfg}", "random")
    assert clip.kind == "clip" and not clip.relu  # the CLIP embedding can be negative: no ReLU
    assert feature_dim(clip.module, 64) == 32
    assert resolve_freeze_point(clip, "auto") == "transformer.resblocks.1"
    with pytest.raises(ConfigError, match="--size"):
        feature_dim(clip.module, 48)  # a ViT takes its own input size only


def test_cli_runs_and_reports_errors(ds, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["finetune", "--categorical", ds["cat"], "--dimensional", ds["dim"], "--mode", "one_stage"]
    args += [
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
    args += ["--batch-size", "4", "--device", "cpu", "--out", str(out), "-q"]
    assert main(args + ["--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert set(printed["finetune:one_stage/single"]) >= {"valence", "arousal", "category"}
    assert main(args) == 2
    assert "evoked: error:" in capsys.readouterr().err
    assert (
        main(
            [
                "finetune",
                "--dimensional",
                ds["dim"],
                "--mode",
                "two_stage",
                "--task",
                "single",
                "--out",
                str(tmp_path / "x"),
            ]
        )
        == 2
    )
    assert "--checkpoint" in capsys.readouterr().err


def test_clip_image_encoder_trains_at_its_own_size(ds, tmp_path):
    clip_cfg = write_model_config(tmp_path / "clip-tiny.json")
    fast = {**FAST, "backbone": f"clip:{clip_cfg}", "size": None}
    result = finetune(
        categorical=ds["cat"],
        dimensional=ds["dim"],
        out=tmp_path / "clip",
        mode="one_stage",
        task="single",
        **fast,
    )
    assert result.meta["size"] == 64 and result.meta["backbone"].startswith("clip:")
    assert len(_predictions(result.out)) == 6


def test_freeze_bn_keeps_every_batch_norm_in_eval_mode():
    from evoked.finetune.model import VANet, freeze_before, frozen_norm_layers, set_train_mode

    enc = build_encoder("resnet18", "random")
    net = VANet(enc.module, 512)
    freeze_before(net, "layer4")
    some = frozen_norm_layers(net)
    every = frozen_norm_layers(net, all_layers=True)
    n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert len(every) == n_bn and 0 < len(some) < n_bn  # layer4's batch norms train unless --freeze-bn
    set_train_mode(net, every)
    assert net.training and not any(m.training for m in every)


def test_cli_name_and_check_workers_flags(ds, tmp_path, capsys):
    out = tmp_path / "named"
    argv = ["finetune", "--categorical", ds["cat"], "--dimensional", ds["dim"], "--mode", "one_stage"]
    argv += ["--task", "single", "--backbone", "resnet18", "--weights", "random", "--size", "32"]
    argv += ["--epochs", "1", "--batch-size", "4", "--device", "cpu", "--check-workers", "1"]
    assert main([*argv, "--name", "e6-net", "--out", str(out), "-q"]) == 0
    assert read_run(out).meta["name"] == "e6-net"
    assert main([*argv, "--out", str(tmp_path / "unnamed"), "-q"]) == 0
    assert read_run(tmp_path / "unnamed").meta["name"] == "unnamed"  # the folder's name, as regress
