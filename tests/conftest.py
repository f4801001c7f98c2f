"""Shared fixtures: tiny images made on the fly, and the optional ../shared data."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Before any test module imports torch: how OpenMP threads wait, as `evoked` commands run.
from evoked.device import use_openmp_defaults  # noqa: I001

use_openmp_defaults()

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EMOTION6 = SHARED / "data" / "emotion6"
MOBILENET = SHARED / "models" / "mobilenet_v2_imagenet_tflite.pth"

needs_emotion6 = pytest.mark.skipif(not EMOTION6.is_dir(), reason="../shared/data/emotion6 is not present")
needs_mobilenet = pytest.mark.skipif(
    not MOBILENET.is_file(), reason="../shared/models weights are not present"
)


def make_image(path: Path, size=(24, 16), color=(200, 40, 40), fmt: str | None = None, seed: int = 0) -> Path:
    """A small noisy image of a dominant colour, written in the format its suffix implies."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = np.clip(np.array(color)[None, None, :] + rng.integers(-30, 30, size=(h, w, 3)), 0, 255).astype(
        np.uint8
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path, format=fmt)
    return path


def jpeg_bytes(size=(24, 16), color=(10, 200, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


@pytest.fixture
def folder_dataset(tmp_path: Path) -> Path:
    """root/{joy,fear}/k.jpg: 6 images per category with a distinct colour each."""
    root = tmp_path / "ds"
    for ci, (cat, color) in enumerate((("joy", (230, 200, 40)), ("fear", (20, 20, 90)))):
        for k in range(6):
            make_image(root / cat / f"{k}.jpg", color=color, seed=ci * 10 + k)
    return root
