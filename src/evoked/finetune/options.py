"""The options of `evoked finetune`, every one checked before any image is read or any weight loaded."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from evoked.data import Lexicon, Manifest
from evoked.data.lexicon import parse_category_map
from evoked.data.va_range import parse_va_range
from evoked.device import resolve_compute
from evoked.errors import ConfigError
from evoked.extract.backbone import parse_preprocess_overrides
from evoked.finetune.data import check_framework
from evoked.finetune.train import TrainConfig
from evoked.runfolder import check_out

log = logging.getLogger(__name__)

DEFAULT_ALPHA = {"one_stage": 0.5, "two_stage": 0.9}


def parse_milestones(value: str | Sequence[int]) -> tuple[int, ...]:
    """``"10,20,30"`` or ``(10, 20, 30)`` -> ``(10, 20, 30)``."""
    try:
        items = value.split(",") if isinstance(value, str) else list(value)
        return tuple(int(x) for x in items if str(x).strip())
    except (TypeError, ValueError) as e:
        raise ConfigError(f"--milestones {value!r}: epochs separated by commas, e.g. 10,20,30") from e


@dataclass
class FinetuneOptions:
    """What `finetune` does (docs/finetune.md): the CLI flags, as Python values."""

    dimensional: str | Manifest
    out: str | os.PathLike
    mode: str = "one_stage"
    task: str = "single"
    categorical: str | Manifest | None = None
    lexicon: str | Lexicon = "nrc"
    category_map: Mapping[str, str] | Sequence[str] | None = None
    soft: bool = False
    n_labels: int | None = None
    evals: Sequence[str | Manifest] = ()
    va_range: str | Sequence[float] | None = None  # None: 1,9, or stage 1's for two_stage
    skip_bad_images: bool = False
    check_workers: int = 4  # threads that decode every image before training
    backbone: str | None = None
    weights: str = "default"
    preprocess: str | Mapping | None = None
    plugins: Sequence[str] = ()
    checkpoint: str | os.PathLike | None = None
    from_run: str | os.PathLike | None = None
    freeze_until: str | None = None
    freeze_bn: bool | None = None
    size: int | None = None
    alpha: float | None = None
    cls_loss: str = "auto"
    # the optimisation settings default to `TrainConfig`'s (the paper's values), defined there once
    epochs: int = TrainConfig.epochs
    batch_size: int = TrainConfig.batch_size
    lr: float = TrainConfig.lr
    weight_decay: float = TrainConfig.weight_decay
    milestones: Sequence[int] | str = TrainConfig.milestones
    gamma: float = TrainConfig.gamma
    patience: int = TrainConfig.patience
    seed: int = TrainConfig.seed
    device: str = "auto"
    precision: str = "auto"
    workers: int = TrainConfig.workers
    eval_batch_size: int = TrainConfig.eval_batch_size
    resume: bool = False
    overwrite: bool = False
    name: str | None = None  # the run's name in run.json; None: the folder's name
    # set by `check`
    out_path: Path = field(default=Path(), init=False)
    train: TrainConfig = field(default_factory=TrainConfig, init=False)
    dev: torch.device = field(default=torch.device("cpu"), init=False)
    prec: str = field(default="fp32", init=False)
    overrides: dict = field(default_factory=dict, init=False)
    ckpt_path: Path | None = field(default=None, init=False)
    scale: tuple[float, float] | None = field(default=None, init=False)  # None: inherited or 1,9

    def check(self) -> FinetuneOptions:
        """Parse and check every option; a mistake fails here, not after the images are checked."""
        cls_loss = check_framework(
            self.mode, self.task, self.categorical is not None, self.n_labels, self.soft, self.cls_loss
        )
        last = Path(self.out) / "models" / "last.pt"
        self.out_path = check_out(self.out, self.overwrite, last if self.resume else None, resumable=True)
        alpha = DEFAULT_ALPHA[self.mode] if self.alpha is None else float(self.alpha)
        self.milestones = parse_milestones(self.milestones)
        shared = {f.name: getattr(self, f.name) for f in fields(TrainConfig) if f.name in FINETUNE_FIELDS}
        self.train = TrainConfig(**shared, alpha=alpha, freeze_bn=bool(self.freeze_bn), cls_loss=cls_loss)
        self.train.check()
        if self.size is not None and self.size < 8:
            raise ConfigError(f"--size {self.size}: the input side in pixels, at least 8 (the paper: 448)")
        if self.check_workers < 1:
            raise ConfigError(f"--check-workers {self.check_workers}: use 1 or more threads")
        self.dev, self.prec = resolve_compute(self.device, self.precision, training=True)
        pre = self.preprocess
        self.overrides = parse_preprocess_overrides(pre) if isinstance(pre, str) and pre else dict(pre or {})
        self.category_map = parse_category_map(self.category_map)  # a bad map fails before any reading
        self.scale = None if self.va_range is None else parse_va_range(self.va_range)
        if self.mode == "one_stage" and not self.backbone:
            raise ConfigError(
                "one_stage needs --backbone (e.g. resnet101, tv:mobilenet_v2, clip:ViT-B-32:openai)"
            )
        self.ckpt_path = _resolve_checkpoint(self.mode, self.checkpoint, self.from_run)
        if self.plugins:  # registers backbones: before --backbone is looked up
            from evoked.extract.registry import load_plugin

            for p in self.plugins:
                load_plugin(p)
        return self


FINETUNE_FIELDS = {f.name for f in fields(FinetuneOptions)} - {"alpha", "freeze_bn", "cls_loss"}


def _resolve_checkpoint(
    mode: str, checkpoint: str | os.PathLike | None, from_run: str | os.PathLike | None
) -> Path | None:
    if mode == "one_stage":
        if checkpoint or from_run:
            raise ConfigError(
                "--checkpoint/--from give the one_stage model that two_stage fine-tunes; "
                "with --mode one_stage the network starts from --weights"
            )
        return None
    if checkpoint and from_run:
        raise ConfigError("pass either --checkpoint FILE or --from RUN_DIR, not both")
    if from_run:
        path = Path(from_run) / "models" / "best.pt"
        if not path.is_file():
            raise ConfigError(
                f"--from {str(from_run)!r}: {path} does not exist; give the run directory of a finished one_stage run"
            )
        return path
    if not checkpoint:
        raise ConfigError(
            "two_stage fine-tunes a one_stage network: pass --checkpoint runs/ONE/models/best.pt "
            "(or --from runs/ONE)"
        )
    path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(f"--checkpoint {str(checkpoint)!r}: no such file")
    return path
