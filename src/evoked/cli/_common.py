"""Helpers shared by the subcommands: progress (bars or log lines), JSON output, argument types."""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta

import numpy as np

from evoked.errors import ConfigError, EvokedError
from evoked.registry import Registry
from evoked.va_point import parse_va_point


def common_options() -> argparse.ArgumentParser:
    """-v/-q accepted after the subcommand too (``evoked extract ... -q``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output")
    parent.add_argument(
        "-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress bars"
    )
    parent.add_argument("--progress-every", type=_arg_type(_seconds), default=argparse.SUPPRESS, metavar="SECONDS",
                        help=f"without a terminal, a progress log line every SECONDS (default ${PROGRESS_EVERY_ENV} or "
                        f"{PROGRESS_EVERY:g})")  # fmt: skip
    return parent


PROGRESS_EVERY_ENV = "EVOKED_PROGRESS_EVERY"
PROGRESS_EVERY = 30.0  # seconds between progress log lines when no terminal is attached
progress_log = logging.getLogger("evoked.progress")  # shown at INFO unless --quiet (see cli.main)


def progress_every(args: argparse.Namespace) -> float:
    """Seconds between progress log lines: --progress-every, else $EVOKED_PROGRESS_EVERY, else 30."""
    given = getattr(args, "progress_every", None)
    if given is not None:
        return float(given)
    text = os.environ.get(PROGRESS_EVERY_ENV, "").strip()
    if not text:
        return PROGRESS_EVERY
    try:
        return _seconds(text)
    except ConfigError as e:
        raise ConfigError(f"${PROGRESS_EVERY_ENV}: {e}") from None


def _seconds(text: str) -> float:
    """A number of seconds >= 0 (0: a line at every update)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise ConfigError(f"{text!r} is not a number of seconds >= 0, e.g. 30 (0: a line at every update)")
    return value


@contextmanager
def progress(args: argparse.Namespace, total: int | None, desc: str, unit: str = "it") -> Iterator:
    """The one progress display: a tqdm bar on a terminal, else plain log lines (`LogProgress`) every
    --progress-every seconds; nothing with --quiet. Yields tqdm's interface either way."""
    from tqdm.auto import tqdm

    if getattr(args, "quiet", False) or sys.stderr.isatty():
        quiet = bool(getattr(args, "quiet", False))
        bar = tqdm(total=total, desc=desc, unit=unit, disable=quiet, file=sys.stderr, dynamic_ncols=True)
    else:
        bar = LogProgress(total, desc, unit, progress_every(args))
    try:
        yield bar
    finally:
        bar.close()


def hms(seconds: float) -> str:
    """Seconds as H:MM:SS, as the bars show elapsed time."""
    return str(timedelta(seconds=int(seconds)))


class LogProgress:
    """The part of tqdm's interface the commands use, shown as log lines for batch jobs (no terminal):
    one every `every` seconds while work goes on and one at the end, each with done/total, rate,
    elapsed time and ETA, and what the bar's postfix would show."""

    def __init__(self, total: int | None, desc: str, unit: str, every: float):
        self.total, self.desc, self.unit, self.every = total, desc, unit, every
        self.n, self.postfix = 0, ""
        self.start = self.last = time.monotonic()
        self.said: tuple = ()  # (n, total, postfix) of the last line, so the closing line is not a repeat

    def update(self, n: int = 1) -> None:
        self.n += n
        self.refresh()

    def reset(self, total: int | None = None) -> None:
        self.total, self.n = total, 0
        self.start = self.last = time.monotonic()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: object) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in {**(ordered_dict or {}), **kwargs}.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def write(self, s: str, *_: object, **__: object) -> None:
        progress_log.info("%s", s)

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._say(self.line(now))

    def close(self) -> None:
        if (self.n or self.total) and self.said != (self.n, self.total, self.postfix):
            self._say(self.line(time.monotonic(), done=True))
        self.n, self.total = 0, None  # a second close says nothing

    def _say(self, text: str) -> None:
        self.said = (self.n, self.total, self.postfix)
        progress_log.info("%s", text)

    def line(self, now: float, done: bool = False) -> str:
        """``extracting: 1200/1980 img (61%), 40.2 img/s, elapsed 0:00:29, ETA 0:00:19 [failed=2]``."""
        elapsed = now - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        count = f"{self.n}/{self.total} {self.unit}" if self.total else f"{self.n} {self.unit}"
        if self.total:
            count += f" ({100 * self.n / self.total:.0f}%)"
        speed = f"{rate:,.1f} {self.unit}/s" if rate >= 1 or not rate else f"{1 / rate:,.1f} s/{self.unit}"
        parts = [count, speed, f"elapsed {hms(elapsed)}"]
        if not done and self.total and rate > 0:
            parts.append(f"ETA {hms((self.total - self.n) / rate)}")
        return f"{self.desc}: " + ", ".join(parts) + (f" [{self.postfix}]" if self.postfix else "")


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps the description to the terminal; keeps the example lines of the epilog as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith(EXAMPLES):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


EXAMPLES = "examples:\n"


def examples(*commands: str) -> dict:
    """``add_parser`` keywords for a --help that ends with these example commands (a long one may
    continue on lines of its own, indented after a trailing backslash)."""
    return {"epilog": EXAMPLES + "\n".join("  " + c for c in commands), "formatter_class": _HelpFormatter}


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
COMMON = common_options()  # after the argument types it uses
