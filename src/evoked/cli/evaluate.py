"""`evoked evaluate RUN [RUN ...]`: one comparison report for every model of every run."""

from __future__ import annotations

import argparse
from pathlib import Path

from evoked.cli._common import COMMON, examples, lexicon_flags, print_json, progress, va_range_flag


def _csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "evaluate",
        parents=[COMMON],
        help="compare runs: ranked table with bootstrap CIs, paired tests, plots",
        description="Compare every model (system RUN/MODEL) of the given run directories on the same items: "
        "the training side, then each eval set (--eval of regress/finetune), matched across runs by their "
        "items. Writes OUT/report.md, report.json, report.csv, report.tex (booktabs) and the figures, and prints the ranked tables. "
        "Runs evaluated on different items or folds/splits are refused. With --predictions P.csv --truth "
        "DATASET, scores predictions files (e.g. `evoked predict` output) against a dataset's ratings.",
        **examples(
            "evoked evaluate runs/e6-test runs/ft-one runs/ft-two --out report/",
            "evoked evaluate --predictions predictions/e6-color.csv --truth csv:splits/e6.csv:test --out report-p/",
        ),
    )
    p.add_argument("runs", nargs="*", type=Path, metavar="RUN", help="run directories (runs/NAME)")
    p.add_argument(
        "--predictions",
        action="append",
        default=[],
        type=Path,
        metavar="P.csv",
        help="a predictions file (id, model, valence_pred, arousal_pred; path optional) to score against "
        "--truth; repeatable (instead of RUN)",
    )
    p.add_argument(
        "--truth",
        default=None,
        metavar="DATASET[:SPLIT]",
        help="the dataset with ratings that --predictions are scored against (rows join by id, else by path)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("report"),
        help="report directory (default report/); report files already there are overwritten",
    )
    lexicon_flags(p, "category -> VA table for category accuracy")
    p.add_argument(
        "--nearest",
        choices=("cosine", "euclidean"),
        default="cosine",
        help="VA -> category mapping: cosine of the 1..9 vectors (the two-stage paper's choice) or euclidean",
    )
    p.add_argument(
        "--categories",
        type=_csv_list,
        default=None,
        metavar="A,B,...",
        help="categories to choose from (default: the distinct true categories)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=1000,
        metavar="B",
        help="bootstrap resamples for the 95%% CIs and paired tests (default 1000; 0 for none)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples (default 0)")
    p.add_argument(
        "--reference",
        default=None,
        metavar="RUN/MODEL",
        help="system to test the others against (default: the best)",
    )
    va_range_flag(p)  # --predictions: truths outside it, and predictions on another scale, are refused
    p.add_argument(
        "--systems",
        type=_csv_list,
        default=None,
        metavar="A,B,...",
        help="systems the figures show, in this order: RUN/MODEL names or shell patterns such as 'va/*' "
        "(default: the best of each model family and every fine-tuned network)",
    )
    p.add_argument(
        "--format",
        dest="formats",
        default="png",
        metavar="png,pdf,svg",
        help="file formats of every figure, comma-separated (default png; raster at 300 dpi)",
    )
    p.add_argument("--no-plots", action="store_true", help="skip the figures")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON instead of the table")
    p.set_defaults(func=_evaluate)


def _evaluate(args: argparse.Namespace) -> int:
    from evoked.errors import ConfigError
    from evoked.evaluate.report import console_table, evaluate, evaluate_predictions, group_title

    if args.predictions or args.truth:
        if args.runs:
            raise ConfigError(
                "pass run directories, or --predictions P.csv --truth DATASET, not both (a run's predictions.csv "
                "is a predictions file too)"
            )
        if not (args.predictions and args.truth):
            raise ConfigError("--predictions and --truth go together: --predictions P.csv --truth DATASET")
    elif not args.runs:
        raise ConfigError(
            "no run directories given; pass runs/NAME ..., or --predictions P.csv --truth DATASET"
        )
    with progress(args, args.bootstrap or None, "bootstrap", "resample") as bar:

        def on_progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        common = dict(
            out=args.out,
            lexicon=args.lexicon,
            nearest=args.nearest,
            bootstrap=args.bootstrap,
            seed=args.seed,
            reference=args.reference,
            categories=args.categories,
            category_map=args.category_map,
            plots=not args.no_plots,
            systems=args.systems,
            formats=args.formats,
            on_progress=on_progress,
        )
        if args.predictions:
            report = evaluate_predictions(args.predictions, args.truth, va_range=args.va_range, **common)
        else:
            report = evaluate(args.runs, **common)
    if args.json:
        print_json(report)
        return 0
    b = report["bootstrap"]
    print(
        f"{len(report['systems'])} systems on {report['items']['n']} items, ranked by {report['ranking']}; "
        + (
            f"95% CIs from {b['resamples']} bootstrap resamples, p vs {report['reference']}"
            if b["resamples"]
            else "no bootstrap"
        )
    )
    print(f"{group_title(report)} ({report['items']['n']} items):")
    print(console_table(report))
    for sub in report["eval_sets"]:
        if "skipped" in sub:
            print(f"{group_title(sub)} ({sub['items']['n']} items): {sub['skipped']}")
            continue
        print(
            f"{group_title(sub)} ({sub['items']['n']} items, ranked by {sub['ranking']}, p vs {sub['reference']}):"
        )
        print(console_table(sub))
        for note in sub["notes"]:
            print(f"note: {note}")
    c = report["category"]
    if c.get("categories"):
        print(f"accuracy: VA -> {c['nearest']}-nearest category in lexicon {c['lexicon']['name']}")
    for note in report["notes"]:
        print(f"note: {note}")
    print(f"report: {args.out / 'report.md'}")
    return 0
