"""`evoked regress` (fit and compare VA regressors on cached features) and `evoked predict`."""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import fields
from pathlib import Path

from evoked.cli._common import (
    COMMON,
    examples,
    lexicon_flags,
    names_help,
    print_json,
    progress,
    size,
    va_range_flag,
)
from evoked.regress.registry import DISTRIBUTION_MODELS, REGRESSORS
from evoked.regress.targets import AUX_KINDS, TARGET_KINDS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "regress",
        parents=[COMMON],
        help="fit and compare VA regressors on features of a store (CV, split, two-stage, curve)",
        description="Fit each --model ([log of probabilities] -> StandardScaler -> [PCA] -> model) on the --feature outputs of a "
        "feature store, evaluate it against the VA ratings (5-fold CV by default, the store's folds when it "
        "has them), and write a run folder (run.json, predictions.csv, metrics.json, models/). "
        "See docs/regress.md.",
        **examples(
            "evoked regress feats/e6.h5 --feature mobilenet_v2/pool --model ridge,svr --out runs/e6-ridge",
            "evoked regress feats/e6.h5 --feature mobilenet_v2/pool --target category-va --lexicon nrc \\\n"
            "      --out runs/e6-keywords",
            "evoked regress feats/e6.h5 --feature mobilenet_v2/pool --stage1 same --lexicon nrc \\\n"
            "      --n-labels 0,25,50,100,all --seeds 5 --out runs/e6-curve",
        ),
    )
    # Flags are stored under the names of `RegressOptions` fields, which `_regress` passes on as they are.
    _data_flags(p)
    _protocol_flags(p)
    _model_flags(p)
    _scale_flags(p)
    p.add_argument("--overwrite", action="store_true", help="replace the run in an existing --out folder (other files stay)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON instead of the table")
    p.set_defaults(func=_regress)
    _register_predict(sub)


def _data_flags(p: argparse.ArgumentParser) -> None:
    """What is read (store, features, targets) and where the run goes."""
    p.add_argument("store", type=Path, help="the HDF5 feature store (from `evoked extract`)")
    p.add_argument(
        "--feature",
        dest="features",
        action="append",
        required=True,
        metavar="GROUP/OUTPUT",
        help="repeatable or comma-separated; concatenated in order (GROUP alone = all its outputs)",
    )
    p.add_argument("--out", type=Path, required=True, help="the run folder to write, e.g. runs/NAME")
    p.add_argument(
        "--target",
        default="va",
        choices=TARGET_KINDS,
        help="training target (default va); distribution: predict the label distribution over the store's "
        "categories (with --lexicon, its expected VA is scored too)",
    )
    lexicon_flags(p, "category-va table", default=None)
    p.add_argument("--soft", action="store_true", help="category-va from label distributions (expected VA)")
    va_range_flag(p)


def _protocol_flags(p: argparse.ArgumentParser) -> None:
    """How models are evaluated: CV, a split, eval stores, two-stage, the low-resource curve."""
    proto = p.add_mutually_exclusive_group()
    proto.add_argument(
        "--cv", type=int, default=None, help="K-fold cross-validation (default 5; 0 = fit only)"
    )
    proto.add_argument(
        "--split",
        default=None,
        choices=("test", "val"),
        help="evaluate on this split of the store (train on the ones before)",
    )
    p.add_argument(
        "--cv-include-test",
        action="store_true",
        help="with --cv on a store with a split: fold the test rows in too (by default they are left out)",
    )
    p.add_argument(
        "--eval",
        dest="evals",
        action="append",
        default=[],
        metavar="STORE[:SPLIT]",
        help="repeatable: predict every item (of SPLIT) of another store with the same features, scored "
        "against its ratings (transfer; see docs/regress.md)",
    )
    p.add_argument("--seed", type=int, default=0, help="folds, model seeds and curve seeds start here")
    p.add_argument("--stage1", default=None, metavar="same|OTHER.h5", help="add two-stage models (see docs)")
    p.add_argument(
        "--stage1-target",
        default="category-va",
        choices=("category-va", "distribution"),
        help="what stage 1 learns: category-derived VA (default), or the label distribution (then VA through "
        "--lexicon)",
    )
    p.add_argument("--two-stage-method", default="residual", choices=("residual", "recalibrate"),
                   help="stage 2: recalibrate stage 1 (an affine map per dimension) then fit the residual (default), "
                   "or recalibrate only")  # fmt: skip
    p.add_argument("--n-labels", default=None, metavar="N,N,...,all", help="low-resource curve sizes")
    p.add_argument(
        "--per-layer",
        action="store_true",
        help="with --feature NAME/layers: also fit each model on each layer alone (layers.csv, layers.png) "
        "and add the systems best-layer:MODEL and best-span:MODEL, chosen on training rows (docs/regress.md)",
    )
    p.add_argument("--seeds", type=int, default=5, help="curve repetitions (default 5)")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        metavar="N",
        help="repeat the run on N split seeds (SEED, SEED+1, ...): the first on the store's split or folds, "
        "the others redraw them, written to OUT/repeats/seed-S/; `evoked evaluate OUT` reports r over them",
    )


def _model_flags(p: argparse.ArgumentParser) -> None:
    """Which models, with which parameters and inputs."""
    p.add_argument(
        "--model",
        dest="models",
        default=None,
        metavar="MODEL[,MODEL...]",
        help=f"comma-separated (default ridge); {names_help(REGRESSORS)}. With --target distribution "
        f"(default softmax,knn,mlp; mean, the reference, is always added): {names_help(DISTRIBUTION_MODELS)}",
    )
    p.add_argument(
        "--pca", default=None, help="PCA after scaling: components (256) or variance fraction (0.95)"
    )
    p.add_argument(
        "--param",
        dest="params",
        action="append",
        default=[],
        metavar="MODEL.NAME=VALUE",
        help="model parameter, e.g. svr.C=3",
    )
    p.add_argument(
        "--no-log-probs",
        dest="log_probs",
        action="store_false",
        help="feed probability outputs (*/probs, */scene) as they are, not as log(p + 1e-4)",
    )
    p.add_argument(
        "--aux",
        default=None,
        choices=AUX_KINDS,
        help="multi-task: mlp models also learn the label distribution (or one-hot category)",
    )


def _scale_flags(p: argparse.ArgumentParser) -> None:
    """Stores larger than memory."""
    chunked = ", ".join(e.name for e in REGRESSORS if e.meta.get("chunks"))
    p.add_argument(
        "--stream",
        action="store_true",
        help=f"read the features chunk by chunk (stores larger than memory; models {chunked}, "
        "with the same hyperparameters as in memory; see docs/scale.md)",
    )
    p.add_argument(
        "--max-memory",
        default=None,
        type=size,
        metavar="SIZE",
        help="e.g. 8GB: stream when the features would not fit in SIZE; with --stream, the k-NN index "
        "budget and chunk cap (default 2GB)",
    )


def _register_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict",
        parents=[COMMON],
        help="predict VA of images with a model saved by `evoked regress`",
        description="Extract the run's features exactly as its store recorded them, and write CSV with a "
        "header: id, path, model, valence_pred, arousal_pred per image (ids: the dataset's for KIND:PATH, "
        "the path below a folder, the path of a file), which `evoked evaluate --predictions P.csv --truth "
        "DATASET` scores. Unreadable images are reported with their reason.",
        **examples(
            "evoked predict data/emotion6/images/joy/1.jpg --run runs/e6-va",
            "evoked predict folder:more_photos --run runs/e6-pool --model ridge --out predictions/more.csv",
        ),
    )
    p.add_argument("images", nargs="+", help="image files, folders, or a dataset spec KIND:PATH")
    p.add_argument("--run", type=Path, required=True, help="a run folder of `evoked regress`")
    p.add_argument("--model", default=None, help="a model of the run (default: its best by mean r)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any image failed")
    p.add_argument(
        "--out", type=Path, default=None, metavar="P.csv", help="write the CSV (or JSON) here, not stdout"
    )
    p.add_argument(
        "--json", action="store_true", help="JSON (model, predictions: id, path, valence, arousal)"
    )
    p.set_defaults(func=_predict)


def _fmt(x, spec: str = ".3f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def regress_options(args: argparse.Namespace) -> dict:
    """The `RegressOptions` fields that the parsed flags set."""
    from evoked.regress.options import RegressOptions

    given = vars(args)
    return {f.name: given[f.name] for f in fields(RegressOptions) if f.init and f.name in given}


def _regress(args: argparse.Namespace) -> int:
    from evoked.regress.repeats import run_repeats

    with progress(args, None, "fitting", "fit") as bar:
        runs = [0]

        def on_progress(done: int, total: int, what: str) -> None:
            if done == 0:  # a run starts (each of --repeats is one): its own count from 0
                runs[0] += 1
                bar.reset(total=total)
                if args.repeats > 1:
                    bar.set_description(f"fitting, repeat {runs[0]}/{args.repeats}")
            elif bar.total != total:
                bar.reset(total=total)
            bar.set_postfix_str(what, refresh=False)
            bar.update(done - bar.n)

        result = run_repeats(args.store, args.repeats, on_progress=on_progress, **regress_options(args))
    if args.json:
        print_json(
            {
                "run": str(result.out),
                "metrics": result.metrics(),
                "counts": result.counts,
                "curve": result.curve,
                "evals": {m.name: m.eval_metrics for m in result.models},
                "default_model": result.run["default_model"],
            }
        )
        return 0
    width = max(len(m.name) for m in result.models)
    _print_fit(result, width)
    _print_distribution(result, width)
    _print_evals(result, width)
    _print_curve(result.curve, width)
    _print_layers(result.run, result.out)
    _print_selection(result.run)
    return 0


def _print_layers(run: dict, out: Path) -> None:
    """``--per-layer``: where the table is, and the layers each best-layer / best-span model chose."""
    layers = run.get("layers")
    if not layers:
        return
    print(f"  per-layer probe: {out / layers['table']}, plot {out / layers['plot']}")
    for name, chosen in layers["chosen"].items():
        if "saved model" in chosen:
            print(f"  {name} (saved model) uses {', '.join(chosen['saved model'])}")


def _metric_cells(metrics: dict) -> str:
    v, a = metrics.get("valence", {}), metrics.get("arousal", {})
    return f"{_fmt(v.get('r')):>5}  {_fmt(a.get('r')):>5}  {_fmt(v.get('mse')):>7}  {_fmt(a.get('mse')):>7}"


def _print_distribution(result, width: int) -> None:
    """The six LDL measures of each model (``--target distribution``)."""
    from evoked.evaluate.distribution import DISTRIBUTION_LABELS

    if not any("distribution" in m.metrics for m in result.models):
        return
    print(f"  {'model':<{width}}  {'  '.join(DISTRIBUTION_LABELS.values())}  (label distributions)")
    for m in result.models:
        d = m.metrics.get("distribution", {})
        cells = "  ".join(f"{_fmt(d.get(k)):>{len(label)}}" for k, label in DISTRIBUTION_LABELS.items())
        print(f"  {m.name:<{width}}  {cells}")


def _print_fit(result, width: int) -> None:
    """What was fitted and how it scored on the training store."""
    run = result.run
    proto = run["protocol"]
    how = {
        "cv": lambda: f"{proto['folds']}-fold CV ({proto['folds_source']} folds)",
        "split": lambda: f"train {'+'.join(proto['train'])}, evaluate {proto['eval']}",
        "fit-only": lambda: "fit only (no evaluation)",
    }[proto["kind"]]()
    print(
        f"wrote {result.out}: {', '.join(run['features'])} -> {run['target']['kind']}, {how}, {result.seconds:.1f} s"
    )
    print(f"  {'model':<{width}}  r_val  r_aro  mse_val  mse_aro   fit_s  n_train  n_eval")
    for m in result.models:
        print(
            f"  {m.name:<{width}}  {_metric_cells(m.metrics)}  {m.fit_seconds:6.1f}  {m.n_train:7.0f}  {m.n_eval:6d}"
        )
    left_out = {k: v for k, v in result.counts.items() if k not in ("items", "evaluated") and v}
    print(
        f"  items {result.counts['items']}, evaluated {result.counts.get('evaluated', 0)}; left out: "
        + (", ".join(f"{k} {v}" for k, v in left_out.items()) or "none")
    )


def _print_evals(result, width: int) -> None:
    """Transfer scores on each eval store."""
    for ev in result.run["evals"]:
        if not ev["has_ratings"]:
            print(f"  eval {ev['name']}: {ev['n_items']} items predicted (no ratings: not scored)")
            continue
        print(f"  eval {ev['name']}: {ev['n_items']} items, transfer")
        for m in result.models:
            print(f"  {m.name:<{width}}  {_metric_cells(m.eval_metrics.get(ev['name']) or {})}")


def _print_curve(curve: list[dict], width: int) -> None:
    if not curve:
        return
    print("  low-resource curve (mean ± std over seeds):")
    print(f"  {'model':<{width}}  {'setting':<11}  {'n':>5}  {'r_val':>13}  {'r_aro':>13}")
    for c in curve:
        print(
            f"  {c['model']:<{width}}  {c['setting']:<11}  {c['n_labels']:>5}  "
            f"{_fmt(c['r_valence'])} ± {_fmt(c['r_valence_std'])}  {_fmt(c['r_arousal'])} ± {_fmt(c['r_arousal_std'])}"
        )


def _print_selection(run: dict) -> None:
    """Which model `evoked predict` uses, and what the CV left out."""
    how = run["selection"]["default_model"]["rows"]
    why = how[len("none (") : -1] if how.startswith("none (") else f"chosen on {how}"
    print(f"  default model for `evoked predict`: {run['default_model']} ({why})")
    cv = run["selection"].get("cv")
    if cv and cv["left_out_test"]:
        print(
            f"  the {cv['left_out_test']} test-split items were left out of the CV (--cv-include-test folds them in)"
        )


def _predict(args: argparse.Namespace) -> int:
    import json

    from evoked.regress.predict import predict_images

    with progress(args, None, "predicting", "img") as bar:
        result = predict_images(
            args.images,
            args.run,
            model=args.model,
            device=args.device,
            batch_size=args.batch_size,
            on_progress=bar.update,
        )
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="", encoding="utf-8") as f:
            if args.json:
                json.dump(result.to_dict(), f, indent=2)
            else:
                result.write_csv(f)
        print(f"evoked: wrote {len(result.paths)} predictions to {args.out}", file=sys.stderr)
    elif args.json:
        print_json(result.to_dict())
    else:
        result.write_csv(sys.stdout)
    if not args.json or args.out is not None:
        for note in result.notes:
            print(f"evoked: note: {note}", file=sys.stderr)
        for path, reason in result.failures.items():
            print(f"evoked: cannot read {path}: {reason}", file=sys.stderr)
        if result.failures:
            print(
                f"evoked: {len(result.paths)} images predicted with {result.model}, {len(result.failures)} failed",
                file=sys.stderr,
            )
    return 1 if args.strict and result.failures else 0
