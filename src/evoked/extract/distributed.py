"""Extraction by several processes: torchrun or Slurm's srun starts them, each takes one shard.

Process RANK of WORLD_SIZE extracts rows ``shard_rows(n, RANK, WORLD_SIZE)`` into
``OUT.shard-RANK-of-WORLD_SIZE.h5`` (exactly what ``--shard RANK/WORLD_SIZE`` writes), on
``cuda:LOCAL_RANK`` when CUDA is used. When every rank has finished, they exchange their outcome
and rank 0 merges the shards into OUT (HDF5 virtual datasets, no copy). The shards are
independent: nothing but that final exchange goes between the processes, so a rank that failed
is completed alone later with ``--shard RANK/WORLD_SIZE --resume``, followed by
``evoked features merge OUT``.

How the launch is recognised (`detect_launch`):

- torchrun (or any launcher of ``init_method="env://"``): ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``, all set by torchrun.
- Slurm's srun: ``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS`` and ``SLURM_LOCALID``. Only srun sets
  ``SLURM_STEP_NUM_TASKS``; a batch script itself (``SLURM_NTASKS=4`` but no srun) is one process.
  The address of rank 0 is ``MASTER_ADDR`` when exported, else 127.0.0.1 for a step on one node,
  else the first host of ``SLURM_STEP_NODELIST``; the port is ``MASTER_PORT`` when exported, else
  one derived from ``SLURM_JOB_ID``. Export both when srun places task 0 elsewhere than on the
  first node, or when two multi-process steps of one job run at once.

The process group uses NCCL when the ranks run on CUDA (for plugins that want it; evoked itself
sends nothing over it) and gloo otherwise. The final exchange goes over a separate gloo group whose
timeout is long, as the ranks may finish hours apart, and which holds no GPU stream while waiting.

A launch of one process (WORLD_SIZE=1) is an ordinary run. All processes must see the same
filesystem at OUT: rank 0 reads every shard.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from datetime import timedelta
from pathlib import Path
from typing import Any

import h5py
import torch
import torch.distributed as dist

from evoked.data import Manifest, load_dataset
from evoked.device import resolve_device
from evoked.errors import ConfigError, EvokedError
from evoked.extract.options import ExtractOptions, shard_rows
from evoked.extract.runner import ExtractSummary, default_workers, extract, shard_path
from evoked.features.merge import merge_shards
from evoked.features.store import PENDING

log = logging.getLogger(__name__)

#: How long finished ranks wait for the slowest one (shards can take very different times).
DEFAULT_TIMEOUT = timedelta(hours=24)
#: How long the processes wait for each other to start.
START_TIMEOUT = timedelta(minutes=30)


class RankFailedError(EvokedError):
    """A rank could not extract its shard, or rank 0 could not merge: says how to finish by hand."""


@dataclass(frozen=True)
class Launch:
    """Where this process stands in a multi-process launch."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    launcher: str  # "torchrun" or "slurm"
    master_addr: str
    master_port: int

    @property
    def tag(self) -> str:
        return f"rank {self.rank}/{self.world_size}"

    def env(self) -> dict[str, str]:
        """The variables ``init_process_group(init_method="env://")`` reads."""
        return {
            "RANK": str(self.rank),
            "WORLD_SIZE": str(self.world_size),
            "LOCAL_RANK": str(self.local_rank),
            "LOCAL_WORLD_SIZE": str(self.local_world_size),
            "MASTER_ADDR": self.master_addr,
            "MASTER_PORT": str(self.master_port),
        }


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int:
    value = env.get(name)
    if value is None or value == "":
        if default is None:
            raise ConfigError(f"{name} is not set")
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: expected a whole number") from None


def first_host(nodelist: str) -> str:
    """The first host of a Slurm host list: ``gpu[07-09,12],cpu1`` -> ``gpu07``."""
    host, depth, i = [], 0, 0
    while i < len(nodelist):
        c = nodelist[i]
        if c == "," and depth == 0:
            break
        if c == "[":
            end = nodelist.index("]", i)
            host.append(re.split(r"[,-]", nodelist[i + 1 : end])[0])
            i = end + 1
            continue
        host.append(c)
        i += 1
    return "".join(host).strip()


def tasks_per_node(text: str, node: int) -> int:
    """``SLURM_STEP_TASKS_PER_NODE`` (``2(x3),1``) -> the task count of node `node`, counted from 0."""
    counts: list[int] = []
    for part in filter(None, text.split(",")):
        m = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not m:
            return 1
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts[node] if 0 <= node < len(counts) else 1


def detect_launch(environ: Mapping[str, str] | None = None) -> Launch | None:
    """The launch this process belongs to, or None for a single process (see the module help)."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        world = _int(env, "WORLD_SIZE")
        if world <= 1:
            return None
        missing = [k for k in ("MASTER_ADDR", "MASTER_PORT") if not env.get(k)]
        if missing:
            raise ConfigError(
                f"RANK and WORLD_SIZE are set but {' and '.join(missing)} not: launch with torchrun, "
                "or export MASTER_ADDR (the host of rank 0) and MASTER_PORT (a free port) for every process"
            )
        launch = Launch(
            rank=_int(env, "RANK"),
            world_size=world,
            local_rank=_int(env, "LOCAL_RANK", 0),
            local_world_size=_int(env, "LOCAL_WORLD_SIZE", 1),
            launcher="torchrun",
            master_addr=env["MASTER_ADDR"],
            master_port=_int(env, "MASTER_PORT"),
        )
    elif "SLURM_STEP_NUM_TASKS" in env and "SLURM_PROCID" in env:
        world = _int(env, "SLURM_STEP_NUM_TASKS")
        if world <= 1:
            return None
        nodes = _int(env, "SLURM_STEP_NUM_NODES", _int(env, "SLURM_NNODES", 1))
        addr = env.get("MASTER_ADDR") or ("127.0.0.1" if nodes == 1 else "")
        if not addr:
            nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or ""
            addr = first_host(nodelist)
        if not addr:
            raise ConfigError(
                "srun started several tasks on several nodes but the host of rank 0 is unknown: "
                'export MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)'
            )
        if env.get("MASTER_PORT"):
            port = _int(env, "MASTER_PORT")
        elif env.get("SLURM_JOB_ID"):
            port = 15000 + _int(env, "SLURM_JOB_ID") % 20000
        else:
            raise ConfigError(
                "srun started several tasks but SLURM_JOB_ID is unset: export MASTER_PORT=29500"
            )
        launch = Launch(
            rank=_int(env, "SLURM_PROCID"),
            world_size=world,
            local_rank=_int(env, "SLURM_LOCALID", 0),
            local_world_size=tasks_per_node(
                env.get("SLURM_STEP_TASKS_PER_NODE", ""), _int(env, "SLURM_NODEID", 0)
            ),
            launcher="slurm",
            master_addr=addr,
            master_port=port,
        )
    else:
        return None
    if not 0 <= launch.rank < launch.world_size:
        raise ConfigError(f"rank {launch.rank} is not below the world size {launch.world_size}")
    return launch


# -- outcome ---------------------------------------------------------------------------------------
@dataclass
class RankOutcome:
    """What one rank did, as every rank learns it at the end."""

    rank: int
    host: str
    device: str
    shard: str
    ok: bool
    error: str = ""
    items: int = 0
    processed: int = 0
    ok_rows: int = 0
    failed_rows: int = 0
    failed_total: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


@dataclass
class DistributedSummary:
    """Returned on every rank that succeeded; `merged` is True on rank 0 once OUT is written."""

    launch: Launch
    out: Path
    merged: bool
    local: ExtractSummary
    ranks: list[RankOutcome] = field(default_factory=list)

    @property
    def items(self) -> int:
        return sum(r.items for r in self.ranks)

    @property
    def failed_total(self) -> int:
        return sum(r.failed_total for r in self.ranks)

    def to_dict(self) -> dict:
        return {
            "path": str(self.out),
            "merged": self.merged,
            "world_size": self.launch.world_size,
            "launcher": self.launch.launcher,
            "items": self.items,
            "failed_total": self.failed_total,
            "ranks": [asdict(r) | {"images_per_s": r.images_per_s} for r in self.ranks],
        }


# -- the run ---------------------------------------------------------------------------------------
def _device_for(device: str, launch: Launch) -> str:
    """``auto``/``cuda`` -> ``cuda:LOCAL_RANK`` (or the one GPU a task sees); an index is kept."""
    dev = resolve_device(device)
    if dev.type != "cuda" or dev.index is not None:
        return str(dev)
    count = torch.cuda.device_count()
    if launch.local_rank < count:
        return f"cuda:{launch.local_rank}"
    if count == 1:  # one GPU bound to each task (srun --gpus-per-task=1, CUDA_VISIBLE_DEVICES)
        return "cuda:0"
    raise ConfigError(
        f"local rank {launch.local_rank} but only {count} CUDA devices are visible: start at most {count} "
        "processes per node (torchrun --nproc-per-node, srun --ntasks-per-node)"
    )


def _default_workers(n_rows: int, batch_size: int, dev: torch.device, launch: Launch) -> int:
    """Reader processes of one rank on CUDA: the cores of the node (or those Slurm bound to the
    task) shared with the node's other ranks, less one for the rank itself, at most 8."""
    n = default_workers(n_rows, batch_size, dev)
    if n == 0 or dev.type != "cuda":
        return n
    total = os.cpu_count() or 1
    bound = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else total
    mine = bound if bound < total else total // launch.local_world_size
    return min(8, max(1, mine - 1))


def _check_before_start(out: Path, world: int, n_items: int, options: dict) -> None:
    """Checks whose answer is the same on every rank, so that all stop before waiting for each other."""
    if options.get("shard"):
        raise ConfigError(
            f"--shard {options['shard']} with a launch of {world} processes: each process takes shard "
            f"RANK/{world} itself. Drop --shard, or pass --distributed off to run this process alone"
        )
    if world > n_items:
        raise ConfigError(f"{world} processes for {n_items} items: start at most {n_items} processes")
    if options.get("resume") or options.get("overwrite"):
        return
    there = [p for p in (out, *(shard_path(out, r, world) for r in range(world))) if p.exists()]
    if there:
        raise ConfigError(
            f"{', '.join(map(str, there))} exist{'s' if len(there) == 1 else ''}; pass --resume to complete "
            "the shards, or --overwrite to start over"
        )


def _rerun_hint(rank: int, world: int, out: Path, command: str | None) -> str:
    shard = f"{rank}/{world}"
    run = f"{command} --shard {shard} --resume" if command else f"extract(..., shard={shard!r}, resume=True)"
    merge = f"evoked features merge {out}" if command else f"merge_shards({str(out)!r})"
    return f"  {run}\n  {merge}"


def extract_distributed(
    dataset: str | os.PathLike | Manifest,
    out: str | os.PathLike,
    backbones: list[str] | tuple[str, ...],
    *,
    launch: Launch | None = None,
    timeout: timedelta = DEFAULT_TIMEOUT,
    command: str | None = None,
    **options: Any,
) -> DistributedSummary:
    """`extract` by every process of a torchrun or srun launch, one shard each; rank 0 merges.

    `options` are those of `extract` except `shard`. `timeout` is how long finished ranks wait for
    the others. `command` (the ``evoked extract ...`` line without --shard) makes the messages of a
    failure print the exact commands that finish the job. A rank whose shard failed raises
    `RankFailedError` after the others have finished; rank 0 then raises too and does not merge.
    """
    launch = launch if launch is not None else detect_launch()
    if launch is None:
        raise ConfigError("not launched as several processes (no RANK/WORLD_SIZE, no srun task variables)")
    out = Path(out)
    options = dict(options)
    # -- everything that fails the same way on every rank, before any process waits for another ----
    settings = {f.name for f in fields(ExtractOptions) if f.init and f.name != "shard"}  # not callbacks
    ExtractOptions(backbones, **{k: v for k, v in options.items() if k in settings}).check()
    device = _device_for(options.pop("device", "auto"), launch)
    manifest = load_dataset(dataset)
    _check_before_start(out, launch.world_size, len(manifest), options)
    options.pop("shard", None)
    rank, world = launch.rank, launch.world_size
    dev = torch.device(device)
    if options.get("workers") is None:
        start, stop = shard_rows(len(manifest), rank, world)
        options["workers"] = _default_workers(stop - start, options.get("batch_size", 64), dev, launch)
    # -- the process group: NCCL for the GPUs when on CUDA, gloo for the final exchange -------------
    os.environ.update(launch.env())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    try:
        dist.init_process_group(backend, init_method="env://", timeout=START_TIMEOUT)
        coord = dist.new_group(backend="gloo", timeout=timeout)
    except Exception as e:
        if dist.is_initialized():
            dist.destroy_process_group()
        raise RankFailedError(
            f"{launch.tag}: could not reach the other processes at {launch.master_addr}:{launch.master_port} "
            f"({type(e).__name__}: {e}); check MASTER_ADDR and MASTER_PORT"
        ) from e
    try:
        return _run(launch, coord, manifest, out, backbones, device, command, options)
    finally:
        dist.destroy_process_group()


def _run(launch, coord, manifest, out, backbones, device, command, options) -> DistributedSummary:
    rank, world = launch.rank, launch.world_size
    shard = shard_path(out, rank, world)
    host = socket.gethostname()
    local: ExtractSummary | None = None
    error: BaseException | None = None
    if rank == 0 and options.get("overwrite"):
        out.unlink(missing_ok=True)  # a merged file of an earlier run must not outlive its shards
    try:
        local = extract(manifest, out, backbones, shard=f"{rank}/{world}", device=device, **options)
        mine = RankOutcome(
            rank, host, device, str(shard), True, items=local.items, processed=local.processed,
            ok_rows=local.ok, failed_rows=local.failed, failed_total=local.failed_total,
            seconds=local.seconds,
        )  # fmt: skip
    except Exception as e:
        error = e
        mine = RankOutcome(rank, host, device, str(shard), False, error=f"{type(e).__name__}: {e}")
        if not isinstance(e, EvokedError):
            log.error("%s: extraction of %s failed", launch.tag, shard, exc_info=e)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # the models are gone; do not hold the GPU while waiting
    # -- wait for every rank and learn how it went ---------------------------------------------------
    outcomes: list[RankOutcome] = [mine] * world  # every rank's, filled in by the gather
    try:
        dist.all_gather_object(outcomes, mine, group=coord)
    except Exception as e:
        lost = (
            f"{launch.tag}: lost contact with the other processes while waiting for them ({_short(e)}); "
            f"{out} was not merged."
        )
        if error is not None:
            raise RankFailedError(lost + " " + _own_failure(launch, shard, mine, out, command)) from error
        lost += " " + _unfinished_report(out, world, command)
        if rank == 0:
            raise RankFailedError(lost) from e
        log.warning(lost)
        assert local is not None  # this rank's extract returned (error is None)
        return DistributedSummary(launch, out, False, local, [mine])
    failed = [o for o in outcomes if not o.ok]
    if failed:
        if rank == 0:  # said before the barrier: a failed rank's exit may stop this process
            log.error(_failure_report(failed, world, out, command))
        try:
            dist.barrier(group=coord)
        except Exception:
            pass
        if error is not None:
            raise RankFailedError(_own_failure(launch, shard, mine, out, command)) from error
        if rank == 0:
            raise RankFailedError(
                f"{launch.tag}: {out} was not merged: {len(failed)} of {world} processes failed (see above)"
            )
        assert local is not None  # this rank's extract returned (error is None)
        return DistributedSummary(launch, out, False, local, outcomes)
    assert local is not None  # no rank failed, this one included
    if rank != 0:
        return DistributedSummary(launch, out, False, local, outcomes)
    try:
        merge_shards(out, [shard_path(out, r, world) for r in range(world)])
    except Exception as e:
        raise RankFailedError(
            f"{launch.tag}: every shard is complete but merging them into {out} failed ({type(e).__name__}: "
            f"{e}); once fixed, run `evoked features merge {out}`"
        ) from e
    return DistributedSummary(launch, out, True, local, outcomes)


def _own_failure(launch: Launch, shard: Path, mine: RankOutcome, out: Path, command: str | None) -> str:
    return (
        f"{launch.tag} failed on {shard}: {mine.error}\n"
        f"Its finished blocks are kept. Complete this shard alone, then merge the shards into {out}:\n"
        + _rerun_hint(launch.rank, launch.world_size, out, command)
    )


def _short(e: BaseException) -> str:
    """A collective's error in one line: gloo's ``[file:line]`` prefix and advice dropped."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", (str(e).strip().splitlines() or [""])[0])
    return f"{type(e).__name__}: {text.split('. This is typically')[0]}"


def _unfinished_report(out: Path, world: int, command: str | None) -> str:
    """Which shards are not complete on disk, and the commands that complete them."""
    unfinished = []
    for r in range(world):
        p = shard_path(out, r, world)
        if not p.exists():
            unfinished.append((r, f"{p} was not started"))
            continue
        try:
            with h5py.File(p, "r", locking=False) as f:
                status = f["items/status"][:]
        except Exception as e:  # a half-created file: the rerun starts it over
            unfinished.append((r, f"{p} cannot be read ({type(e).__name__})"))
            continue
        pending = int((status == PENDING).sum())
        if pending:
            unfinished.append((r, f"{p} has {pending} of {len(status)} rows pending"))
    if not unfinished:
        return f"Every shard is complete on disk; merge them:\n  evoked features merge {out}"
    hints = [_rerun_hint(r, world, out, command).splitlines() for r, _ in unfinished]
    lines = ["Unfinished shards (their processes may still run, or have died):"]
    lines += [f"  rank {r}: {why}" for r, why in unfinished]
    lines.append("Complete each alone, then merge:")
    return "\n".join(lines + [h[0] for h in hints] + [hints[0][1]])


def _failure_report(failed: list[RankOutcome], world: int, out: Path, command: str | None) -> str:
    lines = [
        f"{len(failed)} of {world} processes failed, so {out} was not merged (the other shards are complete):"
    ]
    lines += [f"  rank {o.rank} ({o.host}, {o.device}): {o.error}" for o in failed]
    lines.append("Complete each failed shard alone (any machine, one process each), then merge:")
    hints = [_rerun_hint(o.rank, world, out, command).splitlines() for o in failed]
    lines += [h[0] for h in hints] + [hints[0][1]]
    return "\n".join(lines)


class RankLogFormatter(logging.Formatter):
    """Prefixes every log line of this process with its rank."""

    def __init__(self, inner: logging.Formatter | None, launch: Launch):
        super().__init__()
        self.inner = inner or logging.Formatter()
        self.prefix = f"[{launch.tag}] "

    def format(self, record: logging.LogRecord) -> str:
        return self.prefix + self.inner.format(record)


def prefix_logs(launch: Launch) -> None:
    """Make the root logger's handlers write ``[rank R/N]`` before each line."""
    for h in logging.getLogger().handlers:
        if not isinstance(h.formatter, RankLogFormatter):
            h.setFormatter(RankLogFormatter(h.formatter, launch))
