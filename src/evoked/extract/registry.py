"""The backbone registry: one decorated function per backbone (or per family of backbones).

::

    @register_backbone("resnet50", help="torchvision ResNet-50")
    def resnet50(arg: str | None, weights: str) -> Backbone: ...

    @register_backbone("tv", family=True, help="any torchvision classifier", example="tv:mobilenet_v2")
    def torchvision_any(arg: str | None, weights: str) -> Backbone: ...

A spec names a backbone and optionally the outputs to write: ``resnet50``,
``resnet50@probs,pool,stages``, ``tv:mobilenet_v2``, ``clip:ViT-B-32:openai@embed,scene``.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from evoked.errors import ConfigError
from evoked.registry import Registry

if TYPE_CHECKING:
    from evoked.extract.backbone import Backbone

Factory = Callable[[str | None, str], "Backbone"]

#: Backbones by name. Extras: ``family`` (the name takes ``:ARG``, e.g. ``tv:mobilenet_v2``) and
#: ``example``. The built-ins are named by module path: listing them imports no torch.
BACKBONES: Registry[Factory] = Registry(
    "backbone", fix="Register your own with --plugin FILE.py (see docs/api.md)."
)


def register_backbone(
    name: str, *, family: bool = False, help: str = "", example: str | None = None
) -> Callable[[Factory], Factory]:
    """Register `factory(arg, weights) -> Backbone` under `name`.

    A family (``tv``, ``clip``) receives the text after ``name:`` as `arg`; a plain backbone gets None.
    """
    example = example or (f"{name}:..." if family else name)
    return BACKBONES.register(name, help=help, family=family, example=example, usage=example)


def _builtin(target: str, name: str, help: str, **family: str) -> None:
    """`target`: ``module:function`` below evoked.extract.backbones; a family has `example` and `usage`."""
    BACKBONES.add(name, f"evoked.extract.backbones.{target}", help=help, family=bool(family), **family)


for _d in (18, 34, 50, 101, 152):
    _builtin(f"torchvision_models:resnet{_d}", f"resnet{_d}", f"torchvision ResNet-{_d}: probs, pool, stages")
_builtin(
    "torchvision_models:torchvision_any",
    "tv",
    "any torchvision classifier: probs and pool",
    example="tv:mobilenet_v2",
    usage="tv:NAME",
)
_builtin(
    "clip:clip",
    "clip",
    "open_clip model: embed, scene (Places365 zero-shot), emotion (zero-shot)",
    example="clip:ViT-B-32:openai",
    usage="clip:ARCH[:TAG]",
)
_builtin("color:color", "color", "RGB/HSV statistics, HSV histogram, Valdez-Mehrabian PAD, uniform LBP")


def list_backbones(families: bool = True) -> list[str]:
    """Registered names; a family is listed by its example spec (e.g. ``tv:mobilenet_v2``)."""
    return [e.meta.get("example", e.name) for e in BACKBONES if families or not e.meta["family"]]


@dataclass(frozen=True)
class BackboneSpec:
    text: str  # the spec as given, without the output selection
    name: str
    arg: str | None
    outputs: tuple[str, ...]


def parse_spec(spec: str) -> BackboneSpec:
    """Split ``name[:arg][@out,out]`` and check that the name is registered."""
    text, _, outs = spec.strip().partition("@")
    outputs = tuple(o.strip() for o in outs.split(",") if o.strip())
    name, sep, arg = text.partition(":")
    entry = BACKBONES.get(name)
    if entry.meta["family"] and not arg:
        raise ConfigError(f"backbone {name!r} needs an argument, e.g. {entry.meta['example']}")
    if not entry.meta["family"] and sep:
        raise ConfigError(f"backbone {name!r} takes no ':' argument (got {spec!r})")
    return BackboneSpec(text, name, arg or None, outputs)


def create_backbone(
    spec: str, weights: str = "default", preprocess: dict | None = None, layer_projection: dict | None = None
) -> Backbone:
    """Build a backbone from its spec, with weights ``default``, ``random`` or a file path.

    `preprocess` overrides fields of the backbone's own preprocessing (see `Preprocess`);
    `layer_projection` (``{"dim": D, "seed": S}``) projects its layer outputs (``--layer-dim``).
    """
    from evoked.extract.layers import project_layers

    parsed = parse_spec(spec)
    bb = BACKBONES.load(parsed.name)(parsed.arg, weights)
    unknown = [o for o in parsed.outputs if o not in bb.selectable]
    if unknown:
        shown = [o for o in bb.selectable if not o.startswith("layers.")]
        raise ConfigError(
            f"backbone {parsed.text!r} has no output {', '.join(unknown)}; it has {', '.join(shown)}"
        )
    bb.selected = parsed.outputs
    if layer_projection:
        project_layers(bb, int(layer_projection["dim"]), int(layer_projection.get("seed", 0)))
    if preprocess:
        bb.preprocess = bb.preprocess.with_overrides(preprocess)
    bb.module.eval()
    return bb


_PLUGINS: set[str] = set()


def load_plugin(target: str) -> None:
    """Import a module (dotted name) or a ``.py`` file so that its backbones register (once)."""
    path = Path(target)
    key = str(path.resolve()) if path.suffix == ".py" else target
    if key in _PLUGINS:
        return
    try:
        if path.suffix == ".py":
            if not path.is_file():
                raise ConfigError(f"--plugin {target!r}: file not found")
            name = f"evoked_plugin_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None  # a .py file always has both
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
        else:
            importlib.import_module(target)
        _PLUGINS.add(key)
    except ConfigError:
        raise
    except ImportError as e:
        raise ConfigError(f"--plugin {target!r}: cannot import it ({e})") from e


def comparable_config(config: dict, outputs: bool = True) -> dict:
    """A backbone configuration as recorded in a store, in the form two extractions compare in
    (`--resume`, `--eval` stores, `serve --run`): weights by tag and hash only, not path or time;
    without `outputs`, the list of outputs is left out (a store may hold more than a run used)."""
    c = json.loads(json.dumps(config))  # tuples and lists compare equal after a JSON round trip
    c["weights"] = {k: v for k, v in c.get("weights", {}).items() if k in ("tag", "sha256")}
    if not outputs:
        c.pop("outputs", None)
    return c
