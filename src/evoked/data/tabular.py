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
import re
import sys
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evoked.data.datasets import register_dataset
from evoked.data.manifest import Manifest, normalize_split
from evoked.data.text import iter_rows, parse_float, parse_int, shown
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


# lower-case column name -> (field, rank among the field's names: the lowest present wins)
_FIELD_OF = {alias: (f, rank) for f, names in _ALIASES.items() for rank, alias in enumerate(names)}


def used_column(name: str) -> bool:
    """Whether a manifest reads column `name` (the others, however large, are never loaded)."""
    key = name.strip().lower()
    return key in _FIELD_OF or key == "distribution" or (key.startswith("p_") and len(key) > 2)


def _flatten_distribution(row: dict, where: str) -> dict:
    """A ``distribution`` object (JSON lines, parquet) becomes ``p_<category>`` fields."""
    dist = row.pop("distribution", None)
    if isinstance(dist, dict):
        given = {k.strip().lower() for k in row}
        for k, v in dist.items():
            if f"p_{k}".strip().lower() in given:
                raise LabelError(
                    f"{where}: category {k!r} is given twice, as p_{k} and in distribution; keep one of them"
                )
            row[f"p_{k}"] = v
    elif dist is not None:
        raise LabelError(
            f"{where}: distribution {shown(dist)} is not an object; write it as "
            '{"joy": 0.7, "fear": 0.3} or as p_<category> fields'
        )
    return row


@dataclass
class _Layout:
    """Which key of a row gives each field, and which keys give the distribution's categories."""

    col: dict[str, str]
    dist: list[tuple[str, str]]


def _layout(keys: tuple[str, ...]) -> _Layout:
    col: dict[str, tuple[int, str]] = {}
    dist = []
    for k in keys:
        low = k.strip().lower()
        if low in _FIELD_OF:
            f, rank = _FIELD_OF[low]
            if f not in col or rank < col[f][0]:
                col[f] = (rank, k)
        elif low.startswith("p_") and len(low) > 2:
            dist.append((low[2:], k))
    return _Layout({f: k for f, (_, k) in col.items()}, dist)


@dataclass
class _Columns:
    """The manifest's columns, filled one row at a time (no row is kept as a dict)."""

    paths: list[str] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    cats: list[str] = field(default_factory=list)
    valence: list[float] = field(default_factory=list)
    arousal: list[float] = field(default_factory=list)
    split: list[str] = field(default_factory=list)
    fold: list[int] = field(default_factory=list)
    lines: array = field(default_factory=lambda: array("q"))
    dist: dict[str, list[float]] = field(default_factory=dict)  # category -> one value per row
    datasets: set[str] = field(default_factory=set)
    seen_dataset: bool = False

    def add(self, r: dict, lay: _Layout, where: str) -> None:
        col = lay.col
        p = _text(r.get(col["path"]), where, "path").strip()
        if not p:
            raise DatasetError(f"{where}: empty path")
        self.paths.append(p)
        given_id = _text(r.get(col["id"]), where, "id").strip() if "id" in col else ""
        self.ids.append(given_id or p)
        cat = _text(r.get(col["category"]), where, "category").strip().lower() if "category" in col else ""
        self.cats.append(sys.intern(cat))
        self.valence.append(
            parse_float(r.get(col["valence"]), where, "valence", error=LabelError)
            if "valence" in col
            else math.nan
        )
        self.arousal.append(
            parse_float(r.get(col["arousal"]), where, "arousal", error=LabelError)
            if "arousal" in col
            else math.nan
        )
        self.split.append(normalize_split(r.get(col["split"]) or "", f"{where}: ") if "split" in col else "")
        self.fold.append(
            parse_int(r.get(col["fold"]), where, "fold", minimum=0, error=LabelError) if "fold" in col else -1
        )
        if "dataset" in col:
            self.seen_dataset = True
            self.datasets.add(str(r.get(col["dataset"]) or ""))
        n = len(self.lines)
        for name, key in lay.dist:
            values = self.dist.get(name)
            if values is None:
                values = self.dist[name] = [math.nan] * n
            values.append(parse_float(r.get(key), where, f"p_{name}", error=LabelError))
        for values in self.dist.values():
            if len(values) == n:  # a row without this category's column (JSON lines)
                values.append(math.nan)
        self.lines.append(r["__line__"])


def _text(value: object, where: str, column: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list, bytes, bool, float)):
        raise DatasetError(
            f"{where}: {column} {shown(value)} is not text; write one {column} per row as a string"
        )
    return str(value)


def _collect(rows: Iterator[dict], path: Path) -> _Columns:
    out = _Columns()
    layouts: dict[tuple[str, ...], _Layout] = {}
    for r in rows:
        where = f"{path}:{r['__line__']}"
        r = _flatten_distribution(r, where)
        keys = tuple(k for k in r if k != "__line__")
        lay = layouts.get(keys)
        if lay is None:
            if len(layouts) > 256:  # JSON lines whose rows all differ: keep the cache small
                layouts.clear()
            lay = layouts[keys] = _layout(keys)
        if "path" not in lay.col:
            if not out.lines:
                raise DatasetError(
                    f"{path}: no path column; a manifest needs 'path' (or image/file/filename). "
                    f"Found: {', '.join(keys)}"
                )
            raise DatasetError(f"{where}: empty path")
        out.add(r, lay, where)
    return out


def read_table(path: Path, *, name: str | None = None, root: str | os.PathLike | None = None) -> Manifest:
    """Read a manifest; relative paths are taken from its folder (or from `root` when given).

    Rows are read one at a time into columns (a million rows take seconds and no row dicts).
    """
    if not path.is_file():
        raise DatasetError(f"manifest {str(path)!r} is not a file")
    rows, fmt = iter_rows(path, "manifest", DatasetError, columns=used_column)
    cols = _collect(rows, path)
    if not cols.lines:
        raise DatasetError(f"{path}: no rows")
    # a manifest written by evoked keeps its dataset's name in a 'dataset' column
    if cols.seen_dataset and len(cols.datasets) == 1 and "" not in cols.datasets:
        name = name or cols.datasets.pop()
    distribution = None
    if cols.dist:
        distribution = np.array(list(cols.dist.values()), dtype=np.float64).T
        known = ~np.isnan(distribution).any(axis=1)
        sums = np.nansum(distribution, axis=1)
        off = known & (np.abs(sums - 1) > 1e-3) & (sums > 0)
        # counts (votes) are allowed: rows are normalised to probabilities
        distribution[off] = distribution[off] / sums[off, None]
    root, paths = _common_root(path, cols.paths, cols.lines, root)
    del cols.paths
    return Manifest.build(
        root,
        paths,
        ids=cols.ids,
        category=cols.cats,
        valence=cols.valence,
        arousal=cols.arousal,
        split=cols.split,
        fold=cols.fold,
        distribution=distribution,
        categories=list(cols.dist),
        name=name or path.stem,
        kind=fmt,
    )


# a path needing normpath: '.' or '..' components, '//' or a trailing '/'
_UNCLEAN = re.compile(r"(?:^|/)\.{1,2}(?:/|$)|//|/$")


def _absolute(p: str, base: str) -> str:
    f = p if p.startswith("/") else f"{base}/{p}"
    return os.path.normpath(f) if _UNCLEAN.search(f) or os.sep != "/" else f


def _common_root(
    manifest: Path, paths: list[str], lines: Sequence[int], root: str | os.PathLike | None = None
) -> tuple[Path, list[str]]:
    """The dataset root and every path relative to it.

    Relative paths are read from the manifest's folder and must stay inside it (or inside `root`,
    when given): a row like ``../../../etc/passwd`` is refused, naming its line, since the root
    decides which files `evoked serve` may send. Absolute paths say what they mean; a manifest
    kept apart from its images (``splits/e6.csv`` listing ``/data/e6/images/...``) is rooted at
    the images' common folder. String operations only (no relpath per row): linear in the rows.
    """
    base = os.path.abspath(manifest.parent)
    bound = base if root is None else os.path.abspath(root)
    full = [_absolute(p, base) for p in paths]
    inside = _inside(bound)
    for f, p, line in zip(full, paths, lines):
        if not inside(f) and (root is not None or not os.path.isabs(p)):
            raise DatasetError(
                f"{manifest}:{line}: path {shown(p)} leads outside {bound}; write it as an absolute path if you "
                "mean that file, or give the folder that holds all images as the dataset root"
            )
    if root is not None or all(map(_inside(base), full)):
        return Path(bound), _below(bound, full)
    common = _common_folder([f.rpartition("/")[0] or "/" for f in full])
    if common == os.path.dirname(common):  # the file system's root
        raise DatasetError(
            f"{manifest}: the images share no folder below {common} (e.g. {full[0]}); a dataset root of "
            f"{common} would let the whole disk be served. Keep the images under one folder"
        )
    return Path(common), _below(common, full)


def _inside(folder: str) -> Callable[[str], bool]:
    prefix = folder.rstrip("/") + "/"
    return lambda f: f.startswith(prefix)


def _below(folder: str, full: list[str]) -> list[str]:
    cut = len(folder.rstrip("/")) + 1
    return [f[cut:] for f in full]


def _common_folder(dirs: list[str]) -> str:
    """os.path.commonpath of `dirs`, from their smallest and largest (checked: linear, not n log n)."""
    common = os.path.commonpath([min(dirs), max(dirs)])
    if all(map(_inside(common), (d + "/" for d in dirs))):
        return common
    return os.path.commonpath(dirs)


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
