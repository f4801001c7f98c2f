"""Compute precision of a run and of each backbone in it.

A run has one precision (``--precision``, recorded in the store and checked on ``--resume``);
each backbone computes in it where that helps and in fp32 where not:

- backbones that opt out of autocast (colour statistics) are fp32 everywhere;
- on the CPU, bf16 applies to CNNs only: a ViT is slower in CPU bf16 than in fp32 (BENCHMARKS.md);
- on a GPU without bf16 support, ``auto`` falls back to fp16 with a message.

Each backbone's own precision is recorded in its feature group (``precision`` attribute).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import torch

from evoked.errors import ConfigError
from evoked.extract.backbone import Backbone
from evoked.extract.cpu import bf16_units, fast_bf16, is_convnet

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

#: What ``--precision auto`` gives on a CPU with fast bf16 units. Measured on Emotion6 with the real
#: MobileNetV2 weights (BENCHMARKS.md, "CPU bf16"): see there for the numbers behind this choice.
CPU_AUTO_BF16 = True


def cuda_bf16_supported(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported())


def resolve_precision(precision: str, device: torch.device) -> str:
    """The run's precision.

    ``auto``: bf16 autocast on CUDA (fp16 on GPUs without bf16); on the CPU, bf16 for CNNs where
    the CPU has AMX or AVX-512 BF16 (`CPU_AUTO_BF16`), else fp32.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        if precision in ("auto", "bf16") and not cuda_bf16_supported(device):
            if precision == "bf16":
                raise ConfigError(
                    f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16 support; "
                    "use --precision fp16 (or auto, which picks it) or fp32"
                )
            log.warning(
                "%s has no bfloat16 support: extracting under fp16 autocast (--precision fp32 for full precision)",
                torch.cuda.get_device_name(device),
            )
            return "fp16"
        return "bf16" if precision == "auto" else precision
    if precision == "fp16":
        raise ConfigError("--precision fp16 needs CUDA; on the CPU use fp32 (or bf16)")
    if precision == "auto":
        return "bf16" if CPU_AUTO_BF16 and fast_bf16() else "fp32"
    if precision == "bf16" and not fast_bf16():
        log.warning(
            "--precision bf16: this CPU has no AMX or AVX-512 BF16 units, so bf16 is emulated and slower "
            "than fp32; use --precision fp32"
        )
    return precision


def backbone_precision(bb: Backbone, precision: str, device: torch.device) -> str:
    """What `bb` computes in within a run of `precision` (see the module docstring)."""
    if precision == "fp32" or not bb.amp:
        return "fp32"
    if device.type == "cpu" and precision == "bf16" and not is_convnet(bb.module):
        return "fp32"
    return precision


def amp_dtypes(backbones: Sequence[Backbone], precision: str, device: torch.device) -> dict[str, torch.dtype | None]:
    """Autocast dtype (None: none) of each backbone, by feature-group name."""
    return {bb.name: AMP_DTYPES[backbone_precision(bb, precision, device)] for bb in backbones}


def dtype_for(bb: Backbone, amp: torch.dtype | None | Mapping[str, torch.dtype | None]) -> torch.dtype | None:
    """`amp` is one dtype for every backbone (as before) or a mapping from `amp_dtypes`."""
    if isinstance(amp, Mapping):
        return amp.get(bb.name)
    return amp if bb.amp else None


def describe_cpu_bf16() -> str:
    units = bf16_units()
    return f"bf16 units: {', '.join(units)}" if units else "no bf16 units (bf16 is emulated, slower than fp32)"
