"""Where models run: the one resolver of ``--device`` (and, with `evoked.extract.precision`'s rules,
of ``--precision``) for every command, and how idle OpenMP threads wait. torch loads on use."""

from __future__ import annotations

import logging
import os
import re
import sys
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
