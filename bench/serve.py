"""Search latency of `evoked serve` on a large store, through the HTTP API and without it; and a
bounded load test of the real server on 127.0.0.1 with uploads mixed in.

    python bench/serve.py [--n 100000] [--dim 512] [--queries 300] [--json]
    python bench/serve.py --load-only [--load-requests 2000] [--load-clients 16] [--load-seconds 60]
    python bench/serve.py --first-view [--n 100000] [--dim 512] [--json]

Latency: writes a synthetic feature store (clustered vectors, VA labels) of N rows into a
temporary folder, builds the exact (flat) index, then times single queries: the Retriever alone,
and the same searches through the app's JSON API (in-process HTTP client, so the number includes
routing, JSON encoding and the hit records). Reports p50/p99 in milliseconds and their ratio.

Load: makes a small image set, extracts colour features, starts `evoked serve` as its own process
on 127.0.0.1 (never another address), waits for its "serving on" line, then sends at most
--load-requests requests from --load-clients threads for at most --load-seconds: VA and item
searches, thumbnails, full images, /api/info, and one image upload in every --upload-every.
Reports p50/p99 per kind, errors, and the server's resident memory (VmRSS) before and after, and
its peak (VmHWM).

First view: the same store (with predictions of every kind) served by a real server in its own
process; times what the page needs before its first grid and plane (the page and its four API
calls, cold and warm), the same in headless Chromium when it is installed (until the page says it
is ready), and reports the server's resident memory (RSS, and its peak) against the goal of 2 s.
Then computes the page's embedding map of the store (evoked.serve.embedmap) in a process of its
own and reports its time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from evoked.device import use_openmp_defaults

use_openmp_defaults()  # before torch, faiss or LightGBM load OpenMP (BENCHMARKS.md)


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


def _rss_mb(pid: int) -> dict:
    """VmRSS and VmHWM of a process, in MB (Linux /proc)."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, kb = line.split()[:2]
                out[key[:-1].lower()] = round(int(kb) / 1024, 1)
    return out


def load_test(args) -> dict:
    """The bounded load test (see the module doc). Loopback only: the server binds 127.0.0.1."""
    import subprocess
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import httpx
    from PIL import Image

    from evoked.extract import extract
    from evoked.features.store_index import build_store_index

    rng = np.random.default_rng(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imgs"
        rows = ["path,valence,arousal"]
        uploads = []
        for i in range(args.load_images):
            arr = np.clip(rng.normal(128, 60, (96, 128, 3)), 0, 255).astype(np.uint8)
            path = root / f"{i:04d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path, quality=85)
            rows.append(f"imgs/{i:04d}.jpg,{rng.uniform(1, 9):.2f},{rng.uniform(1, 9):.2f}")
            if i < 8:
                uploads.append(path.read_bytes())
        (Path(tmp) / "m.csv").write_text("\n".join(rows) + "\n")
        store = Path(tmp) / "s.h5"
        extract(f"csv:{Path(tmp) / 'm.csv'}", store, ["color"], device="cpu", workers=0)
        build_store_index(store, "color/hsv_hist", kind="flat", use_gpu="never")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        cmd = [sys.executable, "-m", "evoked", "serve", str(store), "--feature", "color/hsv_hist"]
        cmd += ["--host", "127.0.0.1", "--port", str(port), "--max-upload-mb", "2"]
        t0 = time.perf_counter()
        server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            for line in server.stdout:
                if "http://" in line:  # the "serving on" line
                    break
            else:
                raise RuntimeError(f"the server ended before it was ready (rc {server.wait()})")
            announced_s = time.perf_counter() - t0
            base = f"http://127.0.0.1:{port}"
            with httpx.Client(base_url=base, timeout=30) as c:
                while True:  # an older server announced itself before its port answered
                    try:
                        c.get("/api/info").raise_for_status()
                        break
                    except httpx.TransportError:
                        if time.perf_counter() - t0 > 120:
                            raise
                        time.sleep(0.05)
            ready_s = time.perf_counter() - t0
            rss_before = _rss_mb(server.pid)
            n = args.load_images
            kinds = []
            for i in range(args.load_requests):
                kinds.append(
                    "upload"
                    if i % args.upload_every == args.upload_every - 1
                    else ("va", "item", "thumb", "image", "info")[i % 5]
                )
            stop_at = time.perf_counter() + args.load_seconds
            lat: dict[str, list[float]] = {}
            errors: dict[str, int] = {}
            lock = threading.Lock()
            local = threading.local()

            def one(i: int) -> None:
                if time.perf_counter() > stop_at:
                    return
                if not hasattr(local, "client"):
                    local.client = httpx.Client(base_url=base, timeout=30)
                c, kind, row = local.client, kinds[i], (i * 7919) % n  # no shared RNG across threads
                t = time.perf_counter()
                if kind == "upload":
                    r = c.post(
                        "/api/search/image",
                        files={"file": ("q.jpg", uploads[i % len(uploads)], "image/jpeg")},
                    )
                elif kind == "va":
                    r = c.get("/api/search/va", params={"v": 1 + 8 * (i % 97) / 97, "a": 5, "k": 12})
                elif kind == "item":
                    r = c.get("/api/search/item", params={"id": f"imgs/{row:04d}.jpg", "k": 12})
                elif kind == "info":
                    r = c.get("/api/info")
                else:
                    r = c.get(f"/api/{kind}/{row}")
                dt = time.perf_counter() - t
                with lock:
                    lat.setdefault(kind, []).append(dt)
                    if r.status_code != 200:
                        errors[kind] = errors.get(kind, 0) + 1

            t_load = time.perf_counter()
            with ThreadPoolExecutor(args.load_clients) as pool:
                list(pool.map(one, range(args.load_requests)))
            wall = time.perf_counter() - t_load
            rss_after = _rss_mb(server.pid)
            chunked = None
            if args.chunked_upload_mb:
                chunked = _chunked_upload(base, args.chunked_upload_mb)
                chunked["server_rss_mb_after"] = _rss_mb(server.pid)["vmrss"]
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
    everything = [x for v in lat.values() for x in v]
    return {
        "images": args.load_images,
        "clients": args.load_clients,
        "requests": len(everything),
        "requests_limit": args.load_requests,
        "seconds_limit": args.load_seconds,
        "wall_s": round(wall, 2),
        "requests_per_s": round(len(everything) / wall, 1),
        "ready_s": round(ready_s, 2),
        "announced_s": round(announced_s, 2),
        "errors": errors,
        "all": percentiles(everything),
        "by_kind": {k: percentiles(v) for k, v in sorted(lat.items())},
        "server_rss_mb_before": rss_before["vmrss"],
        "server_rss_mb_after": rss_after["vmrss"],
        "server_peak_rss_mb": rss_after["vmhwm"],
        "chunked_upload": chunked,
    }


def _chunked_upload(base: str, mb: int) -> dict:
    """One upload of `mb` MB without a Content-Length (chunked), as an attacker would send it."""
    import httpx

    sent = [0]

    def body():
        yield b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n'
        for _ in range(mb * 16):
            sent[0] += 65536
            yield b"\xff" * 65536

    t = time.perf_counter()
    try:
        with httpx.Client(base_url=base, timeout=120) as c:
            r = c.post(
                "/api/search/image",
                content=body(),
                headers={"content-type": "multipart/form-data; boundary=xyz"},
            )
            status = r.status_code
    except httpx.HTTPError as e:  # the server may close the connection once it has refused
        status = type(e).__name__
    return {
        "mb": mb,
        "status": status,
        "mb_sent": round(sent[0] / 2**20, 1),
        "seconds": round(time.perf_counter() - t, 2),
    }


def print_load(load: dict) -> None:
    print(
        f"load test on 127.0.0.1: {load['requests']} requests ({load['clients']} clients, {load['images']} images, "
        f"limits {load['requests_limit']} requests / {load['seconds_limit']} s) in {load['wall_s']} s = "
        f"{load['requests_per_s']} req/s; errors {sum(load['errors'].values())}; "
        f"announced after {load['announced_s']} s, answering after {load['ready_s']} s"
    )
    print(f"{'kind':<10}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}")
    for name, r in [("all", load["all"]), *load["by_kind"].items()]:
        print(f"{name:<10}{r['n']:>6}{r['p50_ms']:>9.1f}{r['p99_ms']:>9.1f}")
    print(
        f"server RSS {load['server_rss_mb_before']} MB before, {load['server_rss_mb_after']} MB after "
        f"(peak {load['server_peak_rss_mb']} MB)"
    )
    ch = load.get("chunked_upload")
    if ch:
        print(
            f"chunked upload of {ch['mb']} MB without a length: answer {ch['status']} after {ch['mb_sent']} MB sent "
            f"({ch['seconds']} s); server RSS then {ch['server_rss_mb_after']} MB"
        )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--k", type=int, default=12)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--load-only", action="store_true", help="run only the load test")
    ap.add_argument("--no-load", action="store_true", help="skip the load test")
    ap.add_argument("--load-requests", type=int, default=2000, help="at most this many requests")
    ap.add_argument("--load-seconds", type=float, default=60.0, help="and for at most this long")
    ap.add_argument("--load-clients", type=int, default=16)
    ap.add_argument("--load-images", type=int, default=300)
    ap.add_argument("--upload-every", type=int, default=10, help="one request in N is an image upload")
    ap.add_argument(
        "--chunked-upload-mb", type=int, default=200, help="then one oversized chunked upload (0: none)"
    )
    ap.add_argument(
        "--first-view", action="store_true", help="only time the page's first grid + plane; server RSS"
    )
    args = ap.parse_args()
    bounded = 1 <= args.load_requests <= 100_000 and 0 < args.load_seconds <= 600 and args.load_clients <= 64
    if not bounded or not 0 <= args.chunked_upload_mb <= 1024:
        ap.error(
            "the load test is bounded: --load-requests 1..100000, --load-seconds up to 600, --load-clients <= 64, --chunked-upload-mb up to 1024"
        )
    if args.load_only:
        load = load_test(args)
        if args.json:
            print(json.dumps({"machine": _machine(), "load": load}, indent=2))
        else:
            print_load(load)
        return 0
    if args.first_view:
        return first_view_main(args)

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
        client = TestClient(create_app(ServeConfig(str(store), "synth/embed")), base_url="http://127.0.0.1")
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
    load = None if args.no_load else load_test(args)
    out = {
        "machine": _machine(),
        "n": args.n,
        "dim": args.dim,
        "index": info.kind,
        "store_write_s": round(t_write, 1),
        "results": results,
        "http_overhead_ratio": results["api_search_item"]["p50_ms"] / results["retriever_by_id"]["p50_ms"],
        "load": load,
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
    if load is not None:
        print_load(load)
    return 0


def _machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "load_avg": [round(x, 2) for x in os.getloadavg()],
    }

# -- time to the first grid and plane ----------------------------------------------------------
FIRST_VIEW_CALLS = (
    "/",
    "/api/info",
    "/api/provenance",
    "/api/plane",
    "/api/browse?limit=60",
)  # then /api/plane/ids
SERVER = """
import sys, numpy as np, uvicorn
from evoked.serve.app import ServeConfig, create_app
from evoked.runfolder import KINDS
pred = np.load(sys.argv[2])
kind = np.random.default_rng(3).choice(list(KINDS), len(pred)).astype(object)  # every kind, mixed
app = create_app(ServeConfig(sys.argv[1], "synth/embed", predictions=pred, prediction_kind=kind, run_name="bench/synthetic"))
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
"""


MAP = """
import json, sys, time
from evoked.serve.embedmap import compute_map
status = lambda: {l.split(':')[0]: int(l.split()[1]) / 1024 for l in open('/proc/self/status') if l.startswith(('VmRSS', 'VmHWM'))}
before = status()
m = compute_map(sys.argv[1], "synth/embed")
print(json.dumps({"seconds": round(m.seconds, 1), "method": m.method, "rss_before_mib": round(before["VmRSS"], 1),
                  "peak_rss_mib": round(status()["VmHWM"], 1)}))
"""


def _map_compute(store: Path, env: dict) -> dict:
    """Time and peak RSS of computing the page's embedding map of the store, in a process of its own."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", MAP, str(store)], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the map failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _rss_mib(pid: int) -> dict:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                fields[key] = round(int(value.split()[0]) / 1024, 1)
    return {"rss_mib": fields.get("VmRSS"), "peak_rss_mib": fields.get("VmHWM")}


def _first_view_http(base: str) -> tuple[float, int]:
    import urllib.request

    t0, size = time.perf_counter(), 0
    for path in FIRST_VIEW_CALLS:
        with urllib.request.urlopen(base + path) as r:
            size += len(r.read())
    return time.perf_counter() - t0, size


def _first_view_browser(base: str) -> dict | None:
    """Seconds from navigation to the page's data-ready mark in headless Chromium, or None without one."""
    import shutil

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait
    except ImportError:
        return None
    if not chromium or not driver:
        return None
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,900",
    ):
        opts.add_argument(flag)
    browser = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver))
    try:
        runs = []
        for _ in range(3):
            t0 = time.perf_counter()
            browser.get(base + "/")
            WebDriverWait(browser, 60).until(
                lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1"
            )
            runs.append(time.perf_counter() - t0)
        page_ms = float(browser.find_element(By.TAG_NAME, "body").get_attribute("data-first-view-ms"))
        return {"first_s": runs[0], "warm_s": min(runs[1:]), "in_page_ms": page_ms}
    finally:
        browser.quit()


def first_view_main(args) -> int:
    import socket
    import subprocess
    import urllib.request

    from evoked.features.store_index import build_store_index

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "s.h5"
        write_store(store, args.n, args.dim)
        _, info = build_store_index(store, "synth/embed", kind="flat", use_gpu="never")
        rng = np.random.default_rng(2)
        np.save(Path(tmp) / "pred.npy", np.clip(5 + 1.5 * rng.normal(size=(args.n, 2)), 1, 9))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src")] + sys.path),
        )
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(store), str(Path(tmp) / "pred.npy"), str(port)], env=env
        )
        base = f"http://127.0.0.1:{port}"
        try:
            while True:
                try:
                    urllib.request.urlopen(base + "/api/info").read()
                    break
                except OSError:
                    if proc.poll() is not None or time.perf_counter() - t0 > 300:
                        raise SystemExit("the server did not start") from None
                    time.sleep(0.1)
            startup = time.perf_counter() - t0
            idle = _rss_mib(proc.pid)
            cold, size = _first_view_http(base)
            warm = min(_first_view_http(base)[0] for _ in range(3))
            t1 = time.perf_counter()
            urllib.request.urlopen(base + "/api/points").read()  # what the page loaded before: no grid
            points_s = time.perf_counter() - t1
            browser = _first_view_browser(base)
            loaded = _rss_mib(proc.pid)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        embedding_map = _map_compute(store, env)
    # the part of the RSS that is the libraries (torch, faiss, ...) alone, before any store is opened
    probe = "import evoked.serve.app; print(open('/proc/self/status').read().split('VmRSS:')[1].split()[0])"
    imports_kib = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True
    ).stdout
    out = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load": os.getloadavg()},
        "n": args.n,
        "dim": args.dim,
        "index": info.kind,
        "server_start_s": round(startup, 2),
        "http_first_view_s": {"cold": round(cold, 3), "warm": round(warm, 3), "bytes": size},
        "browser_first_view_s": browser,
        "api_points_s": round(points_s, 3),
        "embedding_map": embedding_map,
        "server_rss_mib": {
            "idle": idle,
            "after_page_loads": loaded,
            "imports_only": round(int(imports_kib) / 1024, 1),
        },
    }
    goal = browser["first_s"] if browser else cold
    out["goal_met"] = goal < 2.0
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"{args.n:,} items x {args.dim}-d, {info.kind} index; server started in {startup:.1f} s")
    print(
        f"page + {len(FIRST_VIEW_CALLS) - 1} API calls over HTTP: {cold:.2f} s cold, {warm:.2f} s warm, {size / 2**20:.1f} MiB"
    )
    if browser:
        print(
            f"headless Chromium, navigation to grid + plane drawn: {browser['first_s']:.2f} s first, "
            f"{browser['warm_s']:.2f} s again (in-page {browser['in_page_ms']:.0f} ms)"
        )
    else:
        print("headless Chromium not found: browser time not measured")
    print(
        f"server RSS: {idle['rss_mib']} MiB idle, {loaded['rss_mib']} MiB after the page loads "
        f"(peak {loaded['peak_rss_mib']} MiB; the libraries alone: {out['server_rss_mib']['imports_only']} MiB)"
    )
    print(f"before: GET /api/points (the old page's one call, no grid) {points_s:.2f} s")
    m = embedding_map
    print(f"embedding map ({m['method']}): {m['seconds']:.1f} s, peak RSS {m['peak_rss_mib']:.0f} MiB "
          f"(process with the libraries loaded: {m['rss_before_mib']:.0f} MiB before)")
    print(
        f"goal: first grid + plane under 2 s at {args.n:,} items: {'met' if out['goal_met'] else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
