"""What the CPU offers extraction: the cores this process may use, bf16 units, and the thread policy.

Measured on a 2-core Xeon with AMX (BENCHMARKS.md, "CPU extraction"): the models are 50-100x
slower than JPEG decoding, so the models get every core and the images are decoded in the main
thread between batches (1-2% of the time), rather than by a reader process that would take a core
from the OpenMP team at random moments (the team then waits at every barrier). On a machine whose
cores other jobs already use, fewer threads can win: there, pass --workers 1 (one reader, one
thread fewer).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os

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


def model_threads() -> int:
    """Intra-op threads of the models on the CPU: every available core (see the module docstring)."""
    return available_cores()


def default_cpu_workers(n_todo: int, block_size: int) -> int:
    """Reader processes on the CPU: none, the images are decoded in the main thread (measured best;
    see the module docstring). ``--workers N`` still starts N processes when decoding is the cost
    (e.g. very large photos with a small model)."""
    return 0


def cpu_summary() -> dict:
    """For `evoked doctor`."""
    units = bf16_units()
    return {"cores": available_cores(), "bf16_units": units, "fast_bf16": bool(units)}
