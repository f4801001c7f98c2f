"""Emotion6 as distributed: ``images/<keyword>/<n>.jpg`` and ``ground_truth.txt``.

``ground_truth.txt`` is tab-separated with one header line:
``<keyword>/<n>.jpg  valence  arousal  p_anger p_disgust p_fear p_joy p_sadness p_surprise p_neutral``.
The category of an image is its search keyword (its folder); the seven probabilities are the label
distribution. Ids are the file names as written in ``ground_truth.txt`` (e.g. ``anger/1.jpg``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evoked.data.datasets import list_images, note_ignored, register_dataset
from evoked.data.manifest import Manifest
from evoked.errors import DatasetError, LabelError

EMOTION6_CATEGORIES = ("anger", "disgust", "fear", "joy", "sadness", "surprise", "neutral")


def _looks_like_emotion6(p: Path) -> bool:
    return p.is_dir() and (p / "ground_truth.txt").is_file() and (p / "images").is_dir()


@register_dataset(
    "emotion6",
    detect=_looks_like_emotion6,
    help="Emotion6: ROOT/images/<keyword>/<n>.jpg + ROOT/ground_truth.txt (VA + 7-way distribution)",
)
def read_emotion6(root: Path) -> Manifest:
    gt = root / "ground_truth.txt"
    if not gt.is_file():
        raise DatasetError(f"{str(root)!r} has no ground_truth.txt; is this the Emotion6 folder?")
    lines = gt.read_text("utf-8").splitlines()
    ids, cats, va, dist = [], [], [], []
    for lineno, line in enumerate(lines[1:], 2):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 10:
            raise LabelError(f"{gt}:{lineno}: expected 10 tab-separated fields, got {len(parts)}: {line!r}")
        name = parts[0].strip()
        try:
            values = [float(x) for x in parts[1:]]
        except ValueError:
            raise LabelError(f"{gt}:{lineno}: non-numeric value in {parts[1:]}") from None
        ids.append(name)
        cats.append(name.split("/")[0].lower() if "/" in name else "")
        va.append(values[:2])
        dist.append(values[2:])
    if not ids:
        raise DatasetError(f"{gt} lists no images")
    va_arr = np.array(va)
    listed = {f"images/{i}" for i in ids}
    images, others = list_images(root / "images")
    unlisted = [p for p in images if p.relative_to(root).as_posix() not in listed]
    return Manifest.build(
        root,
        [f"images/{i}" for i in ids],
        ids=ids,
        category=cats,
        valence=va_arr[:, 0],
        arousal=va_arr[:, 1],
        distribution=np.array(dist),
        categories=EMOTION6_CATEGORIES,
        name="emotion6",
        kind="emotion6",
        notes=note_ignored(unlisted, root, "images not listed in ground_truth.txt")
        + note_ignored(others, root, "not an image file by extension"),
    )
