"""`finetune`: one framework of the two-stage paper, from manifests to a run directory.

Everything that can be checked is checked before training starts: the output folder, the options,
the checkpoint of two_stage, the labels each task needs, the backbone at the chosen input size, and
every image. Then the network trains (``models/last.pt`` every epoch, ``models/best.pt`` at the best
validation valence r), and the best epoch predicts the dimensional test split: ``predictions.csv``,
``metrics.json`` and ``run.json`` in the format of docs/runs.md, so `evoked evaluate` compares it
with `evoked regress` runs directly.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evoked import __version__, runfolder
from evoked.clock import utc_now
from evoked.data import Lexicon, Manifest, load_dataset, load_lexicon
from evoked.data.va_range import check_va_range, parse_va_range
from evoked.errors import ConfigError
from evoked.extract.backbone import Preprocess, WeightsInfo
from evoked.extract.weights import sha256_of
from evoked.finetune.data import FinetuneData, Part, check_images, make_transform, prepare_data
from evoked.finetune.evals import EvalSet, load_evals
from evoked.finetune.model import (
    FREEZE_AUTO,
    FREEZE_NONE,
    Encoder,
    VANet,
    build_encoder,
    feature_dim,
    folded_norm_layers,
    freeze_before,
    native_size,
    resolve_freeze_point,
)
from evoked.finetune.options import FinetuneOptions
from evoked.finetune.train import Outcome, load_checkpoint, predict, train_network

log = logging.getLogger(__name__)

DEFAULT_SIZE = 448  # the paper's input size for CNNs
# settings that may change when a run is resumed; everything else must match
_RESUMABLE = ("epochs", "workers", "eval_batch_size", "device", "precision")
# settings that checkpoints of earlier versions do not record: absent there, they match their default
_ADDED_LATER = {"va_range": [1.0, 9.0], "evals": []}


@dataclass
class FinetuneResult:
    out: Path
    model: str  # the model name in predictions.csv, e.g. "finetune:two_stage/single"
    metrics: dict
    outcome: Outcome
    counts: dict[str, int]
    excluded: dict[str, int]
    meta: dict = field(default_factory=dict)


def model_name(mode: str, task: str) -> str:
    return f"finetune:{mode}/{task}"


def _ids_sha256(part: Part) -> str:  # a resumed run must train on the same items
    return hashlib.sha256("\n".join(sorted(map(str, part.ids))).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- network


def _encoder(
    *, backbone: str | None, weights: str, overrides: dict, ckpt: dict | None
) -> tuple[Encoder, dict]:
    """The backbone to train and where its weights come from (--weights, or the checkpoint)."""
    if ckpt is None:
        assert backbone is not None  # FinetuneOptions.check: one_stage (no checkpoint) needs --backbone
        encoder = build_encoder(backbone, weights, overrides)
        return encoder, {"from": "weights", "weights": encoder.weights.to_dict()}
    m = ckpt["meta"]
    if backbone and backbone != m["backbone"]:
        raise ConfigError(
            f"--backbone {backbone!r} differs from the checkpoint's {m['backbone']!r}; two_stage fine-tunes "
            "the checkpoint's network (leave out --backbone)"
        )
    if weights != "default":
        raise ConfigError("two_stage takes its weights from --checkpoint; leave out --weights")
    encoder = build_encoder(m["backbone"], "random")  # every weight comes from the checkpoint
    encoder.preprocess = Preprocess.from_dict(m["preprocess"]).with_overrides(overrides)
    encoder.weights = WeightsInfo(**m["weights"])
    init = {
        "from": "checkpoint",
        "stage1_mode": m.get("mode"),
        "stage1_task": m.get("task"),
        "stage1_epoch": m.get("epoch"),
        "weights": m["weights"],
    }
    return encoder, init


def _assemble(
    encoder: Encoder,
    *,
    task: str,
    classes: tuple[str, ...],
    size: int,
    ckpt: dict | None,
    init: dict,
    seed: int,
    va_mean: np.ndarray | None = None,
) -> VANet:
    """Encoder + heads (seeded by --seed); two_stage loads the checkpoint into them.

    A new VA head starts with its bias at the mean training target, so the first epochs are not
    spent learning that VA lives around 5 on a 1-9 scale (the paper's code starts from zero).
    """
    dim = feature_dim(encoder.module, size)  # a ConfigError now when the backbone cannot take `size`
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = VANet(encoder.module, dim, n_classes=len(classes), relu=encoder.relu)
    if ckpt is None:
        if va_mean is not None and np.isfinite(va_mean).all():
            with torch.no_grad():
                net.va_head.bias.copy_(torch.as_tensor(va_mean, dtype=net.va_head.bias.dtype))
            init["va_head_bias"] = [round(float(v), 4) for v in va_mean]
        return net
    state = dict(ckpt["model"])
    head = "none"
    if task == "multi":
        head = "loaded" if tuple(ckpt["meta"].get("classes") or ()) == classes else "new"
        if head == "new":
            log.info("the checkpoint has no category head over %s; a new one is trained", list(classes))
    if head != "loaded":
        dropped = [k for k in state if k.startswith("cls_head.")]
        for k in dropped:
            del state[k]
        if dropped and task == "single":
            head = "dropped"
    result = net.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.startswith("cls_head.")]
    if missing or result.unexpected_keys:
        raise ConfigError(
            f"the checkpoint does not fit the network of {ckpt['meta']['backbone']!r}: missing {missing[:3]}, "
            f"unexpected {result.unexpected_keys[:3]}"
        )
    init["category_head"] = head
    return net


# ---------------------------------------------------------------------------------------------- outputs


def _category_metrics(part: Part, va_pred: np.ndarray, lexicon: Lexicon) -> dict:
    """Accuracy of VA -> nearest category (cosine), over the test items with a lexicon-word label."""
    from evoked.evaluate.category import category_accuracy

    known = sorted({c for c in part.category.tolist() if c})
    if not known:
        return {"skipped": "no test item has a category label"}
    missing = [c for c in known if c not in lexicon]
    if missing:
        return {
            "skipped": f"the categories {', '.join(missing)} are not words of lexicon {lexicon.name!r} "
            "(map them with --category-map LABEL=WORD)"
        }
    if len(known) < 2:
        return {"skipped": f"only one category ({known[0]})"}
    acc = category_accuracy(part.category, va_pred, lexicon, known, "cosine")
    return {"categories": known, "metric": "cosine", "chance": 1.0 / len(known), **acc}


def _head_accuracy(part: Part, logits: np.ndarray, classes: tuple[str, ...]) -> dict:
    """Top-1 accuracy of the category head, over the test items whose label is one of its classes."""
    index = {c: k for k, c in enumerate(classes)}
    keep = np.array([c in index for c in part.category.tolist()], dtype=bool)
    if not keep.any():
        return {"skipped": "no test item has a label among the head's classes"}
    true = np.array([index[c] for c in part.category[keep]])
    return {"n": int(keep.sum()), "accuracy": float((logits[keep].argmax(1) == true).mean())}


def _probabilities(logits: np.ndarray, cls_loss: str | None) -> np.ndarray:
    t = torch.from_numpy(logits)
    if cls_loss == "bce":  # independent sigmoids, normalised into a distribution
        p = torch.sigmoid(t)
        return (p / p.sum(1, keepdim=True).clamp_min(1e-12)).numpy()
    return torch.softmax(t, dim=1).numpy()


def _prediction_columns(
    part: Part, va_pred: np.ndarray, probs: np.ndarray | None, classes: Sequence[str], *, kind: str,
    eval_name: str = "", splits: Sequence[str] | None = None,
) -> dict:  # fmt: skip
    """One group of predictions.csv rows (docs/runs.md): the test split, or an eval set."""
    n = len(part)
    cols = {
        "id": part.ids.tolist(),
        "fold": [-1] * n,
        "split": list(splits) if splits is not None else ["test"] * n,
        "valence_true": part.va[:, 0].astype(float).tolist(),
        "arousal_true": part.va[:, 1].astype(float).tolist(),
        "valence_pred": va_pred[:, 0].tolist(),
        "arousal_pred": va_pred[:, 1].tolist(),
        "category_true": part.category.tolist(),
        "eval": [eval_name] * n,
        "kind": [kind] * n,
    }
    if probs is not None:
        for k, c in enumerate(classes):
            cols[f"pred_p_{c}"] = probs[:, k].tolist()
    if part.distribution is not None:
        for k, c in enumerate(part.categories):
            cols[f"true_p_{c}"] = part.distribution[:, k].tolist()
    return cols


def _joined(groups: Sequence[dict]) -> dict:
    """Column groups one after the other; a column a group lacks is empty there."""
    names = dict.fromkeys(c for g in groups for c in g)
    return {c: [v for g in groups for v in g.get(c, [""] * len(g["id"]))] for c in names}


# ---------------------------------------------------------------------------------------------- finetune


def finetune(
    options: FinetuneOptions | None = None,
    *,
    on_check: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int, int, int, float], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_predict: Callable[[int, int], None] | None = None,
    **kwargs: Any,
) -> FinetuneResult:
    """Train one framework (`mode` one_stage|two_stage x `task` single|multi) and write ``out``.

    The options are a `FinetuneOptions` or its fields as keywords (keywords beside `options`
    replace those fields). one_stage trains `backbone` (with `weights`) on the `categorical` set's
    category-derived VA (and categories for multi); two_stage loads `checkpoint` (or
    ``from_run/models/best.pt``), freezes the encoder before `freeze_until` (``auto``: layer4 for
    ResNets) and fine-tunes on `n_labels` of the `dimensional` set's VA-rated train items (plus the
    categorical items, category loss only, for multi). Both stop early on the validation valence r
    and predict the dimensional test split, and every item of each `evals` dataset
    (``SPEC[:SPLIT]``, see `finetune.evals`). `freeze_bn` None: inherited from the checkpoint
    (two_stage), else turned on when the encoder's batch norm is folded (`folded_norm_layers`),
    with the reason in run.json. Ratings outside `va_range` (``"LO,HI"``, default 1,9; two_stage:
    the checkpoint's) are refused before training. Callbacks: ``on_check(done, total)`` images
    checked, ``on_batch(epoch, batch, n_batches, loss)``, ``on_epoch(record)``,
    ``on_predict(done, total)`` test images predicted.
    """
    t_start = time.perf_counter()
    opts = (FinetuneOptions(**kwargs) if options is None else replace(options, **kwargs)).check()
    ckpt = load_checkpoint(opts.ckpt_path, "--checkpoint") if opts.ckpt_path else None
    inputs = _inputs(opts, ckpt)
    built = _network(opts, inputs, ckpt)
    config = _settings(opts, inputs, built)
    resume_state = _resume_state(opts, config)
    inputs.data, inputs.eval_sets = check_images(
        inputs.data, inputs.eval_sets, skip_bad=opts.skip_bad_images, workers=opts.check_workers,
        on_progress=on_check,
    )  # fmt: skip
    final, opts.name = opts.out_path, opts.name or opts.out_path.name
    # --overwrite trains in a work folder swapped in at the end (a stopped run leaves the old one);
    # a new run trains in --out itself, so that --resume finds its last epoch there
    with runfolder.writing(final, swap=opts.overwrite) as opts.out_path:
        outcome = _train(opts, inputs, built, config, resume_state, on_batch, on_epoch)
        va_pred, logits, eval_preds = _predict_all(opts, inputs, built, on_predict)
        predicted = _Predicted(va_pred, logits, eval_preds, outcome, time.perf_counter() - t_start)
        result = _write_outputs(opts, inputs, built, config, predicted)
    result.out = opts.out_path = final
    return result


@dataclass
class _Inputs:
    """The data step: the labelled parts, the eval sets, the rating scale."""

    lex: Lexicon
    cat_m: Manifest | None
    dim_m: Manifest
    data: FinetuneData
    scale: tuple[float, float]
    eval_sets: list[EvalSet]
    inherited: dict  # settings taken from the stage-1 checkpoint (recorded in run.json)


@dataclass
class _Network:
    """The network step: the encoder with its heads, what it starts from and what trains."""

    encoder: Encoder
    net: VANet
    init: dict
    size: int
    point: str  # the module the encoder is frozen before
    params: dict
    bn: dict

    def transform(self, train: bool) -> Callable:
        return make_transform(self.encoder.preprocess, self.size, train=train)


def _inputs(opts: FinetuneOptions, ckpt: dict | None) -> _Inputs:
    """Read the datasets and the lexicon; the parts of the framework, its eval sets and scale."""
    stage1 = (ckpt or {}).get("meta", {}).get("config", {})
    inherited: dict = {}
    scale = opts.scale
    if scale is None:
        if stage1.get("va_range"):
            inherited["va_range"] = list(stage1["va_range"])
        scale = parse_va_range(stage1.get("va_range") or None)
    lex = load_lexicon(opts.lexicon, opts.category_map)
    cat_m = None if opts.categorical is None else load_dataset(opts.categorical)
    dim_m = load_dataset(opts.dimensional)
    if opts.mode == "two_stage" and opts.task == "single" and cat_m is not None:
        log.warning("two_stage/single fine-tunes on the dimensional set only; --categorical is not used")
        cat_m = None
    data = prepare_data(
        categorical=cat_m, dimensional=dim_m, mode=opts.mode, task=opts.task, lexicon=lex,
        soft=opts.soft, cls_loss=opts.cls_loss, n_labels=opts.n_labels, seed=opts.seed,
    )  # fmt: skip
    _check_scale(dim_m, scale)
    training_ids = [*data.train.ids.tolist(), *data.val.ids.tolist()]
    eval_sets = load_evals(opts.evals, training_ids=training_ids, va_range=scale)
    return _Inputs(lex, cat_m, dim_m, data, scale, eval_sets, inherited)


def _network(opts: FinetuneOptions, inputs: _Inputs, ckpt: dict | None) -> _Network:
    """Build the encoder and heads, decide batch norm and the frozen blocks."""
    encoder, init = _encoder(
        backbone=opts.backbone, weights=opts.weights, overrides=opts.overrides, ckpt=ckpt
    )
    inherited, data = inputs.inherited, inputs.data
    size = opts.size
    if size is None:
        size = native_size(encoder) or (int(ckpt["meta"]["size"]) if ckpt else DEFAULT_SIZE)
        if ckpt and not native_size(encoder):
            inherited["size"] = size
    if ckpt:
        inherited["preprocess"] = "stage 1's" + (" with --preprocess overrides" if opts.overrides else "")
    supervised = data.train.va[data.train.va_mask]
    va_mean = supervised.mean(axis=0) if len(supervised) else None
    net = _assemble(
        encoder, task=opts.task, classes=data.classes, size=size, ckpt=ckpt, init=init, seed=opts.seed,
        va_mean=va_mean,
    )  # fmt: skip
    stage1 = (ckpt or {}).get("meta", {}).get("config", {})
    opts.train.freeze_bn, bn = _resolve_freeze_bn(opts.freeze_bn, net, stage1)
    if bn["freeze_bn_from"] == "stage 1":
        inherited["freeze_bn"] = opts.train.freeze_bn
    freeze_default = FREEZE_AUTO if opts.mode == "two_stage" else FREEZE_NONE
    point = resolve_freeze_point(encoder, opts.freeze_until or freeze_default)
    params = freeze_before(net, point)
    log.info(
        "%s: %s, freeze before %s (%d of %d parameters train), input %d px",
        model_name(opts.mode, opts.task), encoder.spec, point, params["trainable"], params["total"], size,
    )  # fmt: skip
    return _Network(encoder, net, init, size, point, params, bn)


def _settings(opts: FinetuneOptions, inputs: _Inputs, built: _Network) -> dict:
    """What the run was trained with: saved in every checkpoint, compared on --resume."""
    return {
        "mode": opts.mode,
        "task": opts.task,
        "backbone": built.encoder.spec,
        "weights": built.init["weights"],
        "checkpoint_sha256": sha256_of(opts.ckpt_path) if opts.ckpt_path else None,
        "preprocess": built.encoder.preprocess.to_dict(),
        "size": built.size,
        "freeze_until": built.point,
        "lexicon": inputs.lex.describe(),
        "soft": opts.soft,
        "classes": list(inputs.data.classes),
        "n_labels": opts.n_labels,
        "va_range": list(inputs.scale),
        "parts_sha256": {k: _ids_sha256(p) for k, p in inputs.data.parts.items()},
        "evals": [e.name for e in inputs.eval_sets],
        **opts.train.to_dict(),
        "device": opts.dev.type,
        "precision": opts.prec,
    }


def _resume_state(opts: FinetuneOptions, config: dict) -> dict | None:
    """--resume: the last checkpoint, refused when it was trained with other settings."""
    if not opts.resume:
        return None
    state = load_checkpoint(opts.out_path / "models" / "last.pt", "--resume")
    before = state["meta"].get("config", {})
    diff = sorted(
        k
        for k in set(before) | set(config)
        if k not in _RESUMABLE
        and before.get(k) != config.get(k)
        and not (k in _ADDED_LATER and k not in before and config.get(k) == _ADDED_LATER[k])
    )
    if diff:
        raise ConfigError(
            f"--resume: the settings {', '.join(diff)} differ from the run in {opts.out_path}; resume with the "
            "same settings (only --epochs, --workers, --eval-batch-size, --device, --precision may change), "
            "or start a new run with --overwrite"
        )
    if any(before.get(k) != config[k] for k in ("device", "precision")):
        log.warning("--resume on another device/precision: results will not equal an uninterrupted run")
    return state


def _train(
    opts: FinetuneOptions,
    inputs: _Inputs,
    built: _Network,
    config: dict,
    resume_state: dict | None,
    on_batch: Callable[[int, int, int, float], None] | None,
    on_epoch: Callable[[dict], None] | None,
) -> Outcome:
    """Train (checkpoints in models/); a network that only ever predicted a constant is an error."""
    # what a later two_stage run (`_encoder`, `_assemble`) reads back from the checkpoint
    shown = ("mode", "task", "backbone", "weights", "preprocess", "size", "classes", "lexicon")
    meta = {"config": config, **{k: config[k] for k in shown}, "relu": built.encoder.relu}
    meta.update(cls_loss=inputs.data.cls_loss, evoked_version=__version__)
    data, cfg, models_dir = inputs.data, opts.train, opts.out_path / "models"
    outcome = train_network(
        built.net, data.train, data.val, train_transform=built.transform(True),
        eval_transform=built.transform(False), cfg=cfg, device=opts.dev, precision=opts.prec,
        models_dir=models_dir, meta=meta, resume_from=resume_state, on_batch=on_batch, on_epoch=on_epoch,
    )  # fmt: skip
    if not outcome.collapsed:
        return outcome
    h = outcome.history[-1]
    raise ConfigError(
        f"the network predicts a constant: in every one of the {len(outcome.history)} epoch(s) the "
        f"validation predictions hardly vary (valence std {h['val_pred_std_valence']:.2g} against a "
        f"ratings std of {float(np.nanstd(data.val.va[:, 0])):.2g}), so there is no epoch to keep and no "
        "output was written. "
        + (
            "Batch norm was frozen (--freeze-bn); try a lower --lr or more --epochs."
            if cfg.freeze_bn
            else "Batch norm trained in train mode: if the weights have batch norm folded into the "
            "convolutions, or batches are small, pass --freeze-bn; else try a lower --lr."
        )
        + ("" if opts.overwrite else f" The last epoch is in {models_dir / 'last.pt'}; rerun with --overwrite.")
    )  # with --overwrite the work folder is removed and the previous run stays (runfolder.writing)


def _predict_all(
    opts: FinetuneOptions, inputs: _Inputs, built: _Network, on_predict: Callable[[int, int], None] | None
) -> tuple[np.ndarray, np.ndarray | None, list]:
    """The best epoch's predictions: the test split (VA, category logits) and each eval set."""
    best = load_checkpoint(opts.out_path / "models" / "best.pt", "best checkpoint")
    built.net.load_state_dict(best["model"])
    run = dict(device=opts.dev, precision=opts.prec, batch_size=opts.eval_batch_size, workers=opts.workers)
    eval_tf, step = built.transform(False), _counting(on_predict, len(inputs.data.test))
    va_pred, logits = predict(built.net, inputs.data.test, eval_tf, on_progress=step, **run)
    eval_preds = [(e, predict(built.net, e.part, eval_tf, **run)[0]) for e in inputs.eval_sets]
    return va_pred, logits, eval_preds


def _counting(callback: Callable[[int, int], None] | None, total: int) -> Callable[[int], None]:
    """A progress step of `k` more items done, reported as ``callback(done, total)``."""
    done = 0

    def step(k: int) -> None:
        nonlocal done
        done += k
        if callback is not None:
            callback(done, total)

    return step


def _check_scale(dim_m: Manifest, scale: tuple[float, float]) -> None:
    """Refuse ratings outside the scale in the dimensional dataset (every split: trained, chosen, scored)."""
    rated = np.flatnonzero(dim_m.has_va)
    check_va_range(
        dim_m.ids[rated],
        dim_m.valence[rated],
        dim_m.arousal[rated],
        scale,
        source=f"--dimensional {dim_m.name}",
    )


def _resolve_freeze_bn(given: bool | None, net: VANet, stage1: dict) -> tuple[bool, dict]:
    """Whether every batch-norm layer stays in eval mode, and why (recorded in run.json).

    Given explicitly: as given (a warning when the batch norm is folded and it is off). Else a
    two_stage run keeps stage 1's choice when stage 1 froze it; else folded batch norm turns it on,
    because training folded layers in train mode collapses the network to a constant.
    """
    folded = folded_norm_layers(net)
    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._NormBase) for m in net.encoder.modules())
    info: dict = {"layers": n_bn, "folded_layers": len(folded), "folded_examples": folded[:3]}
    if given is not None:
        value, source = bool(given), "given"
        reason = "--freeze-bn given" if value else "--no-freeze-bn given"
        if not value and folded:
            log.warning(
                "--no-freeze-bn: %d of %d batch-norm layers look folded (e.g. %s); training them in train "
                "mode usually collapses the network to a constant",
                len(folded),
                n_bn,
                folded[0],
            )
    elif stage1.get("freeze_bn"):
        value, source, reason = True, "stage 1", "inherited from the stage-1 checkpoint (it froze batch norm)"
    elif folded:
        value, source = True, "folded batch norm"
        reason = (
            f"{len(folded)} of {n_bn} batch-norm layers are folded (weight 1, running mean 0, running var 1, "
            f"a folded bias; e.g. {folded[0]}): turned on, since training them in train mode collapses the "
            "network (pass --no-freeze-bn to train them anyway)"
        )
        log.warning("--freeze-bn %s", reason)
    elif "freeze_bn" in stage1:
        value, source, reason = False, "stage 1", "inherited from the stage-1 checkpoint (off)"
    else:
        value, source, reason = False, "default", "default (no folded batch norm found)"
    info.update(freeze_bn=value, freeze_bn_from=source, reason=reason)
    return value, info


@dataclass
class _Predicted:
    """What training and prediction gave: the test split's VA (and class logits), the eval sets'."""

    va: np.ndarray
    logits: np.ndarray | None
    evals: list[tuple[EvalSet, np.ndarray]]
    outcome: Outcome
    seconds: float


def _write_outputs(
    opts: FinetuneOptions, inputs: _Inputs, built: _Network, config: dict, p: _Predicted
) -> FinetuneResult:
    """predictions.csv, metrics.json, curve.csv (with --n-labels) and run.json of the run."""
    from evoked.evaluate.metrics import va_metrics

    name, data, out = model_name(opts.mode, opts.task), inputs.data, opts.out_path
    probs = _probabilities(p.logits, data.cls_loss) if p.logits is not None else None
    metrics = {**va_metrics(data.test.va, p.va), "category": _category_metrics(data.test, p.va, inputs.lex)}
    if p.logits is not None:
        metrics["category_head"] = _head_accuracy(data.test, p.logits, data.classes)
    groups = [_prediction_columns(data.test, p.va, probs, data.classes, kind="held-out")]
    for e, pred_e in p.evals:
        groups.append(_prediction_columns(e.part, pred_e, None, (), kind="transfer", eval_name=e.name,
                                          splits=e.splits))  # fmt: skip
        metrics.setdefault("evals", {})[e.name] = (
            va_metrics(e.part.va, pred_e) if e.has_ratings else {"skipped": f"{e.spec} has no VA ratings: predicted only"}
        )  # fmt: skip
    curve = None
    if config["n_labels"] is not None:
        v, a = metrics["valence"], metrics["arousal"]
        curve = [{"model": name, "setting": opts.mode, "n_labels": config["n_labels"], "seed": opts.seed,
                  "r_valence": v["r"], "r_arousal": a["r"], "mse_valence": v["mse"], "mse_arousal": a["mse"]}]  # fmt: skip
    runfolder.write_run(out, _run_meta(opts, inputs, built, config, p), {name: _joined(groups)}, curve=curve)
    runfolder.write_json(out / "metrics.json", {name: metrics})
    return FinetuneResult(out=out, model=name, metrics=metrics, outcome=p.outcome, counts=data.counts,
                          excluded=data.excluded, meta=runfolder.read_run_meta(out))  # fmt: skip


def _run_meta(opts: FinetuneOptions, inputs: _Inputs, built: _Network, config: dict, p: _Predicted) -> dict:
    """run.json of a fine-tuning run (docs/runs.md, docs/finetune.md)."""
    versions = runfolder.versions()
    mode, task, data, lex, outcome = opts.mode, opts.task, inputs.data, inputs.lex, p.outcome
    ckpt_path, dim_m, cat_m, bn = opts.ckpt_path, inputs.dim_m, inputs.cat_m, built.bn
    checkpoint = (
        {"path": str(Path(ckpt_path).resolve()), "sha256": config["checkpoint_sha256"]} if ckpt_path else None
    )
    return {
        "kind": "finetune",
        "name": opts.name or opts.out_path.name,
        "created": utc_now(),
        "evoked_version": versions["evoked"],
        "dataset": dim_m.name,
        "categorical_dataset": cat_m.name if cat_m is not None else None,
        "store": None,
        "features": None,
        "target": {"kind": "category-va", "lexicon": lex.describe(), "soft": bool(config["soft"])}
        if mode == "one_stage"
        else {"kind": "va", "stage1": "category-va", "lexicon": lex.describe()},
        "protocol": {"kind": "split", "train": ["train"], "val": "val", "eval": "test", "seed": opts.seed},
        "mode": mode,
        "task": task,
        "backbone": config["backbone"],
        "weights": config["weights"],
        "init": built.init,
        "checkpoint": checkpoint,
        "preprocess": config["preprocess"],
        "size": config["size"],
        "freeze_until": config["freeze_until"],
        "freeze_bn": config["freeze_bn"],
        "freeze_bn_reason": (bn or {}).get("reason"),
        "batch_norm": bn,
        "inherited": inputs.inherited or {},
        "va_range": config["va_range"],
        "parameters": built.params,
        "lexicon": lex.describe(),
        "soft": config["soft"],
        "alpha": config["alpha"] if task == "multi" else None,
        "loss": "mse" if task == "single" else f"alpha*mse + (1-alpha)*{data.cls_loss}",
        "classes": list(data.classes),
        "schedule": {
            "optimizer": "adam",
            "lr": config["lr"],
            "weight_decay": config["weight_decay"],
            "scheduler": "multistep (per epoch)",
            "milestones": config["milestones"],
            "gamma": config["gamma"],
            "epochs": config["epochs"],
            "batch_size": config["batch_size"],
            "patience": config["patience"],
            "early_stopping": "validation valence Pearson r",
        },
        "selection": {
            "epoch": {
                "rows": f"the val split of {dim_m.name} (never test, never an --eval set)",
                "n": len(data.val),
                "metric": "validation valence Pearson r; an epoch with constant predictions is never chosen",
                "patience": config["patience"],
            },
            "default_model": "none to choose: the run has one model",
            "scored": "the test split of the dimensional dataset and the --eval sets, after the epoch was chosen",
        },
        "evals": [e.describe() for e, _ in p.evals],
        "epochs_run": outcome.epochs_run,
        "best_epoch": outcome.best_epoch,
        "best_val_r_valence": outcome.best_score,
        "stopped_early": outcome.stopped_early,
        "history": outcome.history,
        "n_items": data.counts,
        "n_labels": config["n_labels"],
        "excluded": data.excluded,
        "bad_images": data.bad_images,
        "seed": opts.seed,
        "device": config["device"],
        "precision": config["precision"],
        "seconds": p.seconds,
        "versions": versions,
    }
