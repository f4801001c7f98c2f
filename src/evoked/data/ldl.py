"""FlickrLDL and TwitterLDL: per-image votes (or probabilities) over the eight Mikels categories.

The label file is a CSV with an image column (``image``, ``path``, ``file`` or ``filename``) and one
column per Mikels category (``amusement, awe, contentment, excitement, anger, disgust, fear,
sadness``; a ``p_`` prefix is allowed), as in the two-stage paper's ``flickrldl_config.csv``. Rows
are normalised to sum to 1. Give the CSV, or a folder holding exactly one CSV. Images are looked
up beside the CSV, in ``images/``, or in ``train/``, ``val/``, ``test/`` (which then set the split).
The hard category is the most-voted one; on a tie it is left empty and the distribution is kept.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from evoked.data.datasets import register_dataset
from evoked.data.lexicon import CATEGORY_SETS
from evoked.data.manifest import Manifest
from evoked.errors import DatasetError, LabelError

MIKELS = CATEGORY_SETS["mikels8"]
_IMAGE_COLUMNS = ("image", "path", "file", "filename", "id")
_SPLIT_DIRS = (("train", "train"), ("val", "val"), ("validation", "val"), ("test", "test"))


def _label_file(path: Path) -> Path:
    if path.is_file():
        return path
    csvs = sorted(p for p in path.glob("*.csv") if not p.name.startswith("."))
    if len(csvs) != 1:
        raise DatasetError(
            f"{str(path)!r} holds {len(csvs)} .csv files; give the label file itself, e.g. ldl:{path}/labels.csv"
        )
    return csvs[0]


def _locate(base: Path, name: str) -> tuple[str, str]:
    """Relative path and split of one image name."""
    for sub, split in (("", ""), ("images", ""), *_SPLIT_DIRS):
        candidate = base / sub / name if sub else base / name
        if candidate.is_file():
            return candidate.relative_to(base).as_posix(), split
    default = "images" if (base / "images").is_dir() else ""
    return (f"{default}/{name}" if default else name), ""


@register_dataset(
    "ldl",
    aliases=("flickrldl", "twitterldl"),
    help="FlickrLDL/TwitterLDL: CSV with an image column and 8 Mikels vote columns",
)
def read_ldl(path: Path) -> Manifest:
    labels = _label_file(path)
    base = labels.parent
    with labels.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = {(h or "").strip().lower(): h for h in reader.fieldnames or []}
        image_col = next((header[c] for c in _IMAGE_COLUMNS if c in header), None)
        cat_cols = []
        for c in MIKELS:
            key = c if c in header else f"p_{c}"
            if key not in header:
                raise DatasetError(
                    f"{labels}: no column for category {c!r}; an LDL file needs an image column and the "
                    f"8 Mikels columns {', '.join(MIKELS)}. Found: {', '.join(header) or 'no header'}"
                )
            cat_cols.append(header[key])
        if image_col is None:
            raise DatasetError(f"{labels}: no image column (one of {', '.join(_IMAGE_COLUMNS)})")
        names, votes = [], []
        for lineno, row in enumerate(reader, 2):
            name = (row.get(image_col) or "").strip()
            if not name:
                raise DatasetError(f"{labels}:{lineno}: empty image name")
            try:
                v = [float(row[c]) for c in cat_cols]
            except (TypeError, ValueError):
                raise LabelError(
                    f"{labels}:{lineno}: non-numeric vote in {[row[c] for c in cat_cols]}"
                ) from None
            if min(v) < 0 or sum(v) <= 0:
                raise LabelError(f"{labels}:{lineno}: votes must be >= 0 with a positive total, got {v}")
            names.append(name)
            votes.append(v)
    if not names:
        raise DatasetError(f"{labels}: no rows")
    dist = np.array(votes, dtype=np.float64)
    dist /= dist.sum(axis=1, keepdims=True)
    top = dist.max(axis=1, keepdims=True)
    tied = (np.isclose(dist, top)).sum(axis=1) > 1
    cats = ["" if t else MIKELS[int(np.argmax(row))] for row, t in zip(dist, tied)]
    located = [_locate(base, n) for n in names]
    notes = []
    if tied.any():
        notes.append(
            f"{int(tied.sum())} images have tied top categories: hard category left empty, distribution kept"
        )
    return Manifest.build(
        base,
        [p for p, _ in located],
        ids=names,
        category=cats,
        split=[s for _, s in located],
        distribution=dist,
        categories=MIKELS,
        name=labels.stem,
        kind="ldl",
        notes=notes,
    )
