"""What the CPU offers extraction: the cores this process may use, bf16 units, and the thread policy.

Measured on a 2-core Xeon with AMX (BENCHMARKS.md, "CPU extraction"): the models are 50-100x
slower than JPEG decoding, so the models get every core and the images are decoded in the main
thread between batches (1-2% of the time), rather than by a reader process that would take a core
from the OpenMP team at random moments (the team then waits at every barrier).

On a machine whose cores other jobs already use, the same holds for their processes: a 2-thread
team with one core taken waits at every barrier for its descheduled thread, so the models get the
cores that are free when extraction starts (`free_cores`: the idle time of the allowed CPUs over a
short sample, less what this process used), not the cores the affinity allows. With one thread
there is no barrier, and how idle OpenMP threads wait (`evoked.device.OPENMP_DEFAULTS`) no longer
matters (BENCHMARKS.md, "Under load").
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import time

import torch
from torch import nn

log = logging.getLogger(__name__)

#: CPU flags (Linux /proc/cpuinfo) of units that run bf16 matrix products at speed
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


def available_cores() -> int:
    """Cores this process may run on: its affinity (what taskset, Slurm or a container granted),
    not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:  # no /proc (not Linux): no flags
        for line in f:
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def bf16_units() -> list[str]:
    """The bf16 units of this CPU that oneDNN uses, e.g. ``["amx_bf16", "avx512_bf16"]`` ([] if none)."""
    mkldnn_bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if mkldnn_bf16 is not None and not mkldnn_bf16():
        return []
    return [f for f in BF16_FLAGS if f in cpu_flags()]


def fast_bf16() -> bool:
    """Whether bf16 autocast is fast on this CPU (AMX or AVX-512 BF16); elsewhere it is emulated."""
    return bool(bf16_units())


def is_convnet(module: nn.Module) -> bool:
    """A CNN (many convolutions), as opposed to a ViT whose only convolution is its patch embedding.

    On the CPU, CNNs gain from channels_last, bf16 and small slices of a batch; ViTs lose with each."""
    convs = 0
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            convs += 1
            if convs > 1:
                return True
    return False


#: How long `free_cores` watches the CPUs (seconds): long enough for a few scheduler ticks.
FREE_CORES_SAMPLE_S = 0.25
#: A core counts as taken when other processes kept it busy at least this fraction of the sample.
BUSY_FRACTION = 0.5


def _cpu_jiffies(cpus: set[int]) -> tuple[int, int] | None:
    """(busy, total) clock ticks of `cpus` since boot, from /proc/stat; None where unreadable."""
    busy = total = 0
    try:
        with open("/proc/stat") as f:
            for line in f:
                name, _, rest = line.partition(" ")
                if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
                    continue
                ticks = [int(v) for v in rest.split()]
                idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
                total += sum(ticks[:8])
                busy += sum(ticks[:8]) - idle
    except (OSError, ValueError, IndexError):
        return None
    return (busy, total) if total else None


def _own_ticks() -> float:
    t = os.times()
    return (t.user + t.system) * os.sysconf("SC_CLK_TCK")


def free_cores(sample_s: float = FREE_CORES_SAMPLE_S) -> int:
    """Cores of this process's affinity that other processes leave free, measured over `sample_s`
    (at least 1; `available_cores` where /proc/stat cannot be read, e.g. not Linux)."""
    cores = available_cores()
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(cores))
    before, own0 = _cpu_jiffies(cpus), _own_ticks()
    if before is None:
        return cores
    time.sleep(sample_s)
    after, own1 = _cpu_jiffies(cpus), _own_ticks()
    if after is None or after[1] <= before[1]:
        return cores
    per_core = (after[1] - before[1]) / len(cpus)
    others = max(0.0, (after[0] - before[0]) - (own1 - own0)) / per_core  # cores' worth of busy
    taken = int(others // 1 + (others % 1 >= BUSY_FRACTION))
    free = max(1, min(cores, cores - taken))
    log.debug("free cores: %d of %d (others kept %.2f cores busy over %.2f s)", free, cores, others, sample_s)
    return free


def model_threads() -> int:
    """Intra-op threads of the models on the CPU: the cores free when extraction starts
    (`free_cores`; see the module docstring), unless ``OMP_NUM_THREADS`` says how many."""
    asked = os.environ.get("OMP_NUM_THREADS", "").strip()
    if asked.isdigit() and int(asked) > 0:
        return min(int(asked), available_cores())
    return free_cores()


def default_cpu_workers(n_todo: int, block_size: int) -> int:
    """Reader processes on the CPU: none, the images are decoded in the main thread (measured best;
    see the module docstring). ``--workers N`` still starts N processes when decoding is the cost
    (e.g. very large photos with a small model)."""
    return 0


def cpu_summary() -> dict:
    """For `evoked doctor`."""
    units = bf16_units()
    return {
        "cores": available_cores(),
        "free_cores": free_cores(),
        "bf16_units": units,
        "fast_bf16": bool(units),
    }
