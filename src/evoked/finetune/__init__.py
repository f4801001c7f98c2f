"""The end-to-end network of the two-stage paper: one_stage / two_stage x single / multi.

``finetune(...)`` (the `evoked finetune` command) trains one framework and writes a run directory
that `evoked evaluate` compares with `evoked regress` runs. See docs/finetune.md.
"""

from evoked.finetune.data import MODES, TASKS, FinetuneData, Part, prepare_data
from evoked.finetune.losses import multi_hot_top, task_loss
from evoked.finetune.model import VANet, build_encoder, freeze_before
from evoked.finetune.runner import FinetuneResult, finetune, model_name
from evoked.finetune.train import TrainConfig

__all__ = [
    "MODES",
    "TASKS",
    "FinetuneData",
    "FinetuneResult",
    "Part",
    "TrainConfig",
    "VANet",
    "build_encoder",
    "finetune",
    "freeze_before",
    "model_name",
    "multi_hot_top",
    "prepare_data",
    "task_loss",
]
