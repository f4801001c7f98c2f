"""The manifest: one table of items ``id, path, category, distribution, valence, arousal, split``.

Every dataset reader produces a `Manifest`, and every later stage consumes one. Paths are stored
relative to `Manifest.root`; ids are unique and stable (by default the relative path), so they are
the join key between manifests, feature stores and predictions.

Missing values have one spelling each: ``""`` for a category or split, NaN for valence, arousal and
distribution rows, -1 for a fold.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from evoked.errors import DatasetError, LabelError

SPLITS = ("train", "val", "test")
_SPLIT_SYNONYMS = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
    "": "",
}


def normalize_split(value: str, where: str = "") -> str:
    key = str(value).strip().lower()
    try:
        return _SPLIT_SYNONYMS[key]
    except KeyError:
        raise LabelError(
            f"{where}unknown split {value!r}; use one of train, val, test (or leave it empty)"
        ) from None


def _object_array(values: Sequence | None, n: int, fill: str = "") -> np.ndarray:
    out = np.empty(n, dtype=object)
    if values is None:
        out[:] = fill
    else:
        out[:] = ["" if v is None else escape_name(str(v)) for v in values]
    return out


_ESCAPED_BYTE = re.compile(r"\\x([89a-f][0-9a-f])")


def escape_name(name: str) -> str:
    """A file name as valid UTF-8 text: bytes that are not UTF-8 become ``\\xNN`` (reversible).

    The OS hands undecodable bytes to Python as lone surrogates (``caf\\udce9.jpg``), which no
    UTF-8 file, HDF5 string or JSON reply can hold; `unescape_name` gives the OS name back.
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")


def unescape_name(name: str) -> str:
    """The OS file name of an `escape_name` result (unchanged for plain names)."""
    if "\\x" not in name:
        return name
    raw = _ESCAPED_BYTE.sub(lambda m: chr(0xDC00 + int(m.group(1), 16)), name)
    try:  # only undecodable bytes were escaped, so the round trip must give back surrogates
        return os.fsdecode(raw.encode("utf-8", "surrogateescape"))
    except UnicodeError:
        return name


def _renamed(values: Sequence) -> list[str]:
    """The values `escape_name` changes, escaped (for a note); linear in the rows."""
    return [e for v in values if v is not None and (e := escape_name(str(v))) != v]


def _float_array(values: Sequence | np.ndarray | None, n: int) -> np.ndarray:
    if values is None:
        return np.full(n, np.nan)
    return np.asarray(values, dtype=np.float64).reshape(n)


@dataclass
class Manifest:
    """A dataset as a table. Build one with `Manifest.build` or a reader in `evoked.data`."""

    root: Path
    ids: np.ndarray
    paths: np.ndarray
    category: np.ndarray
    valence: np.ndarray
    arousal: np.ndarray
    split: np.ndarray
    fold: np.ndarray
    distribution: np.ndarray | None = None
    categories: tuple[str, ...] = ()
    name: str = "dataset"
    kind: str = "manifest"
    #: things the reader noticed and did not include (shown by `evoked data inspect`)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def build(
        cls,
        root: str | os.PathLike,
        paths: Sequence[str],
        *,
        ids: Sequence[str] | None = None,
        category: Sequence[str | None] | None = None,
        valence: Sequence[float] | np.ndarray | None = None,
        arousal: Sequence[float] | np.ndarray | None = None,
        split: Sequence[str | None] | None = None,
        fold: Sequence[int] | None = None,
        distribution: np.ndarray | None = None,
        categories: Sequence[str] = (),
        name: str = "dataset",
        kind: str = "manifest",
        notes: list[str] | None = None,
    ) -> Manifest:
        n = len(paths)
        renamed = _renamed(paths)
        notes = list(notes or [])
        if renamed:
            notes.append(
                f"{len(renamed)} file names are not valid UTF-8; their ids write the odd bytes as \\xNN: "
                + ", ".join(renamed[:5])
            )
        return cls(
            root=Path(root),
            ids=_object_array(ids if ids is not None else paths, n),
            paths=_object_array(paths, n),
            category=_object_array(category, n),
            valence=_float_array(valence, n),
            arousal=_float_array(arousal, n),
            split=_object_array(split, n),
            fold=np.full(n, -1, dtype=np.int64)
            if fold is None
            else np.asarray(fold, dtype=np.int64).reshape(n),
            distribution=None if distribution is None else np.asarray(distribution, dtype=np.float64),
            categories=tuple(categories),
            name=name,
            kind=kind,
            notes=notes,
        )

    def __post_init__(self) -> None:
        n = len(self.ids)
        for attr in ("paths", "category", "valence", "arousal", "split", "fold"):
            if len(getattr(self, attr)) != n:
                raise DatasetError(
                    f"manifest column {attr!r} has {len(getattr(self, attr))} rows, ids have {n}"
                )
        counts = Counter(self.ids.tolist())
        dups = [i for i, c in counts.items() if c > 1]
        if dups:
            raise DatasetError(
                f"{len(dups)} ids occur more than once (e.g. {', '.join(map(repr, dups[:5]))}); "
                "ids are the join key and must be unique: give an 'id' column or fix the duplicate rows"
            )
        if any(not i for i in self.ids):
            raise DatasetError("an item has an empty id; every row needs an id or a path")
        self._check_nul()
        bad_split = sorted(set(self.split.tolist()) - set(SPLITS) - {""})
        if bad_split:
            raise LabelError(f"unknown split values {bad_split}; use train, val, test or leave empty")
        for dim in ("valence", "arousal"):
            v = getattr(self, dim)
            if np.isinf(v).any():
                raise LabelError(f"{dim} has infinite values at ids {self.ids[np.isinf(v)][:5].tolist()}")
        if self.distribution is not None:
            d = self.distribution
            if d.ndim != 2 or d.shape != (n, len(self.categories)):
                raise DatasetError(
                    f"distribution has shape {d.shape}, expected ({n}, {len(self.categories)}) for categories "
                    f"{list(self.categories)}"
                )
            known = ~np.isnan(d).all(axis=1)
            partial = np.isnan(d).any(axis=1) & known
            if partial.any():
                raise LabelError(
                    f"label distribution is partly missing for ids {self.ids[partial][:5].tolist()}; "
                    "give every p_<category> value or none"
                )
            if (d[known] < 0).any():
                raise LabelError("a label distribution has a negative probability; values must be >= 0")
            empty = known & ~(d > 0).any(axis=1)
            if empty.any():
                raise LabelError(
                    f"the label distribution of {int(empty.sum())} item(s) is all zeros (e.g. ids "
                    f"{self.ids[empty][:5].tolist()}): no category has any probability. Give the row's "
                    "p_<category> values (or votes), or leave all of them empty if it has no distribution"
                )

    def _check_nul(self) -> None:
        """A NUL character cannot be in a file name, an HDF5 string or most tools' text: refuse it."""
        for column in ("paths", "ids", "category", "split"):
            values = getattr(self, column)
            bad = [k for k, v in enumerate(values.tolist()) if "\0" in v]
            if bad:
                raise DatasetError(
                    f"{len(bad)} {column.rstrip('s')} value(s) hold a NUL character (e.g. row {bad[0] + 1}: "
                    f"{values[bad[0]]!r:.80}); remove the NUL (\\u0000) from the manifest"
                )

    # -- basic access --------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.ids)

    def abspath(self, i: int) -> Path:
        return self.root / unescape_name(self.paths[i])

    def abspaths(self) -> list[Path]:
        return [self.root / unescape_name(p) for p in self.paths]

    def subset(self, rows: Sequence[int] | np.ndarray) -> Manifest:
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        return replace(
            self,
            ids=self.ids[rows],
            paths=self.paths[rows],
            category=self.category[rows],
            valence=self.valence[rows],
            arousal=self.arousal[rows],
            split=self.split[rows],
            fold=self.fold[rows],
            distribution=None if self.distribution is None else self.distribution[rows],
            notes=list(self.notes),
        )

    # -- label summaries -----------------------------------------------------------------------
    @property
    def label_categories(self) -> list[str]:
        """Categories that occur as hard labels, sorted."""
        return sorted({c for c in self.category.tolist() if c})

    def category_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(c for c in self.category.tolist() if c).items()))

    def split_counts(self) -> dict[str, int]:
        c = Counter(self.split.tolist())
        return {s: c[s] for s in (*SPLITS, "") if c.get(s)}

    @property
    def has_va(self) -> np.ndarray:
        return ~(np.isnan(self.valence) | np.isnan(self.arousal))

    @property
    def has_distribution(self) -> np.ndarray:
        if self.distribution is None:
            return np.zeros(len(self), dtype=bool)
        return ~np.isnan(self.distribution).any(axis=1)

    # -- writing -------------------------------------------------------------------------------
    def _columns(self) -> list[str]:
        return ["id", "path", "category", "valence", "arousal", "split", "fold", "dataset"] + [
            f"p_{c}" for c in self.categories
        ]

    def _rows(self, base: Path | None) -> list[dict]:
        rows = []
        for i in range(len(self)):
            path = os.path.abspath(self.root / self.paths[i])
            if base is not None:
                rel = Path(os.path.relpath(path, base)).as_posix()
                # images outside the file's folder are written absolute: reading a manifest refuses
                # relative paths that climb out of its folder (they could point anywhere)
                path = Path(path).as_posix() if rel.startswith("../") else rel
            row = {
                "id": self.ids[i],
                "path": path,
                "category": self.category[i],
                "valence": _fmt(self.valence[i]),
                "arousal": _fmt(self.arousal[i]),
                "split": self.split[i],
                "fold": "" if self.fold[i] < 0 else int(self.fold[i]),
                "dataset": self.name,
            }
            for k, c in enumerate(self.categories):
                row[f"p_{c}"] = _fmt(self.distribution[i, k]) if self.distribution is not None else ""
            rows.append(row)
        return rows

    def to_csv(self, path: str | os.PathLike) -> Path:
        """Write the manifest as CSV with paths relative to the CSV's folder (read back with ``csv:PATH``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=self._columns())
            w.writeheader()
            w.writerows(self._rows(path.parent.resolve()))
        os.replace(tmp, path)
        return path

    def to_jsonl(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for row in self._rows(path.parent.resolve()):
                f.write(json.dumps({k: (None if v == "" else v) for k, v in row.items()}) + "\n")
        os.replace(tmp, path)
        return path


def _fmt(x: float) -> str | float:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)
