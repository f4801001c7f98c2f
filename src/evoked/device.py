"""Where and how models run: the one resolver of ``--device`` and ``--precision``, and how idle
OpenMP threads wait.

Extraction, fine-tuning, the MLP regressor, `predict`, search and serve resolve their device here;
`resolve_compute` adds the run's precision, whose rules (what ``auto`` gives, what each backbone
computes in) are in `evoked.extract.precision`. torch is imported on use: the CLI reads
`PRECISIONS` for its choices, and sets `OPENMP_DEFAULTS`, before anything loads it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

from evoked.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_DEVICES = "auto, cpu, cuda or cuda:N"

#: How idle OpenMP threads wait, where the user has not said (BENCHMARKS.md):
#: - OMP_WAIT_POLICY=PASSIVE: with several runtimes in one process (torch, faiss, LightGBM), or with
#:   the cores shared, threads that spin without end made the same work 3-10x slower on a 2-core
#:   machine (the regression tests: 97 s against 9 s). Passive also means no spinning at all when a
#:   runtime has more threads than cores.
#: - GOMP_SPINCOUNT=30000 (about 0.3 ms): a CNN on the CPU is thousands of small parallel regions
#:   back to back, and threads that went to sleep after each one took 1.6x longer for MobileNetV2
#:   ("OpenMP threads spin briefly"); a short spin keeps them awake between layers.
OPENMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "30000"}


def use_openmp_defaults() -> dict[str, str]:
    """Set the `OPENMP_DEFAULTS` the user has not set; returns those it set. Called where a run
    starts (`evoked.cli.main`; a script calls it before importing torch), never on import: each
    OpenMP runtime reads them once, when it is loaded (torch's when torch is imported)."""
    added = {k: v for k, v in OPENMP_DEFAULTS.items() if k not in os.environ}
    if added and "torch" in sys.modules:
        log.debug("torch was imported before %s were set: its OpenMP threads wait as before", added)
    os.environ.update(added)
    return added


def resolve_device(device: str | torch.device, flag: str = "--device") -> torch.device:
    """``auto``: the first CUDA device when torch sees one, else the CPU; anything else is checked."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"{flag} {device!r}: use {_DEVICES}") from e
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
    """The device and the run's precision (`evoked.extract.precision.resolve_precision`);
    `training`: ``auto`` keeps fp32 on the CPU, where bf16 was measured for extraction only."""
    from evoked.extract.precision import resolve_precision

    dev = resolve_device(device)
    return dev, resolve_precision(precision, dev, training=training)
