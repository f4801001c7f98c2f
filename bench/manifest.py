"""Manifest building at the scale of bulk users: rows a second for CSV, parquet and webdataset.

    python bench/manifest.py                         # 10k, 100k and 1M rows of each kind
    python bench/manifest.py --sizes 10000,100000 --kinds csv,webdataset --json

Synthetic inputs are written once to a temporary folder (``--tmp``): a CSV and a parquet manifest
with ``path, category, valence, arousal, split`` and 1M distinct paths, and webdataset shards of
10,000 samples (``KEY.jpg`` + ``KEY.cls``; the image members hold 64 bytes, since listing reads
only headers and label members). Each (kind, size) is then read by `evoked.data.load_dataset` in a
fresh process (nothing cached, the files in the page cache), which reports the wall time of the
read and its peak resident memory (VmHWM; the interpreter with numpy alone is about 40 MB).

Goal: 1M rows in under 30 s, memory growing with the rows (no quadratic step, no row dicts kept).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

KINDS = ("csv", "parquet", "webdataset")
PER_SHARD = 10_000
_IMAGE = b"\xff\xd8" + bytes(62)  # listing never decodes: 64 bytes stand for a JPEG


def _rows(n: int):
    cats = ("joy", "fear", "anger", "sadness", "surprise", "disgust")
    for k in range(n):
        yield (
            f"img/{k // 1000:04d}/{k:07d}.jpg",
            cats[k % 6],
            1 + k % 9,
            9 - k % 9,
            ("train", "val", "test")[k % 3],
        )


def write_csv(folder: Path, n: int) -> str:
    path = folder / f"m{n}.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "category", "valence", "arousal", "split"])
        w.writerows(_rows(n))
    return f"csv:{path}"


def write_parquet(folder: Path, n: int) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = list(zip(*_rows(n)))
    names = ["path", "category", "valence", "arousal", "split"]
    path = folder / f"m{n}.parquet"
    pq.write_table(pa.table({k: list(v) for k, v in zip(names, cols)}), path)
    return f"parquet:{path}"


def _member(name: str, data: bytes) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info.tobuf(format=tarfile.GNU_FORMAT) + data + bytes(-len(data) % 512)


def write_shards(folder: Path, n: int) -> str:
    shards = folder / f"wds{n}"
    shards.mkdir(exist_ok=True)
    count = -(-n // PER_SHARD)
    for s in range(count):
        buf = io.BytesIO()
        for k in range(s * PER_SHARD, min(n, (s + 1) * PER_SHARD)):
            buf.write(_member(f"{k:09d}.jpg", _IMAGE))
            buf.write(_member(f"{k:09d}.cls", b"joy"))
        buf.write(bytes(1024))
        (shards / f"{s:05d}.tar").write_bytes(buf.getvalue())
    return f"webdataset:{shards}/{{00000..{count - 1:05d}}}.tar"


WRITERS = {"csv": write_csv, "parquet": write_parquet, "webdataset": write_shards}


def read_one(spec: str) -> dict:
    """Read `spec` here (a fresh process): rows, seconds and peak memory."""
    from evoked.data import load_dataset

    t0 = time.perf_counter()
    m = load_dataset(spec)
    seconds = time.perf_counter() - t0
    return {"rows": len(m), "seconds": round(seconds, 3), "peak_mb": round(_peak_mb(), 1)}


def _peak_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss across
    exec, so a child started by a parent holding a 1M-row table would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(kind: str, spec: str) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--read", spec], capture_output=True, text=True, check=True
    ).stdout
    r = json.loads(out.strip().splitlines()[-1])
    return {"kind": kind, **r, "rows_per_s": round(r["rows"] / r["seconds"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000", help="row counts (default 10k,100k,1M)")
    p.add_argument("--kinds", default=",".join(KINDS), help=f"which of {', '.join(KINDS)}")
    p.add_argument(
        "--tmp", type=Path, default=None, help="folder for the synthetic inputs (default: a temp dir)"
    )
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--read", default=None, help=argparse.SUPPRESS)  # the child: read one spec
    args = p.parse_args(argv)
    if args.read:
        print(json.dumps(read_one(args.read)))
        return 0
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = [k.strip() for k in args.kinds.split(",")]
    results = []
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for kind in kinds:
            for n in sizes:
                spec = WRITERS[kind](Path(tmp), n)
                results.append(measure(kind, spec))
                if not args.json:
                    r = results[-1]
                    print(
                        f"{kind:<11} {r['rows']:>9,} rows  {r['seconds']:8.2f} s  {r['rows_per_s']:>9,} rows/s  "
                        f"peak {r['peak_mb']:7.1f} MB",
                        flush=True,
                    )
    if args.json:
        meta = {"python": platform.python_version(), "cpus": os.cpu_count(), "load": os.getloadavg()}
        print(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
