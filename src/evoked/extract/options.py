"""Validation of extraction options, done before any model is built or any GPU work starts."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from evoked.data.decode import DEFAULT_MAX_PIXELS
from evoked.device import resolve_compute
from evoked.errors import ConfigError
from evoked.extract.backbone import PREPROCESS_KEYS, parse_preprocess_overrides
from evoked.extract.registry import BackboneSpec, load_plugin, parse_spec

log = logging.getLogger(__name__)

DECODERS = ("auto", "cpu", "device")
UNWEIGHTED = ("color",)  # backbones without weights or a model preprocessing to override


@dataclass(frozen=True)
class BackbonePlan:
    """One backbone of a run, with the weights and preprocessing overrides that apply to it."""

    spec: str
    parsed: BackboneSpec
    weights: str
    preprocess: dict


def _match(key: str, specs: Sequence[BackboneSpec]) -> list[BackboneSpec]:
    return [s for s in specs if key in (s.text, s.name)]


def plan_backbones(
    backbones: Sequence[str], weights: Sequence[str] = (), preprocess: Sequence[str] = ()
) -> list[BackbonePlan]:
    """Pair each backbone spec with its weights and preprocessing.

    ``--weights default|random|PATH`` applies to every backbone; ``--weights SPEC=...`` to one
    (SPEC as written in --backbone, or its name, e.g. ``tv:mobilenet_v2=w.pth``). A bare PATH with
    several weighted backbones is ambiguous and an error. ``--preprocess KEY=VAL,...`` applies to
    every backbone but ``color``; ``--preprocess SPEC=KEY=VAL,...`` to one.
    """
    if not backbones:
        raise ConfigError("no --backbone given; e.g. --backbone resnet50 --backbone color")
    specs = [parse_spec(b) for b in backbones]
    texts = [s.text for s in specs]
    if len(set(texts)) != len(texts):
        raise ConfigError(f"a backbone is given twice: {texts}; select outputs with SPEC@out1,out2 instead")
    per_weights: dict[str, str] = {}
    common_weights = "default"
    for w in weights:
        key, sep, value = w.partition("=")
        hits = _match(key, specs) if sep else []
        if hits:
            for s in hits:
                per_weights[s.text] = value
        else:
            weighted = [s.text for s in specs if s.name not in UNWEIGHTED]
            if w not in ("default", "random") and len(weighted) > 1:
                raise ConfigError(
                    f"--weights {w!r} is ambiguous with backbones {', '.join(weighted)}; "
                    f"write --weights {weighted[0]}={w}"
                )
            common_weights = w
    per_pre: dict[str, dict] = {}
    common_pre: dict = {}
    for p in preprocess:
        key, sep, rest = p.partition("=")
        if sep and key.strip().lower() not in PREPROCESS_KEYS:
            hits = _match(key, specs)
            if not hits:
                raise ConfigError(
                    f"--preprocess {p!r}: {key!r} is not a backbone of this run ({', '.join(texts)})"
                )
            for s in hits:
                per_pre.setdefault(s.text, {}).update(parse_preprocess_overrides(rest))
        else:
            common_pre.update(parse_preprocess_overrides(p))
    plans = []
    for s, raw in zip(specs, backbones):
        pre = {} if s.name in UNWEIGHTED else dict(common_pre)
        pre.update(per_pre.get(s.text, {}))
        plans.append(BackbonePlan(raw, s, per_weights.get(s.text, common_weights), pre))
    return plans


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """``"2/8"`` -> (2, 8): shard 2 of 8, counted from 0."""
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ConfigError(f"--shard {text!r}: expected I/N such as 0/4 (shards counted from 0)") from None
    if n < 1 or not 0 <= i < n:
        raise ConfigError(f"--shard {text!r}: need 0 <= I < N")
    return i, n


def shard_rows(n_items: int, index: int, count: int) -> tuple[int, int]:
    """Contiguous rows [start, stop) of shard `index` of `count`."""
    return index * n_items // count, (index + 1) * n_items // count


def resolve_decoder(decode: str, device: torch.device) -> str:
    """``auto`` decodes JPEGs on the device on CUDA, and with the CPU decoder otherwise."""
    if decode not in DECODERS:
        raise ConfigError(f"--decode {decode!r}: use one of {', '.join(DECODERS)}")
    if decode == "auto":
        return "device" if device.type == "cuda" else "cpu"
    return decode


#: Options that change what a row's features are, as recorded in a store's root attributes.
#: `dtype` is in every store; the others are checked where the store records them.
RESUME_OPTIONS = {"dtype": "--dtype", "max_pixels": "--max-pixels", "decode": "--decode"}


def check_resume_options(
    path: str | os.PathLike, attrs: dict, requested: dict, block_size: int | None = None
) -> None:
    """A resumed run must use every option that changes a row's result as the first run did.

    `requested` maps RESUME_OPTIONS keys to this run's values. An option that cannot apply to a
    resumed store (the batch size: blocks are fixed at creation) is logged, never silently dropped.
    """
    for key, flag in RESUME_OPTIONS.items():
        if key not in attrs or key not in requested:
            continue
        old, new = attrs[key], requested[key]
        if str(old) != str(new):
            raise ConfigError(
                f"{path} was written with {flag} {old}; this run asks for {flag} {new}, which would mix "
                f"rows made two ways. Resume with {flag} {old}, or write to a new --out"
            )
    stored = attrs.get("block_size")
    if block_size is not None and stored is not None and int(stored) != block_size:
        log.warning(
            "%s: --batch-size %d does not apply on --resume; the store's blocks are %d rows, so batches are too",
            path,
            block_size,
            int(stored),
        )


@dataclass
class ExtractOptions:
    """What `evoked.extract.extract` does (docs/extract.md): the CLI flags, as Python values."""

    backbones: Sequence[str]
    weights: Sequence[str] = ()
    preprocess: Sequence[str] = ()
    plugins: Sequence[str] = ()
    device: str = "auto"
    batch_size: int = 64
    workers: int | None = None
    precision: str = "auto"
    decode: str = "auto"
    shard: str | None = None
    resume: bool = False
    overwrite: bool = False
    retry_failed: bool = False
    dtype: str = "float32"
    max_pixels: int = DEFAULT_MAX_PIXELS
    compile: bool = False
    layer_dim: int | None = None  # project each layer output to this many values (`evoked.extract.layers`)
    layer_seed: int = 0
    # set by `check`
    dev: torch.device = field(default=torch.device("cpu"), init=False)
    run_precision: str = field(default="fp32", init=False)  # `precision` resolved on `dev`
    decoder: str = field(default="cpu", init=False)
    shard_index: tuple[int, int] | None = field(default=None, init=False)
    plans: list[BackbonePlan] = field(default_factory=list, init=False)

    def check(self) -> ExtractOptions:
        """Parse and check every option (plugins loaded, backbones planned), before any model loads."""
        self.dev, self.run_precision = resolve_compute(self.device, self.precision)
        self.decoder = resolve_decoder(self.decode, self.dev)
        self.shard_index = parse_shard(self.shard)
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size}: must be at least 1")
        if self.workers is not None and self.workers < 0:
            raise ConfigError(f"--workers {self.workers}: use 0 (read in this process) or more")
        if self.dtype not in ("float32", "float16"):
            raise ConfigError(f"--dtype {self.dtype!r}: use float32 or float16")
        if self.max_pixels < 1:
            raise ConfigError(f"--max-pixels {self.max_pixels}: must be at least 1")
        if self.layer_dim is not None and self.layer_dim < 1:
            raise ConfigError(
                f"--layer-dim {self.layer_dim}: must be at least 1 (or left out: layers stored whole)"
            )
        for p in self.plugins:
            load_plugin(p)
        self.plans = plan_backbones(self.backbones, self.weights, self.preprocess)
        return self

    @property
    def layer_projection(self) -> dict | None:
        """``--layer-dim`` and its seed, as `create_backbone` takes and the store records them."""
        return None if self.layer_dim is None else {"dim": int(self.layer_dim), "seed": int(self.layer_seed)}

    @property
    def row_options(self) -> dict:
        """The options besides backbones and precision that change a row's result (`RESUME_OPTIONS`)."""
        return {"dtype": self.dtype, "max_pixels": int(self.max_pixels), "decode": self.decoder}
