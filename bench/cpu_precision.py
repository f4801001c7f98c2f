"""Is bf16 on the CPU good enough for `--precision auto`? fp32 vs bf16 features of one backbone.

    python bench/cpu_precision.py --n 1980          # all of Emotion6, the MobileNetV2 weights of ../shared/models
    python bench/cpu_precision.py --n 300 --json
    python bench/cpu_precision.py --backbone clip:ViT-B-32 --weights random   # a ViT in bf16 weights

On the same photos, `evoked.extract.extract` runs twice, ``--precision fp32`` and ``--precision bf16``
(what the CPU path really does: CNNs with folded batch norms, channels_last, slices and bf16 autocast;
ViTs with their weights in bf16), and the script reports

- agreement: cosine between the fp32 and bf16 vectors (``pool``, or CLIP's ``embed``; mean, 1st
  percentile, min) and the top-1 agreement of the class probabilities (ImageNet ``probs``, or CLIP's
  zero-shot ``scene``);
- downstream accuracy: the 5-fold cross-validated Pearson r of ridge (the project's `ridge`, alpha by
  leave-one-out inside each training fold, standardised features) for valence and arousal from those
  vectors, with fp32 and with bf16 features, on the same folds;
- speed: img/s of each extraction (end to end, on this machine's load).

Defaults: MobileNetV2 (``tv:mobilenet_v2``) with the weights file ../shared/models/mobilenet_v2_imagenet_tflite.pth,
normalised with mean = std = 0.5 and rotated 180 degrees as its README asks (that preprocessing is the
default only for that file); Emotion6 from ../shared/data. Random weights measure the arithmetic, not
what trained weights (whose activations have other ranges) would give.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from evoked.device import use_openmp_defaults

use_openmp_defaults()  # before torch, faiss or LightGBM load OpenMP (BENCHMARKS.md)

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
EMOTION6 = SHARED / "data" / "emotion6"
MOBILENET = SHARED / "models" / "mobilenet_v2_imagenet_tflite.pth"


def extract_features(manifest, out: Path, args, precision: str) -> tuple[dict[str, np.ndarray], float]:
    import h5py

    from evoked.extract import extract

    t0 = time.perf_counter()
    s = extract(
        manifest,
        out,
        [args.backbone],
        weights=[args.weights],
        preprocess=args.preprocess,
        device="cpu",
        precision=precision,
        batch_size=args.batch_size,
    )
    rate = s.processed / (time.perf_counter() - t0)
    with h5py.File(out, "r") as f:
        g = f["features"][next(iter(f["features"]))]
        return {k: g[k][:].astype(np.float64) for k in g}, rate


def ridge_r(X: np.ndarray, y: np.ndarray, folds: np.ndarray) -> float:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from evoked.regress.linear import ridge

    pred = np.empty_like(y)
    for f in np.unique(folds):
        test = folds == f
        model = make_pipeline(StandardScaler(), ridge()).fit(X[~test], y[~test])
        pred[test] = model.predict(X[test])
    return float(np.corrcoef(pred, y)[0, 1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=f"emotion6:{EMOTION6}")
    p.add_argument("--n", type=int, default=1980, help="first N photos in a seeded random order")
    p.add_argument("--backbone", default="tv:mobilenet_v2")
    p.add_argument("--weights", default=str(MOBILENET))
    p.add_argument(
        "--preprocess",
        action="append",
        default=None,
        help="default for the MobileNetV2 file: mean=0.5,std=0.5,rotate=180",
    )
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.preprocess is None:
        args.preprocess = ["mean=0.5,std=0.5,rotate=180"] if Path(args.weights) == MOBILENET else []
    from sklearn.model_selection import KFold

    from evoked.data import load_dataset
    from evoked.extract.cpu import bf16_units

    manifest = load_dataset(args.images)
    rows = np.sort(np.random.default_rng(0).permutation(len(manifest))[: args.n])
    manifest = manifest.subset(rows)
    va = np.stack([manifest.valence, manifest.arousal], axis=1)
    folds = np.empty(len(manifest), dtype=int)
    for k, (_, test) in enumerate(KFold(5, shuffle=True, random_state=0).split(va)):
        folds[test] = k
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="evoked-prec-") as tmp:
        f32, rate32 = extract_features(manifest, Path(tmp) / "fp32.h5", args, "fp32")
        b16, rate16 = extract_features(manifest, Path(tmp) / "bf16.h5", args, "bf16")
    vec, cls = ("pool", "probs") if "pool" in f32 else ("embed", "scene")
    a, b = f32[vec], b16[vec]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    report = {
        "images": f"{args.images}, {len(manifest)} photos",
        "backbone": args.backbone,
        "weights": Path(args.weights).name,
        "bf16_units": bf16_units(),
        "vector": vec,
        "classes": cls,
        "cosine": {
            "mean": round(float(cos.mean()), 5),
            "p01": round(float(np.percentile(cos, 1)), 5),
            "min": round(float(cos.min()), 5),
        },
        "top1_agreement": round(float((f32[cls].argmax(1) == b16[cls].argmax(1)).mean()), 4),
        "ridge_r": {
            target: {
                "fp32": round(ridge_r(a, va[:, j], folds), 4),
                "bf16": round(ridge_r(b, va[:, j], folds), 4),
            }
            for j, target in enumerate(("valence", "arousal"))
        },
        "img_s": {"fp32": round(rate32, 1), "bf16": round(rate16, 1)},
        "loadavg": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "command": " ".join(sys.argv),
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{report['images']}; {args.backbone} ({report['weights']}); CPU bf16 units {report['bf16_units']}")
    c = report["cosine"]
    print(f"{vec} cosine fp32 vs bf16: mean {c['mean']}, 1st percentile {c['p01']}, min {c['min']}")
    print(f"top-1 agreement of {cls}: {report['top1_agreement']}")
    for t, r in report["ridge_r"].items():
        print(f"ridge 5-fold r, {t}: fp32 {r['fp32']}, bf16 {r['bf16']} (diff {r['bf16'] - r['fp32']:+.4f})")
    print(f"img/s: fp32 {report['img_s']['fp32']}, bf16 {report['img_s']['bf16']}; load {report['loadavg']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
