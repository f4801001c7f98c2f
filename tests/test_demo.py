"""`evoked demo` at a small size: the whole pipeline, offline."""

import json
from pathlib import Path

import numpy as np
from PIL import Image

from evoked.cli import main
from evoked.demo.synth import MOODS, make_dataset, va_of


def test_synthetic_targets_follow_the_image_parameters(tmp_path: Path):
    m = make_dataset(tmp_path / "d", n_images=32, size=48, seed=1)
    assert len(m) == 32 and set(m.category) == set(MOODS)
    means = {c: (m.valence[m.category == c].mean(), m.arousal[m.category == c].mean()) for c in MOODS}
    assert means["contentment"][0] > means["sadness"][0] + 2  # warm and bright beats cold and dark
    assert means["excitement"][1] > means["contentment"][1] + 2  # saturated, contrasty, textured
    assert va_of(1, 1, 1, 0, 0)[0] > va_of(-1, 0, 0, 0, 0)[0]
    img = np.asarray(Image.open(m.abspath(0)))
    assert img.shape == (48, 48, 3) and img.std() > 5


def test_demo_runs_end_to_end(tmp_path: Path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--n-images", "48", "--epochs", "1", "-q"]) == 0
    text = capsys.readouterr().out
    assert "ResNet-18 weights:" in text and "regress-va/ridge" in text and "finetune-two" in text
    assert "What was synthetic" in text and "Nearest images to" in text
    report = json.loads((out / "report" / "report.json").read_text())
    names = {s["system"] for s in report["systems"]}
    assert {"regress-va/ridge", "regress-category/ridge", "regress-va/knn"} <= names
    ridge = next(s for s in report["systems"] if s["system"] == "regress-va/ridge")
    assert ridge["valence"]["r"] > 0.5  # the colour features carry the synthetic signal
    assert (out / "report" / "scatter_valence.png").is_file() and (out / "features.h5").is_file()
    assert main(["demo", "--out", str(out)]) == 2  # not empty, no --overwrite
