"""`evoked demo`: the whole pipeline offline on a procedural image set."""

from __future__ import annotations

import argparse
from pathlib import Path

from evoked.cli._common import COMMON, examples, progress


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        parents=[COMMON],
        help="run the whole pipeline offline on a small procedural image set",
        description="Makes a procedural image set whose categories differ in colour temperature, saturation, "
        "brightness, contrast and texture, with VA targets tied to them, then extracts, indexes, fits "
        "regressors, fine-tunes briefly, compares everything and searches by image. No network needed.",
        **examples("evoked demo --out evoked-demo", "evoked demo --out demo-small --n-images 120 --epochs 1"),
    )
    p.add_argument(
        "--out", type=Path, default=Path("evoked-demo"), help="folder for everything (default evoked-demo)"
    )
    p.add_argument("--n-images", type=int, default=240, help="images to generate (default 240)")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs per stage (default 2)")
    p.add_argument(
        "--seed", type=int, default=0, help="the same seed makes the same images and results (default 0)"
    )
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--overwrite", action="store_true", help="reuse a non-empty --out")
    p.set_defaults(func=_demo)


_SAYS = {
    "images": "making the procedural images",
    "split": "splitting train/val/test and 5 folds",
    "extract": "extracting ResNet-18 and colour features",
    "index": "indexing colour features (FAISS)",
    "regress": "fitting ridge, kNN and LightGBM on VA, and ridge on category-derived VA (NRC)",
    "finetune": "fine-tuning ResNet-18: one_stage, then two_stage",
    "evaluate": "comparing every system on the same test images",
    "search": "searching by image",
}


def _demo(args: argparse.Namespace) -> int:
    from evoked.demo.pipeline import pretrained_resnet18_cached, run_demo
    from evoked.evaluate.report import console_table

    print(
        "ResNet-18 weights: pretrained (found in the local torchvision cache)"
        if pretrained_resnet18_cached()
        else "ResNet-18 weights: random -- no pretrained copy in the local cache, so the ResNet features "
        "carry no ImageNet knowledge here (the colour features still do the job)"
    )
    with progress(args, None, "demo", "step") as outer:

        def on_step(name: str, index: int, total: int) -> None:
            if outer.total != total:
                outer.reset(total=total)
            outer.n = index
            outer.set_description(_SAYS[name])
            outer.refresh()

        def on_progress(done: int, total: int) -> None:
            outer.set_postfix_str(f"{done}/{total}", refresh=True)

        result = run_demo(
            args.out,
            n_images=args.n_images,
            seed=args.seed,
            device=args.device,
            epochs=args.epochs,
            overwrite=args.overwrite,
            on_step=on_step,
            on_progress=on_progress,
        )
        outer.n = outer.total or 0
        outer.refresh()
    report = result.report
    print()
    print(
        f"Comparison on {report['items']['n']} test images (95% CIs from {report['bootstrap']['resamples']} "
        "bootstrap resamples):"
    )
    print(console_table(report))
    print()
    print(f"Nearest images to {result.query} by colour features:")
    for h in result.neighbours:
        print(
            f"  {h.rank}. {h.id:<28} cosine {h.score:.3f}  valence {h.valence:.2f}  arousal {h.arousal:.2f}"
        )
    print()
    print(f"report and plots: {result.out / 'report' / 'report.md'}")
    print(f"everything else:  {result.out}/ (data/, features.h5, runs/)")
    print("steps took: " + ", ".join(f"{k} {v:.0f}s" for k, v in result.seconds.items()))
    print()
    print("What was synthetic: the images, their categories and their VA targets are procedural (colour,")
    print("brightness, contrast and texture drive the targets), so the numbers only show the pipeline works.")
    print("On a real dataset, the same steps are (see README.md):")
    print("  evoked data split emotion6:PATH --out splits/e6.csv")
    print("  evoked extract csv:splits/e6.csv --out feats/e6.h5 --backbone resnet50 --backbone color")
    print(
        "  evoked regress feats/e6.h5 --feature resnet50/pool --feature color --target va "
        "--model ridge,svr,lgbm --cv 5 --out runs/e6-va"
    )
    print("  evoked evaluate runs/e6-va --out report/")
    return 0
