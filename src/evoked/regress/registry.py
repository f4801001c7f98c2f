"""The regressor registry: one decorated factory per model family, and the pipeline around it.

::

    @register_regressor("ridge", help="RidgeCV, alpha by efficient leave-one-out")
    def ridge(**params) -> RegressorMixin: ...

Every factory returns an unfitted scikit-learn estimator that takes y of shape (n, 2) (valence,
arousal) and predicts (n, 2). `build_pipeline` puts a `StandardScaler` and an optional `PCA` in
front of it, which is what the runner fits.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from evoked.errors import ConfigError
from evoked.registry import Registry

if TYPE_CHECKING:
    from sklearn.base import BaseEstimator
    from sklearn.pipeline import Pipeline

#: Model families by name. ``chunks=True``: the estimator has ``fit_chunks(view, Y)`` and can be
#: fitted from chunks of a store (see `evoked.regress.chunks`). The built-ins are named by module
#: path, so listing them (the CLI's help) imports neither scikit-learn nor torch.
REGRESSORS: Registry[Any] = Registry("model", fix="Register your own with register_regressor (docs/api.md).")
for _name, _target, _chunks, _help in (
    (
        "linear",
        "linear:linear",
        False,
        "ordinary least squares (no penalty; a baseline, overfits wide features)",
    ),
    ("ridge", "linear:ridge", True, "ridge regression, alpha per target by exact leave-one-out (one eigh)"),
    ("svr", "svr:svr", False, "RBF SVR per target (exact up to 5000 rows, Nystroem 1000 + ridge above)"),
    (
        "lgbm",
        "boosting:lgbm",
        False,
        "LightGBM boosted trees per target (up to 200 trees, early stopping, 15 leaves, lr 0.08)",
    ),
    ("mlp", "mlp:mlp", True, "torch MLP, hidden layers (256, 128), early stopping (GPU when available)"),
    (
        "mlp-kim",
        "mlp:mlp_kim",
        True,
        "torch MLP with three hidden layers (512, 256, 128), after Kim et al. 2018",
    ),
    ("knn", "knn:knn", True, "FAISS cosine k-NN, similarity-weighted mean VA (k by leave-one-out)"),
    ("ensemble", "ensemble:ensemble", False, "mean of ridge, svr, knn and mlp-kim predictions"),
):
    REGRESSORS.add(_name, f"evoked.regress.{_target}", help=_help, chunks=_chunks)

#: Models of ``--target distribution`` (`evoked.regress.distribution`): y (n, K) label
#: distributions in, (n, K) distributions out. ``mean`` is the reference every run adds.
DISTRIBUTION_MODELS: Registry[Any] = Registry("distribution model")
for _name, _target, _help in (
    ("softmax", "softmax_model", "multinomial softmax on soft labels (KL loss), L2 penalty by 3-fold KL"),
    ("knn", "knn", "AA-kNN: mean distribution of the k nearest (FAISS cosine) items, k by leave-one-out KL"),
    ("mlp", "mlp", "torch MLP (256, 128) with a softmax head and a KL loss, early stopping"),
    ("mlp-kim", "mlp_kim", "torch MLP (512, 256, 128) with a softmax head and a KL loss"),
    ("mean", "mean", "the training rows' mean distribution (the reference)"),
):
    DISTRIBUTION_MODELS.add(_name, f"evoked.regress.distribution:{_target}", help=_help)
DISTRIBUTION_REFERENCE = "mean"
DISTRIBUTION_DEFAULT = ("softmax", "knn", "mlp")


#: ``@register_regressor(name, help=..., chunks=False)`` registers `factory(seed=0, **params)`.
register_regressor = REGRESSORS.register


def list_regressors() -> list[str]:
    """Registered names, in registration order."""
    return REGRESSORS.names()


def make_regressor(name: str, registry: Registry[Any] = REGRESSORS, **params: Any) -> BaseEstimator:
    """A new unfitted estimator of family `name` (of `registry`); `params` override its defaults."""
    factory = registry.load(name)
    try:
        return factory(**params)
    except TypeError as e:
        raise ConfigError(f"bad parameter for model {name!r}: {e}") from e


def parse_pca(value: str | float | int | None) -> int | float | None:
    """``--pca 256`` keeps 256 components, ``--pca 0.95`` keeps 95% of the variance; None/0 = no PCA."""
    if value is None or value == "" or value == 0 or value == "0":
        return None
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"--pca {value!r}: give a number of components (256) or a fraction (0.95)"
        ) from None
    if 0 < x < 1:
        return x
    if x >= 1 and x == int(x):
        return int(x)
    raise ConfigError(f"--pca {value!r}: give a number of components >= 1 or a variance fraction in (0, 1)")


def build_pipeline(
    name: str,
    *,
    pca: str | float | int | None = None,
    params: dict | None = None,
    seed: int = 0,
    log_ranges: tuple[tuple[int, int], ...] = (),
    layer_ranges: tuple[tuple[int, int], ...] = (),
    registry: Registry[Any] = REGRESSORS,
) -> Pipeline:
    """``[log of probability columns] -> StandardScaler -> [layer weights] -> [PCA] -> model``: what
    every protocol fits and every run saves. `log_ranges` are column ranges (see
    `evoked.regress.transforms`); `layer_ranges`, those of layers, each weighed by 1/sqrt(its width)
    (`evoked.regress.layers.LayerWeights`)."""
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from evoked.regress.transforms import LogColumns

    steps: list[tuple[str, BaseEstimator]] = []
    if log_ranges:
        steps.append(("log", LogColumns(tuple((int(a), int(b)) for a, b in log_ranges))))
    steps.append(("scale", StandardScaler()))
    if layer_ranges:
        from evoked.regress.layers import LayerWeights

        steps.append(("layers", LayerWeights(tuple((int(a), int(b)) for a, b in layer_ranges))))
    pca = parse_pca(pca)
    if pca is not None:
        # A fraction needs the full SVD; a count uses the fast randomized solver when it pays off.
        solver = "full" if isinstance(pca, float) else "auto"
        steps.append(("pca", PCA(n_components=pca, svd_solver=solver, random_state=seed)))
    steps.append(("model", make_regressor(name, registry, seed=seed, **(params or {}))))
    return Pipeline(steps)
