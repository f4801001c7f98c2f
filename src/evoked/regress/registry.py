"""The regressor registry: one decorated factory per model family, and the pipeline around it.

::

    @register_regressor("ridge", help="RidgeCV, alpha by efficient leave-one-out")
    def ridge(**params) -> RegressorMixin: ...

Every factory returns an unfitted scikit-learn estimator that takes y of shape (n, 2) (valence,
arousal) and predicts (n, 2). `build_pipeline` puts a `StandardScaler` and an optional `PCA` in
front of it, which is what the runner fits.
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass

from sklearn.base import BaseEstimator
from sklearn.decomposition import PCA
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from evoked.errors import ConfigError

Factory = Callable[..., BaseEstimator]


@dataclass(frozen=True)
class RegressorEntry:
    name: str
    factory: Factory
    help: str
    chunks: bool = False  # the estimator has ``fit_chunks(view, Y)``: it can fit from store chunks


_REGISTRY: dict[str, RegressorEntry] = {}


def register_regressor(name: str, *, help: str = "", chunks: bool = False) -> Callable[[Factory], Factory]:
    """Register `factory(**params) -> estimator` under `name`; `chunks`: its estimator can also be
    fitted from chunks of a store (``fit_chunks``, see `evoked.regress.chunks`)."""

    def deco(fn: Factory) -> Factory:
        if name in _REGISTRY:
            raise ConfigError(f"regressor {name!r} is registered twice")
        _REGISTRY[name] = RegressorEntry(name, fn, help, chunks)
        return fn

    return deco


#: Built-in families, imported (and so registered) in the order `list_regressors` shows them.
BUILTIN_MODULES = ("linear", "svr", "boosting", "mlp", "knn", "ensemble")


def _ensure_builtin() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(f"evoked.regress.{module}")


def list_regressors() -> list[str]:
    """Registered names, in registration order."""
    _ensure_builtin()
    return list(_REGISTRY)


def regressor_help() -> dict[str, str]:
    _ensure_builtin()
    return {e.name: e.help for e in _REGISTRY.values()}


def check_regressor_names(names: list[str]) -> None:
    """Raise ConfigError for the first unknown name, listing the known ones."""
    _ensure_builtin()
    for name in names:
        if name not in _REGISTRY:
            close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown model {name!r}.{hint} Known models: {', '.join(_REGISTRY)}")


def fits_from_chunks(name: str) -> bool:
    check_regressor_names([name])
    return _REGISTRY[name].chunks


def make_regressor(name: str, **params) -> BaseEstimator:
    """A new unfitted estimator of family `name`; `params` override its defaults."""
    check_regressor_names([name])
    try:
        return _REGISTRY[name].factory(**params)
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
    pca: int | float | None = None,
    params: dict | None = None,
    seed: int = 0,
    log_ranges: tuple[tuple[int, int], ...] = (),
) -> Pipeline:
    """``[log of probability columns] -> StandardScaler -> [PCA] -> model``: what every protocol
    fits and every run saves. `log_ranges` are column ranges (see `evoked.regress.transforms`)."""
    from evoked.regress.transforms import LogColumns

    steps: list[tuple[str, BaseEstimator]] = []
    if log_ranges:
        steps.append(("log", LogColumns(tuple(tuple(map(int, r)) for r in log_ranges))))
    steps.append(("scale", StandardScaler()))
    pca = parse_pca(pca)
    if pca is not None:
        # A fraction needs the full SVD; a count uses the fast randomized solver when it pays off.
        solver = "full" if isinstance(pca, float) else "auto"
        steps.append(("pca", PCA(n_components=pca, svd_solver=solver, random_state=seed)))
    steps.append(("model", make_regressor(name, seed=seed, **(params or {}))))
    return Pipeline(steps)
