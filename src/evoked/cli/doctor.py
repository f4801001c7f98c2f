"""`evoked doctor`."""

from __future__ import annotations

import argparse

from evoked.cli._common import COMMON, examples, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        parents=[COMMON],
        help="torch/CUDA/faiss-GPU/open_clip availability, cache locations, local pretrained weights",
        description="Report what this machine can run: torch and its devices (CUDA, precision), faiss on "
        "the GPU, open_clip, where model caches live and which pretrained weights are already there, so "
        "nothing needs a download mid-run.",
        **examples("evoked doctor", "evoked doctor --json"),
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_doctor)


def _doctor(args: argparse.Namespace) -> int:
    from evoked.doctor import diagnose, format_diagnosis

    d = diagnose()
    if args.json:
        print_json(d)
    else:
        print(format_diagnosis(d))
    return 0
