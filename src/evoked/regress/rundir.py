"""The run directory of `evoked regress` (docs/runs.md): write it, and load a fitted model back.

::

    runs/NAME/run.json  predictions.csv  metrics.json  [curve.csv]  models/MODEL.joblib + MODEL.json

Model names may contain ``:`` (``two_stage:ridge``); their files use ``__`` instead
(``two_stage__ridge.joblib``) so the folder can be copied to any file system.
"""

from __future__ import annotations

import csv
import json
import math
import os
import platform
import shutil
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

import numpy as np

from evoked import __version__
from evoked.errors import ConfigError
from evoked.evaluate.runs import CURVE_COLUMNS as CURVE_KEYS
from evoked.evaluate.runs import (
    CURVE_METRICS,
    EVAL_COLUMNS,
    REQUIRED_COLUMNS,
    items_fingerprint,  # one recipe for every run writer: evaluate compares it
)

__all__ = [
    "items_fingerprint",
    "load_run_model",
    "read_run",
    "save_model",
    "write_curve",
    "write_predictions",
]

# the columns `evoked evaluate` reads, then which eval set a row belongs to ("" = the training side)
# and its kind (oof, held-out, transfer): one definition for writer and reader (docs/runs.md)
PREDICTION_COLUMNS = REQUIRED_COLUMNS + EVAL_COLUMNS
CURVE_COLUMNS = CURVE_KEYS + CURVE_METRICS
_PACKAGES = (
    "numpy",
    "scikit-learn",
    "torch",
    "lightgbm",
    "faiss-cpu",
    "faiss-gpu",
    "h5py",
    "joblib",
    "scipy",
)


def versions() -> dict[str, str]:
    """Versions of evoked, Python and the libraries a fitted model depends on (no imports)."""
    out = {"evoked": __version__, "python": platform.python_version()}
    for pkg in _PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            continue
    return out


def model_filename(name: str) -> str:
    return name.replace(":", "__").replace("/", "_")


def prepare_out(out: str | os.PathLike, overwrite: bool) -> Path:
    """Check the output folder before any work: an existing one needs --overwrite."""
    path = Path(out)
    if path.exists() and not overwrite:
        raise ConfigError(
            f"--out {path} already exists; pass --overwrite to replace it, or choose another name"
        )
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {path} is a file, not a run folder")
    return path


def start_run_dir(path: Path) -> None:
    """An empty run folder (an overwritten run loses its old files, so nothing stale is mixed in)."""
    if path.exists():
        shutil.rmtree(path)
    (path / "models").mkdir(parents=True)


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


def _clean(o):
    """NaN/inf become null so the JSON is strict (other tools read it)."""
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    if isinstance(o, (float, np.floating)) and not math.isfinite(float(o)):
        return None
    if isinstance(o, np.generic):
        return o.item()
    return o


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(_clean(obj), indent=2, default=_json_default, allow_nan=False) + "\n", "utf-8")
    os.replace(tmp, path)


def _fmt(x: float) -> str:  # 9 significant digits: a reread prediction matches to 1e-8
    return "nan" if not math.isfinite(x) else f"{x:.9g}"


def write_predictions(path: Path, rows: Iterable[dict]) -> int:
    n = 0
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(PREDICTION_COLUMNS)
        for r in rows:
            w.writerow(
                [
                    r["model"],
                    r["id"],
                    int(r["fold"]),
                    r["split"],
                    _fmt(r["valence_true"]),
                    _fmt(r["arousal_true"]),
                    _fmt(r["valence_pred"]),
                    _fmt(r["arousal_pred"]),
                    r["category_true"],
                    r.get("eval", ""),
                    r.get("kind", ""),
                ]
            )
            n += 1
    return n


def write_curve(path: Path, rows: Iterable[dict]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CURVE_COLUMNS)
        for r in rows:
            w.writerow(
                [r["model"], r["setting"], int(r["n_labels"]), int(r["seed"])]
                + [_fmt(r[c]) for c in CURVE_COLUMNS[4:]]
            )


def save_model(models_dir: Path, name: str, estimator, meta: dict) -> Path:
    import joblib

    stem = model_filename(name)
    path = models_dir / f"{stem}.joblib"
    joblib.dump(estimator, path)
    write_json(models_dir / f"{stem}.json", {"name": name, "file": path.name, **meta})
    return path


def read_run(run: str | os.PathLike) -> dict:
    path = Path(run) / "run.json"
    if not path.is_file():
        raise ConfigError(
            f"{run} is not a run folder (no run.json); give the --out folder of `evoked regress`"
        )
    try:
        info = json.loads(path.read_text("utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from e
    if info.get("kind") != "regress":
        raise ConfigError(f"{run} is a {info.get('kind')!r} run; `evoked predict` needs a `regress` run")
    return info


def load_run_model(run: str | os.PathLike, model: str | None = None):
    """(fitted estimator, its metadata) of `model` in a run; the run's default model when None."""
    import joblib

    info = read_run(run)
    models = info.get("models", [])
    name = model or info.get("default_model") or (models[0] if models else None)
    if name not in models:
        raise ConfigError(f"--model {name!r} is not in {run}; it has {', '.join(models) or 'no models'}")
    stem = model_filename(name)
    meta_path = Path(run) / "models" / f"{stem}.json"
    if not meta_path.is_file():
        raise ConfigError(f"{meta_path} is missing; rerun `evoked regress` to write the model again")
    meta = json.loads(meta_path.read_text("utf-8"))
    try:
        estimator = joblib.load(Path(run) / "models" / meta["file"])
    except (OSError, EOFError, ValueError) as e:
        raise ConfigError(f"cannot load model {name!r} from {run}: {e}") from e
    return estimator, meta
