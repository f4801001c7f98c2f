"""torchvision classifiers: ImageNet class probabilities (object features) and pooled embeddings.

``resnet18`` ... ``resnet152`` also offer ``stages``: layer1-4 outputs, each average-pooled and
concatenated (the low- plus high-level features of ResNet emotion models). Every model offers
``layers`` (`evoked.extract.layers`): the pooled output of each block of its trunk (`trunk_blocks`). ``tv:NAME`` accepts
any torchvision classification model; `torchvision_backbone` builds one from Python with your own
weights file and preprocessing (see docs/api.md).
"""

from __future__ import annotations

import difflib

import torch
import torchvision
from torch import nn

from evoked.errors import ConfigError
from evoked.extract.backbone import Backbone, Preprocess, WeightsInfo
from evoked.extract.layers import with_layers
from evoked.extract.weights import (
    fetch_torchvision,
    file_info,
    load_into,
    load_state_dict,
    random_info,
    seeded,
    sha256_of,
    weights_kind,
)


class ClassifierFeatures(nn.Module):
    """Runs a classifier once and returns ``probs`` (softmax), ``pool`` (the input of its last
    Linear layer) and, for ResNets, ``stages`` (pooled layer1-4)."""

    def __init__(self, model: nn.Module, stages: bool):
        super().__init__()
        self.model = model
        linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
        if not linears:
            raise ConfigError(f"{type(model).__name__} has no Linear layer to take pooled features from")
        self._head = linears[-1]
        self._stage_names = ("layer1", "layer2", "layer3", "layer4") if stages else ()
        self._captured: dict[str, torch.Tensor] = {}
        self._head.register_forward_hook(self._grab_head_input)
        for name in self._stage_names:
            getattr(model, name).register_forward_hook(self._grab(name))

    def _grab_head_input(self, module, inputs, output) -> None:
        self._captured["pool"] = inputs[0]

    def _grab(self, name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            self._captured[name] = output.mean(dim=(2, 3))

        return hook

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self._captured = {}
        logits = self.model(x)
        out = {"probs": torch.softmax(logits.float(), dim=1), "pool": self._captured["pool"].flatten(1)}
        if self._stage_names:
            out["stages"] = torch.cat([self._captured[n] for n in self._stage_names], dim=1)
        return out


def _stage_dims(model: nn.Module) -> int:
    dims = 0
    for name in ("layer1", "layer2", "layer3", "layer4"):
        block = getattr(model, name)[-1]
        last_bn = [m for m in block.modules() if isinstance(m, nn.BatchNorm2d)][-1]
        dims += last_bn.num_features
    return dims


def trunk_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The blocks whose outputs are a torchvision classifier's layers, in depth order: every residual
    block of layer1-4 (ResNets), each child of ``features`` (MobileNet, EfficientNet, ConvNeXt,
    VGG...), each block of each stage of ``trunk_output`` (RegNet), each encoder block (ViT)."""
    if all(hasattr(model, f"layer{i}") for i in range(1, 5)):
        return [
            (f"layer{i}.{j}", block)
            for i in range(1, 5)
            for j, block in enumerate(getattr(model, f"layer{i}").children())
        ]
    for path in ("features", "encoder.layers"):
        try:
            seq = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(seq, nn.Sequential) and len(seq):
            return [(f"{path}.{name}", child) for name, child in seq.named_children()]
    trunk = getattr(model, "trunk_output", None)
    if isinstance(trunk, nn.Sequential):
        return [
            (f"trunk_output.{s}.{b}", block)
            for s, stage in trunk.named_children()
            for b, block in stage.named_children()
        ]
    return []


def torchvision_backbone(
    model_name: str,
    weights: str = "default",
    *,
    preprocess: Preprocess | None = None,
    name: str | None = None,
    spec: str | None = None,
) -> Backbone:
    """Any torchvision classifier as a backbone, e.g. with a local state dict and its own
    normalisation: ``torchvision_backbone("mobilenet_v2", "w.pth", preprocess=Preprocess(...))``."""
    available = torchvision.models.list_models(module=torchvision.models)
    if model_name not in available:
        close = difflib.get_close_matches(model_name, available, n=3)
        raise ConfigError(
            f"{model_name!r} is not a torchvision classification model"
            + (f"; did you mean {', '.join(close)}?" if close else "; see torchvision.models.list_models()")
        )
    default = torchvision.models.get_model_weights(model_name).DEFAULT
    kind = weights_kind(weights)
    with seeded():
        model = torchvision.models.get_model(model_name, weights=None)
    if kind == "default":
        path = fetch_torchvision(default.url, f"{model_name} ({default})")
        load_into(model, torch.load(path, map_location="cpu", weights_only=True), str(path))
        info = WeightsInfo("default", f"torchvision {default}", str(path), sha256_of(path))
    elif kind == "file":
        load_into(model, load_state_dict(weights), weights)
        info = file_info(weights)
    else:
        info = random_info()
    t = default.transforms()
    own = Preprocess(
        resize=int(t.resize_size[0]),
        crop=int(t.crop_size[0]),
        mean=tuple(t.mean),
        std=tuple(t.std),
        interpolation=t.interpolation.value,
    )
    is_resnet = all(hasattr(model, f"layer{i}") for i in range(1, 5)) and hasattr(model, "fc")
    module = ClassifierFeatures(model, stages=is_resnet)
    head = module._head
    outputs = {"probs": head.out_features, "pool": head.in_features}
    if is_resnet:
        outputs["stages"] = _stage_dims(model)
    categories = list(default.meta.get("categories", []))
    bb = Backbone(
        name=name or model_name,
        spec=spec or f"tv:{model_name}",
        module=module,
        preprocess=preprocess or own,
        outputs=outputs,
        default_outputs=("probs", "pool"),
        weights=info,
        description=f"torchvision {model_name}",
        output_attrs={"probs": {"labels": categories}} if len(categories) == head.out_features else {},
    )
    return with_layers(bb, trunk_blocks(model))


def _resnet(depth: int):
    name = f"resnet{depth}"

    def factory(arg: str | None, weights: str) -> Backbone:
        return torchvision_backbone(name, weights, spec=name)

    return factory


# Registered in `evoked.extract.registry` by these names.
resnet18, resnet34, resnet50, resnet101, resnet152 = (_resnet(d) for d in (18, 34, 50, 101, 152))


def torchvision_any(arg: str | None, weights: str) -> Backbone:
    return torchvision_backbone(str(arg), weights)
