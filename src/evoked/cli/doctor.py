"""`evoked doctor`."""

from __future__ import annotations

import argparse

from evoked.cli._common import COMMON, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        parents=[COMMON],
        help="torch/CUDA/faiss-GPU/open_clip availability, cache locations, local pretrained weights",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    from evoked.doctor import diagnose, format_diagnosis

    d = diagnose()
    if args.json:
        print_json(d)
    else:
        print(format_diagnosis(d))
    return 0
