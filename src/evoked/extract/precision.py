"""Compute precision of a run and of each backbone in it.

A run has one precision (``--precision``, recorded in the store and checked on ``--resume``);
each backbone computes in it where that helps and in fp32 where not:

- backbones that opt out of autocast (colour statistics) are fp32 everywhere;
- on the CPU, CNNs compute under bf16 autocast. A ViT under CPU autocast is slower than in fp32,
  but with its weights in bf16 (open_clip's own ``precision="bf16"``) faster (BENCHMARKS.md,
  "Precision that auto picks": `bench/vit_precision.py`): so a ViT that can convert its weights
  (`Backbone.to_low_precision`) runs so, under ``auto`` (`CPU_AUTO_BF16_VIT`) and ``bf16``;
  ``--precision fp32`` keeps it (and everything else) in fp32;
- on a GPU without bf16 support, ``auto`` falls back to fp16 with a message; training keeps
  ``auto`` fp32 on the CPU (bf16 was measured for extraction only).

Each backbone's own precision is recorded in its feature group (``precision`` attribute).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TypeAlias

import torch

from evoked.device import PRECISIONS
from evoked.errors import ConfigError
from evoked.extract.backbone import Backbone
from evoked.extract.cpu import fast_bf16, is_convnet

log = logging.getLogger(__name__)

AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: One compute dtype (None: fp32) for every backbone, or one per backbone name (`amp_dtypes`).
AmpDtype: TypeAlias = torch.dtype | None | Mapping[str, torch.dtype | None]

#: What ``--precision auto`` gives on a CPU with fast bf16 units. Measured on Emotion6 with the real
#: MobileNetV2 weights (BENCHMARKS.md, "CPU bf16"): see there for the numbers behind this choice.
CPU_AUTO_BF16 = True

#: Whether ``auto`` also gives ViTs bf16 weights on such a CPU. On: measured with `bench/vit_precision.py`
#: on Emotion6 (BENCHMARKS.md, "Precision that auto picks"), ViT-B-32 in bf16 weights ran 1.7x the
#: fp32 speed (autocast ran slower than fp32) with embeddings at cosine 0.9999 and 98% top-1 scene
#: agreement. Those are random weights (no trained CLIP weights could be fetched here); with real
#: ones at hand, `bench/vit_precision.py --backbone clip:ViT-B-32:openai --weights default` and
#: `bench/cpu_precision.py --backbone clip:ViT-B-32:openai --weights default` check this choice.
CPU_AUTO_BF16_VIT = True


def cuda_bf16_supported(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported())


def resolve_precision(precision: str, device: torch.device, *, training: bool = False) -> str:
    """The run's precision (reached through `evoked.device.resolve_compute`).

    ``auto``: bf16 autocast on CUDA (fp16 on GPUs without bf16); on the CPU, bf16 for CNNs where
    the CPU has AMX or AVX-512 BF16 (`CPU_AUTO_BF16`), else fp32, and fp32 for `training`.
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
        return "bf16" if CPU_AUTO_BF16 and not training and fast_bf16() else "fp32"
    if precision == "bf16" and not fast_bf16():
        log.warning(
            "--precision bf16: this CPU has no AMX or AVX-512 BF16 units, so bf16 is emulated and slower "
            "than fp32; use --precision fp32"
        )
    return precision


def backbone_precision(bb: Backbone, precision: str, device: torch.device, asked: str = "auto") -> str:
    """What `bb` computes in within a run of the resolved `precision`; `asked` is what --precision
    said (``auto`` and ``bf16`` differ for ViTs on the CPU; see the module docstring)."""
    if precision == "fp32" or not bb.amp:
        return "fp32"
    if device.type == "cpu" and precision == "bf16" and not is_convnet(bb.module):
        wanted = asked == "bf16" or (asked == "auto" and CPU_AUTO_BF16_VIT)
        return "bf16" if wanted and bb.to_low_precision is not None else "fp32"
    return precision


def backbone_precisions(
    backbones: Sequence[Backbone], precision: str, device: torch.device, asked: str = "auto"
) -> dict[str, str]:
    """`backbone_precision` of each backbone, by feature-group name."""
    return {bb.name: backbone_precision(bb, precision, device, asked) for bb in backbones}


def amp_dtypes(precisions: Mapping[str, str]) -> dict[str, torch.dtype | None]:
    """Compute dtype (None: fp32) of each backbone, by feature-group name, from `backbone_precisions`.
    A backbone whose weights `place_backbones` converted takes its input in that dtype; the others
    run under autocast to it."""
    return {name: AMP_DTYPES[p] for name, p in precisions.items()}


def dtype_for(bb: Backbone, amp: AmpDtype) -> torch.dtype | None:
    """`amp` is one dtype for every backbone (as before) or a mapping from `amp_dtypes`."""
    if isinstance(amp, Mapping):
        return amp.get(bb.name)
    return amp if bb.amp else None
