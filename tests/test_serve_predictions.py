"""`serve --run`: out-of-fold predictions where the run has them, transfer rows of its eval stores,
the final model's fitted predictions elsewhere, and the API saying which kind each one is."""

from __future__ import annotations

import json

import numpy as np
import pytest
from starlette.testclient import TestClient

from evoked.evaluate.runs import read_run
from evoked.serve.app import ServeConfig, create_app
from evoked.serve.predictions import run_predictions, store_predictions
from storeutil import make_store


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("servepred")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(30, 4))
    va = 5 + x[:, :2]
    valence, arousal = va[:, 0].copy(), va[:, 1].copy()
    valence[25:], arousal[25:] = np.nan, np.nan  # 5 unrated items: never in the CV, never trained on
    a = make_store(root / "a.h5", {"f/x": x}, valence=valence, arousal=arousal)
    xb = rng.normal(size=(6, 4))
    b = make_store(
        root / "b.h5",
        {"f/x": xb},
        ids=[f"b{i}" for i in range(6)],
        valence=5 + xb[:, 0],
        arousal=5 + xb[:, 1],
    )
    return root, a, b


def test_serve_shows_out_of_fold_predictions_and_says_so(stores):
    from evoked.regress.runner import run_regress

    root, a, _ = stores
    run = root / "cv"
    run_regress(a, features=["f/x"], out=run, models=("ridge",), cv=3)
    found = store_predictions(run, a)
    oof = read_run(run).predictions["ridge"]
    assert found.counts == {"oof": 25, "unseen": 5}
    rows = {f"item{i:05d}.jpg": i for i in range(30)}
    for item, pred in zip(oof.ids, oof.pred):
        np.testing.assert_allclose(found.va[rows[item]], pred)  # the oof number, not the in-sample one
        assert found.kind[rows[item]] == "oof"
    fitted, _ = run_predictions(run, a)
    assert (found.kind[25:] == "unseen").all() and np.allclose(found.va[25:], fitted[25:])
    assert not np.allclose(found.va[:25], fitted[:25])  # in-sample differs from out of fold
    app = TestClient(
        create_app(
            ServeConfig(str(a), "f/x", predictions=found.va, prediction_kind=found.kind, run_name=found.label)
        ),
        base_url="http://127.0.0.1",  # the server answers only its own host names
    )
    pts = app.get("/api/points").json()
    assert pts["pred_kind"].count("oof") == 25 and pts["pred_kind"].count("unseen") == 5
    hits = app.get("/api/search/va", params={"v": 5, "a": 5, "k": 3, "source": "predictions"}).json()["hits"]
    assert all(h["pred_kind"] in ("oof", "unseen") for h in hits)


def test_an_eval_store_of_the_run_shows_its_transfer_rows(stores):
    """A run whose predictions.csv holds eval rows of store B (as `regress --eval B.h5` writes them)."""
    from evoked.evaluate.runs import items_fingerprint, read_predictions, write_run
    from evoked.features.store import open_store
    from evoked.regress.runner import run_regress

    root, a, b = stores
    run = root / "ev"
    run_regress(a, features=["f/x"], out=run, models=("ridge",), cv=3)
    meta = json.loads((run / "run.json").read_text())
    cols = {
        k: []
        for k in (
            "id",
            "fold",
            "split",
            "valence_true",
            "arousal_true",
            "valence_pred",
            "arousal_pred",
            "category_true",
            "eval",
            "kind",
        )
    }
    side = read_predictions(run / "predictions.csv")["ridge"]
    for i in range(len(side.ids)):
        for k, v in zip(
            cols, (side.ids[i], side.fold[i], side.split[i], *side.true[i], *side.pred[i], "", "", "oof")
        ):
            cols[k].append(v)
    with open_store(b) as s:
        b_ids, uuid = [str(i) for i in s.ids], s.attrs.get("store_uuid")
    for k, item in enumerate(b_ids):
        for c, v in zip(cols, (item, -1, "", 5.0, 5.0, 1.0 + k, 2.0, "", "b", "transfer")):
            cols[c].append(v)
    meta["evals"] = [
        {
            "name": "b",
            "store": str(b.resolve()),
            "store_uuid": uuid,
            "split": None,
            "n_items": 6,
            "has_ratings": True,
            "items_sha256": items_fingerprint(b_ids, [-1] * 6, [""] * 6),
        }
    ]
    write_run(run, meta, {"ridge": cols})
    found = store_predictions(run, b)
    assert found.counts == {"transfer": 6}
    np.testing.assert_allclose(found.va[:, 0], 1.0 + np.arange(6))


def test_test_items_left_out_of_the_cv_are_not_shown_as_fitted(tmp_path):
    """Failure 1 of issue 21: `regress --cv` on a store with a split leaves the test rows out of the
    folds and of the saved model; serve must not call their predictions fitted (seen in training)."""
    from evoked.regress.runner import run_regress

    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 4))
    split = np.array(["train"] * 24 + ["val"] * 6 + ["test"] * 10, dtype=object)
    a = make_store(tmp_path / "s.h5", {"f/x": x}, valence=5 + x[:, 0], arousal=5 + x[:, 1], split=split)
    run_regress(a, features=["f/x"], out=tmp_path / "cv", models=("ridge",), cv=3)
    found = store_predictions(tmp_path / "cv", a)
    assert found.counts == {"oof": 30, "unseen": 10}
    assert (found.kind[30:] == "unseen").all() and (found.kind[:30] == "oof").all()
    # under --split test the training rows are in-sample, the test rows the run's held-out ones
    run_regress(a, features=["f/x"], out=tmp_path / "sp", models=("ridge",), split="test")
    found = store_predictions(tmp_path / "sp", a)
    assert found.counts == {"fitted": 30, "held-out": 10}
    assert (found.kind[:30] == "fitted").all()
    # under --cv 0 every item was trained on
    run_regress(a, features=["f/x"], out=tmp_path / "all", models=("ridge",), cv=0)
    assert store_predictions(tmp_path / "all", a).counts == {"fitted": 40}
