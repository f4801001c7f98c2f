"""What a fitted pipeline chose (alphas, SVR method, k, epochs): recorded beside every saved model."""

from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.multioutput import MultiOutputRegressor
from sklearn.pipeline import Pipeline


def _alpha(est) -> list[float] | float | None:
    a = getattr(est, "alpha_", None)
    if a is None:
        return None
    return np.atleast_1d(np.asarray(a, dtype=float)).tolist()


def describe_fitted(est: BaseEstimator) -> dict:
    """A small JSON-ready dict of the choices a fitted estimator made."""
    from evoked.regress.ensemble import MeanRegressor
    from evoked.regress.knn import FaissKNNRegressor
    from evoked.regress.layers import LayerSearch, OnColumns
    from evoked.regress.mlp import TorchMLPRegressor
    from evoked.regress.svr import RBFSVRRegressor
    from evoked.regress.two_stage import TwoStageRegressor

    info: dict = {}
    if isinstance(est, LayerSearch):
        return {"layers": list(est.chosen_), "inner_r": float(est.score_), **describe_fitted(est.model_)}
    if isinstance(est, OnColumns):
        return describe_fitted(est.estimator_)
    if isinstance(est, Pipeline):
        if "pca" in est.named_steps:
            pca = est.named_steps["pca"]
            info["pca_components"] = int(pca.n_components_)
            info["pca_explained_variance"] = float(pca.explained_variance_ratio_.sum())
        return {**info, **describe_fitted(est.steps[-1][1])}
    if isinstance(est, TwoStageRegressor):
        info["stage1"] = describe_fitted(est.stage1_)
        info["slope"] = np.asarray(est.slope_).tolist()
        info["offset"] = np.asarray(est.offset_).tolist()
        info["n_rated"] = int(est.n_rated_)
        if est.residual_ is not None:
            info["residual_alpha"] = _alpha(est.residual_)
        return info
    if _alpha(est) is not None:
        info["alpha"] = _alpha(est)
    if isinstance(est, RBFSVRRegressor):
        info.update(svr_method=est.method_, gamma=float(est.gamma_))
        if est.method_ == "nystroem":
            info.update(n_components=int(est.nystroem_.n_components), alpha=_alpha(est.model_))
    elif isinstance(est, FaissKNNRegressor):
        info["n_neighbors"] = int(est.n_neighbors_)
    elif isinstance(est, TorchMLPRegressor):
        info.update(
            epochs_run=list(est.n_iter_),
            best_epoch=list(est.best_epoch_),
            device=est.device_,
            n_aux=est.n_aux_,
        )
    elif isinstance(est, MultiOutputRegressor):
        info["n_outputs"] = len(est.estimators_)
    elif isinstance(est, MeanRegressor):
        info["members"] = {m: describe_fitted(e) for m, e in zip(est.members, est.estimators_)}
    return info


def accepts_aux(est: BaseEstimator) -> bool:
    """Whether the model at the end of a pipeline learns auxiliary targets (``fit(..., aux=)``)."""
    import inspect

    final = est.steps[-1][1] if isinstance(est, Pipeline) else est
    return "aux" in inspect.signature(final.fit).parameters
