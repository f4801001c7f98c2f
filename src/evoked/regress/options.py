"""The options of `evoked regress`, every one checked before any feature is read."""

from __future__ import annotations

import ast
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from evoked.data.va_range import DEFAULT_VA_RANGE, parse_va_range
from evoked.errors import ConfigError
from evoked.registry import Registry
from evoked.regress.curve import parse_n_labels
from evoked.regress.describe import accepts_aux
from evoked.regress.registry import (
    DISTRIBUTION_DEFAULT,
    DISTRIBUTION_MODELS,
    DISTRIBUTION_REFERENCE,
    REGRESSORS,
    make_regressor,
    parse_pca,
)
from evoked.regress.targets import AUX_KINDS
from evoked.regress.two_stage import METHODS

log = logging.getLogger(__name__)

#: What stage 1 of two-stage learns: category-derived VA, or the label distribution (then VA).
STAGE1_TARGETS = ("category-va", "distribution")

#: The k-NN index budget and chunk cap of a run read in chunks, when --max-memory is not given.
DEFAULT_MAX_MEMORY = "2GB"


def parse_features(features: Sequence[str]) -> list[str]:
    """``["a/x,b/y", "c"]`` -> ``["a/x", "b/y", "c"]`` (repeatable and comma-separated)."""
    out = [f.strip() for item in features for f in str(item).split(",") if f.strip()]
    if not out:
        raise ConfigError("no --feature given; name one or more store outputs, e.g. --feature resnet50/pool")
    return out


def parse_models(models: Sequence[str] | str, registry: Registry = REGRESSORS) -> list[str]:
    items = [models] if isinstance(models, str) else list(models)
    out = [m.strip() for item in items for m in str(item).split(",") if m.strip()]
    if not out:
        raise ConfigError("no --model given; e.g. --model ridge,svr")
    if len(set(out)) != len(out):
        raise ConfigError(f"--model lists a model twice: {','.join(out)}")
    for name in out:
        registry.get(name)  # unknown names fail with the registry's message
    return out


def parse_params(items: Sequence[str] | dict | None, models: Sequence[str]) -> dict[str, dict]:
    """``["svr.C=3", "mlp.hidden_layer_sizes=(512,256)"]`` -> ``{"svr": {"C": 3}, ...}``."""
    if isinstance(items, dict):
        out: dict[str, dict] = {k: dict(v) for k, v in items.items()}
    else:
        out = {}
        for item in items or ():
            key, sep, value = item.partition("=")
            model, dot, param = key.strip().partition(".")
            if not sep or not dot or not param:
                raise ConfigError(f"--param {item!r}: expected MODEL.NAME=VALUE, e.g. svr.C=3")
            try:
                parsed = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                parsed = value.strip()  # a bare word is a string (e.g. knn.weights=uniform)
            out.setdefault(model, {})[param] = parsed
    for model in out:
        if model not in models:
            raise ConfigError(f"--param for {model!r}, which is not in --model {','.join(models)}")
    return out


@dataclass
class RegressOptions:
    """What `run_regress` does (docs/regress.md): the CLI flags, as Python values."""

    features: Sequence[str]
    out: str | os.PathLike
    models: Sequence[str] | str | None = None  # ridge; for --target distribution softmax,knn,mlp
    target: str = "va"
    lexicon: str | None = None
    soft: bool = False
    category_map: Sequence[str] | dict | None = None
    cv: int | None = None
    split: str | None = None
    cv_include_test: bool = False
    pca: int | float | str | None = None
    params: Sequence[str] | dict | None = None
    seed: int = 0
    stage1: str | None = None
    stage1_target: str = "category-va"
    two_stage_method: str = "residual"
    n_labels: Sequence[int | str] | str | None = None
    seeds: int = 5
    log_probs: bool = True
    aux: str | None = None
    evals: Sequence[str] = ()
    va_range: str | Sequence[float] | None = None
    stream: bool = False
    max_memory: int | str | None = None
    chunk_rows: int | None = None
    overwrite: bool = False
    name: str | None = None
    split_seed: int | None = None  # a repeat of `--repeats`: redraw the split (or the CV folds) with this seed
    per_layer: bool = False
    # parsed by `check`
    feature_names: list[str] = field(default_factory=list, init=False)
    model_names: list[str] = field(default_factory=list, init=False)
    model_params: dict[str, dict] = field(default_factory=dict, init=False)
    curve_ns: list | None = field(default=None, init=False)
    va_bounds: tuple[float, float] = field(default=DEFAULT_VA_RANGE, init=False)

    @property
    def target_kw(self) -> dict:
        return {"lexicon": self.lexicon, "soft": self.soft, "category_map": self.category_map}

    @property
    def distribution(self) -> bool:
        """Do the models predict label distributions (``--target distribution``)?"""
        return self.target == "distribution"

    @property
    def registry(self) -> Registry:
        """Where --model names are found: the VA regressors, or the distribution models."""
        return DISTRIBUTION_MODELS if self.distribution else REGRESSORS

    @property
    def stage1_registry(self) -> Registry:
        """Where stage 1 of two-stage finds its model."""
        return DISTRIBUTION_MODELS if self.stage1_target == "distribution" else REGRESSORS

    def check(self) -> RegressOptions:
        """Parse and check every option (unknown models and parameters fail here, not after minutes
        of fitting)."""
        self.feature_names = parse_features(self.features)
        self._parse_models()
        self.pca = parse_pca(self.pca)
        self.va_bounds = parse_va_range(self.va_range)
        if self.split is not None and self.cv is not None:
            raise ConfigError("--split and --cv are alternatives; give one of them")
        if self.split is None:
            self.cv = 5 if self.cv is None else int(self.cv)
            if self.cv < 0 or self.cv == 1:
                raise ConfigError(f"--cv {self.cv}: use K >= 2 folds, or 0 to fit without evaluation")
        if self.cv_include_test and self.split is not None:
            raise ConfigError("--cv-include-test goes with --cv K, not with --split")
        if self.two_stage_method not in METHODS:
            raise ConfigError(
                f"--two-stage-method {self.two_stage_method!r}: use one of {', '.join(METHODS)}"
            )
        if self.n_labels not in (None, "", ()):
            self.curve_ns = parse_n_labels(self.n_labels)
            if self.seeds < 1:
                raise ConfigError(f"--seeds {self.seeds}: must be at least 1")
            if self.split is None and self.cv == 0:
                raise ConfigError("--n-labels needs an evaluation: use --cv K or --split test")
        if self.distribution:
            self._check_distribution()
        self._check_stage1()
        self._check_aux()
        if self.per_layer and self.stage1 is not None:
            raise ConfigError("--per-layer and --stage1 do not go together yet; run the layer probe without --stage1")
        if self.stream:
            self._check_stream()
        return self

    def _parse_models(self) -> None:
        """--model names (distribution models where the models, or stage 1, learn distributions)."""
        stage1_dist = self.stage1 is not None and self.stage1_target == "distribution"
        registry = DISTRIBUTION_MODELS if self.distribution or stage1_dist else REGRESSORS
        default = ",".join(DISTRIBUTION_DEFAULT) if self.distribution else "ridge"
        self.model_names = parse_models(self.models or default, registry)
        if self.distribution and DISTRIBUTION_REFERENCE not in self.model_names:
            self.model_names.append(DISTRIBUTION_REFERENCE)  # the reference every model is measured against
        self.model_params = parse_params(self.params, self.model_names)
        for m in self.model_names:
            make_regressor(m, registry, **self.model_params.get(m, {}))

    @property
    def plain_models(self) -> list[str]:
        """The models fitted on the run's own target (with --stage1-target distribution, the names
        that are also VA regressors; the others run as two-stage only)."""
        if self.stage1 is not None and self.stage1_target == "distribution" and not self.distribution:
            return [m for m in self.model_names if m in REGRESSORS]
        return list(self.model_names)

    def _check_distribution(self) -> None:
        """--target distribution: what does not apply to distributions is refused, by name."""
        used = {"--aux": self.aux, "--n-labels": self.curve_ns, "--stream": self.stream or None}
        bad = [k for k, v in used.items() if v not in (None, "")]
        if bad:
            raise ConfigError(
                f"{', '.join(bad)} cannot be used with --target distribution (it fits VA models); drop "
                f"{'it' if len(bad) == 1 else 'them'}, or use --target va"
            )

    def _check_stage1(self) -> None:
        if self.stage1 is None:
            return
        if self.target != "va":
            raise ConfigError(
                "two-stage adapts on VA ratings: use --target va with --stage1 (the category-derived VA "
                "of stage 1 is set by --stage1-target, --lexicon and --soft; --stage1-target distribution "
                "learns label distributions in stage 1)"
            )
        if self.stage1_target not in STAGE1_TARGETS:
            raise ConfigError(
                f"--stage1-target {self.stage1_target!r}: use one of {', '.join(STAGE1_TARGETS)}"
            )
        if self.stage1_target == "distribution":
            if not self.lexicon:
                raise ConfigError(
                    "--stage1-target distribution turns stage 1's predicted distributions into VA through a "
                    "lexicon: add --lexicon (e.g. --lexicon nrc)"
                )
            if self.soft:
                raise ConfigError("--soft applies to --stage1-target category-va; drop it")
            if self.curve_ns is not None:
                raise ConfigError("--n-labels is not supported with --stage1-target distribution; drop one")
            for m in self.model_names:
                DISTRIBUTION_MODELS.get(m)  # stage 1 needs a distribution model of that name
        if self.stage1 != "same" and not Path(self.stage1).is_file():
            raise ConfigError(f"--stage1 {self.stage1!r}: use 'same' or the path of another feature store")

    def _check_aux(self) -> None:
        if self.aux not in (None, *AUX_KINDS):
            raise ConfigError(f"--aux {self.aux!r}: use one of {', '.join(AUX_KINDS)}")
        if self.aux is None:
            return
        takers = [
            m for m in self.plain_models if accepts_aux(make_regressor(m, **self.model_params.get(m, {})))
        ]
        if not takers:
            raise ConfigError(
                f"--aux: none of {', '.join(self.model_names)} learns auxiliary targets; use mlp or mlp-kim"
            )
        ignored = [m for m in self.model_names if m not in takers]
        if ignored:
            log.warning(
                "--aux %s is used by %s only, not by %s", self.aux, ", ".join(takers), ", ".join(ignored)
            )

    def _check_stream(self) -> None:
        """Reading in chunks: every model must fit from chunks; what needs the matrix is refused."""
        slow = [m for m in self.model_names if not REGRESSORS.get(m).meta.get("chunks")]
        if slow:
            raise ConfigError(
                f"--model {slow[0]!r} does not fit from chunks; with --stream use "
                f"{', '.join(e.name for e in REGRESSORS if e.meta.get('chunks'))} "
                "(svr and lgbm need the features in memory: drop --stream, or see docs/scale.md for LightGBM on "
                "Dask)"
            )
        used = {"--pca": self.pca, "--stage1": self.stage1, "--n-labels": self.curve_ns, "--aux": self.aux}
        bad = [k for k, v in used.items() if v not in (None, "")]
        if bad:
            raise ConfigError(
                f"{', '.join(bad)} {'needs' if len(bad) == 1 else 'need'} the features in memory and cannot run "
                f"from chunks (--stream, or --max-memory too small for them); drop {'it' if len(bad) == 1 else 'them'}"
            )
