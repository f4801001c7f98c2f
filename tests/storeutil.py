"""Build small feature stores from arrays, for tests that need features without extraction."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evoked.data.manifest import Manifest
from evoked.features.store import ExtractorSpec, FeatureStore, OutputSpec


def make_store(
    path: Path,
    features: dict[str, np.ndarray],
    *,
    valence=None,
    arousal=None,
    category=None,
    split=None,
    fold=None,
    distribution=None,
    categories=(),
    ids=None,
    failed: dict[int, str] | None = None,
    name: str = "synthetic",
    output_attrs: dict[str, dict] | None = None,
) -> Path:
    """A store whose rows are all ok (but `failed`), holding `features` {"group/output": (n, d)};
    `output_attrs` {"group/output": attrs} are recorded on those datasets (e.g. a layer's depth)."""
    n = len(next(iter(features.values())))
    ids = ids if ids is not None else [f"item{i:05d}.jpg" for i in range(n)]
    manifest = Manifest.build(
        path.parent,
        list(ids),
        ids=list(ids),
        category=category,
        valence=valence,
        arousal=arousal,
        split=split,
        fold=fold,
        distribution=distribution,
        categories=categories,
        name=name,
        kind="synthetic",
    )
    groups: dict[str, list[OutputSpec]] = {}
    for key, arr in features.items():
        group, out = key.split("/")
        groups.setdefault(group, []).append(OutputSpec(out, arr.shape[1], (output_attrs or {}).get(key, {})))
    specs = [
        ExtractorSpec(
            g,
            tuple(outs),
            {"config": {"spec": g, "weights": {"tag": "random"}, "preprocess": {}, "outputs": {}}},
        )
        for g, outs in groups.items()
    ]
    store = FeatureStore.create(path, manifest, specs, block_size=max(1, min(256, n)))
    failed = failed or {}
    ok = np.array([i not in failed for i in range(n)])
    with store:
        for b in range(store.n_blocks):
            rows = store.block_rows(b)
            store.write_block(
                rows,
                {k: np.asarray(v, dtype=np.float32)[rows][ok[rows]] for k, v in features.items()},
                ok[rows],
                {int(r): failed[int(r)] for r in rows if int(r) in failed},
            )
    return path
