"""The `evoked` command. Each subcommand module registers its parsers and calls a plain function.

Heavy libraries (torch, faiss) are imported inside the handlers, so ``evoked --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from evoked import __version__
from evoked.cli._common import examples, progress_log
from evoked.device import use_openmp_defaults
from evoked.errors import EvokedError

# Subcommand modules in the order they appear in ``evoked --help``.
COMMAND_MODULES = (
    "data",
    "extract",
    "features",
    "retrieval",
    "regress",
    "finetune",
    "evaluate",
    "serve",
    "demo",
    "doctor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="evoked",
        description="What emotion does an image evoke? Features, VA regressors, fine-tuning, retrieval. "
        "`evoked COMMAND --help` describes each command, with examples.",
        **examples(
            "evoked demo --out evoked-demo",
            "evoked extract emotion6:data/emotion6 --out feats/e6.h5 --backbone resnet50 --backbone color",
            "evoked regress feats/e6.h5 --feature resnet50/pool --model ridge,knn --out runs/e6",
            "evoked evaluate runs/e6 --out report/",
        ),
    )
    parser.add_argument("--version", action="version", version=f"evoked {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log progress details (-vv for debug)"
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"evoked.cli.{name}").register(sub)
    return parser


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.DEBUG if verbose > 1 else logging.INFO if verbose == 1 and not quiet else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    progress_log.setLevel(logging.WARNING if quiet else logging.INFO)  # progress lines need no -v
    if verbose < 2:
        for noisy in ("PIL", "matplotlib", "h5py", "urllib3", "huggingface_hub", "faiss"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    use_openmp_defaults()  # before any command loads torch, faiss or LightGBM
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose, args.quiet)
    try:
        return int(args.func(args) or 0)
    except EvokedError as e:
        print(f"evoked: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("evoked: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
