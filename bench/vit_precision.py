"""A ViT on the CPU: fp32, bf16 autocast, or bf16 weights? Speed and agreement on the same photos.

    python bench/vit_precision.py --n 128                          # clip:ViT-B-32, random weights
    python bench/vit_precision.py --backbone clip:ViT-B-32:openai --weights default --json

One model is built once (evoked's own build: `build_backbones`) and copied three times: left in
fp32; run under ``torch.autocast("cpu", torch.bfloat16)``; its weights converted to bf16
(`Backbone.to_low_precision`, what ``--precision bf16`` does for ViTs on the CPU). Each copy runs
`run_backbones` on the same decoded photos (Emotion6 by default); the script reports model-only
img/s (first batch untimed) and the agreement of each bf16 variant with fp32: cosine of the
embeddings (mean, 1st percentile, min) and top-1 agreement of the zero-shot scene probabilities.
`evoked.extract.precision.CPU_AUTO_BF16_VIT` rests on this (BENCHMARKS.md, "Precision that auto picks").
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from evoked.device import use_openmp_defaults

use_openmp_defaults()  # before torch loads OpenMP (BENCHMARKS.md)

REPO = Path(__file__).resolve().parents[1]
EMOTION6 = REPO.parent / "shared" / "data" / "emotion6"


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-30)


def run(batches, bb, dev, amp) -> tuple[dict[str, np.ndarray], float]:
    import torch

    from evoked.extract.runner import run_backbones

    outs, timed, t0 = [], 0, None
    with torch.inference_mode():
        for i, images in enumerate(batches):
            outs.append(run_backbones(images, [bb], dev, amp))
            if i == 0:
                t0 = time.perf_counter()
            else:
                timed += len(images)
    rate = timed / (time.perf_counter() - t0) if timed else float("nan")
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}, rate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=None, help="dataset spec (default: Emotion6, else synthetic)")
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--backbone", default="clip:ViT-B-32")
    p.add_argument("--weights", default="random")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    import tempfile

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import extract as bench_extract  # bench/extract.py: the same image loading and decoding
    from evoked.extract.options import ExtractOptions
    from evoked.extract.runner import build_backbones, cpu_settings, place_backbones

    opts = ExtractOptions([args.backbone], weights=[args.weights], device="cpu", precision="fp32").check()
    dev = opts.dev
    with tempfile.TemporaryDirectory() as tmp:
        manifest, source = bench_extract.load_images(args.images, args.n, Path(tmp))
        paths = [str(x) for x in manifest.abspaths()]
        blocks = [
            list(range(s, min(s + args.batch_size, len(paths))))
            for s in range(0, len(paths), args.batch_size)
        ]
        _, batches, _ = bench_extract.measure_decode(paths, blocks, dev, "cpu", 0, opts.max_pixels, 1)
    (base,) = build_backbones(opts.plans)
    variants = {}
    for name in ("fp32", "autocast", "bf16 weights"):
        bb = copy.deepcopy(base)
        place_backbones([bb], dev, precisions={bb.name: "bf16" if name == "bf16 weights" else "fp32"})
        variants[name] = (bb, {bb.name: torch.bfloat16 if name == "autocast" else None})
    results, load0 = {}, os.getloadavg()[0]
    with cpu_settings(dev, 0) as threads:
        outputs = {}
        for name, (bb, amp) in variants.items():
            outputs[name], rate = run(batches, bb, dev, amp)
            results[name] = {"img_s": round(rate, 2)}
    ref = outputs["fp32"]
    embed = next(k for k in ref if k.endswith("/embed") or k.endswith("/pool"))
    probs = next((k for k in ref if k.endswith("/scene") or k.endswith("/probs")), None)
    for name in ("autocast", "bf16 weights"):
        c = cosine(ref[embed], outputs[name][embed])
        results[name].update(
            cosine_mean=round(float(c.mean()), 6),
            cosine_p1=round(float(np.percentile(c, 1)), 6),
            cosine_min=round(float(c.min()), 6),
        )
        if probs:
            agree = (ref[probs].argmax(1) == outputs[name][probs].argmax(1)).mean()
            results[name]["top1_agreement"] = round(float(agree), 4)
    report = {
        "backbone": args.backbone,
        "weights": args.weights,
        "images": source,
        "threads": threads,
        "load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
        "embedding": embed,
        "probabilities": probs,
        "results": results,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{args.backbone} ({args.weights} weights), {source}, {threads} threads, load {report['load_average']}"
    )
    for name, r in results.items():
        extra = "" if name == "fp32" else (
            f"  cosine {r['cosine_mean']:.5f} (p1 {r['cosine_p1']:.5f}, min {r['cosine_min']:.5f})"
            + (f", top-1 agreement {r['top1_agreement']:.3f}" if "top1_agreement" in r else "")
        )  # fmt: skip
        print(f"  {name:<13} {r['img_s']:7.2f} img/s{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
