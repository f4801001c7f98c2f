from pathlib import Path

import numpy as np
import pytest

from evoked.data.manifest import Manifest
from evoked.data.splits import assign_folds, split_manifest
from evoked.errors import ConfigError


def _manifest(n_per=50, cats=("joy", "fear", "anger")) -> Manifest:
    cat = [c for c in cats for _ in range(n_per)]
    rng = np.random.default_rng(0)
    return Manifest.build(
        Path("."),
        [f"{c}/{i}.jpg" for i, c in enumerate(cat)],
        category=cat,
        valence=rng.uniform(1, 9, len(cat)),
    )


def test_split_is_stratified_and_reproducible():
    m = _manifest()
    a = split_manifest(m, ratios="0.6,0.2,0.2", seed=3)
    b = split_manifest(m, ratios=(0.6, 0.2, 0.2), seed=3)
    assert list(a.split) == list(b.split)
    assert a.split_counts() == {"train": 90, "val": 30, "test": 30}
    for c in ("joy", "fear", "anger"):
        sel = a.category == c
        assert (a.split[sel] == "test").sum() == 10 and (a.split[sel] == "val").sum() == 10
    c = split_manifest(m, ratios="0.6,0.2,0.2", seed=4)
    assert list(c.split) != list(a.split)


def test_folds_are_balanced_per_category():
    m = split_manifest(_manifest(), folds=5, seed=0)
    assert set(m.fold) == {0, 1, 2, 3, 4}
    for c in ("joy", "fear", "anger"):
        assert np.bincount(m.fold[m.category == c]).tolist() == [10] * 5


def test_valence_stratification_without_categories():
    m = Manifest.build(Path("."), [f"{i}.jpg" for i in range(100)], valence=np.linspace(1, 9, 100))
    s = split_manifest(m, ratios="0.8,0,0.2", seed=0)
    test_v = s.valence[s.split == "test"]
    assert (
        len(test_v) == 20 and np.histogram(test_v, bins=[1, 2.6, 4.2, 5.8, 7.4, 9.01])[0].tolist() == [4] * 5
    )


def test_existing_split_is_kept_unless_overwritten():
    m = _manifest(n_per=10)
    m.split[:] = "train"
    m.split[:6] = "test"
    kept = split_manifest(m, folds=3)
    assert list(kept.split) == list(m.split) and (kept.fold[:6] == -1).all() and (kept.fold[6:] >= 0).all()
    redrawn = split_manifest(m, overwrite=True)
    assert list(redrawn.split) != list(m.split)


def test_bad_ratios_and_folds():
    m = _manifest(n_per=3)
    with pytest.raises(ConfigError, match="summing to 1"):
        split_manifest(m, ratios="0.5,0.2,0.2")
    with pytest.raises(ConfigError, match="TRAIN,VAL,TEST"):
        split_manifest(m, ratios="a,b,c")
    with pytest.raises(ConfigError, match="at least 2"):
        split_manifest(m, folds=1)
    with pytest.raises(ConfigError, match="cannot make 20 folds"):
        assign_folds(None, 20, 0, n=9)


def test_tiny_datasets_fall_back_to_unstratified_parts():
    m = _manifest(n_per=6, cats=tuple("abcdefgh"))  # 48 items, 8 classes: too few for a stratified val part
    s = split_manifest(m, ratios="0.6,0.15,0.25", seed=0)
    assert sum(s.split_counts().values()) == 48 and s.split_counts()["val"] >= 1
