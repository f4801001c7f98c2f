"""The two-stage network on Emotion6 with the offline MobileNetV2 weights, on the CPU.

    python bench/finetune.py --quick            # about 10 minutes on 2 cores: single and multi
    python bench/finetune.py                    # longer settings (see SETTINGS)
    python bench/finetune.py --quick --json     # {"finetune": {"one_stage/single": {...}, ...}}

Protocol (docs/finetune.md): `evoked data split emotion6:EMOTION6 --out WORK/e6.csv --ratios 0.6,0.1,0.3
--seed 0`; the categorical set is that manifest (its keyword categories, VA ignored, training split
only), the dimensional set the same manifest (VA ratings; the two_stage training set is --n-labels of
its train items). Every framework is scored on the same 594 test photos, as the classical regressors.

Reduced settings so that it finishes on a 2-core CPU: input 160 px (quick) or 224 px instead of 448,
few epochs, the backbone frozen before its last stride-32 stage (``features.14``) in both stages,
and every batch-norm layer in eval mode (`--freeze-bn`: these weights have batch norm folded into the
convolutions, so batch statistics would change what the pretrained layers compute). One torch thread
by default: on a machine shared with other jobs, OpenMP threads that wait on each other cost far more
than they give.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path

from evoked.device import use_openmp_defaults

use_openmp_defaults()  # before torch, faiss or LightGBM load OpenMP (BENCHMARKS.md)

REPO = Path(__file__).resolve().parents[1]
EMOTION6 = REPO.parent / "shared" / "data" / "emotion6"
MOBILENET = REPO.parent / "shared" / "models" / "mobilenet_v2_imagenet_tflite.pth"
PREPROCESS = "mean=0.5,std=0.5,rotate=180"  # the weights' README: x = pixel/128 - 1, rotated 180 degrees

SETTINGS = {
    "quick": {"size": 160, "epochs_one": 3, "epochs_two": 5},
    "full": {"size": 224, "epochs_one": 10, "epochs_two": 15},
}


def split_manifest_csv(work: Path) -> Path:
    """What `evoked data split emotion6:... --out WORK/e6.csv --ratios 0.6,0.1,0.3 --seed 0` writes."""
    from evoked.cli import main

    out = work / "e6.csv"
    if not out.is_file():
        args = ["data", "split", f"emotion6:{EMOTION6}", "--out", str(out), "--ratios", "0.6,0.1,0.3"]
        with contextlib.redirect_stdout(sys.stderr):  # keep stdout for the table / JSON
            if main([*args, "--seed", "0", "-q"]) != 0:
                raise SystemExit("evoked data split failed")
    return out


def run_framework(mode: str, task: str, manifest: Path, runs: Path, s: dict, args) -> dict:
    from evoked.finetune import finetune

    common = dict(
        dimensional=f"csv:{manifest}",
        out=runs / f"{mode}_{task}",
        mode=mode,
        task=task,
        freeze_until="features.14",
        freeze_bn=True,
        size=s["size"],
        batch_size=10,
        patience=5,
        seed=args.seed,
        device="cpu",
        workers=args.workers,
        overwrite=True,
    )
    if mode == "one_stage":
        result = finetune(
            categorical=f"csv:{manifest}",
            backbone="tv:mobilenet_v2",
            weights=str(MOBILENET),
            preprocess=PREPROCESS,
            epochs=s["epochs_one"],
            **common,
        )
    else:
        result = finetune(
            categorical=f"csv:{manifest}" if task == "multi" else None,
            from_run=runs / f"one_stage_{task}",
            n_labels=args.n_labels,
            epochs=s["epochs_two"],
            **common,
        )
    m = result.metrics
    return {
        "r_valence": m["valence"]["r"],
        "r_arousal": m["arousal"]["r"],
        "mse_valence": m["valence"]["mse"],
        "mse_arousal": m["arousal"]["mse"],
        "category_accuracy": m["category"].get("accuracy"),
        "n_test": m["valence"]["n"],
        "n_train": result.counts["train"],
        "epochs_run": result.outcome.epochs_run,
        "best_epoch": result.outcome.best_epoch,
        "seconds": result.meta["seconds"],
        "run": str(result.out),
    }


def table(results: dict[str, dict], note: str) -> str:
    head = "| framework | r valence | r arousal | MSE valence | MSE arousal | category acc. | train items | epochs (best) | seconds |"
    lines = [head, "|" + "---|" * 9]
    for name, r in results.items():
        acc = "n/a" if r["category_accuracy"] is None else f"{r['category_accuracy']:.3f}"
        lines.append(
            f"| {name} | {r['r_valence']:.3f} | {r['r_arousal']:.3f} | {r['mse_valence']:.3f} | "
            f"{r['mse_arousal']:.3f} | {acc} | {r['n_train']} | {r['epochs_run']} ({r['best_epoch']}) | "
            f"{r['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n\n" + note


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="160 px, 3 + 5 epochs (about 10 minutes)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--tasks", default="single,multi", help="single, multi or both (default)")
    p.add_argument("--n-labels", type=int, default=100, help="VA-rated training items of two_stage")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1, see the module doc)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work", type=Path, default=Path("/tmp/finetune_work"), help="split and runs go here")
    args = p.parse_args(argv)
    if not EMOTION6.is_dir() or not MOBILENET.is_file():
        print(f"needs {EMOTION6} and {MOBILENET}", file=sys.stderr)
        return 1
    import torch

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    s = SETTINGS["quick" if args.quick else "full"]
    args.work.mkdir(parents=True, exist_ok=True)
    manifest = split_manifest_csv(args.work)
    runs = args.work / ("runs_quick" if args.quick else "runs_full")
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    results = {}
    for task in [t.strip() for t in args.tasks.split(",") if t.strip()]:
        for mode in ("one_stage", "two_stage"):
            results[f"{mode}/{task}"] = run_framework(mode, task, manifest, runs, s, args)
    total = time.perf_counter() - t0
    note = (
        f"Emotion6 split 0.6/0.1/0.3 seed 0, MobileNetV2 (offline TFLite weights), {s['size']} px, "
        f"one_stage {s['epochs_one']} epochs on the 1188 keyword-labelled training photos, two_stage "
        f"{s['epochs_two']} epochs on {args.n_labels} VA-rated ones; frozen before features.14, batch norm "
        f"frozen; {args.threads} torch thread(s); {total:.0f} s in all; load average {load_before:.1f} before, "
        f"{os.getloadavg()[0]:.1f} after (a shared machine: times are indicative)."
    )
    (runs / "bench.json").write_text(json.dumps({"finetune": results, "note": note}, indent=2) + "\n")
    if args.json:
        print(json.dumps({"finetune": results}, indent=2))
    else:
        print(table(results, note))
    return 0


if __name__ == "__main__":
    sys.exit(main())
