"""The Emotion6 experiment: every kind of supervision on one split, scored on the same test photos.

    python bench/emotion6.py --quick            # about 3 minutes on a 2-core CPU (small images, few epochs)
    python bench/emotion6.py                    # the full run (about 25 minutes on a 2-core CPU)
    python bench/emotion6.py --quick --json     # {"dimensional": {...}, "category_only": {...}, ...}

Every step is an `evoked` command, run in this process through `evoked.cli.main`, and recorded
with its time in the JSON's "meta":

1. `evoked data split emotion6:DATA --ratios 0.6,0.1,0.3 --seed 0` (stratified by category):
   1,188 train, 198 val and 594 test photos. Every system is scored on the same 594 test photos.
2. `evoked extract` of MobileNetV2 (the offline TFLite weights: mean = std = 0.5, input rotated by
   180 degrees) `probs,pool` and `color`, once: OUT/e6.h5 is reused by later runs (`--resume`).
3. (a) `dimensional`: `evoked regress --split test` of ridge, svr, lgbm, mlp, knn and the ensemble on
   `mobilenet_v2/pool` + `color`, trained on the VA ratings of train+val (hyperparameters by inner
   leave-one-out / early stopping within those items; nothing is chosen on test).
   (b) `category_only`: ridge on the same features trained on category-derived VA only
   (`--target category-va`), hard (keyword) and soft (label distribution, `--soft`) targets, through
   the NRC and Warriner lexicons, scored against the true ratings.
   (c) `two_stage`: `--stage1 same` (stage 1 on the keyword VA of train+val, stage 2 on their
   ratings) and the low-resource curve `--n-labels ... --seeds S`.
4. (d) `finetune`: `evoked finetune` one_stage/single on the keywords of the training photos, then
   two_stage/single on the VA ratings of all training photos and of `--ft-n-labels` of them; the
   backbone frozen before `features.14`, batch norm frozen, validation r picks the epoch.
5. `evoked evaluate` of all runs: OUT/MODE/report/ (report.md, report.json, PNG plots).

Outputs go to OUT/quick or OUT/full (runs/, report/, results.json, commands.json). `--reuse`
keeps a run whose recorded command is unchanged (to rebuild the report without refitting).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import filecmp
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

from evoked.device import use_openmp_defaults

use_openmp_defaults()  # before torch, faiss or LightGBM load OpenMP (BENCHMARKS.md)

REPO = Path(__file__).resolve().parents[1]
EMOTION6 = REPO.parent / "shared" / "data" / "emotion6"
MOBILENET = REPO.parent / "shared" / "models" / "mobilenet_v2_imagenet_tflite.pth"
OUT = REPO / "out" / "emotion6"  # /out/ is ignored by git
FEATURES = ["mobilenet_v2/pool", "color"]
PREPROCESS = "mean=0.5,std=0.5,rotate=180"  # the weights' README: x = pixel/128 - 1, rotated 180 degrees

SETTINGS = {
    "quick": {
        "dimensional_models": "ridge,svr,lgbm,mlp,knn,ensemble",
        "two_stage_models": "ridge",
        "curve_n": "0,25,100,all",
        "curve_seeds": 3,
        "size": 128,
        "epochs_one": 2,
        "epochs_two": 3,
    },
    "full": {
        "dimensional_models": "ridge,svr,lgbm,mlp,knn,ensemble",
        "two_stage_models": "ridge,svr",
        "curve_n": "0,25,50,100,200,400,all",
        "curve_seeds": 5,
        "size": 224,
        "epochs_one": 10,
        "epochs_two": 15,
    },
}
CATEGORY_RUNS = [(soft, lex) for lex in ("nrc", "warriner") for soft in (False, True)]
METRICS = ("r_valence", "r_arousal", "mse_valence", "mse_arousal")


class Steps:
    """Runs `evoked` commands in this process, records them with their times, reuses unchanged runs."""

    def __init__(self, work: Path, reuse: bool):
        self.work = work
        self.log: list[dict] = []
        self.file = work / "commands.json"
        self.before = {}
        if reuse and self.file.is_file():
            self.before = {c["name"]: c["argv"] for c in json.loads(self.file.read_text()) if "name" in c}

    def run(self, name: str, argv: list[str], done: Path | None = None) -> None:
        from evoked.cli import main

        reused = done is not None and done.is_file() and self.before.get(name) == argv
        t0 = time.perf_counter()
        if not reused:
            print(
                f"[{time.strftime('%H:%M:%S')}] {name}: evoked {shlex.join(argv)}",
                file=sys.stderr,
                flush=True,
            )
            with contextlib.redirect_stdout(sys.stderr):  # stdout is for the table / JSON
                rc = main(argv)
            if rc != 0:
                raise SystemExit(f"step {name} failed (exit status {rc}): evoked {shlex.join(argv)}")
        seconds = time.perf_counter() - t0
        self.log.append(
            {
                "name": name,
                "command": "evoked " + shlex.join(argv),
                "argv": argv,
                "seconds": round(seconds, 1),
                "reused": reused,
                "load_average_1min": round(os.getloadavg()[0], 2),
            }
        )
        self.file.write_text(json.dumps(self.log, indent=2) + "\n")
        if not reused:
            print(f"    {seconds:.0f} s", file=sys.stderr, flush=True)


def split_manifest(steps: Steps, data: Path, out: Path, seed: int) -> Path:
    """OUT/e6.csv, written once; a later run checks that the same command writes the same file."""
    manifest = out / "e6.csv"
    target = manifest if not manifest.is_file() else out / "e6.check.csv"
    target.unlink(missing_ok=True)
    argv = ["data", "split", f"emotion6:{data}", "--out", str(target), "--ratios", "0.6,0.1,0.3"]
    steps.run("split", [*argv, "--seed", str(seed), "-q"])
    if target != manifest:
        same = filecmp.cmp(target, manifest, shallow=False)
        target.unlink()
        if not same:
            raise SystemExit(f"{manifest} was written from other data or another seed: use another --out")
    return manifest


def train_count(manifest: Path) -> int:
    with manifest.open(newline="") as f:
        return sum(
            1 for row in csv.DictReader(f) if row["split"] == "train" and row["valence"] and row["arousal"]
        )


def parse_ns(text: str, n_all: int) -> list[int]:
    return [n_all if t.strip() == "all" else int(t) for t in text.split(",") if t.strip()]


def run_all(args, s: dict, work: Path, steps: Steps) -> list[Path]:
    manifest = split_manifest(steps, args.data, args.out, args.seed)
    store = args.out / "e6.h5"
    extract = [
        "extract", f"csv:{manifest}", "--out", str(store),
        "--backbone", "tv:mobilenet_v2@probs,pool", "--backbone", "color",
        "--weights", f"tv:mobilenet_v2={args.weights}",
        "--preprocess", f"tv:mobilenet_v2=resize=224,crop=224,{PREPROCESS}",
        "--device", args.device, "-q",
    ]  # fmt: skip
    steps.run("extract", [*extract, "--resume"] if store.is_file() else extract)

    import torch

    torch.set_num_threads(args.threads)
    runs = work / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    done: list[Path] = []
    feat = [x for f in FEATURES for x in ("--feature", f)]
    seed = ["--seed", str(args.seed)]

    def regress(name: str, extra: list[str]) -> None:
        out = runs / name
        steps.run(name, ["regress", str(store), *feat, *extra, "--split", "test", *seed,
                         "--out", str(out), "--overwrite", "-q"], out / "metrics.json")  # fmt: skip
        done.append(out)

    # (a) VA ratings; (b) category-derived VA only; (c) two-stage and its low-resource curve
    regress("va", ["--model", s["dimensional_models"]])
    for soft, lexicon in CATEGORY_RUNS:
        target = ["--target", "category-va", "--lexicon", lexicon] + (["--soft"] if soft else [])
        regress(f"cat-{'soft' if soft else 'hard'}-{lexicon}", ["--model", "ridge", *target])
    regress(
        "two-stage",
        ["--model", s["two_stage_models"], "--stage1", "same", "--lexicon", "nrc",
         "--n-labels", s["curve_n"], "--seeds", str(s["curve_seeds"])],
    )  # fmt: skip

    # (d) the fine-tuned network
    if not args.no_finetune:
        n_all = train_count(manifest)
        common = ["--dimensional", f"csv:{manifest}", "--task", "single", "--size", str(s["size"]),
                  "--freeze-until", "features.14", "--freeze-bn", "--batch-size", "10", "--patience", "5",
                  "--device", args.device, "--workers", str(args.workers), *seed]  # fmt: skip
        one = runs / "ft-one"
        steps.run("ft-one", ["finetune", "--categorical", f"csv:{manifest}", "--mode", "one_stage", *common,
                             "--backbone", "tv:mobilenet_v2", "--weights", str(args.weights),
                             "--preprocess", PREPROCESS, "--epochs", str(s["epochs_one"]),
                             "--out", str(one), "--overwrite", "-q"], one / "metrics.json")  # fmt: skip
        done.append(one)
        for n in parse_ns(args.ft_n_labels, n_all):
            name = "ft-two" if n == n_all else f"ft-two-n{n}"
            out = runs / name
            steps.run(name, ["finetune", "--mode", "two_stage", *common, "--from", str(one),
                             "--n-labels", str(n), "--epochs", str(s["epochs_two"]),
                             "--out", str(out), "--overwrite", "-q"], out / "metrics.json")  # fmt: skip
            done.append(out)
    return done


def collect(report: dict) -> tuple[dict, dict]:
    """The results JSON (four metrics per system) and per-system extras for "meta"."""
    res: dict[str, dict] = {"dimensional": {}, "category_only": {}, "two_stage": {}, "finetune": {}}
    extra: dict[str, dict] = {}
    for sy in report["systems"]:
        run, model = sy["run"], sy["model"]
        if run == "va":
            group, key = "dimensional", model
        elif run.startswith("cat-"):
            _, target, lexicon = run.split("-")
            group, key = "category_only", f"{model}/{target}/{lexicon}"
        elif run == "two-stage":
            if not model.startswith("two_stage:"):
                continue  # stage 2 alone on all ratings: the same fit as the dimensional run's model
            group, key = "two_stage", model
        elif run.startswith("ft-"):
            mode_task = model.split(":", 1)[1]
            key = mode_task if run in ("ft-one", "ft-two") else f"{mode_task}@n={run.rsplit('-n', 1)[1]}"
            group = "finetune"
        else:
            continue
        v, a = sy["valence"], sy["arousal"]
        res[group][key] = {
            "r_valence": v["r"],
            "r_arousal": a["r"],
            "mse_valence": v["mse"],
            "mse_arousal": a["mse"],
        }
        extra[f"{group}/{key}"] = {
            "system": sy["system"],
            "rank": sy["rank"],
            "n": v["n"],
            "ci_r_valence": v["ci"].get("r"),
            "ci_r_arousal": a["ci"].get("r"),
            "ccc_valence": v["ccc"],
            "ccc_arousal": a["ccc"],
            "category_accuracy": (sy.get("category") or {}).get("accuracy"),
        }
    for c in report.get("curves", []):
        if not c["system"].startswith("two-stage/"):
            continue  # the fine-tuning runs' points are already in "finetune"
        key = f"{c['system'].split('/', 1)[1]}/{c['setting']}/n={c['n_labels']}"
        res["two_stage"][key] = {m: c[f"{m}_mean"] for m in METRICS}
        extra[f"two_stage/{key}"] = {
            "seeds": c["seeds"],
            **{f"sd_{m}": c[f"{m}_std"] for m in METRICS},
        }
    return res, extra


def fmt_ci(x: float, ci) -> str:
    return f"{x:.3f}" if not ci else f"{x:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def table(res: dict, extra: dict) -> str:
    lines = [
        "| group | system | r valence [95% CI] | r arousal [95% CI] | MSE valence | MSE arousal | category acc. |",
        "|---|---|---|---|---|---|---|",
    ]
    curve = []
    for group in ("dimensional", "category_only", "two_stage", "finetune"):
        for key, m in res[group].items():
            e = extra.get(f"{group}/{key}", {})
            if "seeds" in e:
                curve.append((key, m, e))
                continue
            acc = e.get("category_accuracy")
            lines.append(
                f"| {group} | {key} | {fmt_ci(m['r_valence'], e.get('ci_r_valence'))} | "
                f"{fmt_ci(m['r_arousal'], e.get('ci_r_arousal'))} | {m['mse_valence']:.3f} | "
                f"{m['mse_arousal']:.3f} | {'n/a' if acc is None else f'{acc:.3f}'} |"
            )
    if curve:
        lines += ["", "| curve (mean ± sd over seeds) | r valence | r arousal | MSE valence | MSE arousal |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for key, m, e in sorted(curve, key=lambda c: (c[0].split("/")[0], int(c[0].rsplit("=", 1)[1]), c[0])):
            cells = [f"{m[x]:.3f} ± {e[f'sd_{x}']:.3f}" for x in METRICS]
            lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine() -> dict:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="128 px, 2 + 3 epochs, a short curve (a few minutes)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument(
        "--out", type=Path, default=OUT, help="work folder (default out/emotion6 in the repository)"
    )
    p.add_argument(
        "--data", type=Path, default=EMOTION6, help="the Emotion6 folder (images/, ground_truth.txt)"
    )
    p.add_argument("--weights", type=Path, default=MOBILENET, help="mobilenet_v2_imagenet_tflite.pth")
    p.add_argument("--ft-n-labels", default="100,all", help="two_stage fine-tuning sizes (default 100,all)")
    p.add_argument("--no-finetune", action="store_true", help="skip (d), the fine-tuned network")
    p.add_argument("--reuse", action="store_true", help="keep runs whose recorded command is unchanged")
    p.add_argument("--threads", type=int, default=1, help="torch threads for regress/finetune (default 1)")
    p.add_argument("--workers", type=int, default=0, help="fine-tuning DataLoader workers")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu, cuda")
    p.add_argument("--bootstrap", type=int, default=1000, help="evaluate's bootstrap resamples")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if not (args.data / "ground_truth.txt").is_file() or not args.weights.is_file():
        print(
            f"needs the Emotion6 folder (--data {args.data}) and the weights (--weights {args.weights})",
            file=sys.stderr,
        )
        return 1
    args.data, args.weights, args.out = args.data.resolve(), args.weights.resolve(), args.out.resolve()
    mode = "quick" if args.quick else "full"
    s = SETTINGS[mode]
    work = args.out / mode
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    steps = Steps(work, args.reuse)
    runs = run_all(args, s, work, steps)
    report_dir = work / "report"
    steps.run(
        "evaluate",
        ["evaluate", *map(str, runs), "--out", str(report_dir), "--bootstrap", str(args.bootstrap),
         "--seed", str(args.seed), "-q"],
    )  # fmt: skip
    total = time.perf_counter() - t0
    report = json.loads((report_dir / "report.json").read_text())
    res, extra = collect(report)
    res["meta"] = {
        "mode": mode,
        "settings": s,
        "features": FEATURES,
        "ft_n_labels": args.ft_n_labels,
        "seconds": round(total, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "machine": machine(),
        "reference": report.get("reference"),
        "category_true_va_accuracy": report.get("category", {}).get("true_va_accuracy"),
        "n_test": report.get("items", {}).get("n") if isinstance(report.get("items"), dict) else None,
        "systems": extra,
        "report": str(report_dir),
        "commands": [
            {k: c[k] for k in ("name", "command", "seconds", "reused", "load_average_1min")}
            for c in steps.log
        ],
    }
    (work / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(table(res, extra))
        la = res["meta"]["load_average_before"][0], res["meta"]["load_average_after"][0]
        print(
            f"\nEmotion6 split 0.6/0.1/0.3 seed {args.seed}, {report['systems'][0]['valence']['n']} test photos; "
            f"{mode} settings; {total:.0f} s in all on {os.cpu_count()} CPUs"
            f"{'' if res['meta']['machine']['gpu'] is None else ' + ' + res['meta']['machine']['gpu']}; "
            f"load average {la[0]:.1f} before, {la[1]:.1f} after. Report: {report_dir / 'report.md'}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
