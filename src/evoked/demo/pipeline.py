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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torchvision

from evoked.data import load_dataset, split_manifest
from evoked.demo.synth import make_dataset
from evoked.errors import ConfigError
from evoked.extract.weights import torchvision_cached_file

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int], None]
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


class _Steps:
    """Announces each step (`on_step`), forwards progress inside it and keeps its seconds."""

    def __init__(self, on_step: Callable[[str, int, int], None] | None, on_progress: ProgressFn | None):
        self.seconds: dict[str, float] = {}
        self._on_step, self._on_progress = on_step, on_progress

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        if self._on_step:
            self._on_step(name, len(self.seconds), len(STEPS))
        self.seconds[name] = start
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)

    def progress(self, done: int, total: int, *_: object) -> None:
        if self._on_progress:
            self._on_progress(done, total)


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
    on_progress: ProgressFn | None = None,
) -> DemoResult:
    """Run every step into `out`. `on_step(name, index, n_steps)` announces each step and
    `on_progress(done, total)` reports progress inside it (for a progress bar)."""
    from evoked.evaluate import evaluate
    from evoked.features.store_index import build_store_index
    from evoked.retrieve import Retriever

    if n_images < 32:
        raise ConfigError(f"--n-images {n_images}: the demo needs at least 32 images (8 categories x 4)")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty; pass --overwrite or another --out")
    out.mkdir(parents=True, exist_ok=True)
    steps, store, runs = _Steps(on_step, on_progress), out / "features.h5", out / "runs"

    with steps.step("images"):
        make_dataset(out / "data", n_images=n_images, size=size, seed=seed)
    with steps.step("split"):
        split = split_manifest(
            load_dataset(f"csv:{out / 'data' / 'labels.csv'}"), ratios=(0.6, 0.15, 0.25), folds=5, seed=seed
        )
        manifest = split.to_csv(out / "data" / "split.csv")
    weights = "default" if pretrained_resnet18_cached() else "random"
    with steps.step("extract"):
        _extract(manifest, store, weights, device, n_images, steps.progress)
    with steps.step("index"):
        build_store_index(store, "color/hsv_hist", use_gpu="never")
    with steps.step("regress"):
        _regress(store, runs, seed, steps.progress)
    with steps.step("finetune"):
        _finetune(f"csv:{manifest}", runs, weights, device, epochs, seed, steps.progress)
    with steps.step("evaluate"):
        names = ("regress-va", "regress-category", "finetune-one", "finetune-two")
        report = evaluate([runs / n for n in names], out=out / "report", bootstrap=500, seed=seed)
    with steps.step("search"):
        test_ids = [i for i, s in zip(split.ids, split.split) if s == "test"]
        with Retriever(store, "color/hsv_hist") as r:
            neighbours = r.by_image(out / "data" / "images" / test_ids[0], k=5)
    return DemoResult(out, weights, report, neighbours, query=test_ids[0], seconds=steps.seconds)


def _extract(
    manifest: Path, store: Path, weights: str, device: str, n_images: int, progress: ProgressFn
) -> None:
    from evoked.extract.runner import BatchReport, extract

    counter = {"done": 0}

    def on_batch(report: BatchReport) -> None:
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


def _regress(store: Path, runs: Path, seed: int, progress: Callable[[int, int, str], None]) -> None:
    """Regressors on the VA ratings and, for comparison, on category-derived VA."""
    from evoked.regress.runner import run_regress

    common = dict(features=["color", "resnet18/pool"], split="test", seed=seed, overwrite=True)
    run_regress(
        store, out=runs / "regress-va", models=("ridge", "knn", "lgbm"), on_progress=progress, **common
    )
    run_regress(
        store,
        out=runs / "regress-category",
        models=("ridge",),
        target="category-va",
        lexicon="nrc",
        on_progress=progress,
        **common,
    )


def _finetune(
    manifest: str, runs: Path, weights: str, device: str, epochs: int, seed: int, progress: ProgressFn
) -> None:
    """The network in one stage, then two-stage from it."""
    from evoked.finetune import finetune

    common = dict(
        dimensional=manifest,
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
        categorical=manifest,
        backbone="resnet18",
        weights=weights,
        **common,
    )
    finetune(out=runs / "finetune-two", mode="two_stage", from_run=runs / "finetune-one", **common)
