"""`evoked demo`: the whole job on a procedural image set, offline, in a few minutes.

Steps: make the images (synthetic, see `evoked.demo.synth`), split them, extract colour and ResNet-18
features, index them, fit regressors on the VA targets and on category-derived VA, fine-tune the
two-stage network briefly, compare everything on the same test items, and search by image. The
ResNet weights are the pretrained ones when they are already in the local cache, otherwise
random, and the demo says which.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torchvision

from evoked.data import load_dataset, split_manifest
from evoked.demo.synth import make_dataset
from evoked.errors import ConfigError
from evoked.extract.weights import torchvision_cached_file

log = logging.getLogger(__name__)

STEPS = ("images", "split", "extract", "index", "regress", "finetune", "evaluate", "search")


@dataclass
class DemoResult:
    out: Path
    weights: str  # "default" (pretrained, found in the cache) or "random"
    report: dict
    neighbours: list = field(default_factory=list)
    query: str = ""
    seconds: dict = field(default_factory=dict)


def pretrained_resnet18_cached() -> bool:
    w = torchvision.models.get_model_weights("resnet18").DEFAULT
    return torchvision_cached_file(w.url).is_file()


def run_demo(
    out: str | os.PathLike = "evoked-demo",
    *,
    n_images: int = 240,
    size: int = 96,
    seed: int = 0,
    device: str = "cpu",
    epochs: int = 2,
    overwrite: bool = False,
    on_step: Callable[[str, int, int], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> DemoResult:
    """Run every step into `out`. `on_step(name, index, n_steps)` announces each step and
    `on_progress(done, total)` reports progress inside it (for a progress bar)."""
    from evoked.evaluate import evaluate
    from evoked.extract import extract
    from evoked.features.store_index import build_store_index
    from evoked.finetune import finetune
    from evoked.regress.runner import run_regress
    from evoked.retrieve import Retriever

    if n_images < 32:
        raise ConfigError(f"--n-images {n_images}: the demo needs at least 32 images (8 categories x 4)")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; pass --overwrite or another --out")
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    step_no = iter(range(len(STEPS)))

    def step(name: str) -> None:
        seconds[name] = time.perf_counter()
        if on_step:
            on_step(name, next(step_no), len(STEPS))

    def done(name: str) -> None:
        seconds[name] = round(time.perf_counter() - seconds[name], 2)

    def progress(d: int, t: int, *_: object) -> None:
        if on_progress:
            on_progress(d, t)

    step("images")
    make_dataset(out / "data", n_images=n_images, size=size, seed=seed)
    done("images")

    step("split")
    split = split_manifest(
        load_dataset(f"csv:{out / 'data' / 'labels.csv'}"), ratios=(0.6, 0.15, 0.25), folds=5, seed=seed
    )
    manifest = out / "data" / "split.csv"
    split.to_csv(manifest)
    done("split")

    weights = "default" if pretrained_resnet18_cached() else "random"
    step("extract")
    store = out / "features.h5"
    counter = {"done": 0}

    def on_batch(report) -> None:
        counter["done"] += report.images
        progress(counter["done"], n_images)

    extract(
        f"csv:{manifest}",
        store,
        ["resnet18", "color"],
        weights=[weights],
        device=device,
        batch_size=32,
        workers=0,
        overwrite=True,
        on_batch=on_batch,
    )
    done("extract")

    step("index")
    build_store_index(store, "color/hsv_hist", use_gpu="never")
    done("index")

    step("regress")
    features = ["color", "resnet18/pool"]
    runs = out / "runs"
    run_regress(
        store,
        features=features,
        out=runs / "regress-va",
        models=("ridge", "knn", "lgbm"),
        split="test",
        seed=seed,
        overwrite=True,
        on_progress=progress,
    )
    run_regress(
        store,
        features=features,
        out=runs / "regress-category",
        models=("ridge",),
        target="category-va",
        lexicon="nrc",
        split="test",
        seed=seed,
        overwrite=True,
        on_progress=progress,
    )
    done("regress")

    step("finetune")
    common = dict(
        dimensional=f"csv:{manifest}",
        task="single",
        epochs=epochs,
        batch_size=16,
        size=64,
        seed=seed,
        device=device,
        overwrite=True,
        on_batch=lambda e, b, n, loss: progress(b, n),
    )
    finetune(
        out=runs / "finetune-one",
        mode="one_stage",
        categorical=f"csv:{manifest}",
        backbone="resnet18",
        weights=weights,
        **common,
    )
    finetune(out=runs / "finetune-two", mode="two_stage", from_run=runs / "finetune-one", **common)
    done("finetune")

    step("evaluate")
    report = evaluate(
        [runs / n for n in ("regress-va", "regress-category", "finetune-one", "finetune-two")],
        out=out / "report",
        bootstrap=500,
        seed=seed,
    )
    done("evaluate")

    step("search")
    test_ids = [i for i, s in zip(split.ids, split.split) if s == "test"]
    query = out / "data" / "images" / test_ids[0]
    with Retriever(store, "color/hsv_hist") as r:
        neighbours = r.by_image(query, k=5)
    done("search")
    return DemoResult(
        out=out, weights=weights, report=report, neighbours=neighbours, query=test_ids[0], seconds=seconds
    )
