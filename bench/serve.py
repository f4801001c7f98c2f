"""Search latency of `evoked serve` on a large store, through the HTTP API and without it.

    python bench/serve.py [--n 100000] [--dim 512] [--queries 300] [--json]

Writes a synthetic feature store (clustered vectors, VA labels) of N rows into a temporary
folder, builds the exact (flat) index, then times single queries: the Retriever alone, and the
same searches through the app's JSON API (in-process HTTP client, so the number includes routing,
JSON encoding and the hit records). Reports p50/p99 in milliseconds and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import evoked  # noqa: F401  (sets the OpenMP wait policy before numpy/faiss load it)


def write_store(path: Path, n: int, dim: int, seed: int = 0) -> None:
    from evoked.data.manifest import Manifest
    from evoked.features.store import ExtractorSpec, FeatureStore, OutputSpec

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(256, dim)).astype(np.float32)
    cluster = rng.integers(0, 256, n)
    va = np.clip(5 + 1.5 * rng.normal(size=(256, 2))[cluster] + 0.5 * rng.normal(size=(n, 2)), 1, 9)
    ids = [f"item{i:07d}.jpg" for i in range(n)]
    manifest = Manifest.build(path.parent, ids, valence=va[:, 0], arousal=va[:, 1], name="synthetic")
    spec = ExtractorSpec("synth", (OutputSpec("embed", dim),), {"config": {"spec": "synth"}, "spec": "synth"})
    with FeatureStore.create(path, manifest, [spec], block_size=4096) as store:
        for b in range(store.n_blocks):
            rows = store.block_rows(b)
            x = centers[cluster[rows]] + 0.6 * rng.normal(size=(len(rows), dim)).astype(np.float32)
            store.write_block(rows, {"synth/embed": x}, np.ones(len(rows), bool), {})


def percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)), "n": len(ms)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from starlette.testclient import TestClient

    from evoked.features.store_index import build_store_index
    from evoked.retrieve import Retriever
    from evoked.serve.app import ServeConfig, create_app

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "s.h5"
        t0 = time.perf_counter()
        write_store(store, args.n, args.dim)
        t_write = time.perf_counter() - t0
        _, info = build_store_index(store, "synth/embed", kind="flat", use_gpu="never")
        rng = np.random.default_rng(1)
        picks = [f"item{i:07d}.jpg" for i in rng.integers(0, args.n, args.queries)]
        points = rng.uniform(1, 9, (args.queries, 2))
        results = {}
        with Retriever(store, "synth/embed") as r:
            for item in picks[:10]:
                r.by_id(item, args.k)
            t = []
            for item in picks:
                t0 = time.perf_counter()
                r.by_id(item, args.k)
                t.append(time.perf_counter() - t0)
            results["retriever_by_id"] = percentiles(t)
        client = TestClient(create_app(ServeConfig(str(store), "synth/embed")))
        for name, make in (
            ("api_search_item", lambda i: ("/api/search/item", {"id": picks[i], "k": args.k})),
            (
                "api_search_va",
                lambda i: ("/api/search/va", {"v": points[i, 0], "a": points[i, 1], "k": args.k}),
            ),
        ):
            for i in range(10):
                url, params = make(i)
                client.get(url, params=params)
            t = []
            for i in range(args.queries):
                url, params = make(i)
                t0 = time.perf_counter()
                resp = client.get(url, params=params)
                t.append(time.perf_counter() - t0)
                assert resp.status_code == 200, resp.text
            results[name] = percentiles(t)
        t0 = time.perf_counter()
        client.get("/api/points")
        results["api_points_s"] = time.perf_counter() - t0
    out = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": sys.version.split()[0],
        },
        "n": args.n,
        "dim": args.dim,
        "index": info.kind,
        "store_write_s": round(t_write, 1),
        "results": results,
        "http_overhead_ratio": results["api_search_item"]["p50_ms"] / results["retriever_by_id"]["p50_ms"],
    }
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.n:,} items x {args.dim}-d, {info.kind} index, {args.queries} single queries, k={args.k}")
    print(f"{'query':<22}{'p50 ms':>9}{'p99 ms':>9}")
    for name in ("retriever_by_id", "api_search_item", "api_search_va"):
        r = results[name]
        print(f"{name:<22}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}")
    print(
        f"HTTP API / Retriever (p50): {out['http_overhead_ratio']:.2f}x; /api/points: {results['api_points_s']:.2f} s"
    )
    ok = results["api_search_item"]["p50_ms"] < 100
    print(f"goal: an API search well under 100 ms at {args.n:,} items: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
