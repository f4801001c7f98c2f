"""Helpers shared by the subcommands: progress bars, JSON output, argument types."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from evoked.errors import EvokedError
from evoked.registry import Registry
from evoked.va_point import parse_va_point


def common_options() -> argparse.ArgumentParser:
    """-v/-q accepted after the subcommand too (``evoked extract ... -q``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output")
    parent.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars"
    )
    return parent


COMMON = common_options()


@contextmanager
def progress(args: argparse.Namespace, total: int | None, desc: str, unit: str = "it") -> Iterator:
    """A tqdm bar on stderr (hidden with --quiet or when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    disable = True if getattr(args, "quiet", False) else None
    bar = tqdm(total=total, desc=desc, unit=unit, disable=disable, file=sys.stderr, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def _default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=_default))


def _arg_type(parse: Callable[[str], object]) -> Callable[[str], object]:
    """An argparse `type` from a parser raising EvokedError: argparse names the flag typed before it."""

    def convert(text: str) -> object:
        try:
            return parse(text)
        except EvokedError as e:
            raise argparse.ArgumentTypeError(str(e)) from e

    return convert


def one_of(registry: Registry) -> Callable[[str], object]:
    """Argument type: a name of `registry` (its did-you-mean message otherwise)."""
    return _arg_type(lambda text: registry.get(text).name)


def lexicon_flags(p: argparse._ActionsContainer, use: str, default: str | None = "nrc") -> None:
    """--lexicon and --category-map, the same wherever dataset labels meet a word-norm table."""
    p.add_argument(
        "--lexicon", default=default, help=f"{use}: nrc (default), warriner or PATH (docs/lexicons.md)"
    )
    p.add_argument("--category-map", action="append", default=[], metavar="LABEL=WORD",
                   help="map a dataset label to a lexicon word, e.g. happy=joy (repeat the flag for more)")  # fmt: skip


def va_range_flag(p: argparse._ActionsContainer, default_text: str = "1,9") -> None:
    p.add_argument("--va-range", default=None, metavar="LO,HI",
                   help=f"the rating scale: ratings outside it are refused before any fitting (default {default_text})")  # fmt: skip


def names_help(registry: Registry) -> str:
    return "; ".join(f"{name}: {text}" for name, text in registry.help().items())


def _size(text: str) -> int:
    from evoked.features.index_build import parse_bytes

    return parse_bytes(text)


size = _arg_type(_size)  # a memory size such as 2GB, in bytes
va_point = _arg_type(parse_va_point)  # V,A on the rating scale
