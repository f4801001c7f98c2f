"""The end-to-end network of the two-stage paper: one_stage / two_stage x single / multi.

``finetune(...)`` (the `evoked finetune` command) trains one framework and writes a run directory
that `evoked evaluate` compares with `evoked regress` runs. See docs/finetune.md.
"""

from evoked import lazy_exports

# torch loads when a name is first used, not with the package.
__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "evoked.finetune.data": ("MODES", "TASKS", "FinetuneData", "Part", "prepare_data"),
        "evoked.finetune.losses": ("multi_hot_top", "task_loss"),
        "evoked.finetune.model": ("VANet", "build_encoder", "freeze_before"),
        "evoked.finetune.runner": ("FinetuneResult", "finetune", "model_name"),
        "evoked.finetune.train": ("TrainConfig",),
    },
)
