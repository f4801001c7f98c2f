"""`evoked extract`: features of every image into a resumable HDF5 store."""

from __future__ import annotations

import argparse
import logging
import shlex
from contextlib import contextmanager
from pathlib import Path

from evoked.cli._common import COMMON, examples, print_json, progress
from evoked.device import PRECISIONS
from evoked.errors import ConfigError
from evoked.extract.registry import BACKBONES

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "extract",
        parents=[COMMON],
        help="extract backbone features of a dataset into an HDF5 store",
        description="Decode each image once, run every --backbone on it, and write the outputs to an HDF5 "
        "feature store, block by block. A killed run is completed with --resume; bad images are recorded "
        "as failed rows with their reason.",
        **examples(
            "evoked extract emotion6:data/emotion6 --out feats/e6.h5 --backbone resnet50 --backbone color",
            "evoked extract folder:imgs --out f.h5 --backbone tv:mobilenet_v2 --weights model.pth \\\n"
            "      --preprocess mean=0.5,std=0.5,rotate=180",
            "evoked extract folder:imgs --out f.h5 --backbone 'clip:ViT-B-32:openai@embed,scene' --device cuda",
            "torchrun --standalone --nproc-per-node 4 -m evoked extract folder:imgs --out f.h5 --backbone resnet50",
        ),
    )
    p.add_argument("dataset", help="KIND:PATH or PATH (see `evoked data inspect`)")
    p.add_argument("--out", required=True, type=Path, help="the HDF5 feature store to write")
    p.add_argument(
        "--backbone",
        action="append",
        required=True,
        metavar="SPEC",
        help=f"repeatable: {BACKBONES.describe()}; outputs with SPEC@out1,out2",
    )
    p.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="[SPEC=]default|random|PATH",
        help="pretrained weights (default), a local file, or random (explicit smoke runs); per backbone with SPEC=",
    )
    p.add_argument(
        "--preprocess",
        action="append",
        default=[],
        metavar="[SPEC=]KEY=VAL,...",
        help="override preprocessing: resize, crop, mean, std (one value or a/b/c), interpolation, mode, rotate",
    )
    p.add_argument(
        "--plugin", action="append", default=[], help="a module or .py file that registers backbones"
    )
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:N")
    p.add_argument(
        "--batch-size", type=int, default=64, help="images per batch = rows per HDF5 chunk (default 64)"
    )
    p.add_argument(
        "--workers", type=int, default=None, help="reader processes (default: cores - 1, at most 8)"
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=PRECISIONS,
        help="auto: bf16 autocast on CUDA (fp16 on GPUs without bf16); on CPUs with AMX or AVX-512 BF16, bf16 (CNNs under "
        "autocast, CLIP ViTs with bf16 weights; see docs/gpu.md), else fp32",
    )
    p.add_argument(
        "--decode",
        default="auto",
        choices=("auto", "cpu", "device"),
        help="auto: JPEGs decoded in batches on the GPU when on CUDA, else by the reader processes",
    )
    p.add_argument(
        "--shard", default=None, metavar="I/N", help="process shard I of N (writes OUT.shard-I-of-N.h5)"
    )
    p.add_argument("--resume", action="store_true", help="complete an existing store (skips finished rows)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store")
    p.add_argument("--retry-failed", action="store_true", help="with --resume: try failed rows again")
    p.add_argument("--strict", action="store_true", help="exit with status 1 if any image failed")
    p.add_argument(
        "--dtype", default="float32", choices=("float32", "float16"), help="storage type of features"
    )
    p.add_argument("--max-pixels", type=int, default=None, help="decompression-bomb limit (width x height)")
    p.add_argument("--compile", action="store_true", help="torch.compile the models (CUDA, long runs)")
    p.add_argument(
        "--layer-dim",
        type=int,
        default=None,
        metavar="D",
        help="with @layers: store each layer as a D-value sparse random projection (scikit-learn's "
        "SparseRandomProjection, seed --layer-seed); D may not exceed any layer's width",
    )
    p.add_argument("--layer-seed", type=int, default=0, help="seed of the --layer-dim projection (default 0)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument(
        "--distributed",
        default="auto",
        choices=("auto", "off"),
        help="auto: under torchrun or srun with several processes, each extracts shard RANK/WORLD_SIZE and "
        "rank 0 merges them into OUT (docs/distributed.md); off: ignore those launchers' variables",
    )
    p.add_argument(
        "--dist-timeout",
        type=float,
        default=24.0,
        metavar="HOURS",
        help="how long processes that finished wait for the slowest one (default 24)",
    )
    p.set_defaults(func=_extract)


def _options(args: argparse.Namespace) -> dict:
    """The keyword arguments of `extract` given on the command line (all but the callbacks)."""
    from evoked.data.decode import DEFAULT_MAX_PIXELS

    return dict(
        weights=args.weights,
        preprocess=args.preprocess,
        plugins=args.plugin,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        precision=args.precision,
        decode=args.decode,
        shard=args.shard,
        resume=args.resume,
        overwrite=args.overwrite,
        retry_failed=args.retry_failed,
        dtype=args.dtype,
        max_pixels=args.max_pixels or DEFAULT_MAX_PIXELS,
        compile=args.compile,
        layer_dim=args.layer_dim,
        layer_seed=args.layer_seed,
    )


def _command(args: argparse.Namespace) -> str:
    """This command line without --shard, --resume, --overwrite and output flags: for rerun hints."""
    parts = ["evoked", "extract", args.dataset, "--out", str(args.out)]
    for flag, values in (
        ("--plugin", args.plugin),
        ("--backbone", args.backbone),
        ("--weights", args.weights),
        ("--preprocess", args.preprocess),
    ):
        for v in values:
            parts += [flag, v]
    for flag, value, default in (
        ("--device", args.device, "auto"),
        ("--batch-size", args.batch_size, 64),
        ("--workers", args.workers, None),
        ("--precision", args.precision, "auto"),
        ("--decode", args.decode, "auto"),
        ("--dtype", args.dtype, "float32"),
        ("--max-pixels", args.max_pixels, None),
        ("--layer-dim", args.layer_dim, None),
        ("--layer-seed", args.layer_seed, 0),
    ):
        if value != default:
            parts += [flag, str(value)]
    parts += [f for f, on in (("--retry-failed", args.retry_failed), ("--compile", args.compile)) if on]
    return shlex.join(parts)


@contextmanager
def _progress_callbacks(args: argparse.Namespace, desc: str):
    """A progress bar fed by extract's on_start/on_batch; yields the two callbacks."""
    from evoked.extract.runner import BatchReport

    failed = [0]
    with progress(args, None, desc, "img") as bar:

        def on_start(total: int, todo: int) -> None:
            bar.reset(total=todo)
            if total != todo:
                bar.write(f"resuming: {total - todo} of {total} rows already done")

        def on_batch(r: BatchReport) -> None:
            failed[0] += r.failed
            if failed[0]:
                bar.set_postfix(failed=failed[0], refresh=False)
            bar.update(r.images)

        yield {"on_start": on_start, "on_batch": on_batch}


def _extract(args: argparse.Namespace) -> int:
    from evoked.extract.runner import extract

    if args.distributed == "auto":
        from evoked.extract.distributed import detect_launch

        launch = detect_launch()
        if launch is not None:
            return _extract_distributed(args, launch)
    with _progress_callbacks(args, "extracting") as callbacks:
        s = extract(args.dataset, args.out, args.backbone, **_options(args), **callbacks)
    if args.json:
        print_json({**{k: v for k, v in vars(s).items()}, "images_per_s": s.images_per_s})
    else:
        print(
            f"wrote {s.path}: {s.items} items; this run {s.processed} ({s.ok} ok, {s.failed} failed)"
            + (f", {s.already_done} were already done" if s.already_done else "")
        )
        print(
            f"  {s.device}, {s.precision}, decode {s.decode}: {s.seconds:.1f} s, {s.images_per_s:.1f} img/s "
            f"(waiting for images {s.read_s:.1f} s, models {s.model_s:.1f} s, writing {s.write_s:.1f} s)"
        )
        if s.failures:
            print(f"  {len(s.failures)} images failed (recorded in the store with their reason):")
            for i, (item, reason) in enumerate(s.failures.items()):
                if i == 20:
                    print(f"    ... see `evoked features info {s.path} --failures`")
                    break
                print(f"    {item}: {reason}")
        if s.failed_total > s.failed:
            print(f"  {s.failed_total} failed rows in the store in all (--retry-failed tries them again)")
    return 1 if args.strict and s.failed_total else 0


def _extract_distributed(args: argparse.Namespace, launch) -> int:
    """One shard per process; rank 0 shows progress, merges and prints the summary."""
    from datetime import timedelta

    from evoked.extract.distributed import extract_distributed, prefix_logs

    if args.dist_timeout <= 0:
        raise ConfigError(f"--dist-timeout {args.dist_timeout}: must be a positive number of hours")
    prefix_logs(launch)
    bar_args = args if launch.rank == 0 else argparse.Namespace(**{**vars(args), "quiet": True})
    with _progress_callbacks(bar_args, f"{launch.tag} extracting") as callbacks:
        s = extract_distributed(
            args.dataset,
            args.out,
            args.backbone,
            launch=launch,
            timeout=timedelta(hours=args.dist_timeout),
            command=_command(args),
            **_options(args),
            **callbacks,
        )
    if launch.rank != 0:
        # rank 0 alone speaks on stdout; a non-zero exit here would stop rank 0 under torchrun
        log.info("%s: %s done: %d rows this run", launch.tag, s.local.path, s.local.processed)
        return 0
    if args.json:
        print_json(s.to_dict())
    else:
        done = sum(r.processed for r in s.ranks)
        print(
            f"wrote {s.out}: {s.items} items from {launch.world_size} shards "
            f"({launch.launcher}); this run {done} ({sum(r.ok_rows for r in s.ranks)} ok, "
            f"{sum(r.failed_rows for r in s.ranks)} failed)"
        )
        print(f"  a view over {s.out.stem}.shard-*-of-{launch.world_size}{s.out.suffix}: keep them beside it")
        for r in s.ranks:
            print(
                f"  rank {r.rank} ({r.host}, {r.device}): {r.processed} rows in {r.seconds:.1f} s, "
                f"{r.images_per_s:.1f} img/s"
            )
        if s.failed_total:
            print(
                f"  {s.failed_total} failed rows in all: `evoked features info {s.out} --failures` lists them"
            )
    return 1 if args.strict and s.failed_total else 0
