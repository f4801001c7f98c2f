"""`evoked finetune`: train the two-stage paper's network end to end and write a run directory."""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from evoked.cli._common import COMMON, examples, hms, lexicon_flags, print_json, progress, va_range_flag
from evoked.device import PRECISIONS

if TYPE_CHECKING:  # torch loads with the command, not with the parser
    from evoked.finetune.options import FinetuneOptions


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        parents=[COMMON],
        help="train the end-to-end network (one_stage / two_stage x single / multi)",
        description="Train a backbone end to end as in the two-stage paper. one_stage learns category-derived "
        "VA from a categorical dataset; two_stage loads a one_stage checkpoint, freezes the early blocks and "
        "fine-tunes on the VA-rated training split. Both keep the epoch with the best validation valence r and "
        "write predictions for the dimensional test split in the format of `evoked regress`.",
        **examples(
            "evoked finetune --categorical csv:split.csv --dimensional csv:split.csv --mode one_stage \\\n"
            "      --task single --backbone resnet101 --out runs/one",
            "evoked finetune --dimensional csv:split.csv --mode two_stage --task single --from runs/one \\\n"
            "      --n-labels 100 --out runs/two",
            "evoked finetune ... --backbone tv:mobilenet_v2 --weights mobilenet_v2_imagenet_tflite.pth \\\n"
            "      --preprocess mean=0.5,std=0.5,rotate=180 --size 224",
        ),
    )
    _data_flags(p.add_argument_group("data"))
    _network_flags(p.add_argument_group("network"))
    _training_flags(p.add_argument_group("training"))
    g = p.add_argument_group("output")
    g.add_argument("--out", type=Path, required=True, help="the run directory to write (runs/NAME)")
    g.add_argument("--name", default=None, help="the run's name in run.json (default: the folder's name)")
    g.add_argument("--resume", action="store_true", help="continue from OUT/models/last.pt")
    g.add_argument("--overwrite", action="store_true", help="replace the outputs of an existing run")
    g.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.set_defaults(func=_run)


def _data_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--categorical", metavar="DATASET", help="category-labelled dataset (KIND:PATH)")
    g.add_argument(
        "--dimensional", metavar="DATASET", required=True, help="VA-rated dataset with train/val/test splits"
    )
    lexicon_flags(g, "category -> VA table")
    g.add_argument(
        "--soft", action="store_true", help="use label distributions (category-derived VA, BCE labels)"
    )
    g.add_argument(
        "--n-labels", type=int, default=None, help="two_stage: fine-tune on N VA-rated train items"
    )
    g.add_argument(
        "--eval",
        dest="evals",
        action="append",
        default=[],
        metavar="DATASET[:SPLIT]",
        help="also predict every item of DATASET (or of its SPLIT) with the chosen epoch and score it when it "
        "has ratings (eval column of predictions.csv, evals in run.json); repeatable",
    )
    va_range_flag(g, "1,9; two_stage: stage 1's")
    g.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="leave unreadable images out (counted) instead of failing",
    )
    g.add_argument(
        "--check-workers",
        type=int,
        default=4,
        help="threads that decode every image before training (default 4)",
    )


def _network_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--mode",
        choices=("one_stage", "two_stage"),
        required=True,
        help="one_stage: learn from a categorical dataset; two_stage: fine-tune a one_stage network on VA ratings",
    )
    g.add_argument("--task", choices=("single", "multi"), required=True,
                   help="single: VA loss only; multi: VA plus a category head (docs/finetune.md)")  # fmt: skip
    g.add_argument(
        "--backbone", help="one_stage: resnet18..152 (the paper: resnet101), tv:NAME, clip:ARCH[:TAG]"
    )
    g.add_argument("--weights", default="default", help="one_stage: default (pretrained), random or PATH")
    g.add_argument(
        "--preprocess", default=None, metavar="KEY=VAL,...", help="override mean, std, rotate, ..."
    )
    g.add_argument(
        "--plugin",
        dest="plugins",
        action="append",
        default=[],
        help="a module or .py file that registers backbones",
    )
    g.add_argument(
        "--checkpoint", type=Path, help="two_stage: the one_stage network (runs/ONE/models/best.pt)"
    )
    g.add_argument("--from", dest="from_run", type=Path, help="two_stage: a one_stage run directory")
    g.add_argument(
        "--freeze-until",
        default=None,
        metavar="MODULE",
        help="freeze the backbone before MODULE (e.g. layer4); none, all, auto "
        "(default: auto for two_stage = layer4 on ResNets, none for one_stage)",
    )
    g.add_argument(
        "--freeze-bn",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep every batch-norm layer in eval mode (small batches; weights with folded batch norm). "
        "Default: two_stage keeps stage 1's choice; otherwise on when the weights' batch norm is folded "
        "(the reason is in run.json), else off",
    )
    g.add_argument("--size", type=int, default=None, help="input side in pixels (default 448; CLIP: its own)")


def _training_flags(g: argparse._ArgumentGroup) -> None:
    g.add_argument(
        "--alpha", type=float, help="multi: weight of the MSE (default 0.5 one_stage, 0.9 two_stage)"
    )
    g.add_argument("--cls-loss", choices=("auto", "ce", "bce"), default="auto", help="auto: bce with --soft")
    g.add_argument("--epochs", type=int, default=100, help="at most this many epochs (default 100)")
    g.add_argument("--batch-size", type=int, default=10, help="training images per step (default 10)")
    g.add_argument("--lr", type=float, default=1e-4, help="learning rate (default 1e-4)")
    g.add_argument("--weight-decay", type=float, default=1e-5, help="weight decay (default 1e-5)")
    g.add_argument(
        "--milestones", default=(10, 20, 30, 40, 50), help="epochs, e.g. 10,20,30 (default 10,20,30,40,50)"
    )
    g.add_argument("--gamma", type=float, default=0.5, help="learning-rate factor at each milestone")
    g.add_argument(
        "--patience", type=int, default=5, help="epochs without a better val valence r (0: never stop)"
    )
    g.add_argument("--seed", type=int, default=0, help="the random seed of the run (default 0)")
    g.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    g.add_argument(
        "--precision", choices=PRECISIONS, default="auto", help="auto: bf16 on CUDA, fp32 on the CPU"
    )
    g.add_argument("--workers", type=int, default=0, help="DataLoader worker processes (default 0)")
    g.add_argument(
        "--eval-batch-size", type=int, default=32, help="images per step when predicting (default 32)"
    )


class _Bars:
    """One progress bar at a time (checking images, each epoch, predicting), opened when first used."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.key: str | None = None
        self.stack = ExitStack()
        self.bar = None
        self.start = time.monotonic()

    def get(self, key: str, desc: str, unit: str):
        if key != self.key:
            self.close()
            self.key, self.bar = key, self.stack.enter_context(progress(self.args, None, desc, unit))
        return self.bar

    def close(self) -> None:
        self.stack.close()
        self.key = self.bar = None

    def counter(self, key: str, desc: str):
        """A ``(done, total)`` callback: images checked, test images predicted."""

        def update(done: int, total: int) -> None:
            bar = self.get(key, desc, "img")
            bar.total = total
            bar.update(done - bar.n)

        return update

    def on_batch(self, epoch: int, batch: int, n_batches: int, loss: float) -> None:
        bar = self.get(f"epoch{epoch}", f"epoch {epoch}/{self.args.epochs}", "batch")
        bar.total = n_batches
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def on_epoch(self, rec: dict) -> None:
        bar = self.get(f"epoch{rec['epoch']}", f"epoch {rec['epoch']}/{self.args.epochs}", "batch")
        bar.set_postfix(
            loss=f"{rec['train_loss']:.3f}",
            val_r_v=f"{rec['val_r_valence']:.3f}",
            val_r_a=f"{rec['val_r_arousal']:.3f}",
            run_time=hms(time.monotonic() - self.start),
        )
        self.close()


def options_from_args(args: argparse.Namespace) -> FinetuneOptions:
    """The `FinetuneOptions` of a parsed command line: every field is a flag of the same name."""
    from dataclasses import fields

    from evoked.finetune.options import FinetuneOptions

    return FinetuneOptions(**{f.name: getattr(args, f.name) for f in fields(FinetuneOptions) if f.init})


def _run(args: argparse.Namespace) -> int:
    from evoked.finetune import finetune

    bars = _Bars(args)
    try:
        result = finetune(
            options_from_args(args),
            on_check=bars.counter("check", "checking images"),
            on_batch=bars.on_batch,
            on_epoch=bars.on_epoch,
            on_predict=bars.counter("test", "predicting test"),
        )
    finally:
        bars.close()
    if args.json:
        print_json({result.model: result.metrics})
    else:
        _print_summary(result)
    return 0


def _print_summary(result) -> None:
    m, o = result.metrics, result.outcome
    print(
        f"{result.model}: {o.epochs_run} epoch(s), best epoch {o.best_epoch} (val valence r {o.best_score:.3f})"
        + (", stopped early" if o.stopped_early else "")
    )
    print(
        f"test ({m['valence']['n']} items): valence r {m['valence']['r']:.3f} mse {m['valence']['mse']:.3f}, "
        f"arousal r {m['arousal']['r']:.3f} mse {m['arousal']['mse']:.3f}"
    )
    cat = m.get("category", {})
    if "accuracy" in cat:
        print(f"category accuracy (VA -> nearest of {len(cat['categories'])}, cosine): {cat['accuracy']:.3f}")
    for name, em in m.get("evals", {}).items():
        if "skipped" in em:
            print(f"eval {name}: {em['skipped']}")
        else:
            print(
                f"eval {name} ({em['valence']['n']} items): valence r {em['valence']['r']:.3f} "
                f"mse {em['valence']['mse']:.3f}, arousal r {em['arousal']['r']:.3f} mse {em['arousal']['mse']:.3f}"
            )
    reason = result.meta.get("freeze_bn_reason")
    if reason and result.meta.get("batch_norm", {}).get("freeze_bn_from") == "folded batch norm":
        print(f"note: --freeze-bn {reason}")
    left_out = {k: v for k, v in result.excluded.items() if v}
    if left_out:
        print("left out: " + ", ".join(f"{k} {v}" for k, v in left_out.items()))
    print(f"wrote {result.out} (compare with: evoked evaluate {result.out} ...)")
