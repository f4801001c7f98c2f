"""Helpers shared by the subcommands: progress bars, JSON output."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager

import numpy as np


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
def progress(args: argparse.Namespace, total: int | None, desc: str, unit: str = "it"):
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


def print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=_default))
