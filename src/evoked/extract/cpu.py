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

import torch
from torch import nn

from evoked.device import available_cores, free_cores

log = logging.getLogger(__name__)

#: CPU flags (Linux /proc/cpuinfo) of units that run bf16 matrix products at speed
BF16_FLAGS = ("amx_bf16", "avx512_bf16")


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
