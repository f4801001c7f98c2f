"""Extraction throughput: decode only, model only and end to end, in one run, on the same images.

    python bench/extract.py                                  # the default set (see DEFAULT_CONFIGS)
    python bench/extract.py --backbone tv:mobilenet_v2 --backbone resnet50+color --n 512 --json
    python bench/extract.py --device cuda                    # bf16 autocast, JPEGs decoded on the GPU

A configuration is one backbone spec, or several joined with ``+`` for one multi-backbone pass.
For each configuration, with the same images, batch size, reader processes and torch threads:

1. decode only: the runner's reader alone (`make_loader`: `ImageFiles` + DataLoader, same workers and
   collate), plus the batched device JPEG decode when decoding on the device;
2. model only: `run_backbones` (preprocessing + forward) on the images of pass 1, already in memory;
3. end to end: `evoked.extract.extract` into a temporary HDF5 store (reader processes, models, writer thread);
4. plain loop: what a user writes from the torchvision and open_clip docs, on the same images: a torch
   DataLoader with 2 workers and PIL decoding, the model's own transforms, fp32, batch 32, torch's default
   threads, in a fresh Python process of its own; for several backbones the loops run one after another
   in that process (``color`` has no plain counterpart and costs the plain loop nothing).
   ``vs_plain`` = e2e / plain.
5. tuned loop: what a user who knows the CPU writes, in a fresh process of its own like the plain loop:
   the same models and transforms with channels_last for CNNs, bf16 autocast where the CPU has AMX or
   AVX-512 BF16 (`evoked.extract.cpu.fast_bf16`), batch 64, one DataLoader worker and torch threads =
   the cores this process may use. ``vs_tuned`` = e2e / tuned.

``--repeats R`` runs passes 1-3 R times and each loop R times (its model built once), and reports
medians: on a shared machine one timed pass of a baseline can be off by half.

``--background-load K`` keeps K busy processes (`background.BackgroundLoad`) running from before the
first measurement until after the last, evoked's and the loops' alike, as another job on a shared
machine would; they are stopped at the end, also on an error or Ctrl-C.

The first ``--warmup`` batches of each pass are not timed (worker start-up, allocator and cuDNN warm-up);
the end-to-end time runs until `extract` returns, so it includes the last writes. The goal is
end-to-end >= 0.8 x min(decode only, model only). Weights are random by default (offline):
throughput does not depend on weight values.

Images: ``--images`` (a directory or a dataset spec such as ``emotion6:PATH``), else the first N photos of
../shared/data/emotion6 when present, else N synthetic JPEGs written to a temporary directory.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from background import BackgroundLoad, check_count  # bench/background.py (this script's folder)
from evoked.device import use_openmp_defaults

OPENMP_ADDED = use_openmp_defaults()  # before torch, faiss or LightGBM load OpenMP (BENCHMARKS.md)

REPO = Path(__file__).resolve().parents[1]
EMOTION6 = REPO.parent / "shared" / "data" / "emotion6"
DEFAULT_CONFIGS = ("resnet50", "color", "clip:ViT-B-32", "tv:mobilenet_v2", "resnet50+clip:ViT-B-32+color")
GOAL = 0.8
PLAIN_BATCH, PLAIN_WORKERS = 32, 2
TUNED_BATCH, TUNED_WORKERS = 64, 1
PLAIN_FLAG = "--plain-loops-of"  # internal: run the plain loops of a job file in this process (measure_plain)


@dataclass
class Result:
    config: str
    backbones: list[str]
    device: str
    precision: str
    decode: str
    workers: int
    threads: int
    batch_size: int
    images: int
    weights: list[str]
    decode_img_s: float
    model_img_s: float
    e2e_img_s: float
    ratio: float
    goal_met: bool
    runs: dict[str, list[float]] = field(default_factory=dict)  # every repeat, img/s
    e2e_seconds: dict[str, float] = field(default_factory=dict)  # extract's own split of the last e2e run
    # user and system CPU per image of each whole pass (warm-up included), reader processes included
    cpu_ms_per_img: dict[str, dict] = field(default_factory=dict)
    precisions: dict[str, str] = field(default_factory=dict)  # what each backbone computed in
    plain_img_s: float | None = None  # the plain loop (see the module docstring)
    vs_plain: float | None = None  # e2e_img_s / plain_img_s
    tuned_img_s: float | None = None  # the tuned loop (see the module docstring)
    vs_tuned: float | None = None  # e2e_img_s / tuned_img_s
    failed: int = 0
    loadavg: list[float] = field(default_factory=list)  # 1-min load average before and after


# -- images ------------------------------------------------------------------------------------------
def synthetic_jpegs(root: Path, n: int, seed: int = 0) -> Path:
    """N photo-like JPEGs (smooth colour fields plus noise, shorter side 256, as Emotion6)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = root / "synthetic"
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        size = (384, 256) if k % 3 else (256, 384)
        coarse = Image.fromarray(rng.integers(0, 256, (6, 4, 3) if k % 3 else (4, 6, 3), dtype=np.uint8))
        base = np.asarray(coarse.resize(size, Image.BICUBIC), dtype=np.int16)
        noisy = np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"{k:05d}.jpg", quality=90)
    return root


def load_images(spec: str | None, n: int, tmp: Path):
    """The first `n` items of the dataset, and a description of where they came from."""
    from evoked.data import load_dataset

    if spec is None and EMOTION6.is_dir():
        spec = f"emotion6:{EMOTION6}"
    if spec is None:
        manifest = load_dataset(f"folder:{synthetic_jpegs(tmp / 'images', n)}")
        source = f"{n} synthetic JPEGs (384x256)"
    else:
        manifest = load_dataset(spec)
        source = spec
    if len(manifest) < n:
        print(f"note: {source} has only {len(manifest)} images; using all of them", file=sys.stderr)
    manifest = manifest.subset(np.arange(min(n, len(manifest))))
    return manifest, f"{source}, first {len(manifest)}"


# -- option handling -----------------------------------------------------------------------------------
def for_config(values: list[str], specs: list[str]) -> list[str]:
    """The --weights/--preprocess values that apply to a configuration: the common ones, and the
    ``SPEC=...`` ones whose SPEC is one of its backbones (so one command line serves every configuration)."""
    from evoked.extract.registry import list_backbones, parse_spec

    names = {b.split(":")[0] for b in list_backbones()}
    mine = [parse_spec(s) for s in specs]
    keep = []
    for v in values:
        key, sep, _ = v.partition("=")
        per_backbone = sep and key.strip().split(":")[0] in names  # else a preprocessing key or a path
        if not per_backbone or any(key in (m.text, m.name) for m in mine):
            keep.append(v)
    return keep


def with_default_weights(weights: list[str]) -> list[str]:
    """Random weights unless a value for every backbone is given: the bench runs offline."""
    common = [w for w in weights if "=" not in w or Path(w).exists()]
    return weights if common else ["random", *weights]


# -- measurements -------------------------------------------------------------------------------------
def _sync(dev) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def cpu_seconds() -> np.ndarray:
    """User and system CPU seconds of this process and of its finished children (reader processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return np.array([me.ru_utime + kids.ru_utime, me.ru_stime + kids.ru_stime])


def measure_decode(paths, blocks, dev, decoder, workers, max_pixels, warmup):
    """img/s of the reader alone; also returns the decoded batches (for the model pass) and failures."""
    from evoked.extract.prefetch import gather_images
    from evoked.extract.runner import make_loader

    loader = make_loader(paths, blocks, dev, decoder, workers, max_pixels)
    kept, failed, timed, t_warm = [], 0, 0, None
    for i, batch in enumerate(loader):
        images, _, errors = gather_images(batch, dev, max_pixels)
        failed += len(errors)
        kept.append(images)
        if i == warmup - 1:
            _sync(dev)
            t_warm = time.perf_counter()
        elif i >= warmup:
            timed += len(images)
    _sync(dev)
    return timed / (time.perf_counter() - t_warm), kept, failed


def measure_model(batches, backbones, dev, amp_dtype, warmup):
    """img/s of `run_backbones` (device preprocessing + forward + copy of outputs to the host)."""
    import torch

    from evoked.extract.runner import run_backbones

    timed, t_warm = 0, None
    with torch.inference_mode():
        for i, images in enumerate(batches):
            run_backbones(images, backbones, dev, amp_dtype)  # ends with .cpu(): synchronised
            if i == warmup - 1:
                t_warm = time.perf_counter()
            elif i >= warmup:
                timed += len(images)
    return timed / (time.perf_counter() - t_warm)


def measure_e2e(manifest, out: Path, specs, weights, preprocess, args, workers, warmup):
    """img/s of `extract` into a fresh store, from the end of the warm-up batches until it returns."""
    from evoked.extract.runner import extract

    marks: list[tuple[float, int]] = []
    out.unlink(missing_ok=True)
    summary = extract(
        manifest,
        out,
        specs,
        weights=weights,
        preprocess=preprocess,
        device=args.device,
        batch_size=args.batch_size,
        workers=workers,
        precision=args.precision,
        decode=args.decode,
        compile=args.compile,
        on_batch=lambda r: marks.append((time.perf_counter(), r.ok)),
    )
    t_end = time.perf_counter()
    timed = sum(ok for _, ok in marks[warmup:])
    split = {"waiting_for_images": summary.read_s, "models": summary.model_s, "writing": summary.write_s}
    return timed / (t_end - marks[warmup - 1][0]), {k: round(v, 3) for k, v in split.items()}


class _PilFiles:
    """The dataset of the plain loop: PIL opens, converts to RGB, the model's transform does the rest."""

    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB"))


def _plain_model(spec: str):
    """(forward, transform) of a backbone as its library's docs build it, random weights (offline)."""
    import torch
    import torchvision

    name, _, arg = spec.partition(":")
    if name == "clip":
        import open_clip

        from evoked.extract.backbones.clip import EMOTION_TEMPLATE, EMOTION_WORDS, SCENE_TEMPLATE, scene_names

        arch = arg.split(":")[0]
        model, _, transform = open_clip.create_model_and_transforms(arch, pretrained=None)
        model.eval()
        tok = open_clip.get_tokenizer(arch)
        with torch.no_grad():
            texts = [
                torch.nn.functional.normalize(model.encode_text(tok(prompts)), dim=-1)
                for prompts in (
                    [SCENE_TEMPLATE.format(c) for c in scene_names()],
                    [EMOTION_TEMPLATE.format(e) for e in EMOTION_WORDS],
                )
            ]

        def forward(x):
            emb = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
            scale = model.logit_scale.exp()
            return [emb] + [(scale * emb @ t.T).softmax(dim=-1) for t in texts]

        return forward, transform
    tv = arg if name == "tv" else name
    model = torchvision.models.get_model(tv, weights=None).eval()
    transform = torchvision.models.get_model_weights(tv).DEFAULT.transforms()

    def forward_cnn(x):
        return model(x).softmax(dim=1)

    forward_cnn.model = model  # type: ignore[attr-defined]  # for `_tuned_model`
    return forward_cnn, transform


def _tuned_model(spec: str):
    """`_plain_model` with the two lines a user who knows the CPU adds: channels_last for a CNN, and
    bf16 autocast where the CPU has bf16 units. Returns (forward, transform, channels_last)."""
    import contextlib

    import torch

    from evoked.extract.cpu import fast_bf16

    forward, transform = _plain_model(spec)
    cnn = spec.split(":")[0] != "clip"
    model = getattr(forward, "model", None)
    if cnn and model is not None:
        model.to(memory_format=torch.channels_last)

    def tuned(x):
        if cnn:
            x = x.contiguous(memory_format=torch.channels_last)
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if fast_bf16() else contextlib.nullcontext()
        with amp:
            return forward(x)

    return tuned, transform


LOOPS = {  # kind: (model builder, batch size, DataLoader workers, torch threads (None: torch's default))
    "plain": (_plain_model, PLAIN_BATCH, PLAIN_WORKERS, None),
    "tuned": (_tuned_model, TUNED_BATCH, TUNED_WORKERS, "cores"),
}


def plain_loops(paths, specs, kind: str = "plain", repeats: int = 1) -> float | None:
    """img/s of the `kind` loops (`LOOPS`) of `specs`, one after another (first batch of each untimed).

    Each model is built once and its loop run `repeats` times; its median seconds per image count
    (a baseline timed once swung from 12.5 to 21.3 img/s between runs minutes apart, BENCHMARKS.md)."""
    import torch
    from torch.utils.data import DataLoader

    from evoked.extract.cpu import available_cores

    build, batch, workers, threads = LOOPS[kind]
    if threads == "cores":
        torch.set_num_threads(available_cores())
    seconds, n = 0.0, 0
    for spec in specs:
        if spec.split(":")[0] == "color":
            continue
        forward, transform = build(spec)
        loader = DataLoader(_PilFiles(paths, transform), batch_size=batch, num_workers=workers)
        passes = []
        for _ in range(repeats):
            timed, t0 = 0, None
            with torch.no_grad():
                for x in loader:
                    forward(x)
                    if t0 is None:
                        t0 = time.perf_counter()
                    else:
                        timed += len(x)
            passes.append((time.perf_counter() - t0) / timed)
        seconds += statistics.median(passes)
        n += 1
        del forward
        gc.collect()
    return 1.0 / seconds if n else None


def user_environment() -> dict[str, str]:
    """This process's environment without the OpenMP settings this script added (`OPENMP_ADDED`,
    from `evoked.device.OPENMP_DEFAULTS`): a user's own script runs with the runtimes' defaults."""
    return {k: v for k, v in os.environ.items() if k not in OPENMP_ADDED}


def measure_plain(paths, specs, kind: str = "plain", repeats: int = 1) -> float | None:
    """`plain_loops` in a fresh Python process, as a user's script runs: with torch's default threads,
    the OpenMP runtimes' default waiting and the allocator's own state. Within one process the state
    that earlier work leaves matters: glibc's adaptive mmap threshold, which evoked fixes for its own
    runs, took a plain resnet50 loop from 14.7 to 20.4 img/s (BENCHMARKS.md, "The plain loop in its
    own process")."""
    if all(s.split(":")[0] == "color" for s in specs):
        return None
    with tempfile.TemporaryDirectory(prefix="evoked-plain-") as tmp:
        job = Path(tmp) / "plain.json"
        job.write_text(
            json.dumps(
                {"paths": [str(p) for p in paths], "specs": list(specs), "kind": kind, "repeats": repeats}
            )
        )
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), PLAIN_FLAG, str(job)],
            capture_output=True,
            text=True,
            check=False,
            env=user_environment(),
        )
    if done.returncode != 0:
        raise RuntimeError(f"the {kind} loop of {'+'.join(specs)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["img_s"]


def plain_main(job: str) -> int:
    """The child process of `measure_plain`: prints ``{"img_s": ...}``."""
    spec = json.loads(Path(job).read_text())
    img_s = plain_loops(spec["paths"], spec["specs"], spec.get("kind", "plain"), spec.get("repeats", 1))
    print(json.dumps({"img_s": img_s}))
    return 0


def options_for(specs: list[str], args):
    """The checked `ExtractOptions` of one configuration, as `evoked extract` would run it."""
    from evoked.extract.options import ExtractOptions

    return ExtractOptions(
        specs,
        weights=with_default_weights(for_config(args.weights, specs)),
        preprocess=for_config(args.preprocess, specs),
        device=args.device,
        precision=args.precision,
        decode=args.decode,
        batch_size=args.batch_size,
        workers=args.workers,
        max_pixels=args.max_pixels,
        compile=args.compile,
    ).check()


def run_config(config: str, manifest, args, tmp: Path) -> Result:
    import torch

    from evoked.extract.precision import amp_dtypes, backbone_precisions
    from evoked.extract.runner import build_backbones, cpu_settings, default_workers, place_backbones

    specs = [s.strip() for s in config.split("+") if s.strip()]
    weights = with_default_weights(for_config(args.weights, specs))
    preprocess = for_config(args.preprocess, specs)
    opts = options_for(specs, args)
    dev, prec, decoder = opts.dev, opts.run_precision, opts.decoder
    n = len(manifest)
    blocks = [list(range(s, min(s + args.batch_size, n))) for s in range(0, n, args.batch_size)]
    workers = default_workers(n, args.batch_size, dev) if args.workers is None else args.workers
    paths = [str(p) for p in manifest.abspaths()]
    max_pixels = args.max_pixels
    backbones = build_backbones(opts.plans)
    precisions = backbone_precisions(backbones, prec, dev, asked=args.precision)
    place_backbones(backbones, dev, compile=args.compile, precisions=precisions)
    load0 = os.getloadavg()[0]
    runs: dict[str, list[float]] = {"decode": [], "model": [], "e2e": []}
    failed, split = 0, {}
    cpu = {k: np.zeros(2) for k in runs}
    for _ in range(args.repeats):
        c0 = cpu_seconds()
        with cpu_settings(dev, workers) as threads:  # as `extract` runs the models
            rate, batches, failed = measure_decode(
                paths, blocks, dev, decoder, workers, max_pixels, args.warmup
            )
            runs["decode"].append(rate)
            c1 = cpu_seconds()
            runs["model"].append(measure_model(batches, backbones, dev, amp_dtypes(precisions), args.warmup))
            c2 = cpu_seconds()
        del batches
        rate, split = measure_e2e(
            manifest, tmp / "bench.h5", specs, weights, preprocess, args, workers, args.warmup
        )
        runs["e2e"].append(rate)
        c3 = cpu_seconds()
        for k, a, b in (("decode", c0, c1), ("model", c1, c2), ("e2e", c2, c3)):
            cpu[k] += b - a
    del backbones
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    decode, model, e2e = (statistics.median(runs[k]) for k in ("decode", "model", "e2e"))
    ratio = e2e / min(decode, model)
    plain = measure_plain(paths, specs, repeats=args.repeats) if args.plain else None
    tuned = measure_plain(paths, specs, "tuned", args.repeats) if args.plain else None
    return Result(
        config=config,
        backbones=specs,
        device=str(dev),
        precision=prec,
        precisions=precisions,
        decode=decoder,
        workers=workers,
        threads=threads or torch.get_num_threads(),
        batch_size=args.batch_size,
        images=n,
        weights=weights,
        decode_img_s=round(decode, 1),
        model_img_s=round(model, 1),
        e2e_img_s=round(e2e, 1),
        ratio=round(ratio, 3),
        goal_met=bool(ratio >= GOAL),
        plain_img_s=None if plain is None else round(plain, 1),
        vs_plain=None if not plain else round(round(e2e, 1) / round(plain, 1), 2),  # as the table shows
        tuned_img_s=None if tuned is None else round(tuned, 1),
        vs_tuned=None if not tuned else round(round(e2e, 1) / round(tuned, 1), 2),
        runs={k: [round(v, 1) for v in vs] for k, vs in runs.items()},
        e2e_seconds=split,
        cpu_ms_per_img={
            k: dict(zip(("user", "sys"), np.round(v * 1e3 / (n * args.repeats), 2).tolist()))
            for k, v in cpu.items()
        },
        failed=failed,
        loadavg=[round(load0, 2), round(os.getloadavg()[0], 2)],
    )


# -- report -------------------------------------------------------------------------------------------
def machine_info() -> dict:
    import torch
    import torchvision

    cpu = platform.processor()
    try:
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cuda": None,
        "command": " ".join(sys.argv),
    }
    if torch.cuda.is_available():
        info["cuda"] = torch.cuda.get_device_name(0)
    return info


def precision_label(r: Result) -> str:
    """The run's precision, and the backbones that computed in another one: ``bf16 (color: fp32)``."""
    other = [f"{name}: {p}" for name, p in r.precisions.items() if p != r.precision]
    return r.precision + (f" ({', '.join(other)})" if other else "")


def table(results: list[Result]) -> str:
    head = ("configuration", "device", "precision", "decode path", "decode img/s", "model img/s", "e2e img/s")
    head += ("e2e/min", "goal", "plain img/s", "vs plain", "tuned img/s", "vs tuned")
    rows = [
        (
            r.config,
            r.device,
            precision_label(r),
            f"{r.decode} (w={r.workers}, t={r.threads})",
            f"{r.decode_img_s:.1f}",
            f"{r.model_img_s:.1f}",
            f"{r.e2e_img_s:.1f}",
            f"{r.ratio:.2f}",
            "yes" if r.goal_met else "NO",
            "-" if r.plain_img_s is None else f"{r.plain_img_s:.1f}",
            "-" if r.vs_plain is None else f"{r.vs_plain:.2f}",
            "-" if r.tuned_img_s is None else f"{r.tuned_img_s:.1f}",
            "-" if r.vs_tuned is None else f"{r.vs_tuned:.2f}",
        )
        for r in results
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from evoked.data.decode import DEFAULT_MAX_PIXELS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--images", default=None, help="a directory or dataset spec (default: Emotion6 or synthetic)"
    )
    p.add_argument("--n", type=int, default=256, help="number of images (default 256)")
    p.add_argument(
        "--backbone",
        action="append",
        default=[],
        metavar="SPEC[+SPEC...]",
        help=f"repeatable; '+' joins backbones into one pass (default: {', '.join(DEFAULT_CONFIGS)})",
    )
    p.add_argument("--weights", action="append", default=[], help="as `evoked extract` (default: random)")
    p.add_argument("--preprocess", action="append", default=[], help="as `evoked extract`")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--workers", type=int, default=None, help="reader processes (default: as `evoked extract`)"
    )
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    p.add_argument("--decode", default="auto", choices=("auto", "cpu", "device"))
    p.add_argument("--compile", action="store_true", help="torch.compile the models (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads of this process")
    p.add_argument("--warmup", type=int, default=1, help="untimed batches at the start of each pass")
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="repeat the three passes and each baseline loop; medians are reported",
    )
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    p.add_argument("--json", action="store_true", help="print JSON instead of the table")
    p.add_argument(
        "--no-plain", dest="plain", action="store_false", help="skip the plain and tuned loops (see above)"
    )
    p.add_argument(
        "--background-load",
        type=int,
        default=0,
        metavar="K",
        help="K busy processes run during every measurement (default 0; see above)",
    )
    args = p.parse_args(argv)
    if args.n < 1 or args.batch_size < 1 or args.warmup < 1 or args.repeats < 1:
        p.error("--n, --batch-size, --warmup and --repeats must be at least 1")
    if args.plain and args.n <= TUNED_BATCH:
        p.error(
            f"--n {args.n}: the tuned loop (batch {TUNED_BATCH}) needs more than {TUNED_BATCH} images, or --no-plain"
        )
    try:
        check_count(args.background_load)
    except ValueError as e:
        p.error(str(e))
    if args.n <= args.warmup * args.batch_size:
        p.error(
            f"--n {args.n}: need more than --warmup x --batch-size = {args.warmup * args.batch_size} images"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [PLAIN_FLAG]:
        return plain_main(argv[1])
    args = parse_args(argv)
    import torch

    from evoked.errors import EvokedError

    if args.threads:
        torch.set_num_threads(args.threads)
    configs = args.backbone or list(DEFAULT_CONFIGS)
    results = []
    try:
        # every option is checked before the first model is built
        for c in configs:
            options_for(c.split("+"), args)
        with tempfile.TemporaryDirectory(prefix="evoked-bench-") as tmp:
            manifest, source = load_images(args.images, args.n, Path(tmp))
            if len(manifest) <= args.warmup * args.batch_size:
                print(f"bench: error: {source}: too few images for --warmup {args.warmup}", file=sys.stderr)
                return 2
            with BackgroundLoad(args.background_load):
                for c in configs:
                    print(f"measuring {c} ...", file=sys.stderr, flush=True)
                    results.append(run_config(c, manifest, args, Path(tmp)))
    except EvokedError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 2
    machine = machine_info()
    if args.json:
        report = {
            "machine": machine,
            "images": source,
            "goal": GOAL,
            "background_load": args.background_load,
            "results": [asdict(r) for r in results],
        }
        print(json.dumps(report, indent=2))
        return 0
    print(
        f"{machine['cpu']} ({machine['cores']} cores), torch {machine['torch']}, "
        f"{machine['threads']} threads" + (f", {machine['cuda']}" if machine["cuda"] else "")
    )
    weights = " ".join(sorted({w for r in results for w in r.weights}))
    print(f"images: {source}; batch {args.batch_size}; background load {args.background_load}")
    print(f"weights: {weights} (throughput does not depend on weight values)")
    print(table(results))
    print(
        f"goal: e2e >= {GOAL} x min(decode, model); load average (1 min) "
        + ", ".join(f"{r.loadavg[0]}->{r.loadavg[1]}" for r in results)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
