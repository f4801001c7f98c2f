"""`evoked data inspect|split`."""

from __future__ import annotations

import argparse
from pathlib import Path

from evoked.cli._common import COMMON, examples, print_json, progress
from evoked.data.datasets import DATASETS


def register(sub: argparse._SubParsersAction) -> None:
    data = sub.add_parser(
        "data",
        help="inspect datasets and write splits",
        description="Look at a dataset before extracting from it (inspect), and fix its train/val/test "
        "splits and folds once, in a manifest every later stage reads (split). See docs/datasets.md.",
        **examples(
            "evoked data inspect emotion6:data/emotion6",
            "evoked data split emotion6:data/emotion6 --out splits/e6.csv --ratios 0.6,0.1,0.3 --folds 5",
        ),
    )
    dsub = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = dsub.add_parser(
        "inspect",
        parents=[COMMON],
        help="items, categories, VA ranges, splits, and every file that fails to read",
        description="Summarise a dataset and check that every file decodes. DATASET is KIND:PATH "
        f"(KIND: {DATASETS.describe()}) or a path whose kind is detected.",
        **examples(
            "evoked data inspect emotion6:data/emotion6",
            "evoked data inspect csv:ratings.csv --header-only --strict --json",
        ),
    )
    p.add_argument("dataset", help="KIND:PATH or PATH")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--no-check", action="store_true", help="do not open the files")
    p.add_argument(
        "--header-only", action="store_true", help="check image headers only (faster, misses truncation)"
    )
    p.add_argument("--workers", type=int, default=None, help="threads for reading files")
    p.add_argument("--max-pixels", type=int, default=None, help="decompression-bomb limit (width x height)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any file fails")
    p.set_defaults(func=_inspect)

    p = dsub.add_parser(
        "split",
        parents=[COMMON],
        help="assign deterministic stratified train/val/test splits and k folds",
        description="Write the dataset as a manifest (CSV or JSONL) with split and fold columns. "
        "Later stages read it back as csv:FILE, so they all use the same split.",
        **examples(
            "evoked data split emotion6:data/emotion6 --out splits/e6.csv --ratios 0.6,0.1,0.3 --folds 5 --seed 0",
            "evoked data split folder:photos --out splits/photos.csv --folds 0 --stratify none",
        ),
    )
    p.add_argument("dataset", help="KIND:PATH or PATH")
    p.add_argument("--out", required=True, type=Path, help="manifest to write (.csv or .jsonl)")
    p.add_argument("--ratios", default="0.7,0.1,0.2", help="TRAIN,VAL,TEST fractions (default 0.7,0.1,0.2)")
    p.add_argument(
        "--folds", type=int, default=5, help="number of cross-validation folds (0 for none; default 5)"
    )
    p.add_argument("--seed", type=int, default=0, help="the same seed gives the same split (default 0)")
    p.add_argument("--stratify", choices=("auto", "category", "valence", "none"), default="auto",
                   help="balance the splits by category or by valence; auto: category when every item has "
                   "one, else valence, else none")  # fmt: skip
    p.add_argument(
        "--overwrite", action="store_true", help="replace a split the dataset's layout already has"
    )
    p.add_argument("--json", action="store_true", help="print the split sizes as JSON")
    p.set_defaults(func=_split)


def _inspect(args: argparse.Namespace) -> int:
    from evoked.data import load_dataset
    from evoked.data.decode import DEFAULT_MAX_PIXELS
    from evoked.data.inspection import format_report, inspect_dataset

    manifest = load_dataset(args.dataset)
    with progress(args, len(manifest) if not args.no_check else 0, "checking files", "img") as bar:
        report = inspect_dataset(
            manifest,
            check_files=not args.no_check,
            decode=not args.header_only,
            workers=args.workers,
            max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
            on_progress=bar.update,
        )
    if args.json:
        print_json(report)
    else:
        print(format_report(report))
    return 1 if args.strict and report["failures"] else 0


def _split(args: argparse.Namespace) -> int:
    from evoked.data import load_dataset, split_manifest
    from evoked.data.splits import stratification_labels

    manifest = load_dataset(args.dataset)
    kept = bool(any(manifest.split)) and not args.overwrite
    out = split_manifest(
        manifest,
        ratios=args.ratios,
        folds=args.folds,
        seed=args.seed,
        stratify=args.stratify,
        overwrite=args.overwrite,
    )
    if args.out.suffix.lower() in (".jsonl", ".ndjson"):
        out.to_jsonl(args.out)
    else:
        out.to_csv(args.out)
    _, strat = stratification_labels(manifest, args.stratify)
    summary = {
        "manifest": str(args.out),
        "items": len(out),
        "splits": out.split_counts(),
        "folds": args.folds,
        "seed": args.seed,
        "stratified_on": strat,
        "kept_existing_split": kept,
    }
    if args.json:
        print_json(summary)
        return 0
    if kept:
        print("kept the split given by the dataset's layout (pass --overwrite to draw a new one)")
    print(
        f"wrote {args.out}: {len(out)} items, " + ", ".join(f"{k} {v}" for k, v in summary["splits"].items())
    )
    print(f"stratified on {strat}, seed {args.seed}" + (f", {args.folds} folds" if args.folds > 1 else ""))
    print(f"use it as: csv:{args.out}")
    return 0
