"""Fit and predict time of every default regressor on random-but-structured features.

    python bench/regress.py --n 20000 --dim 2048 [--models ridge,svr] [--json]
    python bench/regress.py --models ridge --stream-rows 100000 --stream-dim 512   # streamed vs in memory

The data look like pooled CNN features: 32 latent factors drive a non-negative, sparse-ish
`dim`-wide vector (ReLU of a random projection plus noise), and valence/arousal are smooth
non-linear functions of the factors plus rating noise, clipped to 1..9. Each model is the
pipeline the runner fits (StandardScaler -> model) on `n` training rows; prediction is timed on
n/4 held-out rows, whose r is printed as a sanity check (a fast model that learns nothing is not
fast). Goals on a 2-core laptop-class CPU: ridge <= 5 s, every other default model <= 60 s, the
whole default comparison <= 5 min.

Streamed ridge (``--stream-rows N``, default 100,000 x ``--stream-dim`` 512; 0 skips it): the same
kind of data written to a temporary feature store, then ridge fitted from the store a chunk at a
time (`fit_pipeline_chunks`, what ``evoked regress --stream`` does: moments and scaler in one pass,
exact leave-one-out in a second) and in memory (the matrix read from the store first, not timed).
Goal: streamed <= 1.5 x in memory.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

from evoked.device import use_openmp_defaults

use_openmp_defaults()  # before torch, faiss or LightGBM load OpenMP (BENCHMARKS.md)

DEFAULT_MODELS = ("ridge", "svr", "lgbm", "mlp", "knn")
GOALS_S = {"ridge": 5.0}
OTHER_GOAL_S = 60.0
TOTAL_GOAL_S = 300.0
STREAM_GOAL = 1.5  # streamed ridge time / in-memory ridge time


def structured_data(n: int, dim: int, seed: int = 0, latent: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """(X float32 (n, dim), y (n, 2)) with a learnable, partly non-linear signal."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, latent)).astype(np.float32)
    proj = rng.standard_normal((latent, dim)).astype(np.float32) / np.sqrt(latent)
    X = np.maximum(z @ proj + 0.5 * rng.standard_normal((n, dim)).astype(np.float32) - 0.3, 0)
    w_v, w_a = rng.standard_normal(latent), rng.standard_normal(latent)
    valence = 5 + 1.2 * np.tanh(z @ w_v / np.sqrt(latent) * 2) + 0.4 * z[:, 0] * z[:, 1] / 2
    arousal = 4.5 + 0.8 * (z @ w_a / np.sqrt(latent)) + 0.3 * np.abs(z[:, 2])
    y = np.stack([valence, arousal], 1) + 0.5 * rng.standard_normal((n, 2))
    return X, np.clip(y, 1, 9)


def bench_model(name: str, X, y, Xt, yt) -> dict:
    from evoked.evaluate.metrics import va_metrics
    from evoked.regress import build_pipeline
    from evoked.regress.describe import describe_fitted

    est = build_pipeline(name)
    t0 = time.perf_counter()
    est.fit(X, y)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pred = est.predict(Xt)
    predict_s = time.perf_counter() - t0
    m = va_metrics(yt, pred)
    return {
        "fit_s": round(fit_s, 3),
        "predict_s": round(predict_s, 3),
        "r_valence": round(m["valence"]["r"], 4),
        "r_arousal": round(m["arousal"]["r"], 4),
        "goal_s": GOALS_S.get(name, OTHER_GOAL_S),
        "info": describe_fitted(est),
    }


def write_store(path, X: np.ndarray, y: np.ndarray, block: int = 4096) -> str:
    """A feature store of `X` (one group ``synth/embed``) with valence and arousal `y`."""
    from evoked.data.manifest import Manifest
    from evoked.features.store import ExtractorSpec, FeatureStore, OutputSpec

    ids = [f"r{i:08d}" for i in range(len(X))]
    manifest = Manifest.build(
        path.parent, ids, ids=ids, valence=y[:, 0], arousal=y[:, 1], name="synthetic", kind="synthetic"
    )
    spec = ExtractorSpec(
        "synth",
        (OutputSpec("embed", X.shape[1]),),
        {"config": {"spec": "synth", "weights": {"tag": "none"}, "preprocess": {}, "outputs": {}}},
    )
    with FeatureStore.create(path, manifest, [spec], block_size=block) as st:
        for b in range(-(-len(X) // block)):
            rows = st.block_rows(b)
            st.write_block(rows, {"synth/embed": X[rows]}, np.ones(len(rows), dtype=bool), {})
    return "synth/embed"


def bench_stream(n: int, dim: int, seed: int) -> dict:
    """Seconds of ridge fitted from a store's chunks and in memory, on the same rows."""
    import tempfile
    from pathlib import Path

    from evoked.features.store import open_store
    from evoked.regress import build_pipeline
    from evoked.regress.chunks import StoreSource, fit_pipeline_chunks

    X, y = structured_data(n, dim, seed)
    with tempfile.TemporaryDirectory(prefix="evoked-bench-") as tmp:
        feature = write_store(Path(tmp) / "s.h5", X, y)
        del X
        with open_store(Path(tmp) / "s.h5") as st:
            t0 = time.perf_counter()
            streamed = fit_pipeline_chunks(
                build_pipeline("ridge"), StoreSource(st, [feature]), np.arange(n), y
            )
            stream_s = time.perf_counter() - t0
            X = st.read(feature)
        t0 = time.perf_counter()
        memory = build_pipeline("ridge").fit(X, y)
        memory_s = time.perf_counter() - t0
    agree = float(np.abs(streamed.predict(X[:1000]) - memory.predict(X[:1000])).max())
    return {
        "rows": n,
        "dim": dim,
        "streamed_s": round(stream_s, 2),
        "in_memory_s": round(memory_s, 2),
        "ratio": round(stream_s / memory_s, 2),
        "goal": STREAM_GOAL,
        "max_prediction_difference": agree,
        "alpha": [float(a) for a in np.atleast_1d(streamed[-1].alpha_)],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000, help="training rows (default 20000)")
    ap.add_argument("--dim", type=int, default=2048, help="feature dimension (default 2048)")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated registry names")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print JSON: {'models': {name: {fit_s, predict_s}}}")
    ap.add_argument(
        "--stream-rows", type=int, default=100000, help="streamed ridge rows (0: skip; see above)"
    )
    ap.add_argument("--stream-dim", type=int, default=512, help="streamed ridge dimension (default 512)")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]

    from evoked.regress.registry import REGRESSORS

    for name in models:
        REGRESSORS.get(name)
    t0 = time.perf_counter()
    X, y = structured_data(args.n + args.n // 4, args.dim, args.seed)
    X, y, Xt, yt = X[: args.n], y[: args.n], X[args.n :], y[args.n :]
    data_s = time.perf_counter() - t0
    results = {}
    for name in models:
        results[name] = bench_model(name, X, y, Xt, yt)
        if not args.json:
            r = results[name]
            print(
                f"  {name}: fit {r['fit_s']:.1f} s, predict {r['predict_s']:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    total = sum(r["fit_s"] + r["predict_s"] for r in results.values())
    stream = bench_stream(args.stream_rows, args.stream_dim, args.seed) if args.stream_rows > 0 else None
    env = {
        "n_train": args.n,
        "n_predict": len(Xt),
        "dim": args.dim,
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "data_s": round(data_s, 2),
    }
    if args.json:
        print(
            json.dumps(
                {"models": results, "total_s": round(total, 2), "stream": stream, "env": env}, indent=2
            )
        )
        return 0
    print(
        f"regressors on {args.n} x {args.dim} (predict {len(Xt)} rows), {env['cpus']} CPUs, "
        f"load average {env['load_average_1min']} at the end"
    )
    ridge = results.get("ridge", {}).get("fit_s")
    print(
        f"  {'model':<8} {'fit_s':>7} {'predict_s':>9} {'goal_s':>6} {'fit/goal':>8} {'x ridge':>8}  r_val  r_aro"
    )
    for name, r in results.items():
        ratio = f"{r['fit_s'] / ridge:8.1f}" if ridge else f"{'-':>8}"
        print(
            f"  {name:<8} {r['fit_s']:7.2f} {r['predict_s']:9.2f} {r['goal_s']:6.0f} {r['fit_s'] / r['goal_s']:8.2f} "
            f"{ratio}  {r['r_valence']:.3f}  {r['r_arousal']:.3f}"
        )
    print(f"  total {total:.1f} s (goal {TOTAL_GOAL_S:.0f} s for the default comparison)")
    if stream:
        print(
            f"streamed ridge on {stream['rows']} x {stream['dim']}: {stream['streamed_s']:.2f} s from the store, "
            f"{stream['in_memory_s']:.2f} s in memory, ratio {stream['ratio']:.2f} (goal <= {STREAM_GOAL})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
