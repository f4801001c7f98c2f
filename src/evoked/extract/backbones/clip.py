"""CLIP through open_clip: image embeddings and zero-shot scene and emotion probabilities.

``clip:ARCH[:PRETRAINED]`` names an open_clip model (``clip:ViT-B-32:openai``), or ``clip:FILE.json``
an open_clip model config of your own (the tests use a tiny one). Outputs:

- ``embed``: the L2-normalised image embedding;
- ``scene``: softmax over the 365 Places365 scene names, prompt "a photo of a {scene}.";
- ``emotion``: softmax over emotion words (Mikels 8 + Ekman 6 + neutral), prompt
  "a photo that makes people feel {emotion}.".

Text embeddings of the prompts are computed once, when the backbone is built.
"""

from __future__ import annotations

import json
import logging
import os
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from evoked.data.lexicon import CATEGORY_SETS
from evoked.errors import ConfigError
from evoked.extract.backbone import Backbone, Preprocess, WeightsInfo
from evoked.extract.layers import Pool, pool_block, with_layers
from evoked.extract.weights import file_info, offline, random_info, seeded, sha256_of, weights_kind

log = logging.getLogger(__name__)

SCENE_TEMPLATE = "a photo of a {}."
EMOTION_TEMPLATE = "a photo that makes people feel {}."
EMOTION_WORDS = tuple(dict.fromkeys(CATEGORY_SETS["mikels8"] + CATEGORY_SETS["ekman7"]))


def scene_names() -> list[str]:
    """Places365 category names as words: ``bakery/shop`` -> ``bakery shop``."""
    text = resources.files("evoked").joinpath("resources/places365_categories.txt").read_text("utf-8")
    names = [line.rsplit(" ", 1)[0] for line in text.splitlines() if line.strip()]
    return [n.replace("_", " ").replace("/", " ") for n in names]


class ClipFeatures(nn.Module):
    def __init__(self, model: nn.Module, tokenizer, scene_prompts: list[str], emotion_prompts: list[str]):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        with torch.no_grad():
            self.register_buffer("scene_text", self.encode_text(scene_prompts), persistent=False)
            self.register_buffer("emotion_text", self.encode_text(emotion_prompts), persistent=False)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(texts).to(device)
        emb = self.model.encode_text(tokens).float()
        return emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def to_low_precision(self, dtype: torch.dtype) -> None:
        """The image tower's weights in `dtype` as open_clip's own ``precision="bf16"`` does (OpenAI's
        half-precision CLIP: convolutions, linear and attention weights; LayerNorm stays fp32). The
        text tower and the prompt embeddings stay fp32."""
        import open_clip

        open_clip.convert_weights_to_lp(self.model.visual, dtype=dtype)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        emb = self.model.encode_image(x).float()
        emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        # similarities in fp32 whatever the autocast around: under bf16 the logits (scale ~100) lose
        # the third digit and the probabilities moved by up to 0.026
        with torch.autocast(device_type=emb.device.type, enabled=False):
            scale = self.model.logit_scale.exp().float()
            return {
                "embed": emb,
                "scene": torch.softmax(scale * emb @ self.scene_text.float().T, dim=1),
                "emotion": torch.softmax(scale * emb @ self.emotion_text.float().T, dim=1),
            }


def _cached_pretrained(cfg: dict) -> Path | None:
    """The local copy open_clip would load for a pretrained tag, if it is cached."""
    hub = cfg.get("hf_hub", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        # open_clip's convention: "org/repo/" means the default file name, "org/repo/file" a given one
        repo, filename = os.path.split(hub)
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        if filename.endswith(".bin"):
            names.insert(0, filename[: -len(".bin")] + ".safetensors")
        for name in names:
            hit = try_to_load_from_cache(repo, name)
            if isinstance(hit, str):
                return Path(hit)
    url = cfg.get("url", "")
    if url:
        target = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if target.is_file():
            return target
    return None


def _resolve_arch(arch: str) -> str:
    import open_clip

    if arch.endswith(".json"):
        path = Path(arch).expanduser()
        if not path.is_file():
            raise ConfigError(f"clip:{arch}: model config file not found")
        open_clip.add_model_config(path)
        return path.stem
    if arch not in open_clip.list_models():
        raise ConfigError(
            f"clip:{arch}: unknown open_clip architecture; see open_clip.list_models() "
            "(e.g. ViT-B-32) or give a model config as clip:FILE.json"
        )
    return arch


def _group_name(arch: str) -> str:
    return "clip-" + arch.lower().replace("/", "-").replace("_", "-")


def clip(arg: str | None, weights: str) -> Backbone:
    import open_clip

    raw_arch, _, tag = str(arg).partition(":")
    arch = _resolve_arch(raw_arch)
    kind = weights_kind(weights)
    kwargs: dict = {}
    if kind == "random":
        with seeded():
            model = open_clip.create_model(arch, pretrained=None)
        info = random_info()
    elif kind == "file":
        model = open_clip.create_model(arch, pretrained=str(Path(weights).expanduser()))
        info = file_info(weights)
    else:
        tags = open_clip.list_pretrained_tags_by_model(arch)
        tag = tag or (tags[0] if tags else "")
        if not tag or tag not in tags:
            raise ConfigError(
                f"clip:{raw_arch}: no pretrained tag {tag!r}; available: {', '.join(tags) or 'none'}. "
                "Write clip:ARCH:TAG, or pass --weights PATH / --weights random"
            )
        cfg = open_clip.get_pretrained_cfg(arch, tag)
        cached = _cached_pretrained(cfg)
        if cached is None and offline():
            where = cfg.get("hf_hub") or cfg.get("url")
            raise ConfigError(
                f"pretrained weights for clip:{arch}:{tag} are not in the local cache (looked for {where} in the "
                "Hugging Face cache). Offline, copy them there, or pass --weights PATH (a local checkpoint) or "
                "--weights random."
            )
        try:
            model = open_clip.create_model(arch, pretrained=tag)
        except Exception as e:
            raise ConfigError(
                f"could not load pretrained weights clip:{arch}:{tag} ({e}); pass --weights PATH or --weights random"
            ) from e
        cached = _cached_pretrained(cfg)
        info = WeightsInfo(
            "default",
            f"open_clip {arch} {tag}",
            str(cached) if cached else None,
            sha256_of(cached) if cached else None,
        )
        kwargs["tag"] = tag
    model.eval()
    pc = getattr(model.visual, "preprocess_cfg", {}) or {}
    size = pc.get("size", getattr(model.visual, "image_size", 224))
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    resize_mode = pc.get("resize_mode", "shortest")
    if resize_mode not in ("shortest", "squash"):
        log.warning("clip:%s uses resize_mode %r; evoked resizes the shorter side instead", arch, resize_mode)
    preprocess = Preprocess(
        resize=size,
        crop=size,
        mean=tuple(float(v) for v in pc.get("mean", (0.48145466, 0.4578275, 0.40821073))),
        std=tuple(float(v) for v in pc.get("std", (0.26862954, 0.26130258, 0.27577711))),
        interpolation=pc.get("interpolation", "bicubic"),
        mode="squash" if resize_mode == "squash" else "shorter",
    )
    tokenizer = open_clip.get_tokenizer(arch)
    scenes = scene_names()
    module = ClipFeatures(
        model,
        tokenizer,
        [SCENE_TEMPLATE.format(s) for s in scenes],
        [EMOTION_TEMPLATE.format(e) for e in EMOTION_WORDS],
    )
    dim = int(module.scene_text.shape[1])
    spec = f"clip:{raw_arch}" + (f":{kwargs['tag']}" if kwargs.get("tag") else "")
    bb = Backbone(
        name=_group_name(arch),
        spec=spec,
        module=module,
        preprocess=preprocess,
        outputs={"embed": dim, "scene": len(scenes), "emotion": len(EMOTION_WORDS)},
        default_outputs=("embed", "scene", "emotion"),
        weights=info,
        description=f"open_clip {arch}" + (f" ({kwargs['tag']})" if kwargs.get("tag") else ""),
        output_attrs={
            "scene": {"labels": scenes, "template": SCENE_TEMPLATE},
            "emotion": {"labels": list(EMOTION_WORDS), "template": EMOTION_TEMPLATE},
            "embed": {"normalized": "L2"},
        },
        encode_text=module.encode_text,
        to_low_precision=module.to_low_precision,
    )
    return with_layers(bb, *_visual_blocks(model.visual))


def _visual_blocks(visual: nn.Module) -> tuple[list[tuple[str, nn.Module]], Pool, list[int] | None]:
    """The image tower's layers: the class token after each transformer block (ViTs), or each
    pooled residual block of layer1-4 (open_clip's ModifiedResNet)."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if isinstance(blocks, nn.ModuleList):
        width = int(visual.transformer.width)
        first = bool(getattr(visual.transformer, "batch_first", True))
        pool: Pool = _class_token if first else _class_token_seq_first
        return [(f"transformer.resblocks.{i}", b) for i, b in enumerate(blocks)], pool, [width] * len(blocks)
    if all(hasattr(visual, f"layer{i}") for i in range(1, 5)):
        named = [
            (f"layer{i}.{j}", b) for i in range(1, 5) for j, b in enumerate(getattr(visual, f"layer{i}"))
        ]
        return named, pool_block, None
    return [], pool_block, None


def _class_token(t: torch.Tensor) -> torch.Tensor:
    return t[:, 0]


def _class_token_seq_first(t: torch.Tensor) -> torch.Tensor:
    return t[0]


def write_model_config(
    path: str | os.PathLike, *, embed_dim: int = 32, image_size: int = 64, width: int = 64
) -> Path:
    """Write a tiny open_clip model config (for smoke runs and tests)."""
    cfg = {
        "embed_dim": embed_dim,
        "vision_cfg": {
            "image_size": image_size,
            "layers": 2,
            "width": width,
            "patch_size": 16,
            "head_width": 32,
        },
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": width, "heads": 2, "layers": 2},
    }
    path = Path(path)
    path.write_text(json.dumps(cfg, indent=2))
    return path
