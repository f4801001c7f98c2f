"""Reading images from webdataset tar shards against reading them as files, in one run.

    python bench/formats.py                      # the first 1,980 photos of ../shared/data/emotion6
    python bench/formats.py --n 512 --per-shard 128 --workers 1 --repeat 3 --json

The photos are written once to a temporary folder as img2dataset-style shards (KEY.jpg + KEY.json
per sample, ``--per-shard`` samples a shard); the files are the same bytes. Then, alternating the
order over ``--repeat`` rounds (the median is reported; every file is in the page cache):

1. bytes only, every image's bytes once:
   - ``files``: the CSV manifest read, then `evoked.data.decode.read_bytes` per file (what the
     file reader does);
   - ``tarfile``: the standard library streaming each tar (``tarfile.open(mode="r|")``);
   - ``webdataset``: the `webdataset` package's ``WebDataset(urls)`` iterating raw samples;
   - ``evoked``: `evoked.data.webdataset` listing (headers and label members) plus
     `evoked.extract.sources.TarMembers` reading each block of ``--batch-size`` rows in spans;
2. the runner's reader end to end (`make_loader`, DataLoader with ``--workers`` processes,
   decode on the CPU), for ``csv:`` files against ``webdataset:`` shards of the same photos.

Goal: shards at least as fast as files.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from evoked.device import use_openmp_defaults

use_openmp_defaults()  # before torch, faiss or LightGBM load OpenMP (BENCHMARKS.md)

REPO = Path(__file__).resolve().parents[1]
EMOTION6 = REPO.parent / "shared" / "data" / "emotion6"


def photos(n: int, work: Path) -> list[Path]:
    found = sorted((EMOTION6 / "images").rglob("*.jpg")) if EMOTION6.is_dir() else []
    if found:
        return found[:n]
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for k in range(n):  # synthetic stand-ins of a photo's size when Emotion6 is absent
        p = work / "synthetic" / f"{k:05d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(p, quality=90)
        out.append(p)
    return out


def write_dataset(paths: list[Path], work: Path, per_shard: int) -> tuple[str, str]:
    """The same bytes as files (with a CSV manifest) and as shards; returns the two dataset specs."""
    files, shards = work / "files", work / "shards"
    files.mkdir(parents=True)
    shards.mkdir(parents=True)
    lines = ["path"]
    for s in range(-(-len(paths) // per_shard)):
        with tarfile.open(shards / f"{s:05d}.tar", "w") as tf:
            for k, src in enumerate(paths[s * per_shard : (s + 1) * per_shard]):
                key, data = f"{s:05d}{k:04d}", src.read_bytes()
                (files / f"{key}.jpg").write_bytes(data)
                lines.append(f"{key}.jpg")
                for name, payload in (
                    (f"{key}.jpg", data),
                    (f"{key}.json", json.dumps({"key": key}).encode()),
                ):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tf.addfile(info, io.BytesIO(payload))
    (files / "m.csv").write_text("\n".join(lines) + "\n")
    n_shards = -(-len(paths) // per_shard)
    return f"csv:{files / 'm.csv'}", f"webdataset:{shards}/{{00000..{n_shards - 1:05d}}}.tar"


# -- bytes only ------------------------------------------------------------------------------------
def bytes_files(files_spec: str, shards: list[str], batch: int) -> int:
    from evoked.data import load_dataset
    from evoked.data.decode import read_bytes

    return sum(len(read_bytes(p)) for p in load_dataset(files_spec).abspaths())


def bytes_tarfile(files_spec: str, shards: list[str], batch: int) -> int:
    total = 0
    for shard in shards:
        with tarfile.open(shard, mode="r|") as tf:
            for info in tf:
                if info.isfile() and info.name.endswith(".jpg"):
                    total += len(tf.extractfile(info).read())
    return total


def bytes_webdataset(files_spec: str, shards: list[str], batch: int) -> int:
    import webdataset as wds

    ds = wds.WebDataset(shards, shardshuffle=False, empty_check=False)
    return sum(len(sample["jpg"]) for sample in ds)


def bytes_evoked(files_spec: str, shards: list[str], batch: int) -> int:
    from evoked.data.webdataset import _list_cached, read_webdataset
    from evoked.extract.sources import TarMembers

    _list_cached.cache_clear()  # time the listing too
    m = read_webdataset(f"{Path(shards[0]).parent}/*.tar")
    reader = TarMembers(m)
    total = 0
    for start in range(0, len(m), batch):
        spans = reader._read_spans(list(range(start, min(start + batch, len(m)))))
        total += sum(len(v) for v in spans.values())
    return total


BYTES = {
    "files": bytes_files,
    "tarfile": bytes_tarfile,
    "webdataset": bytes_webdataset,
    "evoked": bytes_evoked,
}


# -- the runner's reader -----------------------------------------------------------------------------
def reader_pass(spec: str, batch: int, workers: int) -> tuple[int, int]:
    """Images decoded through the runner's reader; (ok, failed)."""
    import torch

    from evoked.data import load_dataset
    from evoked.extract.runner import make_loader

    m = load_dataset(spec)
    blocks = [list(range(s, min(s + batch, len(m)))) for s in range(0, len(m), batch)]
    ok = failed = 0
    for b in make_loader(m, blocks, torch.device("cpu"), "cpu", workers):
        ok += sum(img is not None for img in b["image"])
        failed += sum(e is not None for e in b["error"])
    return ok, failed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1980, help="photos (default: all of Emotion6)")
    ap.add_argument("--per-shard", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=1, help="reader processes for the reader pass")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    # imports first: none of them is timed
    import torch  # noqa: F401
    import webdataset  # noqa: F401

    import evoked.data  # noqa: F401
    import evoked.extract.runner  # noqa: F401
    import evoked.extract.sources  # noqa: F401

    work = Path(tempfile.mkdtemp(prefix="evoked-formats-"))
    load_before = os.getloadavg()
    try:
        paths = photos(args.n, work)
        files_spec, shards_spec = write_dataset(paths, work, args.per_shard)
        shards = sorted(str(p) for p in (work / "shards").glob("*.tar"))
        times: dict[str, list[float]] = {k: [] for k in (*BYTES, "reader files", "reader webdataset")}
        sizes: dict[str, int] = {}
        counts: dict[str, tuple[int, int]] = {}
        for r in range(args.repeat):
            order = list(BYTES) if r % 2 == 0 else list(reversed(BYTES))
            for name in order:
                t0 = time.perf_counter()
                sizes[name] = BYTES[name](files_spec, shards, args.batch_size)
                times[name].append(time.perf_counter() - t0)
            for name, spec in (("reader files", files_spec), ("reader webdataset", shards_spec))[
                :: 1 if r % 2 == 0 else -1
            ]:
                t0 = time.perf_counter()
                counts[name] = reader_pass(spec, args.batch_size, args.workers)
                times[name].append(time.perf_counter() - t0)
        if len(set(sizes.values())) != 1:
            raise SystemExit(f"the readers did not read the same bytes: {sizes}")
        if counts["reader files"] != counts["reader webdataset"]:
            raise SystemExit(f"files and shards decoded differently: {counts}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n = len(paths)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "images": n,
        "mb": sizes["files"] / 2**20,
        "shards": len(shards),
        "batch_size": args.batch_size,
        "workers": args.workers,
        "repeat": args.repeat,
        "seconds_median": med,
        "seconds_all": times,
        "images_per_s": {k: n / v for k, v in med.items()},
        "ratios_vs_files": {
            **{k: med["files"] / med[k] for k in BYTES},
            "reader webdataset": med["reader files"] / med["reader webdataset"],
        },
        "goal_met": med["reader webdataset"] <= med["reader files"],
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": [round(x, 2) for x in load_before],
            "load_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{n} photos ({result['mb']:.0f} MB) in {len(shards)} shards; median of {args.repeat} rounds\n")
    print("| pass | reader | seconds | images/s | x files |")
    print("|---|---|---|---|---|")
    for k in BYTES:
        print(f"| bytes only | {k} | {med[k]:.3f} | {n / med[k]:,.0f} | {result['ratios_vs_files'][k]:.2f} |")
    for k in ("reader files", "reader webdataset"):
        ratio = med["reader files"] / med[k]
        print(
            f"| decode ({args.workers} workers) | {k.split()[1]} | {med[k]:.2f} | {n / med[k]:,.0f} | {ratio:.2f} |"
        )
    ratio = result["ratios_vs_files"]["reader webdataset"]
    print(
        f"\ngoal, shards at least as fast as files through the reader: {'met' if ratio >= 1 else 'missed'} ({ratio:.2f}x)"
    )
    m = result["machine"]
    print(f"load average before {m['load_before']}, after {m['load_after']} ({m['cpus']} CPUs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
