"""Progress without a terminal: plain log lines (done/total, rate, ETA; per epoch for finetune)."""

from __future__ import annotations

import csv
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import evoked
from conftest import make_image
from evoked.cli import main
from evoked.cli._common import PROGRESS_EVERY_ENV, LogProgress
from storeutil import make_store

SRC = str(Path(evoked.__file__).resolve().parents[1])
SPLITS = ("train", "train", "val", "test")


def _dataset(root: Path) -> str:
    """12 small images in 3 categories with VA ratings and a train/val/test split."""
    rows = []
    for i in range(12):
        cat, color = [("joy", (220, 200, 40)), ("fear", (30, 30, 60)), ("sadness", (60, 60, 200))][i % 3]
        make_image(root / f"im{i}.png", size=(32, 32), color=color, seed=i)
        v, a = {"joy": (7, 6), "fear": (3, 7), "sadness": (2.5, 3)}[cat]
        rows.append({"id": f"im{i}", "path": f"im{i}.png", "category": cat, "valence": v + i / 20,
                     "arousal": a - i / 20, "split": SPLITS[i % 4]})  # fmt: skip
    with (root / "d.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return f"csv:{root / 'd.csv'}"


def _run_to_file(argv: list[str], log: Path, **env: str) -> str:
    """`evoked ARGV` in a child process with stdout and stderr sent to a file (no terminal, as under nohup)."""
    with log.open("w") as f:
        rc = subprocess.call(
            [sys.executable, "-m", "evoked", *argv],
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **env},
        )
    text = log.read_text()
    assert rc == 0, text
    return text


def test_finetune_and_regress_log_progress_lines_to_a_file(tmp_path: Path):
    ds = _dataset(tmp_path)
    ft = [
        "finetune", "--categorical", ds, "--dimensional", ds, "--mode", "one_stage", "--task", "single",
        "--backbone", "resnet18", "--weights", "random", "--size", "32", "--epochs", "2", "--batch-size", "4",
        "--device", "cpu", "--check-workers", "1", "--out", str(tmp_path / "ft"),
    ]  # fmt: skip
    text = _run_to_file(ft, tmp_path / "finetune.log")
    epochs = [line for line in text.splitlines() if line.startswith("INFO evoked.progress: epoch ")]
    assert len(epochs) == 2, text
    for k, line in enumerate(epochs, 1):
        assert f"epoch {k}/2: 2/2 batch (100%)" in line
        assert "loss=" in line and "val_r_v=" in line and "val_r_a=" in line and "run_time=" in line
    assert "checking images: 12/12 img" in text and "predicting test: 3/3 img" in text
    assert "wrote " in text

    rng = np.random.default_rng(0)
    n = 40
    store = make_store(tmp_path / "s.h5", {"net/pool": rng.random((n, 6))}, valence=rng.uniform(1, 9, n),
                       arousal=rng.uniform(1, 9, n), split=[SPLITS[i % 4] for i in range(n)])  # fmt: skip
    rg = ["regress", str(store), "--feature", "net/pool", "--model", "ridge,knn", "--split", "test"]
    text = _run_to_file(
        [*rg, "--out", str(tmp_path / "r")], tmp_path / "regress.log", **{PROGRESS_EVERY_ENV: "0"}
    )
    lines = [line for line in text.splitlines() if line.startswith("INFO evoked.progress: fitting: ")]
    # two models, each fitted on train+val and once on train to be scored on val (the default's choice):
    # the total counts every fit, so the count never runs past it
    assert lines[0].startswith("INFO evoked.progress: fitting: 0/4 fit (0%)"), text
    assert "fitting: 4/4 fit (100%)" in lines[-1] and all("/4 fit" in line for line in lines)
    assert all(("fit/s" in line or "s/fit" in line) and "elapsed" in line for line in lines)
    assert "ETA" in lines[1]


def test_regress_cv_stream_counts_each_fold_and_the_saved_model(tmp_path: Path, caplog, capsys):
    rng = np.random.default_rng(1)
    store = make_store(tmp_path / "s.h5", {"net/pool": rng.random((30, 6))}, valence=rng.uniform(1, 9, 30),
                       arousal=rng.uniform(1, 9, 30))  # fmt: skip
    caplog.set_level(logging.INFO, logger="evoked.progress")
    argv = ["regress", str(store), "--feature", "net/pool", "--model", "ridge,knn", "--cv", "3", "--stream"]
    assert main([*argv, "--out", str(tmp_path / "cv"), "--progress-every", "0"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "evoked.progress"]
    assert [line.split(" fit ")[0] for line in lines] == [
        f"fitting: {k}/8" for k in range(9)
    ]  # 3 folds + 1, twice
    assert lines[-1].endswith("[knn final]")
    assert "wrote " in capsys.readouterr().out

    caplog.clear()
    argv = [
        "regress",
        str(store),
        "--feature",
        "net/pool",
        "--cv",
        "3",
        "--repeats",
        "2",
        "--progress-every",
        "0",
    ]
    assert main([*argv, "--out", str(tmp_path / "rep")]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "evoked.progress"]
    for k in (1, 2):  # each repeat counts its own 4 fits, never past its total
        mine = [line for line in lines if line.startswith(f"fitting, repeat {k}/2: ")]
        assert [line.split(" fit ")[0].split(": ")[1] for line in mine] == [f"{i}/4" for i in range(5)], lines


def test_extract_logs_lines_with_rate_and_eta(tmp_path: Path, caplog, capsys):
    ds = _dataset(tmp_path)
    caplog.set_level(logging.INFO, logger="evoked.progress")
    argv = ["extract", ds, "--out", str(tmp_path / "f.h5"), "--backbone", "color", "--batch-size", "4"]
    assert main([*argv, "--progress-every", "0"]) == 0
    lines = [r.getMessage() for r in caplog.records if r.name == "evoked.progress"]
    assert lines[0].startswith("extracting: 4/12 img (33%)") and "img/s" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("extracting: 12/12 img (100%)")
    assert "wrote " in capsys.readouterr().out


def test_log_lines_come_every_n_seconds_and_once_at_the_end(monkeypatch, caplog):
    now = [100.0]
    monkeypatch.setattr("evoked.cli._common.time.monotonic", lambda: now[0])
    caplog.set_level(logging.INFO, logger="evoked.progress")
    bar = LogProgress(100, "work", "row", every=30)
    for _ in range(10):
        now[0] += 5
        bar.update(5)
    bar.set_postfix(failed=1)
    bar.close()
    bar.close()
    said = [r.getMessage() for r in caplog.records]
    assert said == [
        "work: 30/100 row (30%), 1.0 row/s, elapsed 0:00:30, ETA 0:01:10",
        "work: 50/100 row (50%), 1.0 row/s, elapsed 0:00:50 [failed=1]",
    ]


@pytest.mark.parametrize("value", ["-1", "soon", "inf"])
def test_a_bad_interval_is_a_clear_error(value, tmp_path, capsys, monkeypatch):
    argv = ["extract", _dataset(tmp_path), "--out", str(tmp_path / "f.h5"), "--backbone", "color"]
    with pytest.raises(SystemExit):
        main([*argv, "--progress-every", value])
    assert f"--progress-every: {value!r} is not a number of seconds >= 0" in capsys.readouterr().err
    monkeypatch.setenv(PROGRESS_EVERY_ENV, value)
    assert main(argv) == 2
    assert f"${PROGRESS_EVERY_ENV}: {value!r} is not a number of seconds" in capsys.readouterr().err
    assert not (tmp_path / "f.h5").exists()
