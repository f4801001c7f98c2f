"""The two-stage network: a registered backbone without its classifier, plus a VA head and an
optional category head.

As in the paper's code, the pooled features of a CNN go through a ReLU and then ``Linear(D, 2)``
(valence, arousal) and, for the multi task, ``Linear(D, K)`` (category logits). CLIP's image
embedding is a linear projection that can be negative, so it feeds the heads without the ReLU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from evoked.errors import ConfigError
from evoked.extract.backbone import Preprocess, WeightsInfo

log = logging.getLogger(__name__)

#: Freeze points written without a module name.
FREEZE_NONE = "none"  # train everything
FREEZE_ALL = "all"  # train the heads only
FREEZE_AUTO = "auto"  # the backbone's last stage, as the paper's "layer4" for ResNets


class VANet(nn.Module):
    """``encoder(x) -> (B, D)`` pooled features -> heads. ``forward`` returns ``{"va", "logits"?}``."""

    def __init__(self, encoder: nn.Module, dim: int, n_classes: int = 0, relu: bool = True):
        super().__init__()
        self.encoder = encoder
        self.relu = relu
        self.va_head = nn.Linear(dim, 2)
        self.cls_head = nn.Linear(dim, n_classes) if n_classes else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        f = self.encoder(x).flatten(1)
        if self.relu:
            f = torch.relu(f)
        out = {"va": self.va_head(f)}
        if self.cls_head is not None:
            out["logits"] = self.cls_head(f)
        return out


@dataclass
class Encoder:
    """A backbone ready to be trained end to end, and what recreates it."""

    module: nn.Module
    spec: str
    preprocess: Preprocess
    weights: WeightsInfo
    relu: bool
    kind: str  # "torchvision" or "clip"


def _strip_last_linear(model: nn.Module, spec: str) -> None:
    """Replace the last Linear layer (the classifier) by Identity, so the model returns its input."""
    names = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ConfigError(f"backbone {spec!r} has no Linear classifier to replace by the VA head")
    parent_name, _, child = names[-1].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Identity())


def build_encoder(spec: str, weights: str = "default", preprocess: dict | None = None) -> Encoder:
    """The network body of a registered backbone: torchvision classifiers (``resnet101``,
    ``tv:mobilenet_v2``) lose their last Linear layer; CLIP (``clip:...``) gives its image encoder."""
    from evoked.extract import create_backbone

    bb = create_backbone(spec, weights, preprocess)
    model = getattr(bb.module, "model", None)
    if model is None:
        raise ConfigError(
            f"backbone {spec!r} is not a neural network that can be fine-tuned; use resnet18..152, "
            "tv:NAME or clip:ARCH[:TAG]"
        )
    if hasattr(model, "visual") and hasattr(model, "encode_text"):
        # open_clip: keep the image tower only (the text tower is not trained and only costs memory)
        return Encoder(model.visual, bb.spec, bb.preprocess, bb.weights, relu=False, kind="clip")
    # The feature wrapper hooks the classifier's input and the ResNet stages; those hooks would
    # keep activations alive and cost time while training, so they go with the wrapper.
    for m in model.modules():
        m._forward_hooks.clear()
    _strip_last_linear(model, spec)
    return Encoder(model, bb.spec, bb.preprocess, bb.weights, relu=True, kind="torchvision")


@torch.no_grad()
def feature_dim(encoder: nn.Module, size: int) -> int:
    """Run one image of `size` pixels through the encoder: its output width, or a ConfigError when
    the backbone cannot take that size (a ViT has a fixed input size)."""
    was_training = encoder.training
    encoder.eval()
    try:
        param = next(encoder.parameters())
        out = encoder(torch.zeros(1, 3, size, size, device=param.device, dtype=param.dtype))
    except RuntimeError as e:
        raise ConfigError(
            f"the backbone cannot run on {size}x{size} images ({e}); pass a --size it accepts "
            "(CLIP ViTs take only their own input size)"
        ) from e
    finally:
        encoder.train(was_training)
    return int(out.flatten(1).shape[1])


def native_size(encoder: Encoder) -> int | None:
    """The input size a backbone needs (CLIP ViTs), or None when any size works (CNNs)."""
    if encoder.kind == "clip":
        return encoder.preprocess.size
    return None


# ------------------------------------------------------------------------------------------ freezing


def _param_names(module: nn.Module) -> list[str]:
    return [name for name, _ in module.named_parameters()]


def freeze_candidates(encoder: nn.Module, limit: int = 60) -> list[str]:
    """Module names that can be given to --freeze-until: children, and children of Sequentials."""
    out = []
    for name, child in encoder.named_children():
        if not any(True for _ in child.parameters()):
            continue
        out.append(name)
        if isinstance(child, (nn.Sequential, nn.ModuleList)):
            out.extend(
                f"{name}.{sub}" for sub, c in child.named_children() if any(True for _ in c.parameters())
            )
        elif name == "transformer" and hasattr(child, "resblocks"):
            out.extend(f"{name}.resblocks.{i}" for i in range(len(child.resblocks)))
    return out[:limit]


def auto_freeze_point(encoder: Encoder) -> str:
    """The paper freezes a ResNet before ``layer4``. The same cut elsewhere: the start of the last
    stride-32 stage of MobileNetV2 (``features.14``), the last block of a CLIP ViT; else nothing."""
    module = encoder.module
    if all(hasattr(module, f"layer{i}") for i in range(1, 5)):
        return "layer4"
    features = getattr(module, "features", None)
    if type(module).__name__ == "MobileNetV2" and isinstance(features, nn.Sequential) and len(features) > 14:
        return "features.14"
    resblocks = getattr(getattr(module, "transformer", None), "resblocks", None)
    if resblocks is not None and len(resblocks) > 0:
        return f"transformer.resblocks.{len(resblocks) - 1}"
    log.info("no known freeze point for this backbone; training all of it (--freeze-until none)")
    return FREEZE_NONE


def resolve_freeze_point(encoder: Encoder, freeze_until: str | None) -> str:
    """``auto`` -> a module name (or none); other values are checked against the encoder."""
    value = (freeze_until or FREEZE_NONE).strip()
    if value == FREEZE_AUTO:
        return auto_freeze_point(encoder)
    if value in (FREEZE_NONE, FREEZE_ALL):
        return value
    names = _param_names(encoder.module)
    if not any(n == value or n.startswith(value + ".") for n in names):
        raise ConfigError(
            f"--freeze-until {value!r}: the backbone {encoder.spec!r} has no module of that name. "
            f"Use none, all, auto, or one of: {', '.join(freeze_candidates(encoder.module))}"
        )
    return value


def freeze_before(net: VANet, point: str) -> dict[str, int]:
    """Freeze the encoder's parameters registered before module `point` (registration order is the
    forward order for the supported backbones). Heads always train. Returns parameter counts."""
    frozen = 0
    hit = point == FREEZE_NONE
    for name, p in net.encoder.named_parameters():
        if not hit and point != FREEZE_ALL and (name == point or name.startswith(point + ".")):
            hit = True
        p.requires_grad_(hit)
        if not hit:
            frozen += p.numel()
    total = sum(p.numel() for p in net.parameters())
    return {"frozen": frozen, "trainable": total - frozen, "total": total}


def frozen_norm_layers(net: VANet, all_layers: bool = False) -> list[nn.Module]:
    """Batch-norm layers that stay in eval mode while training: those whose parameters are all frozen
    (a frozen block keeps its running statistics too, not only its weights), or every one with
    `all_layers` (small batches; weights with batch norm folded into the convolutions)."""
    out = []
    for m in net.encoder.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            params = list(m.parameters(recurse=False))
            if all_layers or (params and not any(p.requires_grad for p in params)):
                out.append(m)
    return out


def set_train_mode(net: VANet, frozen_norms: list[nn.Module]) -> None:
    net.train()
    for m in frozen_norms:
        m.eval()


def folded_norm_layers(net: VANet, tol: float = 1e-3) -> list[str]:
    """Names of the encoder's batch-norm layers that look folded into the convolution before them.

    A folded layer is identity-with-bias: weight 1, running mean 0, running variance 1 (or 1 - eps)
    and a bias that is not all zero (the folded bias). Its running statistics were never measured on
    data, so training it in train mode normalises by batch statistics the weights were not made for
    and the network collapses to a constant. A freshly initialised layer has the same statistics but
    a zero bias, and trains normally: it is not counted.
    """
    names = []
    for name, m in net.encoder.named_modules():
        if not isinstance(m, nn.modules.batchnorm._NormBase) or not m.track_running_stats:
            continue
        if m.running_mean is None or m.running_var is None or m.weight is None or m.bias is None:
            continue
        with torch.no_grad():
            identity = (
                bool((m.running_mean.abs() <= tol).all())
                and bool(((m.running_var - 1).abs() <= tol).all())
                and bool(((m.weight - 1).abs() <= tol).all())
            )
            if identity and bool((m.bias.abs() > tol).any()):
                names.append(name)
    return names
