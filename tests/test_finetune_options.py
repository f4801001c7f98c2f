"""`FinetuneOptions`: every option is a flag of `evoked finetune`, and every one is checked first."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import pytest

from evoked.cli import build_parser, main
from evoked.cli.finetune import options_from_args
from evoked.errors import ConfigError
from evoked.finetune.options import FinetuneOptions

REQUIRED = ["finetune", "--dimensional", "csv:d.csv", "--mode", "one_stage", "--task", "single", "--out", "r"]


def _finetune_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["finetune"]


def test_every_option_is_a_flag():
    dests = {a.dest for a in _finetune_parser()._actions if a.option_strings}
    options = {f.name for f in fields(FinetuneOptions) if f.init}
    assert options - dests == set()  # a new option without a flag fails here
    assert dests - options == {"help", "json", "verbose", "quiet", "progress_every"}  # the command's own flags


def test_flags_reach_the_options():
    argv = [*REQUIRED, "--check-workers", "2", "--name", "e6-net", "--milestones", "3,6", "--plugin", "p.py"]
    opts = options_from_args(build_parser().parse_args(argv))
    assert (opts.check_workers, opts.name, opts.milestones, opts.plugins) == (2, "e6-net", "3,6", ["p.py"])
    # without flags, the command line and the Python API mean the same run
    cli = options_from_args(build_parser().parse_args(REQUIRED))
    api = FinetuneOptions(dimensional="csv:d.csv", out=Path("r"), mode="one_stage", task="single")
    for f in fields(FinetuneOptions):
        if f.init:
            a, b = getattr(cli, f.name), getattr(api, f.name)
            assert a == b or (not a and not b), f.name  # [] from an append flag is the API's () or None


@pytest.mark.parametrize(
    "change, match",
    [
        ({"check_workers": 0}, "--check-workers 0"),
        ({"mode": "three_stage"}, "--mode 'three_stage'"),
        ({"milestones": "5,x"}, "--milestones '5,x'"),
        ({"epochs": 0}, "--epochs 0"),
        ({"size": 4}, "--size 4"),
        ({"cls_loss": "hinge", "task": "multi", "categorical": "csv:c.csv"}, "--cls-loss 'hinge'"),
        ({"backbone": None}, "one_stage needs --backbone"),
        ({"va_range": "9,1"}, "--va-range"),
        ({"checkpoint": "x.pt"}, "--checkpoint/--from"),
        ({"resume": True, "overwrite": True}, "--resume continues"),
    ],
)
def test_options_are_checked_before_any_work(tmp_path: Path, change: dict, match: str):
    # the datasets do not exist: a failure from reading them would mean work started first
    base = dict(dimensional="csv:missing.csv", categorical="csv:missing.csv", out=tmp_path / "run")
    base.update(backbone="resnet18", device="cpu")
    with pytest.raises(Exception, match=match):
        FinetuneOptions(**{**base, **change}).check()
    assert not (tmp_path / "run").exists()


def test_cli_refuses_a_bad_option_before_reading_data(tmp_path: Path, capsys):
    argv = [
        *REQUIRED[:-1],
        str(tmp_path / "run"),
        "--categorical",
        "csv:missing.csv",
        "--backbone",
        "resnet18",
    ]
    argv += ["--check-workers", "0"]
    assert main(argv) == 2
    assert "--check-workers 0: use 1 or more" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_options_object_and_keywords(tmp_path: Path):
    from evoked.finetune import finetune

    opts = FinetuneOptions(
        dimensional="csv:missing.csv",
        categorical="csv:missing.csv",
        out=tmp_path / "run",
        backbone="resnet18",
    )
    with pytest.raises(ConfigError, match="--check-workers 0"):
        finetune(opts, check_workers=0)  # keywords beside the object replace its fields
    assert opts.check_workers == 4  # the caller's object is not changed
    with pytest.raises(TypeError, match="chek_workers"):
        finetune(dimensional="csv:missing.csv", out=tmp_path / "run", chek_workers=1)
