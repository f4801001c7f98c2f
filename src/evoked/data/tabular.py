"""CSV, TSV and JSONL manifests.

Columns (case-insensitive; only ``path`` is required):
``id, path, category, valence, arousal, split, fold, dataset`` and ``p_<category>`` for a label
distribution (``dataset`` names the dataset when every row has the same value).
``image``/``file``/``filename`` are accepted for ``path``, ``label``/``emotion`` for ``category``.
Relative paths are relative to the manifest file's folder. In JSONL, a distribution may also be
an object ``"distribution": {"joy": 0.7, "fear": 0.3}``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from evoked.data.datasets import register_dataset
from evoked.data.manifest import Manifest, normalize_split
from evoked.data.text import parse_float, parse_int, read_rows
from evoked.errors import DatasetError, LabelError

_ALIASES = {
    "path": ("path", "image", "file", "filename", "filepath", "image_path"),
    "id": ("id", "item_id", "image_id"),
    "category": ("category", "label", "emotion", "class"),
    "valence": ("valence", "v"),
    "arousal": ("arousal", "a"),
    "split": ("split", "subset"),
    "fold": ("fold",),
    "dataset": ("dataset",),
}


def _flatten_distribution(row: dict, where: str) -> dict:
    """A ``distribution`` object (JSON lines, parquet) becomes ``p_<category>`` fields."""
    dist = row.pop("distribution", None)
    if isinstance(dist, dict):
        row.update({f"p_{k}": v for k, v in dist.items()})
    elif dist is not None:
        raise LabelError(
            f"{where}: distribution {dist!r} is not an object; write it as "
            '{"joy": 0.7, "fear": 0.3} or as p_<category> fields'
        )
    return row


def read_table(path: Path, *, name: str | None = None, root: str | os.PathLike | None = None) -> Manifest:
    """Read a manifest; relative paths are taken from its folder (or from `root` when given)."""
    if not path.is_file():
        raise DatasetError(f"manifest {str(path)!r} is not a file")
    rows, fmt = read_rows(path, "manifest", DatasetError)
    rows = [_flatten_distribution(r, f"{path}:{r['__line__']}") for r in rows]
    if not rows:
        raise DatasetError(f"{path}: no rows")
    keys = {k.strip().lower(): k for r in rows[:1] for k in r if k != "__line__"}
    for r in rows[1:]:
        keys.update({k.strip().lower(): k for k in r if k != "__line__" and k.strip().lower() not in keys})
    col = {}
    for field, names in _ALIASES.items():
        found = [keys[n] for n in names if n in keys]
        if found:
            col[field] = found[0]
    if "path" not in col:
        raise DatasetError(
            f"{path}: no path column; a manifest needs 'path' (or image/file/filename). Found: {', '.join(keys)}"
        )
    dist_cols = [(k[2:], keys[k]) for k in keys if k.startswith("p_") and len(k) > 2]
    paths, ids, cats, split, fold, dist = [], [], [], [], [], []
    va: dict[str, list[float]] = {"valence": [], "arousal": []}
    for r in rows:
        where = f"{path}:{r['__line__']}"
        p = str(r.get(col["path"]) or "").strip()
        if not p:
            raise DatasetError(f"{where}: empty path")
        paths.append(p)
        given_id = str(r.get(col["id"]) or "").strip() if "id" in col else ""
        ids.append(given_id or p)
        cats.append(str(r.get(col.get("category"), "") or "").strip().lower() if "category" in col else "")
        for field, values in va.items():
            values.append(
                parse_float(r.get(col[field]), where, field, error=LabelError) if field in col else math.nan
            )
        split.append(normalize_split(r.get(col["split"]) or "", f"{where}: ") if "split" in col else "")
        fold.append(
            parse_int(r.get(col["fold"]), where, "fold", minimum=0, error=LabelError) if "fold" in col else -1
        )
        if dist_cols:
            dist.append(
                [parse_float(r.get(c), where, f"p_{name}", error=LabelError) for name, c in dist_cols]
            )
    # a manifest written by evoked keeps its dataset's name in a 'dataset' column
    given = {str(r.get(col["dataset"]) or "") for r in rows} if "dataset" in col else set()
    if len(given) == 1 and "" not in given:
        name = name or given.pop()
    distribution = None
    if dist_cols:
        distribution = np.array(dist, dtype=np.float64)
        known = ~np.isnan(distribution).any(axis=1)
        sums = np.nansum(distribution, axis=1)
        off = known & (np.abs(sums - 1) > 1e-3) & (sums > 0)
        # counts (votes) are allowed: rows are normalised to probabilities
        distribution[off] = distribution[off] / sums[off, None]
    root, paths = _common_root(path, paths, [r["__line__"] for r in rows], root)
    return Manifest.build(
        root,
        paths,
        ids=ids,
        category=cats,
        valence=va["valence"],
        arousal=va["arousal"],
        split=split,
        fold=fold,
        distribution=distribution,
        categories=[n for n, _ in dist_cols],
        name=name or path.stem,
        kind=fmt,
    )


def _common_root(
    manifest: Path, paths: list[str], lines: list[int], root: str | os.PathLike | None = None
) -> tuple[Path, list[str]]:
    """The dataset root and every path relative to it.

    Relative paths are read from the manifest's folder and must stay inside it (or inside `root`,
    when given): a row like ``../../../etc/passwd`` is refused, naming its line, since the root
    decides which files `evoked serve` may send. Absolute paths say what they mean; a manifest
    kept apart from its images (``splits/e6.csv`` listing ``/data/e6/images/...``) is rooted at
    the images' common folder.
    """
    base = Path(os.path.abspath(manifest.parent))
    bound = base if root is None else Path(os.path.abspath(root))
    full = []
    for p, line in zip(paths, lines):
        f = os.path.normpath(p if os.path.isabs(p) else base / p)
        if os.path.relpath(f, bound).startswith("..") and (root is not None or not os.path.isabs(p)):
            raise DatasetError(
                f"{manifest}:{line}: path {p!r} leads outside {bound}; write it as an absolute path if you "
                "mean that file, or give the folder that holds all images as the dataset root"
            )
        full.append(f)
    if root is not None or all(not os.path.relpath(f, base).startswith("..") for f in full):
        return bound, [Path(os.path.relpath(f, bound)).as_posix() for f in full]
    common = Path(os.path.commonpath([os.path.dirname(f) for f in full]))
    if common == Path(common.anchor):
        raise DatasetError(
            f"{manifest}: the images share no folder below {common} (e.g. {full[0]}); a dataset root of "
            f"{common} would let the whole disk be served. Keep the images under one folder"
        )
    return common, [Path(os.path.relpath(f, common)).as_posix() for f in full]


def _is_table(p: Path, suffixes: tuple[str, ...]) -> bool:
    return p.is_file() and p.suffix.lower() in suffixes


@register_dataset(
    "csv",
    detect=lambda p: _is_table(p, (".csv", ".tsv")),
    aliases=("tsv",),
    help="a CSV/TSV manifest: path[,id,category,valence,arousal,split,fold,p_<category>...]",
)
def read_csv_manifest(path: Path) -> Manifest:
    return read_table(path)


@register_dataset(
    "jsonl",
    detect=lambda p: _is_table(p, (".jsonl", ".ndjson")),
    help="a JSON-lines manifest with the same fields as the CSV one",
)
def read_jsonl_manifest(path: Path) -> Manifest:
    return read_table(path)
