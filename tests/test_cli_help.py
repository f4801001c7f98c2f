"""Every command's --help: a description and examples that parse; `search --va` checks the scale."""

from __future__ import annotations

import argparse
import shlex

import pytest

from evoked.cli import build_parser, main
from evoked.cli._common import EXAMPLES


def _parsers(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


PARSERS = list(_parsers(build_parser()))


def _examples(parser: argparse.ArgumentParser) -> list[str]:
    text = parser.epilog or ""
    assert text.startswith(EXAMPLES), f"{parser.prog}: no examples in --help"
    return [shlex.join(shlex.split(c)) for c in text[len(EXAMPLES) :].replace("\\\n", " ").splitlines()]


@pytest.mark.parametrize("path, parser", PARSERS, ids=[" ".join(p) or "evoked" for p, _ in PARSERS])
def test_every_command_has_a_description_and_examples_that_parse(path, parser):
    assert parser.description and len(parser.description) > 40, f"{parser.prog}: no description"
    commands = _examples(parser)
    assert commands
    for command in commands:
        words = shlex.split(command)
        if words[0] == "torchrun":  # the launcher's flags, then `-m evoked ...`
            words = words[words.index("-m") + 1 :]
        assert words[0] == "evoked" and tuple(words[1 : 1 + len(path)]) == path, command
        if "..." in words:  # an abridged example: only its own flags are shown
            continue
        build_parser().parse_args(words[1:])  # every flag and value of the example is accepted
    help_text = parser.format_help()
    assert "examples:\n  evoked" in help_text or "examples:\n  torchrun" in help_text


def test_search_help_describes_every_argument():
    search = dict(PARSERS)[("search",)]
    for action in search._actions:
        assert action.help, f"search {action.option_strings or action.dest} has no help"


@pytest.mark.parametrize("point, says", [("0,5", "valence '0' is not on the 1..9"), ("5,9.5", "arousal '9.5'"),
                                         ("5", "is not VALENCE,AROUSAL"), ("x,5", "valence 'x' is not a number")])  # fmt: skip
def test_search_va_is_checked_like_the_api(point, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["search", str(tmp_path / "s.h5"), "--feature", "f", "--va", point])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --va: --va '{point}'" in err and says in err
