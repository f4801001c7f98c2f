"""A procedural image set whose categories differ the way emotional photos do.

Each image is drawn from a few scene parameters that drive emotion in photographs (Machajdik &
Hanbury 2010; Valdez & Mehrabian 1994): colour temperature, saturation, brightness, contrast and
texture. Its valence and arousal are tied to those parameters, so a good model can learn them
from the pixels, and its category is the emotion whose parameter ranges it was drawn from. The
set is synthetic: it exercises the pipeline end to end, it says nothing about real photos.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from evoked.data.manifest import Manifest


@dataclass(frozen=True)
class Mood:
    """Parameter ranges of one category: warmth in [-1, 1] (cold..warm), the rest in [0, 1]."""

    warmth: tuple[float, float]
    saturation: tuple[float, float]
    brightness: tuple[float, float]
    contrast: tuple[float, float]
    texture: tuple[float, float]


#: Category words are lexicon words (Mikels 8), so category-derived VA applies to them.
MOODS: dict[str, Mood] = {
    "contentment": Mood((0.3, 0.9), (0.3, 0.6), (0.6, 0.9), (0.1, 0.35), (0.0, 0.3)),
    "amusement": Mood((0.2, 0.8), (0.6, 1.0), (0.6, 0.95), (0.4, 0.7), (0.3, 0.6)),
    "excitement": Mood((0.4, 1.0), (0.7, 1.0), (0.5, 0.8), (0.6, 1.0), (0.6, 1.0)),
    "awe": Mood((-0.6, 0.0), (0.3, 0.6), (0.6, 0.95), (0.3, 0.6), (0.0, 0.3)),
    "sadness": Mood((-0.9, -0.3), (0.0, 0.3), (0.15, 0.45), (0.05, 0.3), (0.0, 0.3)),
    "fear": Mood((-0.8, -0.2), (0.1, 0.4), (0.05, 0.3), (0.6, 1.0), (0.5, 0.9)),
    "anger": Mood((0.6, 1.0), (0.6, 1.0), (0.2, 0.5), (0.6, 1.0), (0.6, 1.0)),
    "disgust": Mood((-0.1, 0.4), (0.2, 0.5), (0.2, 0.5), (0.3, 0.6), (0.7, 1.0)),
}


def va_of(
    warmth: float, saturation: float, brightness: float, contrast: float, texture: float
) -> tuple[float, float]:
    """Valence rises with warmth, brightness and (a little) saturation; arousal with saturation,
    contrast and texture (the Valdez-Mehrabian direction). Both on the 1..9 scale."""
    v = 1.2 * warmth + 2.4 * (brightness - 0.5) + 0.6 * (saturation - 0.5) - 0.8 * (contrast - 0.5)
    a = 2.0 * (saturation - 0.5) + 1.8 * (contrast - 0.5) + 1.6 * (texture - 0.5) - 0.6 * (brightness - 0.5)
    squash = lambda x: 1 + 8 / (1 + math.exp(-x))  # noqa: E731
    return squash(v), squash(a)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    i = np.floor(h * 6).astype(int) % 6
    f = h * 6 - np.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    rgb = np.zeros(h.shape + (3,))
    for k, (r, g, b) in enumerate(choices):
        m = i == k
        rgb[m] = np.stack([r[m], g[m], b[m]], -1)
    return rgb


def render(params: dict, size: int, rng: np.random.Generator) -> np.ndarray:
    """An (size, size, 3) uint8 image: a lit gradient, a few shapes, and a noise texture."""
    w = params["warmth"]
    hue0 = 0.02 + 0.6 * (1 - (w + 1) / 2)  # warm = red/orange, cold = blue
    y, x = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * math.pi)
    grad = (np.cos(angle) * x + np.sin(angle) * y + 1) / 2
    hue = (hue0 + 0.08 * (grad - 0.5) + rng.normal(0, 0.01)) % 1.0
    sat = np.clip(params["saturation"] * (0.8 + 0.4 * grad), 0, 1)
    val = params["brightness"] + params["contrast"] * 0.6 * (grad - 0.5)
    for _ in range(rng.integers(2, 6)):  # discs, brighter or darker by the contrast
        cx, cy, r = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.25)
        disc = ((x - cx) ** 2 + (y - cy) ** 2) < r**2
        val = np.where(disc, val + params["contrast"] * rng.choice([-0.5, 0.5]), val)
        hue = np.where(disc, (hue + rng.uniform(-0.05, 0.05)) % 1.0, hue)
    freq = 2 + 30 * params["texture"]  # fine, strong texture for high arousal
    noise = np.sin(freq * 2 * math.pi * (x + rng.uniform()) * rng.uniform(0.7, 1.3)) * np.sin(
        freq * 2 * math.pi * (y + rng.uniform())
    )
    val = val + 0.25 * params["texture"] * noise + rng.normal(0, 0.02, val.shape)
    rgb = _hsv_to_rgb(hue, sat, np.clip(val, 0, 1))
    return (rgb * 255).round().astype(np.uint8)


def make_dataset(
    out: str | Path,
    n_images: int = 240,
    size: int = 96,
    seed: int = 0,
    categories: tuple[str, ...] | None = None,
) -> Manifest:
    """Write `n_images` JPEGs into ``out/images/<category>/`` and ``out/labels.csv``; return the manifest.

    VA targets are the parameter-driven values plus rating noise (sd 0.4), clipped to 1..9.
    """
    out = Path(out)
    cats = tuple(categories or MOODS)
    rng = np.random.default_rng(seed)
    paths, ids, cat_col, vals, aros = [], [], [], [], []
    for k in range(n_images):
        cat = cats[k % len(cats)]
        mood = MOODS[cat]
        params = {f: float(rng.uniform(*getattr(mood, f))) for f in Mood.__dataclass_fields__}
        v, a = va_of(**params)
        img = render(params, size, rng)
        rel = f"images/{cat}/{k:05d}.jpg"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(out / rel, quality=92)
        paths.append(rel)
        ids.append(rel.removeprefix("images/"))
        cat_col.append(cat)
        vals.append(float(np.clip(v + rng.normal(0, 0.4), 1, 9)))
        aros.append(float(np.clip(a + rng.normal(0, 0.4), 1, 9)))
    manifest = Manifest.build(
        out, paths, ids=ids, category=cat_col, valence=vals, arousal=aros, name="demo-synthetic", kind="csv"
    )
    manifest.to_csv(out / "labels.csv")
    return manifest
