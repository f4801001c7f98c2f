"""Every CUDA path of evoked, checked for real on one GPU, in one script (about 5-8 minutes on an H100/H200).

    python bench/gpu_check.py                 # the table
    python bench/gpu_check.py --json          # the same as JSON
    python bench/gpu_check.py --no-compile    # skip the torch.compile throughput rows (the slowest part)

The tests reach the CUDA code through CPU stand-ins only; this script runs it on the GPU:

1. decode: batched nvJPEG (`ImageFiles` + `gather_images`, as `--decode device`) against the CPU decoder:
   the largest and mean pixel difference, and every EXIF orientation (1-8) turned upright the same way;
2. features: fp32 on CUDA against fp32 on the CPU, per output (cosine >= 0.999) for resnet50,
   clip:ViT-B-32 and color; bf16 on CUDA against fp32 on CUDA (reported: bf16 is a choice);
3. throughput at batch 256 (`bench/extract.py` passes): decode only, model only and end to end
   for resnet50, clip:ViT-B-32 and resnet50+clip:ViT-B-32+color, with and without ``--compile``;
   goals: the three-backbone pass >= 5,000 img/s end to end, and e2e >= 0.8 x min(decode, model);
4. faiss: an IVF and an IVFPQ (64-byte codes: float16 lookup tables) index built on the GPU against
   the same built on the CPU: recall@10 of both against exact search;
5. torchrun: one process over NCCL extracting a folder (`evoked extract` under torchrun), features
   equal to a plain run's;
6. fine-tuning: one epoch of `evoked finetune` under bf16 autocast.

Weights are random (offline; speed and CPU/GPU agreement do not depend on them). Images: the
first N photos of ../shared/data/emotion6 when present, else synthetic JPEGs. Without a CUDA GPU
it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
EMOTION6 = REPO.parent / "shared" / "data" / "emotion6"
COSINE_GOAL = 0.999
E2E_GOAL_IMG_S = 5000.0
RATIO_GOAL = 0.8
DEVICE = "cuda"  # --dry-run-on-cpu: "cpu", to try the script's own code on a machine without a GPU
CONFIGS = ("resnet50", "clip:ViT-B-32", "resnet50+clip:ViT-B-32+color")


def _bench_extract():
    spec = importlib.util.spec_from_file_location("bench_extract", REPO / "bench" / "extract.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Checks:
    """Rows of the report: name, status (ok / FAIL / info / skipped), value, goal, details."""

    def __init__(self, budget_s: float):
        self.rows: list[dict] = []
        self.t0 = time.perf_counter()
        self.budget_s = budget_s

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def add(self, name: str, status: str, value: str = "", goal: str = "", **details) -> None:
        self.rows.append({"check": name, "status": status, "value": value, "goal": goal, **details})
        print(f"[{time.perf_counter() - self.t0:6.1f} s] {name}: {status} {value}", file=sys.stderr, flush=True)

    def run(self, name: str, fn, *, need_s: float = 0.0) -> None:
        if self.left() < need_s:
            self.add(name, "skipped", f"under {need_s:.0f} s left of the time budget")
            return
        try:
            fn()
        except Exception as e:  # a failing path is a row of the report, not the end of the check
            self.add(name, "FAIL", f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=6))


# -- images ---------------------------------------------------------------------------------------------
def oriented_jpegs(folder: Path) -> list[tuple[Path, int]]:
    """One 48x32 JPEG per EXIF orientation, with an asymmetric pattern that shows any wrong turn."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = np.zeros((32, 48, 3), np.uint8)
    base[:8, :12] = (255, 0, 0)
    base[-6:, 20:] = (0, 0, 255)
    base += rng.integers(0, 40, base.shape, dtype=np.uint8)
    out = []
    for o in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = o
        path = folder / f"orient{o}.jpg"
        Image.fromarray(base).save(path, quality=95, exif=exif.tobytes())
        out.append((path, o))
    return out


def dataset_csv(paths: list[Path], root: Path) -> str:
    """A csv dataset over `paths` with VA, a category and a 60/20/20 split (for fine-tuning)."""
    rng = np.random.default_rng(0)
    out = root / "dataset.csv"
    with open(out, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["id", "path", "category", "valence", "arousal", "split"])
        w.writeheader()
        for k, p in enumerate(paths):
            w.writerow(
                {
                    "id": p.stem,
                    "path": str(p),
                    "category": ("joy", "fear", "sadness")[k % 3],
                    "valence": round(float(rng.uniform(1, 9)), 2),
                    "arousal": round(float(rng.uniform(1, 9)), 2),
                    "split": "train" if k % 5 < 3 else ("val" if k % 5 == 3 else "test"),
                }
            )
    return f"csv:{out}"


# -- checks ---------------------------------------------------------------------------------------------
def check_decode(c: Checks, manifest, tmp: Path) -> None:
    import torch

    from evoked.data.decode import DEFAULT_MAX_PIXELS, decode_rgb, read_bytes
    from evoked.extract.prefetch import gather_images
    from evoked.extract.reader import ImageFiles, collate

    dev = torch.device(DEVICE)
    paths = [str(p) for p in manifest.abspaths()[:256]]
    oriented = oriented_jpegs(tmp / "oriented")
    paths += [str(p) for p, _ in oriented]
    reader = ImageFiles(paths, device_jpeg=True)
    batch = collate([reader[i] for i in range(len(paths))])
    on_gpu = sum(j is not None for j in batch["jpeg"])
    images, positions, errors = gather_images(batch, dev, DEFAULT_MAX_PIXELS)
    worst, means, bad_shape, upright = 0, [], [], 0
    for img, k in zip(images, positions):
        ref = torch.from_numpy(decode_rgb(read_bytes(paths[k]), paths[k], DEFAULT_MAX_PIXELS)).permute(2, 0, 1)
        if tuple(img.shape) != tuple(ref.shape):
            bad_shape.append(Path(paths[k]).name)
            continue
        diff = (img.cpu().int() - ref.int()).abs()
        worst, means = max(worst, int(diff.max())), means + [float(diff.float().mean())]
        upright += Path(paths[k]).name.startswith("orient") and int(diff.max()) <= 8
    ok = not errors and not bad_shape and worst <= 8 and max(means) <= 1.0
    c.add(
        "nvJPEG vs CPU decode",
        "ok" if ok else "FAIL",
        f"{len(images)} images ({on_gpu} on the GPU), max |diff| {worst}, mean {np.mean(means):.3f}",
        "same shapes, max <= 8, mean <= 1",
        errors={str(k): v for k, v in errors.items()},
        wrong_shape=bad_shape,
    )
    c.add(
        "EXIF orientation on the GPU path",
        "ok" if upright == len(oriented) else "FAIL",
        f"{upright}/{len(oriented)} orientations as the CPU decoder turns them (max |diff| <= 8)",
        "8/8",
    )


def _cosines(a: dict, b: dict) -> dict[str, float]:
    out = {}
    for k in a:
        x, y = a[k].astype(np.float64), b[k].astype(np.float64)
        den = np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1)
        cos = np.where(den > 0, (x * y).sum(1) / np.maximum(den, 1e-30), 1.0)
        out[k] = float(cos.min())
    return out


def _features(path: Path) -> dict[str, np.ndarray]:
    import h5py

    with h5py.File(path, "r") as f:
        return {f"{e}/{o}": f["features"][e][o][:] for e in f["features"] for o in f["features"][e]}


def check_features(c: Checks, manifest, tmp: Path) -> None:
    from evoked.extract import extract

    sub = manifest.subset(np.arange(min(64, len(manifest))))
    specs = list(CONFIGS[-1].split("+"))
    runs = {}
    for name, device, precision in (("cpu", "cpu", "fp32"), ("cuda", DEVICE, "fp32"), ("bf16", DEVICE, "bf16")):
        out = tmp / f"feat-{name}.h5"
        extract(sub, out, specs, weights=["random"], device=device, precision=precision, batch_size=32)
        runs[name] = _features(out)
    cos = _cosines(runs["cpu"], runs["cuda"])
    worst = min(cos, key=cos.get)
    c.add(
        "fp32 CUDA vs fp32 CPU features",
        "ok" if cos[worst] >= COSINE_GOAL else "FAIL",
        f"min cosine {cos[worst]:.5f} ({worst}) over {len(sub)} images",
        f">= {COSINE_GOAL}",
        cosines={k: round(v, 6) for k, v in cos.items()},
    )
    cos16 = _cosines(runs["cuda"], runs["bf16"])
    worst16 = min(cos16, key=cos16.get)
    c.add(
        "bf16 vs fp32 features (CUDA)",
        "info",
        f"min cosine {cos16[worst16]:.5f} ({worst16})",
        "reported",
        cosines={k: round(v, 6) for k, v in cos16.items()},
    )


def check_throughput(c: Checks, manifest, tmp: Path, n: int, compile: bool) -> None:
    bench = _bench_extract()
    argv = ["--device", "cuda", "--batch-size", "256", "--n", str(n), "--no-plain"] + (["--compile"] if compile else [])
    args = bench.parse_args(argv)
    sub = manifest.subset(np.arange(min(n, len(manifest))))
    for config in CONFIGS:
        name = f"throughput {config}" + (" --compile" if compile else "")

        def one(config=config, name=name):
            r = bench.run_config(config, sub, args, tmp)
            goal_ok = r.ratio >= RATIO_GOAL and (config != CONFIGS[-1] or r.e2e_img_s >= E2E_GOAL_IMG_S)
            c.add(
                name,
                "ok" if goal_ok else "FAIL",
                f"decode {r.decode_img_s:.0f}, model {r.model_img_s:.0f}, e2e {r.e2e_img_s:.0f} img/s "
                f"(e2e/min {r.ratio:.2f}, w={r.workers}, {r.precision})",
                f"e2e/min >= {RATIO_GOAL}" + (f", e2e >= {E2E_GOAL_IMG_S:.0f}" if config == CONFIGS[-1] else ""),
                result={k: v for k, v in vars(r).items() if k not in ("runs",)},
            )

        c.run(name, one, need_s=90 if compile else 20)


def check_faiss(c: Checks) -> None:
    import faiss

    from evoked.features.index import exact_search, normalize, recall_at_k
    from evoked.features.index_build import build_index

    if faiss.get_num_gpus() < 1:
        c.add("faiss GPU index", "FAIL", "faiss sees no GPU (the faiss-gpu wheel is needed)")
        return
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(256, 512)).astype(np.float32)
    x = (centers[rng.integers(0, 256, 200_000)] + 0.5 * rng.normal(size=(200_000, 512))).astype(np.float32)
    q = np.arange(0, 200_000, 200)
    _, truth = exact_search(normalize(x), normalize(x[q]), 10)
    for kind, budget in (("ivf", 8 * 2**30), ("ivfpq", 64 * 2**20)):
        found = {}
        for where in ("always", "never"):
            from evoked.features.index import search

            t0 = time.perf_counter()
            index, info = build_index(x, kind=kind, use_gpu=where, memory_budget=budget, target_recall=0.9)
            secs = time.perf_counter() - t0
            _, ids = search(index, x[q], 10, info)
            found[where] = (recall_at_k(ids, truth, 10), secs, info)
        (rg, sg, ig), (rc, sc, _) = found["always"], found["never"]
        c.add(
            f"faiss {kind} built on the GPU",
            "ok" if ig.on_gpu and rg >= rc - 0.02 else "FAIL",
            f"recall@10 GPU {rg:.3f} vs CPU {rc:.3f}; build {sg:.1f} s vs {sc:.1f} s; params {ig.params}",
            "on_gpu, recall within 0.02 of the CPU build",
        )


def _evoked(*args: str, env: dict | None = None, launcher: list[str] | None = None, timeout: int = 300):
    cmd = (launcher or [sys.executable]) + ["-m", "evoked", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or os.environ.copy())
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr[-1500:]}")
    return r


def check_torchrun(c: Checks, folder: Path, tmp: Path) -> None:
    common = ["--backbone", "resnet50", "--weights", "random", "--device", DEVICE, "--precision", "fp32", "-q"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
    _evoked("extract", f"folder:{folder}", "--out", str(tmp / "tr.h5"), *common, env=env, launcher=launcher)
    _evoked("extract", f"folder:{folder}", "--out", str(tmp / "plain.h5"), *common, "--distributed", "off", env=env)
    a, b = _features(tmp / "tr.h5"), _features(tmp / "plain.h5")
    cos = _cosines(a, b)
    worst = min(cos.values())
    c.add(
        "torchrun, 1 process over NCCL",
        "ok" if worst >= 0.99999 else "FAIL",
        f"{len(next(iter(a.values())))} rows; min cosine to a plain run {worst:.6f}",
        "runs; same features",
    )


def check_finetune(c: Checks, dataset: str, tmp: Path) -> None:
    t0 = time.perf_counter()
    r = _evoked(
        "finetune", "--categorical", dataset, "--dimensional", dataset, "--mode", "one_stage", "--task", "multi",
        "--backbone", "resnet50", "--weights", "random", "--size", "224", "--epochs", "1", "--batch-size", "32",
        "--device", DEVICE, "--precision", "bf16" if DEVICE == "cuda" else "fp32", "--out", str(tmp / "ft"), "--json", "-q",
    )  # fmt: skip
    scores = json.loads(r.stdout)
    c.add(
        "fine-tuning, 1 epoch under bf16 AMP",
        "ok",
        f"{time.perf_counter() - t0:.0f} s; test scores of {', '.join(scores)} written",
        "runs",
    )


def table(rows: list[dict]) -> str:
    head = ("check", "status", "value", "goal")
    cells = [tuple(str(r[h]) for h in head) for r in rows]
    widths = [max(len(x) for x in col) for col in zip(head, *cells)]
    line = lambda cs: "  ".join(x.ljust(w) for x, w in zip(cs, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(cs) for cs in cells)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=4096, help="images of the throughput passes (default 4096)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the --compile passes")
    p.add_argument("--budget", type=float, default=450, help="seconds; later checks are skipped past it")
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--dry-run-on-cpu",
        action="store_true",
        help="run the decode, feature, torchrun and fine-tuning checks on the CPU (tries this script, checks no GPU)",
    )
    args = p.parse_args(argv)
    import torch

    global DEVICE
    if args.dry_run_on_cpu:
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        print("gpu_check: needs a CUDA GPU and torch sees none here; nothing was checked")
        return 0
    sys.path.insert(0, str(REPO / "src"))
    from evoked.data import load_dataset

    bench = _bench_extract()
    c = Checks(args.budget)
    with tempfile.TemporaryDirectory(prefix="evoked-gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        if EMOTION6.is_dir():
            manifest, source = load_dataset(f"emotion6:{EMOTION6}"), "Emotion6"
        else:
            folder = bench.synthetic_jpegs(tmp / "images", min(args.n, 2048))
            manifest, source = load_dataset(f"folder:{folder}"), "synthetic JPEGs"
        if len(manifest) < args.n:  # repeat the photos: throughput needs many batches of 256
            manifest = manifest.subset(np.resize(np.arange(len(manifest)), args.n))
        small = tmp / "small"
        small.mkdir()
        picked = [manifest.abspath(i) for i in range(96)]
        for k, src in enumerate(picked):
            (small / f"{k:03d}{src.suffix.lower()}").symlink_to(src)
        c.run("decode", lambda: check_decode(c, manifest, tmp))
        c.run("features", lambda: check_features(c, manifest, tmp), need_s=60)
        if DEVICE == "cuda":
            check_throughput(c, manifest, tmp, args.n, compile=False)
            c.run("faiss", lambda: check_faiss(c), need_s=40)
        c.run("torchrun", lambda: check_torchrun(c, small, tmp), need_s=40)
        c.run("finetune", lambda: check_finetune(c, dataset_csv(sorted(small.iterdir()), tmp), tmp), need_s=40)
        if args.compile and DEVICE == "cuda":
            check_throughput(c, manifest, tmp, args.n, compile=True)
    machine = {
        "gpu": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "none (dry run on the CPU)",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cpus": len(os.sched_getaffinity(0)),
        "images": source,
        "seconds": round(time.perf_counter() - c.t0, 1),
    }
    failed = [r["check"] for r in c.rows if r["status"] == "FAIL"]
    if args.json:
        print(json.dumps({"machine": machine, "checks": c.rows, "failed": failed}, indent=2, default=str))
    else:
        print(f"{machine['gpu']}, torch {machine['torch']} (CUDA {machine['cuda']}), {machine['cpus']} CPUs; "
              f"images: {source}; {machine['seconds']} s")  # fmt: skip
        print(table(c.rows))
        print("all checks passed" if not failed else f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
