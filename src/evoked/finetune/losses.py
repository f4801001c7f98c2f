"""Losses of the single and multi tasks, with per-sample masks.

single: MSE of (valence, arousal). multi: ``alpha * MSE + (1 - alpha) * CE`` (BCE on multi-hot labels
for label-distribution sets). Each term is averaged over the samples that carry its label, so a
two_stage/multi batch mixes categorical items (category loss only) and VA-rated items (MSE only).
A term with no sample in the batch contributes 0 (not NaN).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

CLS_LOSSES = ("ce", "bce")


def multi_hot_top(distribution: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """(N, K) label distributions -> multi-hot of each row's top categories (ties all on), as the
    paper's code does for FlickrLDL/TwitterLDL."""
    p = np.asarray(distribution, dtype=np.float64)
    top = np.nanmax(p, axis=1, keepdims=True)
    return (p >= top - tol).astype(np.float32)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked samples and both dimensions (``nn.MSELoss`` on them)."""
    m = mask.to(pred.dtype)
    n = m.sum()
    if n == 0:
        return pred.sum() * 0.0  # keeps the graph, contributes nothing
    err = (pred - torch.nan_to_num(target)) ** 2
    return (err.sum(dim=1) * m).sum() / (n * pred.shape[1])


def masked_category_loss(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, kind: str
) -> torch.Tensor:
    """Cross-entropy against (one-hot or soft) targets, or BCE-with-logits against multi-hot ones,
    averaged over the masked samples (BCE also over the K outputs, as ``nn.BCELoss``)."""
    m = mask.to(logits.dtype)
    n = m.sum()
    if n == 0:
        return logits.sum() * 0.0
    target = torch.nan_to_num(target)
    if kind == "ce":
        per = F.cross_entropy(logits, target, reduction="none")
    elif kind == "bce":
        per = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1)
    else:
        raise ValueError(f"category loss {kind!r}: use one of {CLS_LOSSES}")
    return (per * m).sum() / n


def task_loss(
    out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], *, alpha: float, cls_loss: str = "ce"
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss of a batch and its parts. Without a category head (single task) it is the MSE."""
    va = out["va"].float()
    mse = masked_mse(va, batch["va"], batch["va_mask"])
    if "logits" not in out:
        return mse, {"mse": float(mse.detach())}
    cls = masked_category_loss(out["logits"].float(), batch["cls"], batch["cls_mask"], cls_loss)
    loss = alpha * mse + (1.0 - alpha) * cls
    return loss, {"mse": float(mse.detach()), cls_loss: float(cls.detach())}
