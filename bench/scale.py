"""Million-row stores: index build, search, and streamed regression in bounded memory.

    python bench/scale.py --sizes 100000,300000,1000000 --dim 512 [--json] [--workdir DIR]
    python bench/scale.py --n 1000000            # one size

For each size a synthetic feature store is written block by block (the whole matrix is never in
memory): rows fall in 1,000 Gaussian clusters in `dim` dimensions, spread inside each cluster
along 32 latent directions plus isotropic noise, like pooled CNN features of many photo themes;
valence and arousal are linear in the noise-free features plus rating noise (sd 0.5), and a hash
puts 80% of the rows in the train split, 20% in test. Then each phase runs in a fresh
subprocess, so that its peak resident memory (VmHWM) is its own:

- ``index``: `evoked.features.store_index.build_store_index` with the memory budget (``auto``
  kind; its nprobe/efSearch is tuned on rows of the store);
- ``search``: 1,000 new points from the same distribution (never in the store, never used for
  tuning) searched one at a time, k = 10: p50/p99 latency, and recall@10 against an exact search
  that streams over the store;
- ``ridge``: `evoked regress --stream --split test --model ridge` (5 inner folds of per-fold
  statistics choose alpha), with the r of the test rows;
- ``mlp``: the same with ``--model mlp`` for one epoch (a statistics pass plus one epoch);
- ``export``: `evoked features export` of the store to npy + parquet metadata and to parquet
  (`evoked.features.export.export_features`), each in its own process.

``--phases`` picks which of index (with search), regress and export run after the write.

Goals at 1,000,000 x 512 on the project's 2-core machine: peak RSS <= 2 GB for index build and
ridge, search p50 < 10 ms with recall@10 >= 0.95, peak RSS <= 1 GB for an export. The synthetic stores are deleted at the end
(``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from evoked.device import use_openmp_defaults

use_openmp_defaults()  # before torch, faiss or LightGBM load OpenMP (BENCHMARKS.md)

FEATURE = "synth/embed"
CLUSTERS = 1000
LATENT = 32
WITHIN = 0.8  # latent spread inside a cluster, relative to the spread of the centres
NOISE = 0.3  # isotropic noise per dimension
BLOCK = 1024  # store block (HDF5 chunk) rows
QUERIES = 1000
K = 10
GOALS = {"rss_gb": 2.0, "p50_ms": 10.0, "recall": 0.95, "export_rss_gb": 1.0}
EXPORT_FORMATS = ("npy", "parquet")


# -- the synthetic data -----------------------------------------------------------------------------
class Synth:
    """Deterministic structured vectors: block b of the store is the same in every pass."""

    def __init__(self, dim: int, seed: int = 0):
        rng = np.random.default_rng([seed, 2**31])
        self.dim, self.seed = dim, seed
        self.centers = rng.standard_normal((CLUSTERS, dim)).astype(np.float32)
        self.basis = (rng.standard_normal((LATENT, dim)) * WITHIN / np.sqrt(LATENT)).astype(np.float32)
        w = rng.standard_normal((dim, 2)) / np.sqrt(dim)
        spread = np.sqrt((w * w).sum(0) + ((self.basis @ w) ** 2).sum(0))
        self.w = w * (np.array([1.2, 0.9]) / spread)

    def block(self, b: int, m: int, features: bool = True):
        """(features or None, va) of the m rows of block b."""
        rng = np.random.default_rng([self.seed, b])
        c = rng.integers(0, CLUSTERS, m)
        z = rng.standard_normal((m, LATENT)).astype(np.float32)
        clean = self.centers[c] + z @ self.basis
        va = np.array([5.0, 4.5]) + clean @ self.w + 0.5 * rng.standard_normal((m, 2))
        if not features:
            return None, va
        return clean + NOISE * rng.standard_normal((m, self.dim)).astype(np.float32), va

    def fresh(self, m: int) -> np.ndarray:
        """New points of the same distribution (a block number no store uses)."""
        return self.block(2**40, m)[0]


def peak_rss_gb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _splitmix64(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def split_of(rows: np.ndarray) -> np.ndarray:
    """80% train, 20% test by a hash of the row number (the same split whatever the block order)."""
    mixed = _splitmix64(np.asarray([12345], dtype=np.uint64))[0]
    unit = (_splitmix64(np.asarray(rows, dtype=np.uint64) ^ mixed) >> np.uint64(11)).astype(
        np.float64
    ) * 2.0**-53
    return np.where(unit < 0.8, "train", "test")


# -- phases (each in its own process) ------------------------------------------------------------
def phase_write(store: Path, n: int, dim: int, seed: int) -> dict:
    from evoked.data.manifest import Manifest
    from evoked.features.store import ExtractorSpec, FeatureStore, OutputSpec

    t0 = time.perf_counter()
    synth = Synth(dim, seed)
    n_blocks = -(-n // BLOCK)
    va = np.empty((n, 2))
    for b in range(n_blocks):  # pass 1: labels only (the store is created with them)
        m = min(BLOCK, n - b * BLOCK)
        va[b * BLOCK : b * BLOCK + m] = synth.block(b, m, features=False)[1]
    ids = [f"r{i:08d}" for i in range(n)]
    manifest = Manifest.build(
        store.parent,
        ids,
        ids=ids,
        valence=va[:, 0],
        arousal=va[:, 1],
        split=split_of(np.arange(n)),
        name="synthetic-scale",
        kind="synthetic",
    )
    del ids
    spec = ExtractorSpec(
        "synth",
        (OutputSpec("embed", dim),),
        {"config": {"spec": "synth", "weights": {"tag": "none"}, "preprocess": {}, "outputs": {}}},
    )
    ok = np.ones(BLOCK, dtype=bool)
    with FeatureStore.create(store, manifest, [spec], block_size=BLOCK) as st:
        del manifest
        for b in range(n_blocks):  # pass 2: the same blocks with their features
            rows = st.block_rows(b)
            X, _ = synth.block(b, len(rows))
            st.write_block(rows, {FEATURE: X}, ok[: len(rows)], {})
    return {"seconds": time.perf_counter() - t0, "bytes": store.stat().st_size}


def phase_index(store: Path, budget: str) -> dict:
    from evoked.features.index_build import parse_bytes
    from evoked.features.store_index import build_store_index

    t0 = time.perf_counter()
    path, info = build_store_index(store, FEATURE, memory_budget=parse_bytes(budget), use_gpu="never")
    return {
        "seconds": time.perf_counter() - t0,
        "kind": info.kind,
        "params": {k: v for k, v in info.params.items() if k in ("nlist", "nprobe", "efSearch", "pq_m")},
        "tuning_recall": info.recall_at_10,
        "index_bytes": path.stat().st_size,
        "path": str(path),
    }


def phase_search(store: Path, index_path: str, dim: int, seed: int) -> dict:
    from evoked.features.index import load_index, normalize, recall_at_k
    from evoked.features.index_build import exact_search_streaming
    from evoked.features.store import open_store

    index, info = load_index(index_path)
    q = normalize(Synth(dim, seed).fresh(QUERIES))
    for i in range(20):  # warm up
        index.search(q[i : i + 1], K)
    lat, found = [], np.empty((len(q), K), dtype=np.int64)
    for i in range(len(q)):
        t = time.perf_counter()
        _, ids = index.search(q[i : i + 1], K)
        lat.append(time.perf_counter() - t)
        found[i] = ids[0]
    t0 = time.perf_counter()
    with open_store(store) as st:
        _, truth = exact_search_streaming(lambda: st.iter_chunks(FEATURE, 65536), q, K)
    lat_ms = np.asarray(lat) * 1e3
    return {
        "p50_ms": float(np.percentile(lat_ms, 50)),
        "p99_ms": float(np.percentile(lat_ms, 99)),
        "recall_at_10": recall_at_k(found, truth, K),
        "exact_seconds": time.perf_counter() - t0,
        "queries": len(q),
        "params": {k: v for k, v in info.params.items() if k in ("nprobe", "efSearch")},
    }


def phase_regress(store: Path, model: str, out: Path) -> dict:
    from evoked.regress.runner import run_regress

    params = ["mlp.epochs=1", "mlp.device=cpu"] if model == "mlp" else []
    t0 = time.perf_counter()
    res = run_regress(
        store,
        features=[FEATURE],
        out=out,
        models=model,
        split="test",
        params=params,
        overwrite=True,
        stream=True,
        va_range="-100,100",  # the synthetic ratings are linear in the features, not on a 1-9 scale
    )
    m = res.models[0]
    return {
        "seconds": time.perf_counter() - t0,
        "fit_seconds": m.fit_seconds,
        "r_valence": m.metrics["valence"]["r"],
        "r_arousal": m.metrics["arousal"]["r"],
        "n_train": m.n_train,
        "n_eval": m.n_eval,
        "info": {k: v for k, v in m.info.items() if k in ("alpha", "epochs_run")},
        "chunk_rows": res.run["streaming"]["chunk_rows"],
    }


def phase_export(store: Path, fmt: str, out: Path) -> dict:
    from evoked.features.export import export_features

    t0 = time.perf_counter()
    summary = export_features(store, [FEATURE], format=fmt, out=out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        "seconds": time.perf_counter() - t0,
        "rows": summary.rows,
        "files": len(summary.files),
        "bytes": size,
    }


def run_phase(argv: list[str]) -> dict:
    """Run one phase in a fresh interpreter; its JSON is the last line of its output."""
    cmd = [sys.executable, os.path.abspath(__file__), *argv]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"phase {' '.join(argv)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_size(n: int, args, work: Path) -> dict:
    store = work / f"scale-{n}.h5"
    common = ["--dim", str(args.dim), "--seed", str(args.seed)]
    out = {"n": n, "dim": args.dim}
    out["write"] = run_phase(["--phase", "write", "--store", str(store), "--n", str(n), *common])
    print(f"[{n}] store written in {out['write']['seconds']:.0f} s", file=sys.stderr)
    phases = args.phases.split(",")
    for fmt in EXPORT_FORMATS if "export" in phases else ():
        target = work / f"export-{n}-{fmt}"
        out[f"export_{fmt}"] = run_phase(
            ["--phase", "export", "--store", str(store), "--format", fmt, "--out", str(target)]
        )
        shutil.rmtree(target)
        print(f"[{n}] export {fmt} in {out[f'export_{fmt}']['seconds']:.0f} s", file=sys.stderr)
    if "index" in phases:
        out["index"] = run_phase(["--phase", "index", "--store", str(store), "--budget", args.memory_budget])
        print(f"[{n}] index {out['index']['kind']} in {out['index']['seconds']:.0f} s", file=sys.stderr)
        out["search"] = run_phase(
            ["--phase", "search", "--store", str(store), "--index", out["index"]["path"], *common]
        )
    for model in args.models.split(",") if "regress" in phases else ():
        out[model] = run_phase(
            ["--phase", model, "--store", str(store), "--out", str(work / f"run-{n}-{model}")]
        )
        print(f"[{n}] {model} in {out[model]['seconds']:.0f} s", file=sys.stderr)
    if not args.keep:
        for p in work.glob(f"scale-{n}.*"):
            p.unlink()
        for p in work.glob(f"run-{n}-*"):
            shutil.rmtree(p)
    return out


def goals(result: dict) -> dict:
    checks = {}
    if "index" in result:
        checks["index build RSS <= 2 GB"] = result["index"]["peak_rss_gb"] <= GOALS["rss_gb"]
        checks["search p50 < 10 ms"] = result["search"]["p50_ms"] < GOALS["p50_ms"]
        checks["recall@10 >= 0.95"] = result["search"]["recall_at_10"] >= GOALS["recall"]
    for fmt in EXPORT_FORMATS:
        if f"export_{fmt}" in result:
            checks[f"{fmt} export RSS <= 1 GB"] = (
                result[f"export_{fmt}"]["peak_rss_gb"] <= GOALS["export_rss_gb"]
            )
    if "ridge" in result:
        checks["ridge fit RSS <= 2 GB"] = result["ridge"]["peak_rss_gb"] <= GOALS["rss_gb"]
    return checks


def print_export_table(results: list[dict]) -> None:
    print("| rows x dim | export | seconds | rows/s | MB written | peak RSS GB |")
    print("|---|---|---|---|---|---|")
    for r in results:
        for fmt in EXPORT_FORMATS:
            e = r.get(f"export_{fmt}")
            if e:
                print(
                    f"| {r['n']:,} x {r['dim']} | {fmt} | {e['seconds']:.1f} | {e['rows'] / e['seconds']:,.0f} "
                    f"| {e['bytes'] / 2**20:,.0f} | {e['peak_rss_gb']:.2f} |"
                )


def print_table(results: list[dict]) -> None:
    results = [r for r in results if "index" in r]
    if not results:
        return
    head = (
        "| rows | write s | index (params) | build s | build RSS GB | p50 ms | p99 ms | recall@10 "
        "| ridge run s (fit s) | ridge RSS GB | ridge r V / A | mlp stats + 1 epoch s | mlp RSS GB |"
    )
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    nan = float("nan")
    for r in results:
        ix, s = r["index"], r["search"]
        params = ", ".join(f"{k} {v}" for k, v in ix["params"].items()) or "exact"
        ridge, mlp = r.get("ridge", {}), r.get("mlp", {})
        print(
            f"| {r['n']:,} | {r['write']['seconds']:.0f} | {ix['kind']} ({params}) | {ix['seconds']:.0f} "
            f"| {ix['peak_rss_gb']:.2f} | {s['p50_ms']:.2f} | {s['p99_ms']:.2f} | {s['recall_at_10']:.3f} "
            f"| {ridge.get('seconds', nan):.0f} ({ridge.get('fit_seconds', nan):.0f}) "
            f"| {ridge.get('peak_rss_gb', nan):.2f} "
            f"| {ridge.get('r_valence', nan):.3f} / {ridge.get('r_arousal', nan):.3f} "
            f"| {mlp.get('fit_seconds', nan):.0f} | {mlp.get('peak_rss_gb', nan):.2f} |"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="rows, when --sizes is not given")
    ap.add_argument("--sizes", default=None, help="comma-separated row counts, e.g. 100000,300000,1000000")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory-budget", default="2GB", help="the index builder's budget (default 2GB)")
    ap.add_argument("--models", default="ridge,mlp", help="streamed regressors to time (ridge, mlp)")
    ap.add_argument(
        "--phases", default="index,regress,export", help="what runs after the write: index,regress,export"
    )
    ap.add_argument("--workdir", type=Path, default=None, help="where the stores go (default: a temp dir)")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic stores and runs")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    # one phase, in a child process
    ap.add_argument(
        "--phase", choices=("write", "index", "search", "ridge", "mlp", "export"), help=argparse.SUPPRESS
    )
    ap.add_argument("--format", default="npy", help=argparse.SUPPRESS)
    ap.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--index", help=argparse.SUPPRESS)
    ap.add_argument("--budget", default="2GB", help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.phase:
        if args.phase == "write":
            res = phase_write(args.store, args.n, args.dim, args.seed)
        elif args.phase == "index":
            res = phase_index(args.store, args.budget)
        elif args.phase == "search":
            res = phase_search(args.store, args.index, args.dim, args.seed)
        elif args.phase == "export":
            res = phase_export(args.store, args.format, args.out)
        else:
            res = phase_regress(args.store, args.phase, args.out)
        res["peak_rss_gb"] = peak_rss_gb()
        print(json.dumps(res))
        return 0

    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else [args.n]
    work = args.workdir or Path(tempfile.mkdtemp(prefix="evoked-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    results = []
    try:
        for n in sizes:
            results.append(bench_size(n, args, work))
    finally:
        if args.workdir is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    machine = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_before": [round(x, 2) for x in load_before],
        "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    for r in results:
        r["goals"] = goals(r)
    if args.json:
        print(
            json.dumps(
                {"machine": machine, "memory_budget": args.memory_budget, "results": results}, indent=2
            )
        )
        return 0
    print_table(results)
    print_export_table(results)
    print(
        f"\nload average before {machine['load_before']}, after {machine['load_after']} ({machine['cpus']} CPUs)"
    )
    for r in results:
        missed = [k for k, ok in r["goals"].items() if not ok]
        print(f"{r['n']:,} rows: " + ("all goals met" if not missed else "missed: " + "; ".join(missed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
