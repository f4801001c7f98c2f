"""`predict`, search and serve compute a new image's features as the store recorded its rows: the
same backbone, preprocessing, folding and per-backbone precision (`evoked.retrieve.ready_backbones`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_image
from evoked.extract.runner import extract
from evoked.features.store import open_store
from evoked.regress.predict import predict_images
from evoked.regress.rundir import load_run_model
from evoked.regress.runner import run_regress
from evoked.retrieve import Retriever


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory) -> tuple[Path, Path, Path]:
    """A store extracted in bf16 (not what `predict` used to compute in), and a ridge run on it."""
    root = tmp_path_factory.mktemp("bf16")
    ds = root / "ds"
    for ci, (cat, color) in enumerate((("joy", (230, 200, 40)), ("fear", (20, 20, 90)))):
        for k in range(6):
            make_image(ds / cat / f"{k}.jpg", size=(40, 30), color=color, seed=ci * 10 + k)
    store = root / "bf16.h5"
    extract(
        f"folder:{ds}",
        store,
        ["resnet18"],
        weights=["random"],
        preprocess=["resize=40,crop=32"],
        device="cpu",
        precision="bf16",
        batch_size=6,
        workers=0,
    )
    run = root / "run"
    run_regress(store, features=["resnet18/pool"], out=run, target="category-va", lexicon="nrc", cv=0)
    return ds, store, run


def test_predict_computes_in_the_precision_the_store_recorded(bf16_run):
    ds, store, run = bf16_run
    estimator, _ = load_run_model(run, None)
    with open_store(store) as st:
        assert st.extractors["resnet18"]["precision"] == "bf16"
        row = 3
        image, features = ds / st.ids[row], st.read("resnet18/pool", rows=[row])
    result = predict_images([image], run)
    # the store's row, to rounding: in fp32 the prediction moved by about 1e-3
    np.testing.assert_allclose(result.va, estimator.predict(features), rtol=0, atol=1e-5)
    assert result.precisions == {"resnet18": "bf16"}


def test_search_by_image_finds_the_stored_row_itself(bf16_run):
    ds, store, _ = bf16_run
    with Retriever(store, "resnet18/pool") as r:
        image = ds / r.ids[3]
        hit = r.by_image(image, k=1)[0]
    assert hit.id == str(image.relative_to(ds)) and hit.score == pytest.approx(1.0, abs=1e-6)


def test_predict_without_the_store_uses_the_precision_saved_with_the_model(bf16_run, tmp_path: Path):
    ds, store, run = bf16_run
    estimator, _ = load_run_model(run, None)
    with open_store(store) as st:
        image, features = ds / st.ids[2], st.read("resnet18/pool", rows=[2])
    moved = tmp_path / "elsewhere.h5"
    store.rename(moved)  # the store is gone: predict rebuilds the backbone from the model's record
    try:
        result = predict_images([image], run)
    finally:
        moved.rename(store)
    assert result.precisions == {"resnet18": "bf16"}
    np.testing.assert_allclose(result.va, estimator.predict(features), rtol=0, atol=1e-5)
