"""A feed-forward network regressor in torch, as a scikit-learn estimator.

`TorchMLPRegressor` trains an MLP on standardised targets with AdamW, mini-batches and early
stopping on an internal validation fraction (the best epoch's weights are kept). It runs on the
GPU when there is one (``device="auto"``) and is deterministic on the CPU for a fixed seed. It
pickles its weights as numpy arrays, never the module, so a model fitted on a GPU loads anywhere.

Defaults: AdamW (learning rate 3e-4, weight decay 1e-3), batches of 128, at most 60 epochs,
early stopping after 8 epochs without improvement on a 10% validation split of the training data.
Optionally several networks are averaged (``n_ensemble``), and auxiliary targets such as the
emotion label distribution are learnt alongside VA (``fit(X, y, aux=...)``, multi-task).

Two named configurations are registered:

- ``mlp``: two hidden layers (256, 128), ReLU, dropout 0.3: fast, and on a few thousand rows of
  CNN features as good as wider or deeper nets;
- ``mlp-kim``: three hidden layers (512, 256, 128), ReLU, dropout 0.3, after the three-hidden-layer
  feed-forward network of Kim et al. (2018, "Building emotional machines", IEEE TMM) that maps
  object, scene and colour features to valence and arousal. The layer widths are ours.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, MultiOutputMixin, RegressorMixin
from sklearn.utils.validation import check_is_fitted, validate_data

from evoked.device import resolve_device
from evoked.regress.chunks import RowView

log = logging.getLogger(__name__)

KIM_HIDDEN = (512, 256, 128)
#: What a fit trains on, per seed: (torch generator, epoch) -> batches (x, z), and validation tensors.
TrainData = tuple[Callable[[Any, int], Iterator[tuple[Any, Any]]], tuple[Any, ...]]


def _build(n_in: int, hidden: tuple[int, ...], n_out: int, dropout: float):
    import torch.nn as nn

    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = h
    layers.append(nn.Linear(width, n_out))
    return nn.Sequential(*layers)


def _weighted_mse(pred, target, weight):
    """Mean squared error over the finite targets, each column weighted (NaN = no label)."""
    import torch

    mask = torch.isfinite(target)
    w = weight * mask
    diff = torch.where(mask, pred - target, torch.zeros_like(pred))
    return (w * diff * diff).sum() / w.sum().clamp_min(1e-12)


class TorchMLPRegressor(MultiOutputMixin, RegressorMixin, BaseEstimator):
    """MLP regression with early stopping; multi-output (y of shape (n, t) gives (n, t)).

    ``n_ensemble`` > 1 trains that many networks (seeds ``random_state + i``, each with its own
    validation split) and averages them. ``fit(X, y, aux=A)`` adds auxiliary targets (n, k), e.g.
    the emotion label distribution: the network predicts them too (loss weight `aux_weight`, NaN =
    unknown), which regularises the shared layers; `predict` returns only y's columns, and early
    stopping watches y's validation loss only.
    """

    def __init__(
        self,
        hidden_layer_sizes: tuple[int, ...] = (256, 128),
        dropout: float = 0.3,
        lr: float = 3e-4,
        weight_decay: float = 1e-3,
        epochs: int = 60,
        batch_size: int = 128,
        validation_fraction: float = 0.1,
        max_validation_rows: int = 20_000,
        patience: int = 8,
        n_ensemble: int = 1,
        aux_weight: float = 1.0,
        random_state: int = 0,
        device: str = "auto",
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.validation_fraction = validation_fraction
        self.max_validation_rows = max_validation_rows
        self.patience = patience
        self.n_ensemble = n_ensemble
        self.aux_weight = aux_weight
        self.random_state = random_state
        self.device = device

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags

    def _check_params(self) -> None:
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout={self.dropout}: must be in [0, 1)")
        if not 0 <= self.validation_fraction < 1:
            raise ValueError(f"validation_fraction={self.validation_fraction}: must be in [0, 1)")
        if self.epochs < 1 or self.batch_size < 1 or self.n_ensemble < 1 or self.max_validation_rows < 0:
            raise ValueError(
                f"epochs={self.epochs}, batch_size={self.batch_size}, n_ensemble={self.n_ensemble}: must be >= 1"
            )

    def fit(self, X: np.ndarray, y: np.ndarray, aux: np.ndarray | None = None) -> TorchMLPRegressor:
        import torch

        self._check_params()
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=[np.float32, np.float64])
        self._single_output = y.ndim == 1
        Y = y.reshape(len(y), -1).astype(np.float64)
        self.y_mean_, self.y_scale_ = self._target_scaling(Y)
        Z = (Y - self.y_mean_) / self.y_scale_
        self.n_aux_ = 0
        if aux is not None:
            A = np.asarray(aux, dtype=np.float64).reshape(len(X), -1)
            with np.errstate(all="ignore"):  # all-NaN columns stay NaN and are masked
                a_mean, a_std = np.nanmean(A, axis=0), np.nanstd(A, axis=0)
            a_std = np.where(np.isfinite(a_std) & (a_std > 0), a_std, 1.0)
            Z = np.hstack([Z, (A - np.nan_to_num(a_mean)) / a_std])
            self.n_aux_ = A.shape[1]
        weight = np.r_[np.ones(Y.shape[1]), np.full(self.n_aux_, float(self.aux_weight))]
        X = np.ascontiguousarray(X, dtype=np.float32)
        Z = Z.astype(np.float32)
        device = resolve_device(self.device, "MLP device")

        def data(seed: int) -> TrainData:
            train_idx, val_idx = self._split(len(X), seed)
            xt, zt = (torch.from_numpy(a[train_idx]).to(device) for a in (X, Z))

            def batches(gen: torch.Generator, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
                order = torch.randperm(len(xt), generator=gen).to(device)
                for start in range(0, len(xt), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    yield xt[idx], zt[idx]

            val = tuple(torch.from_numpy(a[val_idx]).to(device) for a in (X, Z[:, : Y.shape[1]]))
            return batches, val

        self._train(data, X.shape[1], Z.shape[1], weight, device)
        return self

    def fit_chunks(self, view: RowView, Y: np.ndarray) -> TorchMLPRegressor:
        """The same training from chunks of standardised rows (`evoked.regress.chunks.RowView`):
        the same validation rows (kept in memory, at most `max_validation_rows`), each epoch's
        batches drawn from shuffled chunks (chunk order random, rows shuffled within a chunk)."""
        import torch

        self._check_params()
        Yr = Y[view.rows].astype(np.float64)
        self._single_output, self.n_features_in_, self.n_aux_ = False, view.d, 0
        self.y_mean_, self.y_scale_ = self._target_scaling(Yr)
        Z = ((Y - self.y_mean_) / self.y_scale_).astype(np.float32)
        device = resolve_device(self.device, "MLP device")

        def data(seed: int) -> TrainData:
            _, val_pos = self._split(view.n, seed)
            val_rows = np.sort(view.rows[val_pos])
            is_val = np.zeros(view.source.n, dtype=bool)
            is_val[val_rows] = True
            xv = np.empty((len(val_rows), view.d), dtype=np.float32)
            for r, x in view:
                v = is_val[r]
                xv[np.searchsorted(val_rows, r[v])] = x[v]

            def batches(gen: torch.Generator, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
                for r, x in view.shuffled(np.random.default_rng([seed, epoch])):
                    keep = ~is_val[r]
                    xt = torch.from_numpy(np.ascontiguousarray(x[keep])).to(device)
                    zt = torch.from_numpy(Z[r[keep]]).to(device)
                    order = torch.randperm(len(xt), generator=gen).to(device)
                    for start in range(0, len(xt), self.batch_size):
                        idx = order[start : start + self.batch_size]
                        yield xt[idx], zt[idx]

            return batches, (torch.from_numpy(xv).to(device), torch.from_numpy(Z[val_rows]).to(device))

        self._train(data, view.d, Y.shape[1], np.ones(Y.shape[1]), device)
        return self

    # What a subclass with another output head changes (`evoked.regress.distribution`): how targets
    # are scaled, the training loss, the validation loss and how outputs become predictions.
    def _target_scaling(self, Y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Targets are standardised per column (mean, scale)."""
        std = Y.std(axis=0)
        return Y.mean(axis=0), np.where(std > 0, std, 1.0)

    def _loss(self, pred, target, weight):
        return _weighted_mse(pred, target, weight)

    def _validation_loss(self, pred, target) -> float:
        import torch

        return float(torch.nn.functional.mse_loss(pred, target))

    def _output(self, Z: np.ndarray) -> np.ndarray:
        """Network outputs (main columns, averaged over members) -> predictions."""
        return Z * self.y_scale_ + self.y_mean_

    def _split(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(training, validation) positions among n rows: the same for in-memory and chunked fits."""
        n_val = min(int(round(n * self.validation_fraction)), int(self.max_validation_rows))
        if n_val < 1 or n - n_val < 2:
            n_val = 0  # too few rows to hold some out: train on all for the full epochs
        perm = np.random.default_rng(seed).permutation(n)
        return perm[n_val:], perm[:n_val]

    def _train(self, data, d: int, n_out: int, weight, device) -> None:
        members = [
            self._train_one(data, d, n_out, weight, self.random_state + i, device)
            for i in range(self.n_ensemble)
        ]
        self.state_dicts_ = [m["state"] for m in members]
        self.n_iter_ = [m["epochs"] for m in members]
        self.best_epoch_ = [m["best_epoch"] for m in members]
        self.loss_curve_ = members[0]["curve"]
        self.validation_loss_curve_ = members[0]["val_curve"]
        self.device_ = str(device)
        log.debug("mlp: epochs %s, best %s, on %s", self.n_iter_, self.best_epoch_, device)

    def _train_one(self, data, d: int, n_out: int, weight, seed: int, device) -> dict:
        """One network: its weights (numpy), epochs run, best epoch and loss curves. `data(seed)`
        gives the epoch's batches (a function of the generator and the epoch) and the validation
        tensors; the first `len(val z columns)` outputs are the ones early stopping watches."""
        import torch

        hidden = tuple(int(h) for h in self.hidden_layer_sizes)
        batches, (xv, zv) = data(seed)
        n_main = zv.shape[1]
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            module = _build(d, hidden, n_out, self.dropout).to(device)
            opt = torch.optim.AdamW(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            w = torch.tensor(weight, dtype=torch.float32, device=device)
            gen = torch.Generator().manual_seed(seed)
            best, best_epoch, best_loss, bad, curve, val_curve = None, 0, float("inf"), 0, [], []
            for epoch in range(self.epochs):
                module.train()
                total, count = 0.0, 0
                for xb, zb in batches(gen, epoch):
                    loss = self._loss(module(xb), zb, w)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(xb)
                    count += len(xb)
                curve.append(total / max(count, 1))
                if len(xv):
                    module.eval()
                    with torch.no_grad():
                        vloss = self._validation_loss(module(xv)[:, :n_main], zv)
                    val_curve.append(vloss)
                    if vloss < best_loss - 1e-6:
                        best_loss, bad, best_epoch = vloss, 0, epoch + 1
                        best = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                    else:
                        bad += 1
                        if bad >= self.patience:
                            break
            if best is None:
                best = {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}
                best_epoch = len(curve)
        state = {k: v.numpy() for k, v in best.items()}
        return dict(state=state, epochs=len(curve), best_epoch=best_epoch, curve=curve, val_curve=val_curve)

    def _predict_module(self, state: dict):
        """One network in float64 on the CPU: predictions do not depend on batch size or order."""
        import torch

        hidden = tuple(int(h) for h in self.hidden_layer_sizes)
        module = _build(self.n_features_in_, hidden, len(self.y_mean_) + self.n_aux_, self.dropout)
        module.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
        return module.double().eval()

    def predict(self, X: np.ndarray) -> np.ndarray:
        import torch

        check_is_fitted(self, "state_dicts_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        x = torch.from_numpy(np.asarray(X, dtype=np.float64))
        t = len(self.y_mean_)
        with torch.no_grad():
            Z = np.mean([self._predict_module(s)(x)[:, :t].numpy() for s in self.state_dicts_], axis=0)
        out = self._output(Z)
        return out[:, 0] if self._single_output else out


def mlp(seed: int = 0, **params: Any) -> TorchMLPRegressor:
    return TorchMLPRegressor(random_state=seed, **params)


def mlp_kim(seed: int = 0, **params: Any) -> TorchMLPRegressor:
    params.setdefault("hidden_layer_sizes", KIM_HIDDEN)
    return TorchMLPRegressor(random_state=seed, **params)
