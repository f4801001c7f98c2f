"""The training loop: Adam + a step schedule, early stopping on validation valence r, a checkpoint
every epoch, and resumption that gives the same weights as an uninterrupted run on the CPU.

Repeatability does not rest on carrying random state across epochs: at the start of every epoch the
torch seed and the shuffling generator are set from (seed, epoch), and each training item is
augmented under its own seed (see `data.ImageDataset`). The random states are still saved in
``last.pt`` and restored, for anything outside that scheme.

The paper's code steps MultiStepLR after every batch, which halves the learning rate every 10
*batches*; here the milestones count epochs (as MultiStepLR is meant to be used).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from evoked.errors import ConfigError
from evoked.evaluate.metrics import mse, pearson
from evoked.finetune.data import ImageDataset, Part, Transform
from evoked.finetune.losses import task_loss
from evoked.finetune.model import VANet, frozen_norm_layers, set_train_mode

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    """Optimisation settings (the paper's values are the defaults)."""

    epochs: int = 100
    batch_size: int = 10
    lr: float = 1e-4
    weight_decay: float = 1e-5
    milestones: tuple[int, ...] = (10, 20, 30, 40, 50)
    gamma: float = 0.5
    patience: int = 5  # epochs without a better validation valence r; 0 = never stop early
    freeze_bn: bool = False  # keep every batch-norm layer in eval mode (running statistics fixed)
    alpha: float = 0.5  # weight of the MSE in the multi-task loss
    cls_loss: str | None = None  # "ce" / "bce" for the multi task
    seed: int = 0
    eval_batch_size: int = 32
    workers: int = 0

    def check(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs {self.epochs}: train at least 1 epoch")
        if self.batch_size < 2:
            raise ConfigError(f"--batch-size {self.batch_size}: use 2 or more (batch norm needs two samples)")
        if self.eval_batch_size < 1:
            raise ConfigError(f"--eval-batch-size {self.eval_batch_size}: use 1 or more")
        if not self.lr > 0 or self.weight_decay < 0:
            raise ConfigError(f"--lr {self.lr} must be > 0 and --weight-decay {self.weight_decay} >= 0")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(
                f"--alpha {self.alpha}: a weight between 0 and 1 (the paper: 0.5, 0.9 to fine-tune)"
            )
        if not self.gamma > 0 or any(m < 1 for m in self.milestones):
            raise ConfigError(
                f"--milestones {self.milestones} / --gamma {self.gamma}: epochs >= 1 and gamma > 0"
            )
        if self.patience < 0:
            raise ConfigError(f"--patience {self.patience}: use 0 (no early stopping) or more")
        if self.workers < 0:
            raise ConfigError(f"--workers {self.workers}: use 0 (load in the main process) or more")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d


@dataclass
class Outcome:
    epochs_run: int
    best_epoch: int
    best_score: float
    stopped_early: bool
    history: list[dict] = field(default_factory=list)

    @property
    def collapsed(self) -> bool:
        """Every epoch predicted a constant on the validation split: there is no epoch to keep."""
        return bool(self.history) and all(h.get("val_constant") for h in self.history)


# ---------------------------------------------------------------------------------------------- devices


def autocast(device: torch.device, precision: str) -> AbstractContextManager[object]:
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ---------------------------------------------------------------------------------------------- seeding


def epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def seed_worker(worker_id: int) -> None:
    """DataLoader workers: numpy and random follow the worker's torch seed."""
    s = torch.initial_seed() % 2**32
    np.random.seed(s)
    random.seed(s)


def rng_state() -> dict:
    """Random states as tensors and plain values (so the checkpoint loads with weights_only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        ("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    random.setstate(_as_tuple(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------------------------------------- loaders


def _loader(
    ds: ImageDataset, batch_size: int, workers: int, device: torch.device, generator=None, train=False
):
    n = len(ds)
    return DataLoader(
        ds,
        batch_size=batch_size,
        sampler=RandomSampler(ds, generator=generator) if train else None,
        shuffle=False,
        # a last batch of one sample cannot train batch norm; drop it (only then)
        drop_last=train and n % batch_size == 1,
        num_workers=workers,
        worker_init_fn=seed_worker if workers else None,
        generator=generator,
        pin_memory=device.type == "cuda",
    )


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def predict(
    net: VANet,
    part: Part,
    transform: Transform,
    *,
    device: torch.device,
    precision: str = "fp32",
    batch_size: int = 32,
    workers: int = 0,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """(n, 2) predicted VA and, with a category head, (n, K) category logits, in `part`'s order."""
    net.eval()
    ds = ImageDataset(part, transform, augment=False)
    va, logits = [], []
    for batch in _loader(ds, batch_size, workers, device):
        x = batch["image"].to(device, non_blocking=True)
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, precision):
            out = net(x)
        va.append(out["va"].float().cpu())
        if "logits" in out:
            logits.append(out["logits"].float().cpu())
        if on_progress is not None:
            on_progress(len(x))
    va_arr = torch.cat(va).numpy().astype(np.float64) if va else np.zeros((0, 2))
    return va_arr, (torch.cat(logits).numpy().astype(np.float64) if logits else None)


# ---------------------------------------------------------------------------------------------- checkpoints


def save_atomic(obj: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, what: str) -> dict:
    """A checkpoint written by evoked (tensors and plain values only: loaded with weights_only)."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"{what} {str(path)!r}: no such file") from None
    except Exception as e:  # torch raises many types for a file that is not a checkpoint
        raise ConfigError(f"{what} {str(path)!r}: cannot load it as an evoked checkpoint ({e})") from e
    if not isinstance(obj, dict) or "model" not in obj or "meta" not in obj:
        raise ConfigError(
            f"{what} {str(path)!r} is not a checkpoint written by `evoked finetune` (no model/meta entries)"
        )
    return obj


# ---------------------------------------------------------------------------------------------- training


def _score(r: float, constant: bool = False) -> float:
    """Early-stopping score: an epoch that predicts a constant is never the best one."""
    return float("-inf") if constant or np.isnan(r) else float(r)


#: validation predictions that spread less than 1% of the ratings do are "constant" (no usable signal)
CONSTANT_RATIO = 1e-2


def constant_prediction(true: np.ndarray, pred: np.ndarray) -> bool:
    """True when the (n, 2) predictions are not finite, or constant on every dimension whose
    ratings vary.

    Relative to the spread of the ratings, so it does not depend on the scale: a network that
    collapsed predicts the same VA (to within rounding noise) for every image. A dimension whose
    ratings do not vary (a validation set of one item) cannot tell, and is not judged.
    """
    if not np.isfinite(pred).all():
        return True
    flat = []
    for k in range(pred.shape[1]):
        known = np.isfinite(true[:, k])
        spread = float(np.std(true[known, k])) if known.sum() > 1 else 0.0
        if spread > 0:
            flat.append(float(np.std(pred[:, k])) <= CONSTANT_RATIO * spread)
    return bool(flat) and all(flat)


def train_network(
    net: VANet,
    train: Part,
    val: Part,
    *,
    train_transform: Transform,
    eval_transform: Transform,
    cfg: TrainConfig,
    device: torch.device,
    precision: str,
    models_dir: Path,
    meta: dict,
    resume_from: dict | None = None,
    on_batch: Callable[[int, int, int, float], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
) -> Outcome:
    """Train `net` in place; ``models_dir/last.pt`` after every epoch, ``best.pt`` at each best
    validation valence r. `on_batch(epoch, batch, n_batches, loss)`, `on_epoch(record)`."""
    cfg.check()
    if len(train) < 2:
        raise ConfigError(f"the training part has {len(train)} item(s); training needs at least 2")
    net.to(device)
    if device.type == "cuda":
        net.to(memory_format=torch.channels_last)
    frozen_norms = frozen_norm_layers(net, all_layers=cfg.freeze_bn)
    params = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(cfg.milestones), gamma=cfg.gamma
    )
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    state = {"optimizer": optimizer, "scheduler": scheduler, "scaler": scaler}
    start, best, best_epoch, bad, history = 1, None, 0, 0, []
    if resume_from is not None:
        net.load_state_dict(resume_from["model"])
        for key, obj in state.items():
            obj.load_state_dict(resume_from[key])
        set_rng_state(resume_from["rng"])
        start = int(resume_from["epoch"]) + 1
        best, best_epoch = resume_from["best_score"], int(resume_from["best_epoch"])
        bad, history = int(resume_from["bad_epochs"]), list(resume_from["history"])
        log.info("resuming after epoch %d (best valence r %.4f at epoch %d)", start - 1, best, best_epoch)

    train_ds = ImageDataset(train, train_transform, augment=True, seed=cfg.seed)
    stopped = cfg.patience > 0 and bad >= cfg.patience
    for epoch in range(start, cfg.epochs + 1):
        if stopped:
            break
        t0 = time.perf_counter()
        s = epoch_seed(cfg.seed, epoch)
        torch.manual_seed(s)  # dropout and anything else drawing from the global generator
        train_ds.set_epoch(epoch)
        loader = _loader(
            train_ds, cfg.batch_size, cfg.workers, device, torch.Generator().manual_seed(s), True
        )
        set_train_mode(net, frozen_norms)
        lr = optimizer.param_groups[0]["lr"]
        losses = _train_epoch(net, loader, optimizer, scaler, cfg, device, precision, epoch, on_batch)
        scheduler.step()
        record = _validate(net, val, eval_transform, cfg, device, precision, epoch)
        score = _score(record["val_r_valence"], record["val_constant"])
        improved = best is None or score > best
        if improved:
            best, best_epoch, bad = score, epoch, 0
            best_meta = {**meta, "epoch": epoch, "val_r_valence": record["val_r_valence"]}
            save_atomic({"model": net.state_dict(), "meta": best_meta}, models_dir / "best.pt")
        else:
            bad += 1
        record = {"epoch": epoch, **losses, **record, "lr": lr, "improved": improved}
        record["seconds"] = time.perf_counter() - t0
        history.append(record)
        stopped = cfg.patience > 0 and bad >= cfg.patience
        save_atomic(
            {
                "model": net.state_dict(),
                **{key: obj.state_dict() for key, obj in state.items()},
                "epoch": epoch,
                "best_score": best,
                "best_epoch": best_epoch,
                "bad_epochs": bad,
                "history": history,
                "rng": rng_state(),
                "meta": meta,
            },
            models_dir / "last.pt",
        )
        log.info(
            "epoch %d/%d: train loss %.4f, val r valence %.4f arousal %.4f%s (%.1fs)",
            epoch,
            cfg.epochs,
            record["train_loss"],
            record["val_r_valence"],
            record["val_r_arousal"],
            " *" if improved else "",
            record["seconds"],
        )
        if on_epoch is not None:
            on_epoch(record)
    epochs_run = history[-1]["epoch"] if history else 0
    return Outcome(
        epochs_run=epochs_run,
        best_epoch=best_epoch,
        best_score=float("nan") if best is None or best == float("-inf") else float(best),
        stopped_early=stopped and epochs_run < cfg.epochs,
        history=history,
    )


def _train_epoch(
    net: VANet,
    loader: DataLoader,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    cfg: TrainConfig,
    device: torch.device,
    precision: str,
    epoch: int,
    on_batch: Callable[[int, int, int, float], None] | None,
) -> dict[str, float]:
    """One pass over the training loader: the mean loss, and the mean of each part of it."""
    total, n_seen = 0.0, 0
    sums: dict[str, float] = {}
    n_batches = len(loader)
    for b, batch in enumerate(loader):
        batch = _to(batch, device)
        x = batch["image"]
        if device.type == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, precision):
            out = net(x)
        loss, parts = task_loss(out, batch, alpha=cfg.alpha, cls_loss=cfg.cls_loss or "ce")
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        k = len(x)
        total += float(loss.detach()) * k
        for name, v in parts.items():
            sums[name] = sums.get(name, 0.0) + v * k
        n_seen += k
        if on_batch is not None:
            on_batch(epoch, b, n_batches, float(loss.detach()))
    n = max(n_seen, 1)
    return {"train_loss": total / n, **{f"train_{k}": v / n for k, v in sums.items()}}


def _validate(
    net: VANet, val: Part, transform, cfg: TrainConfig, device: torch.device, precision: str, epoch: int
) -> dict:
    """The epoch's scores on the validation split; constant predictions are flagged (never the best)."""
    run = {"device": device, "precision": precision, "workers": cfg.workers}
    pred, _ = predict(net, val, transform, batch_size=cfg.eval_batch_size, **run)
    constant = constant_prediction(val.va, pred)
    if constant:
        log.warning(
            "epoch %d: the validation predictions are constant (valence std %.2g, ratings std %.2g); "
            "this epoch cannot be the best one",
            epoch,
            float(np.std(pred[:, 0])) if np.isfinite(pred).all() else float("nan"),
            float(np.nanstd(val.va[:, 0])),
        )
    return {
        "val_r_valence": pearson(val.va[:, 0], pred[:, 0])[0],
        "val_r_arousal": pearson(val.va[:, 1], pred[:, 1])[0],
        "val_mse_valence": mse(val.va[:, 0], pred[:, 0]),
        "val_mse_arousal": mse(val.va[:, 1], pred[:, 1]),
        "val_pred_std_valence": float(np.std(pred[:, 0])),
        "val_pred_std_arousal": float(np.std(pred[:, 1])),
        "val_constant": constant,
    }
