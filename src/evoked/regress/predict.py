"""`predict_images`: VA of new images with a model saved by `evoked regress`.

The features are computed exactly as the run's store recorded them: each feature group's backbone
is readied by `evoked.retrieve.ready_backbones` from the store, in the store's precision (or, when
the store has moved, from the configuration and precision copied into the model's metadata), and the
outputs are concatenated in the order the model was trained on. Images are decoded with `evoked.data.decode.load_rgb`; an image
that cannot be read is reported with its reason, never skipped silently.
"""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

import numpy as np

from evoked.data.datasets import list_images, load_dataset
from evoked.errors import ConfigError, DatasetError, DecodeError
from evoked.regress.rundir import load_run_model
from evoked.runfolder import format_value, image_path_text

if TYPE_CHECKING:
    from evoked.retrieve import RecordedBackbones

log = logging.getLogger(__name__)


@dataclass
class Prediction:
    """Predicted VA of the images that could be read, and why the others could not."""

    model: str
    paths: list[str]
    va: np.ndarray  # (n, 2): valence, arousal
    failures: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # per path: the dataset id, or the path below its folder
    precisions: dict[str, str] = field(default_factory=dict)  # feature group -> what it computed in

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "predictions": [
                {"id": i, "path": image_path_text(p), "valence": float(v), "arousal": float(a)}
                for i, p, (v, a) in zip(self.ids, self.paths, self.va)
            ],
            "failures": self.failures,
            "notes": self.notes,
            "precisions": self.precisions,
        }

    def write_csv(self, f: TextIO) -> None:
        """The predictions file `evoked evaluate --predictions P.csv --truth DATASET` scores (images
        named by absolute path, so it means the same wherever it is written and read)."""
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for i, p, (v, a) in zip(self.ids, self.paths, self.va):
            w.writerow([i, image_path_text(p), self.model, format_value(float(v)), format_value(float(a))])


#: the columns of `evoked predict`'s CSV output
CSV_COLUMNS = ("id", "path", "model", "valence_pred", "arousal_pred")


def collect_images(images: Sequence[str | os.PathLike]) -> tuple[list[Path], list[str], list[str]]:
    """Image files from files, folders (recursively) and dataset specs (``KIND:PATH``), their ids
    and notes. An id is the dataset's id for a dataset spec, the path below the folder for a folder
    (as a folder dataset names its items), and the path as given for a file."""
    paths: list[Path] = []
    ids: list[str] = []
    notes: list[str] = []
    for item in images:
        p = Path(item)
        if p.is_file():  # an image, or any other file: decoding says whether it is an image
            paths.append(p)
            ids.append(str(p))
        elif p.is_dir():
            found, others = list_images(p)
            if others:
                notes.append(f"{p}: {len(others)} files that are not images were left out")
            paths += found
            ids += [f.relative_to(p).as_posix() for f in found]
        else:
            try:
                m = load_dataset(str(item))
            except DatasetError as e:
                raise ConfigError(
                    f"{item}: not an image file, a folder or a dataset spec (KIND:PATH) ({e})"
                ) from e
            paths += m.abspaths()
            ids += [str(i) for i in m.ids.tolist()]
    if not paths:
        raise ConfigError(f"no images found in {', '.join(map(str, images))}")
    return paths, ids, notes


def ready_run_backbones(meta: dict, device: str) -> RecordedBackbones:
    """The run's backbones (`ready_backbones`), from its store, or from the configurations saved
    with the model when the store is gone or was rewritten."""
    from evoked.features.store import open_store
    from evoked.retrieve import ready_backbones

    groups: dict[str, list[str]] = {}
    for f in meta["features"]:
        g, o = f.split("/")
        groups.setdefault(g, []).append(o)
    store_path = Path(meta.get("store", ""))
    ready = None
    if store_path.is_file():
        with open_store(store_path) as st:
            if st.attrs.get("store_uuid") == meta.get("store_uuid"):
                ready = ready_backbones(st.extractors, list(groups), device, st.path.name)
    if ready is None:
        configs = meta.get("extractor_configs") or {}
        missing = [g for g in groups if g not in configs]
        if missing:
            raise ConfigError(
                f"the store {store_path} is gone and the model does not record how {', '.join(missing)} was "
                "extracted; put the store back"
            )
        log.info("store %s not found (or changed): using the configuration saved with the model", store_path)
        precisions = meta.get("extractor_precisions") or {}
        saved = {g: {"config": c, "precision": precisions.get(g, "fp32")} for g, c in configs.items()}
        ready = ready_backbones(saved, list(groups), device, "the model's saved configuration")
    for bb in ready.backbones:
        bb.selected = tuple(groups[bb.name])
    return ready


def predict_images(
    images: Sequence[str | os.PathLike],
    run: str | os.PathLike,
    *,
    model: str | None = None,
    device: str = "cpu",
    batch_size: int = 32,
    on_progress: Callable[[int], None] | None = None,
) -> Prediction:
    """Predict VA for `images` (files, folders or a dataset spec) with `model` of `run`."""
    import torch

    from evoked.data.decode import load_rgb

    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    estimator, meta = load_run_model(run, model)
    paths, ids, notes = collect_images(images)
    id_of = {str(p): i for p, i in zip(paths, ids)}
    ready = ready_run_backbones(meta, device)
    features = meta["features"]
    dims = meta.get("feature_dims", {})
    done_paths: list[str] = []
    preds: list[np.ndarray] = []
    failures: dict[str, str] = {}
    for start in range(0, len(paths), batch_size):
        batch = paths[start : start + batch_size]
        tensors, names = [], []
        for p in batch:
            try:
                img = load_rgb(p)
            except DecodeError as e:
                failures[str(p)] = e.reason
                continue
            tensors.append(torch.from_numpy(img).permute(2, 0, 1).contiguous().to(ready.device))
            names.append(str(p))
        if tensors:
            out = ready.run(tensors)
            for f in features:
                if f in dims and out[f].shape[1] != dims[f]:
                    raise ConfigError(
                        f"{f}: the rebuilt backbone gives {out[f].shape[1]} values, the model was trained on "
                        f"{dims[f]}; the extractor changed since the run"
                    )
            X = np.concatenate([out[f] for f in features], axis=1)
            finite = np.isfinite(X).all(axis=1)
            for name, good in zip(names, finite):
                if not good:
                    failures[name] = "the features of this image are not finite (NaN or inf)"
            if finite.any():
                preds.append(np.asarray(estimator.predict(X[finite]), dtype=np.float64).reshape(-1, 2))
                done_paths += [n for n, good in zip(names, finite) if good]
        if on_progress is not None:
            on_progress(len(batch))
    va = np.concatenate(preds) if preds else np.zeros((0, 2))
    ids_done = [id_of[p] for p in done_paths]
    return Prediction(
        meta["name"], done_paths, va, failures, notes, ids=ids_done, precisions=ready.precisions
    )
