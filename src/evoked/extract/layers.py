"""Per-layer outputs of a backbone: one pooled vector per block of the trunk, taken in the same
forward pass as the backbone's other outputs (forward hooks, so the trunk runs once).

A CNN block's output (B, C, H, W) is average-pooled over space; a transformer block's output
(B, L, D) gives its class token (position 0). Each layer is an output named ``layers.<block>``
(``layers.features.3``, ``layers.layer2.1``, ``layers.transformer.resblocks.11``), selected all
together by ``@layers``; its relative depth is ``(i + 1) / L`` for the i-th of L blocks.

`with_layers` gives any backbone its layers (the built-ins use it, and so can a ``--plugin``);
`project_layers` adds a seeded sparse random projection to `dim` values per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from evoked.errors import ConfigError

# LAYERS: the selection that stands for every layer output (``tv:mobilenet_v2@pool,layers``), and
# the store's name of them all (``mobilenet_v2/layers``); LAYER_PREFIX + block name: one layer output
from evoked.features.store import LAYER_PREFIX, LAYERS

if TYPE_CHECKING:
    from evoked.extract.backbone import Backbone
    from evoked.extract.options import BackbonePlan

Pool = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Layer:
    """One block of a trunk: its name, its relative depth in (0, 1] and its output dimension."""

    name: str
    dim: int
    depth: float
    source_dim: int | None = None  # the block's own width when the stored vector is a projection

    @property
    def output(self) -> str:
        return LAYER_PREFIX + self.name

    def attrs(self) -> dict:
        """What the store records on the layer's dataset (docs/schema.md)."""
        out: dict = {"layer": self.name, "depth": float(self.depth), "dim": int(self.dim)}
        if self.source_dim is not None:
            out["source_dim"] = int(self.source_dim)
        return out


def is_layer_output(name: str) -> bool:
    return name.startswith(LAYER_PREFIX)


def writes_layers(plan: BackbonePlan) -> bool:
    """Whether a backbone of an extraction selects layer outputs (``@layers`` or ``@layers.NAME``)."""
    return any(o == LAYERS or is_layer_output(o) for o in plan.parsed.outputs)


def pool_block(t: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> spatial mean; (B, L, D) tokens -> the class token; (B, D) unchanged."""
    if isinstance(t, (tuple, list)):
        t = t[0]
    if t.ndim == 4:
        return t.mean(dim=(2, 3))
    if t.ndim == 3:
        return t[:, 0]
    if t.ndim == 2:
        return t
    raise ConfigError(f"a layer output of shape {tuple(t.shape)} cannot be pooled to a vector")


class LayerTaps:
    """Forward hooks that keep the pooled output of named blocks, while `enabled`."""

    def __init__(self, blocks: Sequence[tuple[str, nn.Module]], pool: Pool = pool_block):
        self.names = [name for name, _ in blocks]
        if len(set(self.names)) != len(self.names):
            raise ConfigError(f"layer names must be unique: {self.names}")
        self.pool = pool
        self.enabled = False
        self.captured: dict[str, torch.Tensor] = {}
        for name, block in blocks:
            block.register_forward_hook(self._hook(name))

    def _hook(self, name: str):
        def hook(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            if self.enabled:
                self.captured[name] = self.pool(output)

        return hook

    def collect(self) -> dict[str, torch.Tensor]:
        """The layers of the last forward pass, by output name (empty while disabled)."""
        if not self.enabled:
            return {}
        missing = [n for n in self.names if n not in self.captured]
        if missing:
            raise RuntimeError(f"the forward pass did not run the layer blocks {missing}")
        out = {LAYER_PREFIX + n: self.captured[n] for n in self.names}
        self.captured = {}
        return out


class WithLayers(nn.Module):
    """A backbone module whose outputs gain the tapped layers (projected when `projections` is set)."""

    def __init__(self, inner: nn.Module, taps: LayerTaps):
        super().__init__()
        self.inner = inner
        self.taps = taps
        self.projections = nn.ParameterDict()  # output name -> (D_in, D_out) fixed matrix

    def __getattr__(self, name: str):
        # the wrapped module's attributes stay reachable (``bb.module.model``, CLIP's ``scene_text``)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("inner"), name)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.taps.captured = {}
        out = dict(self.inner(x))
        layers = self.taps.collect()
        if self.projections:
            # in fp32 whatever the autocast around: the projection is part of the stored feature
            with torch.autocast(device_type=x.device.type, enabled=False):
                layers = {
                    k: v.float() @ self.projections[_key(k)] if _key(k) in self.projections else v
                    for k, v in layers.items()
                }
        out.update(layers)
        return out


def _key(output: str) -> str:
    return output.replace(".", "__")  # ParameterDict keys cannot hold dots


def with_layers(
    bb: Backbone,
    blocks: Sequence[tuple[str, nn.Module]],
    pool: Pool = pool_block,
    dims: Sequence[int] | None = None,
) -> Backbone:
    """Give backbone `bb` the layer outputs of `blocks` (name, submodule of ``bb.module``), in
    depth order. `dims` are the pooled widths; when not given they are measured with one forward
    pass of a blank image at the backbone's input size. Returns `bb`."""
    if not blocks:
        return bb
    taps = LayerTaps(blocks, pool)
    module = WithLayers(bb.module, taps)
    if dims is None:
        dims = _measure(module, bb.preprocess.size)
    n = len(blocks)
    layers = tuple(Layer(name, int(d), (i + 1) / n) for i, ((name, _), d) in enumerate(zip(blocks, dims)))
    clash = [ly.output for ly in layers if ly.output in bb.outputs]
    if clash:
        raise ConfigError(f"backbone {bb.name}: layer outputs {clash} clash with its own outputs")
    bb.module = module
    bb.layers = layers
    bb.outputs = {**bb.outputs, **{ly.output: ly.dim for ly in layers}}
    return bb


@torch.no_grad()
def _measure(module: WithLayers, size: int) -> list[int]:
    was_training = module.training
    module.eval()
    module.taps.enabled = True
    try:
        device = next(module.parameters()).device
        out = module(torch.zeros(1, 3, size, size, device=device))
    finally:
        module.taps.enabled = False
        module.train(was_training)
    return [int(out[LAYER_PREFIX + n].shape[-1]) for n in module.taps.names]


def projection_matrix(d_in: int, d_out: int, seed: int) -> np.ndarray:
    """The (d_in, d_out) matrix of scikit-learn's SparseRandomProjection (density 1/sqrt(d_in))."""
    from sklearn.random_projection import SparseRandomProjection

    srp = SparseRandomProjection(n_components=d_out, random_state=seed, dense_output=True)
    srp.fit(np.zeros((1, d_in), dtype=np.float32))
    return np.asarray(srp.components_.T.todense(), dtype=np.float32)


def project_layers(bb: Backbone, dim: int, seed: int = 0) -> Backbone:
    """Project every layer of `bb` to `dim` values (a `dim` wider than a layer is an error)."""
    if dim < 1:
        raise ConfigError(f"--layer-dim {dim}: must be at least 1")
    if not bb.layers:
        return bb
    narrow = [ly for ly in bb.layers if ly.dim < dim]
    if narrow:
        names = ", ".join(f"{ly.name} ({ly.dim})" for ly in narrow[:4]) + (" ..." if len(narrow) > 4 else "")
        raise ConfigError(
            f"--layer-dim {dim} is larger than layers of {bb.spec}: {names}; a projection cannot widen a "
            f"layer. Pass --layer-dim {min(ly.dim for ly in bb.layers)} or less, or leave --layer-dim out "
            "to store every layer whole"
        )
    module = bb.module
    assert isinstance(module, WithLayers)  # `with_layers` made it so
    layers = []
    for ly in bb.layers:
        if ly.dim > dim:
            P = torch.from_numpy(projection_matrix(ly.dim, dim, seed))
            module.projections[_key(ly.output)] = nn.Parameter(P, requires_grad=False)
            ly = Layer(ly.name, dim, ly.depth, ly.dim)
        layers.append(ly)
    bb.layers = tuple(layers)
    bb.outputs = {**bb.outputs, **{ly.output: ly.dim for ly in layers}}
    bb.layer_projection = {"method": "sklearn SparseRandomProjection", "dim": int(dim), "seed": int(seed)}
    return bb
