"""Where models run: the one resolver of ``--device`` (and, with `evoked.extract.precision`'s rules,
of ``--precision``) for every command, how idle OpenMP threads wait, and how many cores are free
for the threads of a run (`free_cores`). torch loads on use."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from typing import TYPE_CHECKING

from evoked.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DEVICES = "auto, cpu, cuda or cuda:N"
_DEVICE_NAME = re.compile(r"auto|cpu|cuda(:\d+)?")

#: How idle OpenMP threads wait (BENCHMARKS.md): PASSIVE, since several runtimes (torch, faiss,
#: LightGBM) spinning on shared cores made the same work 3-10x slower; a 0.3 ms spin, since CNN layers
#: are small parallel regions back to back and a team asleep after each one made MobileNetV2 1.6x slower.
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "30000"}


def use_openmp_defaults() -> dict[str, str]:
    """Set the `OPENMP_DEFAULTS` the user has not set (returned) where a run starts, never on import:
    `evoked.cli.main`, or a script before it imports torch (OpenMP reads them when torch loads it)."""
    added = {k: v for k, v in OPENMP_DEFAULTS.items() if k not in os.environ}
    if added and "torch" in sys.modules:
        log.debug("torch was imported before %s were set: its OpenMP threads wait as before", added)
    os.environ.update(added)
    return added


# -- cores: what the models and the boosters get ------------------------------------------------------
def available_cores() -> int:
    """Cores this process may run on: its affinity (what taskset, Slurm or a container granted),
    not the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


#: How long `free_cores` watches the CPUs (seconds): long enough for a few scheduler ticks.
FREE_CORES_SAMPLE_S = 0.25
#: How long a regressor's fit watches them (LightGBM, the ridge eigensolver): fits come by the dozen.
FIT_FREE_CORES_SAMPLE_S = 0.1
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


def check_device_name(device: str, flag: str = "--device") -> str:
    """`device` when it names auto, cpu, cuda or cuda:N; checked without loading torch."""
    if not (isinstance(device, str) and _DEVICE_NAME.fullmatch(device.strip())):
        raise ConfigError(f"{flag} {device!r}: use {_DEVICES}")
    return device.strip()


def resolve_device(device: str | torch.device, flag: str = "--device") -> torch.device:
    """``auto``: the first CUDA device when torch sees one, else the CPU; anything else is checked."""
    import torch

    if isinstance(device, str) and check_device_name(device, flag) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device.strip() if isinstance(device, str) else device)
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"{flag} {device!r}: use {_DEVICES}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{flag} {device}: no CUDA device is visible to torch; use {flag} cpu (or auto)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"{flag} {device}: torch sees {torch.cuda.device_count()} CUDA device(s), "
            f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
        )
    return dev


def resolve_compute(device: str, precision: str, *, training: bool = False) -> tuple[torch.device, str]:
    """The device and the run's precision (`evoked.extract.precision.resolve_precision`)."""
    from evoked.extract.precision import resolve_precision

    dev = resolve_device(device)
    return dev, resolve_precision(precision, dev, training=training)
