"""What a backbone is: a module that maps a preprocessed batch to named outputs, plus the
preprocessing that comes with it and where its weights came from.

Preprocessing runs on the compute device, on decoded uint8 images of any size, so that one
decode feeds every backbone and the CPU and CUDA paths run the same operations.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace

import torch
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from evoked.errors import ConfigError
from evoked.extract.layers import LAYERS, Layer, WithLayers, is_layer_output

_INTERPOLATION = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}
_MODES = ("shorter", "squash")


@dataclass(frozen=True)
class Preprocess:
    """Resize, centre crop, normalise; optionally rotate 180 degrees.

    mode ``shorter`` resizes the shorter side to `resize` and centre-crops `crop` x `crop`;
    mode ``squash`` resizes the whole image to `resize` x `resize` (no crop, aspect not kept).
    """

    resize: int
    crop: int
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)  # three values each (checked)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    interpolation: str = "bilinear"
    mode: str = "shorter"
    rotate180: bool = False

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATION:
            raise ConfigError(f"interpolation {self.interpolation!r}: use {' or '.join(_INTERPOLATION)}")
        if self.mode not in _MODES:
            raise ConfigError(f"preprocess mode {self.mode!r}: use {' or '.join(_MODES)}")
        if self.resize < 1 or self.crop < 1:
            raise ConfigError(f"resize {self.resize} / crop {self.crop} must be positive")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ConfigError(f"mean {self.mean} / std {self.std}: three values each, std > 0")

    @property
    def size(self) -> int:
        """Side of the square the model sees."""
        return self.resize if self.mode == "squash" else self.crop

    @property
    def geometry(self) -> tuple:
        """Backbones with the same geometry share one resized batch."""
        return (self.resize, self.crop, self.interpolation, self.mode)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocess:
        d = dict(d)
        d["mean"] = tuple(float(x) for x in d["mean"])
        d["std"] = tuple(float(x) for x in d["std"])
        return cls(**d)

    def with_overrides(self, overrides: dict) -> Preprocess:
        return replace(self, **overrides) if overrides else self


PREPROCESS_KEYS = {
    "resize": int,
    "crop": int,
    "mean": None,
    "std": None,
    "interpolation": str,
    "mode": str,
    "rotate": None,
}


def parse_preprocess_overrides(text: str) -> dict:
    """``"resize=72,crop=64,mean=0.5,std=0.5,rotate=180"`` -> Preprocess keyword overrides.

    mean/std take one value (for all channels) or three separated by ``/``.
    """
    out: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in PREPROCESS_KEYS:
            raise ConfigError(
                f"--preprocess {part!r}: expected KEY=VALUE with KEY one of {', '.join(PREPROCESS_KEYS)} "
                "(e.g. resize=256,crop=224,mean=0.5,std=0.5,rotate=180)"
            )
        try:
            if key in ("mean", "std"):
                vals = [float(v) for v in value.split("/")]
                if len(vals) not in (1, 3):
                    raise ValueError
                out[key] = tuple(vals * 3 if len(vals) == 1 else vals)
            elif key == "rotate":
                if value.strip() not in ("0", "180"):
                    raise ValueError
                out["rotate180"] = value.strip() == "180"
            else:
                parse = PREPROCESS_KEYS[key]
                assert parse is not None  # only mean, std and rotate have no parser; handled above
                out[key] = parse(value.strip())
        except ValueError:
            raise ConfigError(f"--preprocess {part!r}: bad value {value!r}") from None
    return out


def resize_crop(images: Sequence[torch.Tensor], pre: Preprocess) -> torch.Tensor:
    """uint8 (3, H, W) images of any sizes -> float (B, 3, S, S) in [0, 1], on their device."""
    mode = _INTERPOLATION[pre.interpolation]
    # images of the same size are resized together: one kernel call per size, not per image (on a
    # GPU the launches, not the arithmetic, were the cost); each image gives the same values either way
    by_size: dict[tuple[int, int], list[int]] = {}
    for k, img in enumerate(images):
        by_size.setdefault(tuple(img.shape[-2:]), []).append(k)
    out: list[torch.Tensor | None] = [None] * len(images)
    for rows in by_size.values():
        x = torch.stack([images[k] for k in rows]).to(torch.float32)
        if pre.mode == "squash":
            x = TF.resize(x, [pre.resize, pre.resize], interpolation=mode, antialias=True)
        else:
            x = TF.resize(x, [pre.resize], interpolation=mode, antialias=True)
            x = TF.center_crop(x, [pre.crop, pre.crop])
        x.clamp_(0, 255)  # bicubic overshoots; 8-bit pipelines clip here too
        for j, k in enumerate(rows):
            out[k] = x[j]
    return torch.stack(out).div_(255.0)


def normalize(x: torch.Tensor, pre: Preprocess) -> torch.Tensor:
    mean = torch.tensor(pre.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(pre.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    x = (x - mean) / std
    return x.flip(-2, -1) if pre.rotate180 else x


def preprocess_batch(images: Sequence[torch.Tensor], pre: Preprocess) -> torch.Tensor:
    """The whole preprocessing of one backbone: resize/crop then normalise."""
    return normalize(resize_crop(images, pre), pre)


@dataclass(frozen=True)
class WeightsInfo:
    """Where a backbone's weights came from, recorded with every feature."""

    tag: str  # "default", "file", "random" or "none"
    source: str  # human-readable: the pretrained tag, the file, "random init (seed 0)"
    path: str | None = None
    sha256: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Backbone:
    """A ready-to-run extractor. `module(x)` returns ``{output: (B, dim) tensor}``."""

    name: str  # the feature group in the store, e.g. "resnet50", "clip-vit-b-32"
    spec: str  # what recreates it, e.g. "resnet50", "clip:ViT-B-32:openai"
    module: torch.nn.Module
    preprocess: Preprocess
    outputs: dict[str, int]  # every output it can give, with its dimension
    default_outputs: tuple[str, ...]
    weights: WeightsInfo
    description: str = ""
    output_attrs: dict[str, dict] = field(default_factory=dict)  # e.g. class names of probs
    selected: tuple[str, ...] = ()  # outputs to write; empty = default_outputs
    amp: bool = True  # may run under autocast (colour statistics stay in fp32)
    encode_text: Callable[[list[str]], torch.Tensor] | None = None  # CLIP: text -> normalised embedding
    # converts the image model's weights to a low precision the way its library does (CLIP: open_clip's
    # bf16, LayerNorm kept in fp32); a ViT on the CPU runs bf16 so, since autocast makes it slower
    to_low_precision: Callable[[torch.dtype], None] | None = None
    weights_dtype: torch.dtype | None = None  # set by place_backbones once the weights are converted
    layers: tuple[Layer, ...] = ()  # per-block outputs (`evoked.extract.layers.with_layers`), by depth
    layer_projection: dict | None = None  # set by `evoked.extract.layers.project_layers`

    @property
    def active_outputs(self) -> tuple[str, ...]:
        """The outputs to write, ``layers`` expanded to every layer output."""
        chosen = self.selected or self.default_outputs
        out: list[str] = []
        for o in chosen:
            out += [ly.output for ly in self.layers] if o == LAYERS else [o]
        return tuple(dict.fromkeys(out))

    @property
    def selectable(self) -> tuple[str, ...]:
        """What a spec may select after ``@``: every output, and ``layers`` when there are layers."""
        return tuple(self.outputs) + ((LAYERS,) if self.layers else ())

    def tap_layers(self) -> None:
        """Turn the layer hooks on exactly when a layer output is to be written (they cost a pooling
        per block otherwise)."""
        if isinstance(self.module, WithLayers):
            self.module.taps.enabled = any(is_layer_output(o) for o in self.active_outputs)

    def layer_attrs(self) -> dict[str, dict]:
        """Per layer output: what the store records on its dataset (name, depth, dim)."""
        return {ly.output: ly.attrs() for ly in self.layers}

    def config(self) -> dict:
        """What must match for two runs to write into the same feature group."""
        out = {
            "spec": self.spec,
            "weights": self.weights.to_dict(),
            "preprocess": self.preprocess.to_dict(),
            "outputs": {o: self.outputs[o] for o in self.active_outputs},
        }
        if self.layer_projection is not None:
            out["layer_projection"] = dict(self.layer_projection)
        return out
