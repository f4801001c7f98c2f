"""The extraction runner: reader -> every backbone on the device -> writer thread -> HDF5 store.

Each image is decoded once and feeds every backbone; each backbone resizes and normalises it on
the device. Blocks of `batch_size` rows are the unit of work, of writing and of resuming.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from evoked import __version__
from evoked.clock import utc_now
from evoked.data import Manifest, load_dataset
from evoked.data.decode import DEFAULT_MAX_PIXELS
from evoked.errors import ConfigError
from evoked.extract.backbone import Backbone, normalize, resize_crop
from evoked.extract.cpu import available_cores, default_cpu_workers, is_convnet, model_threads
from evoked.extract.fold import fold_batch_norms
from evoked.extract.layers import writes_layers
from evoked.extract.options import BackbonePlan, ExtractOptions, check_resume_options, shard_rows
from evoked.extract.precision import AMP_DTYPES, AmpDtype, amp_dtypes, backbone_precisions, dtype_for
from evoked.extract.prefetch import gathered_batches
from evoked.extract.reader import collate
from evoked.extract.registry import comparable_config, create_backbone
from evoked.extract.sinks import Block, Sink, StoreSink
from evoked.extract.sources import open_source
from evoked.features.lock import claim_file, output_lock
from evoked.features.store import (
    FAILED,
    PENDING,
    ExtractorSpec,
    FeatureStore,
    OutputSpec,
    ShardInfo,
    ids_fingerprint,
)

log = logging.getLogger(__name__)


@dataclass
class BatchReport:
    """Passed to `on_batch` after each block is written."""

    images: int
    ok: int
    failed: int
    read_s: float
    model_s: float
    write_s: float


@dataclass
class ExtractSummary:
    path: Path
    items: int
    already_done: int
    processed: int
    ok: int
    failed: int
    failed_total: int
    seconds: float
    read_s: float
    model_s: float
    write_s: float
    device: str
    precision: str
    decode: str
    failures: dict[str, str] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def shard_path(out: Path, index: int, count: int) -> Path:
    """``feats.h5`` -> ``feats.shard-2-of-8.h5``."""
    return out.with_name(f"{out.stem}.shard-{index}-of-{count}{out.suffix}")


def build_backbones(plans: Sequence[BackbonePlan], layer_projection: dict | None = None) -> list[Backbone]:
    """The models of `ExtractOptions.plans` (options checked before: see `ExtractOptions.check`);
    `layer_projection` (``--layer-dim``) projects the layer outputs of those that write them."""
    built = [
        create_backbone(p.spec, p.weights, p.preprocess, layer_projection if writes_layers(p) else None)
        for p in plans
    ]
    names = [b.name for b in built]
    if len(set(names)) != len(names):
        raise ConfigError(
            f"two backbones write the same feature group {names}; extract them into separate files"
        )
    return built


def extractor_specs(
    backbones: Sequence[Backbone], device: str, precisions: dict[str, str]
) -> list[ExtractorSpec]:
    specs = []
    for bb in backbones:
        attrs_of = {**bb.output_attrs, **bb.layer_attrs()}  # a layer's name, depth and dim
        outs = tuple(OutputSpec(o, bb.outputs[o], attrs_of.get(o, {})) for o in bb.active_outputs)
        attrs = {
            "config": bb.config(),
            "spec": bb.spec,
            "model": bb.description,
            "weights": bb.weights.source,
            "weights_tag": bb.weights.tag,
            "weights_sha256": bb.weights.sha256 or "",
            "preprocess": bb.preprocess.to_dict(),
            "device": device,
            "precision": precisions[bb.name],
            "created": utc_now(),
        }
        specs.append(ExtractorSpec(bb.name, outs, attrs))
    return specs


def check_resumable(
    store: FeatureStore,
    manifest: Manifest,
    backbones: Sequence[Backbone],
    precision: str,
    precisions: dict[str, str],
) -> None:
    """A resumed run must write what the first run wrote; say exactly what differs."""
    if store.attrs.get("ids_sha256") != ids_fingerprint(manifest.ids):
        raise ConfigError(
            f"{store.path} was made for a different list of items than {manifest.name!r} now gives "
            "(items added, removed or reordered); write to a new --out, or pass --overwrite to start over"
        )
    have = store.extractors
    want = {bb.name: bb for bb in backbones}
    if set(have) != set(want):
        raise ConfigError(
            f"{store.path} holds features of {sorted(have)} but this run asks for {sorted(want)}; "
            "resume with the same --backbone flags, or write to a new --out"
        )
    for name, bb in want.items():
        old = comparable_config(have[name].get("config", {}))
        new = comparable_config(bb.config())
        if old != new:
            diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
            raise ConfigError(
                f"{store.path}: backbone {name} differs from the first run in {', '.join(diff)} "
                f"(was {[old.get(k) for k in diff]}, now {[new.get(k) for k in diff]}); "
                "resume with the same flags, or write to a new --out"
            )
    if store.attrs.get("precision") != precision:
        raise ConfigError(
            f"{store.path} was extracted with --precision {store.attrs.get('precision')}; resume with the same "
            "precision so that all rows are comparable"
        )
    for name, want_p in precisions.items():
        had = have[name].get("precision", want_p)
        if had != want_p:
            raise ConfigError(
                f"{store.path}: backbone {name} was computed in {had}, this run would compute it in {want_p} "
                "(on the CPU, --precision fp32 keeps ViTs in fp32, auto and bf16 give them bf16 weights "
                f"where the CPU has bf16 units); resume with the --precision that computes it in {had}"
            )


class _Writer(threading.Thread):
    """Writes blocks to the sinks off the critical path; a bounded queue keeps memory flat."""

    def __init__(self, sinks: Sequence[Sink], on_written: Callable[[int, float], None]):
        super().__init__(daemon=True, name="evoked-writer")
        self.sinks, self.on_written = sinks, on_written
        self.queue: queue.Queue[Block | None] = queue.Queue(maxsize=4)
        self.error: BaseException | None = None

    def put(self, block: Block | None) -> None:
        while True:
            if self.error is not None:
                raise self.error
            if not self.is_alive():
                raise RuntimeError("the HDF5 writer thread stopped unexpectedly")
            try:
                self.queue.put(block, timeout=0.5)
                return
            except queue.Full:
                continue

    def run(self) -> None:
        while True:
            block = self.queue.get()
            if block is None:
                return
            if self.error is not None:
                continue  # drain after a failure
            try:
                t0 = time.perf_counter()
                for sink in self.sinks:
                    sink.write(block)
                self.on_written(int(block.ok.sum()), time.perf_counter() - t0)
            except BaseException as e:  # re-raised in the main thread
                self.error = e


def channels_last(bb: Backbone, dev: torch.device) -> bool:
    """Every model on CUDA; CNNs on the CPU (exact in fp32, 1.4-1.9x faster; ViTs gain nothing)."""
    return dev.type == "cuda" or is_convnet(bb.module)


def place_backbones(
    backbones: Sequence[Backbone],
    dev: torch.device,
    *,
    compile: bool = False,
    precisions: dict[str, str] | None = None,
) -> None:
    """Ready the models for inference on the device: CNNs on the CPU get their batch norms folded
    (`evoked.extract.fold`); channels_last where `channels_last` says; a ViT that computes in bf16 on
    the CPU (`precisions`, from `backbone_precisions`) gets its weights converted; then optionally
    compiled."""
    for bb in backbones:
        bb.module.eval().to(dev)
        convnet = is_convnet(bb.module)
        if dev.type == "cpu" and convnet:
            fold_batch_norms(bb.module)
        if channels_last(bb, dev):
            bb.module.to(memory_format=torch.channels_last)
        dtype = AMP_DTYPES[(precisions or {}).get(bb.name, "fp32")]
        if dev.type == "cpu" and dtype is not None and not convnet and bb.to_low_precision is not None:
            bb.to_low_precision(dtype)
            bb.weights_dtype = dtype
        if compile:
            bb.module = torch.compile(bb.module)


def default_workers(n_todo: int, block_size: int, dev: torch.device) -> int:
    """Reader processes when --workers is not given; none for a single block.

    Feeding a GPU takes many: the cores this process may use (its affinity) less one, at most 8.
    On the CPU the models need the cores: see `evoked.extract.cpu.default_cpu_workers`.
    """
    if n_todo <= block_size:
        return 0
    if dev.type == "cpu":
        return default_cpu_workers(n_todo, block_size)
    return min(8, max(1, available_cores() - 1))


def cpu_threads(workers: int) -> int:
    """Intra-op threads for the models on the CPU: the cores other processes leave free
    (`model_threads`), less one for each reader process asked for with --workers. An OpenMP team
    that shares its cores with other busy processes waits at every barrier for its descheduled thread."""
    return max(1, model_threads() - workers)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (glibc malloc.h)


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@contextmanager
def cpu_settings(dev: torch.device, workers: int, threads: int | None = None) -> Iterator[int | None]:
    """How the models run on the CPU, for the duration; yields the intra-op threads (None on CUDA).

    Threads: `threads`, else `cpu_threads` (counted when the run starts, once). Memory: glibc gives the free top of its heap back to the kernel once
    it exceeds twice the largest block freed so far, so every slice of a batch page-faulted its
    activations in again (a fifth of the CPU time of MobileNet); freed memory is kept during the run
    and handed back at the end, leaving malloc where its own adaptive thresholds would settle.
    """
    if dev.type != "cpu":
        yield None
        return
    threads, before = threads or cpu_threads(workers), torch.get_num_threads()
    libc = _glibc()
    torch.set_num_threads(threads)
    if libc is not None:
        libc.mallopt(_M_MMAP_THRESHOLD, 32 << 20)  # glibc's own upper limit for its adaptive threshold
        libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
        if libc is not None:
            libc.mallopt(_M_TRIM_THRESHOLD, 64 << 20)
            libc.malloc_trim(0)


def make_loader(
    paths: Manifest | Sequence[str],
    blocks: Sequence[Sequence[int]],
    dev: torch.device,
    decoder: str,
    workers: int,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> DataLoader:
    """The reader: one batch per block of rows, decoded by `workers` processes (see `evoked.extract.sources`)."""
    reader = open_source(paths, device_jpeg=decoder == "device", max_pixels=max_pixels)
    return DataLoader(
        reader,
        batch_sampler=[list(b) for b in blocks],
        num_workers=workers,
        collate_fn=collate,
        pin_memory=dev.type == "cuda",
        prefetch_factor=4 if workers else None,
    )


#: On the CPU a batch goes through preprocessing and the models in slices of about this many pixels
#: (4 images at 224 x 224). A whole batch's activations are blocks of tens to hundreds of MB: glibc
#: gives such blocks back to the kernel when they are freed and the next layer page-faults them in
#: again, zero-filled, which cost more system time than the models' own compute. Slices stay in the
#: heap and in the caches.
CPU_SLICE_PIXELS = 4 * 224 * 224


def run_backbones(
    images: list[torch.Tensor], backbones: Sequence[Backbone], device: torch.device, amp_dtype: AmpDtype
) -> dict[str, np.ndarray]:
    """Every backbone on one batch; backbones with the same geometry share the resized batch.

    `amp_dtype`: one autocast dtype (or None) for every backbone that allows it, or a mapping by
    backbone name (`evoked.extract.precision.amp_dtypes`). On the CPU, CNNs run in slices of
    `CPU_SLICE_PIXELS`; other models (ViTs: slices cost them a third, BENCHMARKS.md) see the whole batch.
    """
    if device.type != "cpu" or len(images) <= 1:
        return _run_slice(images, backbones, device, amp_dtype)
    sliced = [bb for bb in backbones if is_convnet(bb.module)]
    whole = [bb for bb in backbones if not is_convnet(bb.module)]
    out = _run_slice(images, whole, device, amp_dtype) if whole else {}
    if sliced:
        step = max(1, CPU_SLICE_PIXELS // max(bb.preprocess.size for bb in sliced) ** 2)
        parts = [
            _run_slice(images[i : i + step], sliced, device, amp_dtype) for i in range(0, len(images), step)
        ]
        out.update(
            {k: np.concatenate([p[k] for p in parts]) if len(parts) > 1 else parts[0][k] for k in parts[0]}
        )
    return {f"{bb.name}/{o}": out[f"{bb.name}/{o}"] for bb in backbones for o in bb.active_outputs}


def _run_slice(
    images: list[torch.Tensor], backbones: Sequence[Backbone], device: torch.device, amp_dtype: AmpDtype
) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    resized: dict[tuple, torch.Tensor] = {}
    for bb in backbones:
        key = bb.preprocess.geometry
        if key not in resized:
            resized[key] = resize_crop(images, bb.preprocess)
        x = normalize(resized[key], bb.preprocess)
        if channels_last(bb, device):
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = dtype_for(bb, amp_dtype)
        if bb.weights_dtype is not None:  # converted weights (place_backbones): no autocast around
            x, dtype = x.to(bb.weights_dtype), None
        ctx = torch.autocast(device_type=device.type, dtype=dtype) if dtype is not None else nullcontext()
        bb.tap_layers()  # layer hooks on only when layer outputs are written
        with ctx:
            result = bb.module(x)
        for name in bb.active_outputs:
            out[f"{bb.name}/{name}"] = result[name].float().cpu().numpy()
    return out


def extract(
    dataset: str | Manifest,
    out: str | os.PathLike,
    backbones: Sequence[str],
    *,
    on_start: Callable[[int, int], None] | None = None,
    on_batch: Callable[[BatchReport], None] | None = None,
    sink: Sink | None = None,
    **options: Any,
) -> ExtractSummary:
    """Extract features of every item of `dataset` into the HDF5 store `out`.

    `dataset` is the source: a dataset spec or a `Manifest`, read by the source registered for its
    kind (`evoked.extract.sources`). Every block goes to the store (`StoreSink`, which resume, merge
    and the indexes stand on) and then to `sink` when one is given. `options` are the fields of
    `ExtractOptions` (weights, device, precision, batch_size, ...), all checked before any model
    loads. `on_start(total_items, items_to_do)` and `on_batch(report)` let a caller show progress.
    Returns counts and timings; failed images are recorded rows, listed in `failures`.
    """
    t_start = time.perf_counter()
    opts = ExtractOptions(backbones, **options).check()
    out = Path(out) if opts.shard_index is None else shard_path(Path(out), *opts.shard_index)
    with output_lock(out):  # one writer per output for the whole run (evoked.features.lock)
        manifest, shard_info = _source(dataset, out, opts)
        built = build_backbones(opts.plans, opts.layer_projection)
        precisions = backbone_precisions(built, opts.run_precision, opts.dev, asked=opts.precision)
        place_backbones(built, opts.dev, compile=opts.compile, precisions=precisions)
        todo, workers, run, n_items, threads = _open_store(out, manifest, built, precisions, opts, shard_info)
        claim_file(out)  # the store exists now: lock it by inode too (no writer through a hard link)
        n_todo = int(sum(len(r) for _, r in todo))
        if on_start:
            on_start(n_items, n_todo)
        loader = make_loader(
            manifest, [r.tolist() for _, r in todo], opts.dev, opts.decoder, workers, opts.max_pixels
        )
        # Reader processes are forked when the iterator starts. The store must not be open then:
        # a forked child would inherit its file lock and hold it after this process is killed.
        batches = gathered_batches(iter(loader), opts.dev, opts.max_pixels)
        with FeatureStore(out, "r+") as store, cpu_settings(opts.dev, workers, threads):
            sinks = [StoreSink(store, run)] + ([sink] if sink is not None else [])
            totals, failures = _loop(
                sinks, batches, todo, manifest, built, opts.dev, amp_dtypes(precisions), on_batch
            )
            failed_total = store.counts()["failed"]
        return ExtractSummary(
            path=out,
            items=n_items,
            already_done=n_items - n_todo,
            processed=n_todo,
            failed_total=failed_total,
            seconds=time.perf_counter() - t_start,
            device=str(opts.dev),
            precision=opts.run_precision,
            decode=opts.decoder,
            failures=failures,
            **totals,
        )


def _source(dataset: str | Manifest, out: Path, opts: ExtractOptions) -> tuple[Manifest, ShardInfo | None]:
    """The items of this run (one shard's with --shard), to go to `out`."""
    manifest, shard_info = load_dataset(dataset), None
    if opts.shard_index is not None:
        i, n = opts.shard_index
        start, stop = shard_rows(len(manifest), i, n)
        shard_info = ShardInfo(i, n, start, stop, len(manifest), ids_fingerprint(manifest.ids))
        manifest = manifest.subset(np.arange(start, stop))
    if out.exists() and not (opts.resume or opts.overwrite):
        raise ConfigError(f"{out} exists; pass --resume to complete it, or --overwrite to start over")
    return manifest, shard_info


def _open_store(
    out: Path,
    manifest: Manifest,
    built: Sequence[Backbone],
    precisions: dict[str, str],
    opts: ExtractOptions,
    shard_info: ShardInfo | None,
) -> tuple[list[tuple[int, np.ndarray]], int, int, int, int | None]:
    """Create the store (or check a resumed one); returns the blocks to do, readers, run and rows."""
    if out.exists() and opts.resume:
        store = FeatureStore(out, "r+")
        try:
            check_resumable(store, manifest, built, opts.run_precision, precisions)
            check_resume_options(out, store.attrs, opts.row_options, opts.batch_size)
        except BaseException:
            store.close()
            raise
    else:
        # the reader's notes (files left out, what a truncated tar lost) stay with the features
        attrs = {"precision": opts.run_precision, "dataset_notes": list(manifest.notes), **opts.row_options}
        specs = extractor_specs(built, str(opts.dev), precisions)
        store = FeatureStore.create(
            out, manifest, specs, block_size=opts.batch_size, dtype=opts.dtype, shard=shard_info, attrs=attrs
        )
    with store:
        todo = _blocks_to_do(store, opts.retry_failed)
        n_todo = int(sum(len(r) for _, r in todo))
        workers = (
            default_workers(n_todo, store.block_size, opts.dev) if opts.workers is None else opts.workers
        )
        threads = cpu_threads(workers) if opts.dev.type == "cpu" else None
        run = store.record_run(_run_record(opts, workers, threads, n_todo))
        return todo, workers, run, len(store), threads


def _blocks_to_do(store: FeatureStore, retry_failed: bool) -> list[tuple[int, np.ndarray]]:
    """Blocks with rows still to do, and those rows (a killed block is redone whole)."""
    status = store.status
    todo = []
    for b in range(store.n_blocks):
        rows = store.block_rows(b)
        st = status[rows]
        want = (st == PENDING) | ((st == FAILED) if retry_failed else False)
        if want.any():
            todo.append((b, rows[want]))
    return todo


def _run_record(opts: ExtractOptions, workers: int, threads: int | None, n_todo: int) -> dict:
    dev = opts.dev
    return {
        "started": utc_now(),
        "evoked_version": __version__,
        "torch": torch.__version__,
        "device": str(dev) + (f" ({torch.cuda.get_device_name(dev)})" if dev.type == "cuda" else ""),
        "precision": opts.run_precision,
        "decode": opts.decoder,
        "workers": workers,
        "threads": threads or torch.get_num_threads(),
        "rows_to_do": n_todo,
        "host": platform.node(),
        "command": " ".join(sys.argv),
    }


def _loop(sinks, batches, todo, manifest, backbones, dev, amp_dtype, on_batch) -> tuple[dict, dict]:
    """Read -> models -> writer queue, block by block. Returns totals and the new failures."""
    totals = {"ok": 0, "failed": 0, "read_s": 0.0, "model_s": 0.0, "write_s": 0.0}
    failures: dict[str, str] = {}
    written: queue.SimpleQueue = queue.SimpleQueue()  # write seconds reported by the writer thread
    writer = _Writer(sinks, lambda n_ok, write_s: written.put(write_s))
    writer.start()
    empty = {
        f"{bb.name}/{o}": np.zeros((0, bb.outputs[o]), np.float32)
        for bb in backbones
        for o in bb.active_outputs
    }
    try:
        t_wait = time.perf_counter()
        with torch.inference_mode():
            for (images, positions, errors), (block, rows) in zip(batches, todo):
                read_s = time.perf_counter() - t_wait
                t0 = time.perf_counter()
                feats = run_backbones(images, backbones, dev, amp_dtype) if images else empty
                model_s = time.perf_counter() - t0
                ok = np.zeros(len(rows), dtype=bool)
                ok[positions] = True
                for k, reason in errors.items():
                    failures[manifest.ids[rows[k]]] = reason
                writer.put(
                    Block(
                        block, rows, feats, ok, {int(rows[k]): r for k, r in errors.items()}, read_s, model_s
                    )
                )
                write_s = 0.0
                while not written.empty():
                    write_s += written.get()
                for key, value in (
                    ("ok", int(ok.sum())),
                    ("failed", len(errors)),
                    ("read_s", read_s),
                    ("model_s", model_s),
                    ("write_s", write_s),
                ):
                    totals[key] += value
                if on_batch:
                    on_batch(BatchReport(len(rows), int(ok.sum()), len(errors), read_s, model_s, write_s))
                t_wait = time.perf_counter()
        writer.put(None)
        writer.join()
        if writer.error is not None:
            raise writer.error
    finally:
        if writer.is_alive():
            writer.queue.put(None)
            writer.join(timeout=60)
    while not written.empty():
        totals["write_s"] += written.get()
    return totals, failures
