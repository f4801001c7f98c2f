"""The one registry type, the CLI's choices and help taken from it, and the command's start-up cost."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evoked.cli import build_parser, main
from evoked.cli.regress import regress_options
from evoked.data.datasets import DATASETS, split_spec
from evoked.errors import ConfigError, DatasetError
from evoked.extract.registry import BACKBONES, list_backbones, parse_spec
from evoked.extract.sources import SOURCES
from evoked.features.export import EXPORT_FORMATS
from evoked.features.index_kinds import INDEX_KINDS
from evoked.registry import Registry
from evoked.regress.options import RegressOptions
from evoked.regress.registry import REGRESSORS
from evoked.va_point import va_point
from storeutil import make_store

SRC = Path(__file__).resolve().parents[1] / "src"


# -- the registry type ----------------------------------------------------------------------------
def test_register_get_list_help_and_one_error():
    r: Registry = Registry("widget", fix="Register your own with @WIDGETS.register.")

    @r.register("round", help="a round widget", aliases=("circle",))
    def round_widget():
        return "round"

    r.add("square", "json:dumps", help="imported on first use")
    assert r.names() == ["round", "circle", "square"]
    assert r.help() == {
        "round": "a round widget",
        "circle": "a round widget",
        "square": "imported on first use",
    }
    assert r.load("circle")() == "round" and r.load("square") is json.dumps
    assert "round" in r and "oval" not in r
    with pytest.raises(ConfigError, match="widget 'round' is registered twice"):
        r.add("round", round_widget)
    with pytest.raises(ConfigError) as e:
        r.get("rund")
    assert str(e.value) == (
        "unknown widget 'rund'. Did you mean round? Known widgets: round, circle, square; choose one of them. "
        "Register your own with @WIDGETS.register."
    )


def test_every_kind_uses_the_one_error_shape():
    for registry, bad, error in (
        (BACKBONES, "resnet5O", ConfigError),
        (REGRESSORS, "ridgee", ConfigError),
        (DATASETS, "emotion7", DatasetError),
        (EXPORT_FORMATS, "npz", ConfigError),
        (INDEX_KINDS, "ivfp16", ConfigError),
        (SOURCES, "webdatasets", ConfigError),
    ):
        with pytest.raises(
            error, match=rf"unknown {registry.kind} '{bad}'\. Did you mean .*Known {registry.kind}s: "
        ):
            registry.get(bad)


# -- the CLI takes every registered name, and its help lists them ---------------------------------
def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_every_registered_name_is_accepted_by_the_cli(tmp_path: Path):
    for kind in INDEX_KINDS.names():
        assert _parse("index", "s.h5", "--feature", "f/pool", "--kind", kind).kind == kind
    for fmt in EXPORT_FORMATS.names():
        assert (
            _parse("features", "export", "s.h5", "--feature", "f", "--format", fmt, "--out", "o").format
            == fmt
        )
    for model in REGRESSORS.names():
        args = _parse(
            "regress", "s.h5", "--feature", "f/pool", "--out", str(tmp_path / "run"), "--model", model
        )
        assert RegressOptions(**regress_options(args)).check().model_names == [model]
    for spec in list_backbones():
        args = _parse("extract", "folder:imgs", "--out", "f.h5", "--backbone", spec)
        assert parse_spec(args.backbone[0]).name == spec.split(":")[0]
    for kind in DATASETS.names():
        assert split_spec(_parse("data", "inspect", f"{kind}:some/path").dataset)[0] == kind
    # a source reads manifests of a dataset kind: it has one of those names
    assert set(SOURCES.names()) <= set(DATASETS.names())


@pytest.mark.parametrize(
    "argv, registry",
    [
        (["index", "--help"], INDEX_KINDS),
        (["features", "export", "--help"], EXPORT_FORMATS),
        (["regress", "--help"], REGRESSORS),
        (["extract", "--help"], BACKBONES),
        (["data", "inspect", "--help"], DATASETS),
    ],
)
def test_help_lists_every_registered_name(argv, registry, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(argv)
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for entry in registry:
        assert entry.usage in text, entry.usage


# -- issue 21, failure 5: choices and messages copied by hand -------------------------------------
@pytest.fixture
def va_store(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    n = 300
    return make_store(
        tmp_path / "s.h5",
        {"net/pool": rng.normal(size=(n, 16))},
        valence=rng.uniform(1, 9, n),
        arousal=rng.uniform(1, 9, n),
    )


def test_index_kind_ivffp16_is_accepted(va_store: Path, capsys):
    assert main(["index", str(va_store), "--feature", "net/pool", "--kind", "ivffp16", "--json", "-q"]) == 0
    assert json.loads(capsys.readouterr().out)["kind"] == "ivffp16"


def test_index_kind_typo_gets_the_registry_message(capsys):
    with pytest.raises(SystemExit):
        _parse("index", "s.h5", "--feature", "f/pool", "--kind", "ivfp16")
    err = capsys.readouterr().err
    assert "argument --kind: unknown index kind 'ivfp16'. Did you mean ivffp16" in err


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["regress", "s.h5", "--feature", "f/pool", "--out", "o", "--max-memory", "2XB"], "--max-memory"),
        (["index", "s.h5", "--feature", "f/pool", "--memory-budget", "2XB"], "--memory-budget"),
    ],
)
def test_a_bad_size_names_the_flag_typed(argv, flag, capsys):
    with pytest.raises(SystemExit):
        _parse(*argv)
    err = capsys.readouterr().err
    other = {"--max-memory": "--memory-budget", "--memory-budget": "--max-memory"}[flag]
    assert f"argument {flag}: '2XB' is not a size such as 2GB" in err and other not in err


def test_sizes_reach_the_runner_as_bytes():
    args = _parse("regress", "s.h5", "--feature", "f/pool", "--out", "o", "--max-memory", "512MB")
    assert regress_options(args)["max_memory"] == 512 * 2**20


@pytest.mark.parametrize("point", ["12,3", "5,0.5", "nan,5", "7"])
def test_search_va_off_the_scale_is_refused_as_the_api_refuses_it(va_store: Path, point: str, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", str(va_store), "--feature", "net/pool", "--va", point])
    assert e.value.code == 2
    assert "argument --va:" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="valence 12 is not on the 1..9 valence/arousal scale"):
        va_point(12, 3)


def test_search_va_on_the_scale(va_store: Path, capsys):
    assert main(["search", str(va_store), "--feature", "net/pool", "--va", "9,1", "-k", "3", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["hits"]) == 3


# -- cheap imports -------------------------------------------------------------------------------
HEAVY = (
    "torch",
    "torchvision",
    "open_clip",
    "sklearn",
    "lightgbm",
    "faiss",
    "matplotlib",
    "starlette",
    "scipy",
)


def _loaded_after(code: str) -> list[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), str(Path(__file__).parent)])}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"{code}\nimport sys, json; print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return json.loads(out.splitlines()[-1])


def test_building_the_parser_and_listing_registries_loads_no_heavy_library():
    code = (
        "import evoked, evoked.data, evoked.extract, evoked.regress, evoked.evaluate, evoked.finetune, evoked.serve\n"
        "from evoked.cli import build_parser\n"
        "build_parser()\n"
        "from evoked.extract.registry import BACKBONES\n"
        "from evoked.regress.registry import REGRESSORS\n"
        "BACKBONES.names(), REGRESSORS.names(), evoked.data.DATASETS.names()"
    )
    assert _loaded_after(code) == []


def test_a_va_search_loads_no_model_library(va_store: Path):
    code = (
        "import contextlib, io\n"
        "from evoked.cli import main\n"
        f"with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    assert main(['search', {str(va_store)!r}, '--feature', 'net/pool', '--va', '8,6', '-k', '5']) == 0"
    )
    assert set(_loaded_after(code)) <= {"faiss"}
