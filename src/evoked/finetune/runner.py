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
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from evoked import __version__, runfolder
from evoked.clock import utc_now
from evoked.data import Lexicon, Manifest, load_dataset, load_lexicon
from evoked.data.va_range import check_va_range, parse_va_range
from evoked.device import resolve_compute
from evoked.errors import ConfigError, DatasetError
from evoked.extract.backbone import Preprocess, WeightsInfo, parse_preprocess_overrides
from evoked.finetune.data import (
    MODES,
    TASKS,
    FinetuneData,
    Part,
    check_images,
    find_bad_images,
    make_transform,
    prepare_data,
)
from evoked.finetune.evals import keep_rows, load_evals
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
from evoked.finetune.train import (
    Outcome,
    TrainConfig,
    load_checkpoint,
    predict,
    train_network,
)

log = logging.getLogger(__name__)

DEFAULT_SIZE = 448  # the paper's input size for CNNs
DEFAULT_ALPHA = {"one_stage": 0.5, "two_stage": 0.9}
OUTPUTS = ("run.json", "predictions.csv", "metrics.json", "curve.csv", "models/last.pt", "models/best.pt")
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


# ---------------------------------------------------------------------------------------------- checks


def _check_out(out: Path, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it; pass one of them")
    last = out / "models" / "last.pt"
    if resume:
        if not last.is_file():
            raise ConfigError(f"--resume: {last} does not exist; start the run without --resume")
        return
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; give a run directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"--out {str(out)!r} already exists; pass --resume to continue it, --overwrite to replace it, "
            "or choose another --out"
        )


def _clear_outputs(out: Path) -> None:
    """--overwrite, once every check has passed: remove what a run writes (never a whole folder)."""
    for name in OUTPUTS:
        (out / name).unlink(missing_ok=True)


def _resolve_checkpoint(mode: str, checkpoint: str | Path | None, from_run: str | Path | None) -> Path | None:
    if mode == "one_stage":
        if checkpoint or from_run:
            raise ConfigError(
                "--checkpoint/--from give the one_stage model that two_stage fine-tunes; "
                "with --mode one_stage the network starts from --weights"
            )
        return None
    if checkpoint and from_run:
        raise ConfigError("pass either --checkpoint FILE or --from RUN_DIR, not both")
    if from_run:
        path = Path(from_run) / "models" / "best.pt"
        if not path.is_file():
            raise ConfigError(
                f"--from {str(from_run)!r}: {path} does not exist; give the run directory of a finished one_stage run"
            )
        return path
    if not checkpoint:
        raise ConfigError(
            "two_stage fine-tunes a one_stage network: pass --checkpoint runs/ONE/models/best.pt "
            "(or --from runs/ONE)"
        )
    path = Path(checkpoint)
    if not path.is_file():
        raise ConfigError(f"--checkpoint {str(checkpoint)!r}: no such file")
    return path


def _load_manifest(spec: str | Manifest | None) -> Manifest | None:
    if spec is None or isinstance(spec, Manifest):
        return spec
    return load_dataset(str(spec))


def _preprocess_overrides(preprocess: str | Mapping | None) -> dict:
    if not preprocess:
        return {}
    if isinstance(preprocess, Mapping):
        return dict(preprocess)
    return parse_preprocess_overrides(preprocess)


def _ids_sha256(part: Part) -> str:
    return hashlib.sha256("\n".join(sorted(map(str, part.ids))).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- network


def _encoder(
    *, backbone: str | None, weights: str, overrides: dict, ckpt: dict | None
) -> tuple[Encoder, dict]:
    """The backbone to train and where its weights come from (--weights, or the checkpoint)."""
    if ckpt is None:
        if not backbone:
            raise ConfigError(
                "one_stage needs --backbone (e.g. resnet101, tv:mobilenet_v2, clip:ViT-B-32:openai)"
            )
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


def _probabilities(logits: np.ndarray, cls_loss: str) -> np.ndarray:
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
    *,
    dimensional: str | Manifest,
    out: str | Path,
    mode: str = "one_stage",
    task: str = "single",
    categorical: str | Manifest | None = None,
    backbone: str | None = None,
    weights: str = "default",
    preprocess: str | Mapping | None = None,
    plugins: Sequence[str] = (),
    checkpoint: str | Path | None = None,
    from_run: str | Path | None = None,
    freeze_until: str | None = None,
    freeze_bn: bool | None = None,
    size: int | None = None,
    lexicon: str | Lexicon = "nrc",
    category_map: Mapping[str, str] | Sequence[str] | None = None,
    soft: bool = False,
    cls_loss: str = "auto",
    alpha: float | None = None,
    n_labels: int | None = None,
    epochs: int = 100,
    batch_size: int = 10,
    lr: float = 1e-4,
    weight_decay: float = 1e-5,
    milestones: Sequence[int] = (10, 20, 30, 40, 50),
    gamma: float = 0.5,
    patience: int = 5,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    workers: int = 0,
    eval_batch_size: int = 32,
    check_workers: int = 4,
    skip_bad_images: bool = False,
    evals: Sequence[str | Manifest] = (),
    va_range: str | Sequence[float] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_check: Callable[[int, int], None] | None = None,
    on_batch: Callable[[int, int, int, float], None] | None = None,
    on_epoch: Callable[[dict], None] | None = None,
    on_predict: Callable[[int, int], None] | None = None,
) -> FinetuneResult:
    """Train one framework (`mode` one_stage|two_stage x `task` single|multi) and write ``out``.

    one_stage trains `backbone` (with `weights`) on the `categorical` set's category-derived VA
    (and categories for multi); two_stage loads `checkpoint` (or ``from_run/models/best.pt``), freezes
    the encoder before `freeze_until` (``auto``: layer4 for ResNets) and fine-tunes on `n_labels` of
    the `dimensional` set's VA-rated train items (plus the categorical items, category loss only, for
    multi). Both stop early on the validation valence r and predict the dimensional test split,
    and every item of each `evals` dataset (``SPEC[:SPLIT]``, see `finetune.evals`).
    `freeze_bn` None: inherited from the checkpoint (two_stage), else turned on when the encoder's
    batch norm is folded (`folded_norm_layers`), with the reason in run.json. Ratings outside
    `va_range` (``"LO,HI"``, default 1,9; two_stage: the checkpoint's) are refused before training.
    Callbacks: ``on_check(done, total)`` images checked, ``on_batch(epoch, batch, n_batches, loss)``,
    ``on_epoch(record)``, ``on_predict(done, total)`` test images predicted.
    """
    t_start = time.perf_counter()
    out = Path(out)
    # ---- options (cheap checks first)
    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r}: use one of {', '.join(MODES)}")
    if task not in TASKS:
        raise ConfigError(f"--task {task!r}: use one of {', '.join(TASKS)}")
    _check_out(out, resume, overwrite)
    alpha = DEFAULT_ALPHA[mode] if alpha is None else float(alpha)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        milestones=tuple(milestones),
        gamma=gamma,
        patience=patience,
        freeze_bn=bool(freeze_bn),
        alpha=alpha,
        seed=seed,
        eval_batch_size=eval_batch_size,
        workers=workers,
    )
    cfg.check()
    if size is not None and size < 8:
        raise ConfigError(f"--size {size}: the input side in pixels, at least 8 (the paper: 448)")
    dev, prec = resolve_compute(device, precision, training=True)
    overrides = _preprocess_overrides(preprocess)
    if plugins:
        from evoked.extract.registry import load_plugin

        for p in plugins:
            load_plugin(p)
    ckpt_path = _resolve_checkpoint(mode, checkpoint, from_run)
    ckpt = load_checkpoint(ckpt_path, "--checkpoint") if ckpt_path else None
    lex = load_lexicon(lexicon, category_map)
    stage1 = (ckpt or {}).get("meta", {}).get("config", {})
    inherited: dict = {}
    if va_range is None and stage1.get("va_range"):
        va_range = stage1["va_range"]
        inherited["va_range"] = list(va_range)
    scale = parse_va_range(va_range)

    # ---- labels
    cat_m = _load_manifest(categorical)
    dim_m = _load_manifest(dimensional)
    if mode == "two_stage" and task == "single" and cat_m is not None:
        log.warning("two_stage/single fine-tunes on the dimensional set only; --categorical is not used")
        cat_m = None
    data: FinetuneData = prepare_data(
        categorical=cat_m,
        dimensional=dim_m,
        mode=mode,
        task=task,
        lexicon=lex,
        soft=soft,
        cls_loss=cls_loss,
        n_labels=n_labels,
        seed=seed,
    )
    cfg.cls_loss = data.cls_loss
    _check_scale(dim_m, scale)
    training_ids = [*data.train.ids.tolist(), *data.val.ids.tolist()]
    eval_sets = load_evals(evals, training_ids=training_ids, va_range=scale)

    # ---- network
    encoder, init = _encoder(backbone=backbone, weights=weights, overrides=overrides, ckpt=ckpt)
    if size is None:
        size = native_size(encoder) or (int(ckpt["meta"]["size"]) if ckpt else DEFAULT_SIZE)
        if ckpt and not native_size(encoder):
            inherited["size"] = size
    if ckpt:
        inherited["preprocess"] = "stage 1's" + (" with --preprocess overrides" if overrides else "")
    supervised = data.train.va[data.train.va_mask]
    va_mean = supervised.mean(axis=0) if len(supervised) else None
    net = _assemble(
        encoder, task=task, classes=data.classes, size=size, ckpt=ckpt, init=init, seed=seed, va_mean=va_mean
    )
    cfg.freeze_bn, bn = _resolve_freeze_bn(freeze_bn, net, stage1)
    if bn["freeze_bn_from"] == "stage 1":
        inherited["freeze_bn"] = cfg.freeze_bn
    freeze_default = FREEZE_AUTO if mode == "two_stage" else FREEZE_NONE
    point = resolve_freeze_point(encoder, freeze_until or freeze_default)
    params = freeze_before(net, point)
    log.info(
        "%s: %s, freeze before %s (%d of %d parameters train), input %d px",
        model_name(mode, task),
        encoder.spec,
        point,
        params["trainable"],
        params["total"],
        size,
    )

    config = {
        "mode": mode,
        "task": task,
        "backbone": encoder.spec,
        "weights": init["weights"],
        "checkpoint_sha256": _sha256_file(ckpt_path) if ckpt_path else None,
        "preprocess": encoder.preprocess.to_dict(),
        "size": size,
        "freeze_until": point,
        "lexicon": lex.describe(),
        "soft": soft,
        "classes": list(data.classes),
        "n_labels": n_labels,
        "va_range": list(scale),
        "parts_sha256": {k: _ids_sha256(p) for k, p in data.parts.items()},
        "evals": [e.name for e in eval_sets],
        **cfg.to_dict(),
        "device": dev.type,
        "precision": prec,
    }

    resume_state = None
    if resume:
        resume_state = load_checkpoint(out / "models" / "last.pt", "--resume")
        before = resume_state["meta"].get("config", {})
        diff = sorted(
            k
            for k in set(before) | set(config)
            if k not in _RESUMABLE
            and before.get(k) != config.get(k)
            and not (k in _ADDED_LATER and k not in before and config.get(k) == _ADDED_LATER[k])
        )
        if diff:
            raise ConfigError(
                f"--resume: the settings {', '.join(diff)} differ from the run in {out}; resume with the same "
                "settings (only --epochs, --workers, --eval-batch-size, --device, --precision may change), "
                "or start a new run with --overwrite"
            )
        if any(resume_state["meta"]["config"].get(k) != config[k] for k in ("device", "precision")):
            log.warning("--resume on another device/precision: results will not equal an uninterrupted run")

    # ---- images
    n_paths = len({p for part in data.parts.values() for p in part.paths.tolist()})
    done = 0

    def _checked(k: int) -> None:
        nonlocal done
        done += k
        if on_check is not None:
            on_check(done, n_paths)

    data = check_images(data, skip_bad=skip_bad_images, workers=check_workers, on_progress=_checked)
    eval_sets = _check_eval_images(eval_sets, data, skip_bad_images, check_workers)
    if overwrite:
        _clear_outputs(out)

    # ---- train
    meta = {
        "config": config,
        "mode": mode,
        "task": task,
        "backbone": encoder.spec,
        "weights": init["weights"],
        "preprocess": encoder.preprocess.to_dict(),
        "size": size,
        "relu": encoder.relu,
        "classes": list(data.classes),
        "cls_loss": data.cls_loss,
        "lexicon": lex.describe(),
        "evoked_version": __version__,
    }
    train_tf = make_transform(encoder.preprocess, size, train=True)
    eval_tf = make_transform(encoder.preprocess, size, train=False)
    models_dir = out / "models"
    outcome = train_network(
        net,
        data.train,
        data.val,
        train_transform=train_tf,
        eval_transform=eval_tf,
        cfg=cfg,
        device=dev,
        precision=prec,
        models_dir=models_dir,
        meta=meta,
        resume_from=resume_state,
        on_batch=on_batch,
        on_epoch=on_epoch,
    )

    if outcome.collapsed:
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
            + f" The last epoch is in {models_dir / 'last.pt'}; rerun with --overwrite."
        )

    # ---- predict the test split with the best epoch
    best = load_checkpoint(models_dir / "best.pt", "best checkpoint")
    net.load_state_dict(best["model"])
    n_test = len(data.test)
    seen = 0

    def _predicted(k: int) -> None:
        nonlocal seen
        seen += k
        if on_predict is not None:
            on_predict(seen, n_test)

    va_pred, logits = predict(
        net,
        data.test,
        eval_tf,
        device=dev,
        precision=prec,
        batch_size=eval_batch_size,
        workers=workers,
        on_progress=_predicted,
    )
    eval_preds = []
    for e in eval_sets:
        pred_e, _ = predict(
            net, e.part, eval_tf, device=dev, precision=prec, batch_size=eval_batch_size, workers=workers
        )
        eval_preds.append((e, pred_e))
    result = _write_outputs(
        out=out,
        mode=mode,
        task=task,
        data=data,
        va_pred=va_pred,
        logits=logits,
        lex=lex,
        outcome=outcome,
        config=config,
        init=init,
        params=params,
        cat_m=cat_m,
        dim_m=dim_m,
        ckpt_path=ckpt_path,
        seed=seed,
        seconds=time.perf_counter() - t_start,
        eval_preds=eval_preds,
        bn=bn,
        inherited=inherited,
    )
    return result


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


def _check_eval_images(eval_sets: list, data: FinetuneData, skip_bad: bool, workers: int) -> list:
    """Decode every --eval image before training; a bad one fails, or is left out and counted."""
    paths = sorted({p for e in eval_sets for p in e.part.paths.tolist()})
    if not paths:
        return eval_sets
    bad = find_bad_images(paths, workers=workers)
    if not bad:
        return eval_sets
    shown = "; ".join(f"{p}: {r}" for p, r in list(bad.items())[:10])
    if not skip_bad:
        raise DatasetError(
            f"{len(bad)} --eval image(s) cannot be read: {shown}. Fix or remove them, or pass "
            "--skip-bad-images to leave them out (they are counted in run.json)"
        )
    out = []
    for e in eval_sets:
        keep = np.array([p not in bad for p in e.part.paths.tolist()], dtype=bool)
        if (~keep).any():
            data.excluded[f"bad_image_eval_{e.name}"] = int((~keep).sum())
            e = keep_rows(e, keep)
        if not len(e.part):
            raise DatasetError(f"--eval {e.spec}: no readable images left")
        out.append(e)
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _write_outputs(
    *, out, mode, task, data, va_pred, logits, lex, outcome, config, init, params, cat_m, dim_m, ckpt_path,
    seed, seconds, eval_preds=(), bn=None, inherited=None,
) -> FinetuneResult:  # fmt: skip
    """run.json, predictions.csv (the test split, then each eval set), metrics.json and curve.csv."""
    from evoked.evaluate.metrics import va_metrics

    name = model_name(mode, task)
    probs = _probabilities(logits, data.cls_loss) if logits is not None else None
    metrics = {**va_metrics(data.test.va, va_pred), "category": _category_metrics(data.test, va_pred, lex)}
    if logits is not None:
        metrics["category_head"] = _head_accuracy(data.test, logits, data.classes)
    groups = [_prediction_columns(data.test, va_pred, probs, data.classes, kind="held-out")]
    for e, pred_e in eval_preds:
        groups.append(_prediction_columns(e.part, pred_e, None, (), kind="transfer", eval_name=e.name,
                                          splits=e.splits))  # fmt: skip
        metrics.setdefault("evals", {})[e.name] = (
            va_metrics(e.part.va, pred_e) if e.has_ratings else {"skipped": f"{e.spec} has no VA ratings: predicted only"}
        )  # fmt: skip
    curve = None
    if config["n_labels"] is not None:
        v, a = metrics["valence"], metrics["arousal"]
        curve = [{"model": name, "setting": mode, "n_labels": config["n_labels"], "seed": seed,
                  "r_valence": v["r"], "r_arousal": a["r"], "mse_valence": v["mse"], "mse_arousal": a["mse"]}]  # fmt: skip
    meta = _run_meta(mode=mode, task=task, data=data, lex=lex, outcome=outcome, config=config, init=init,
                     params=params, cat_m=cat_m, dim_m=dim_m, ckpt_path=ckpt_path, seed=seed, seconds=seconds,
                     evals=[e.describe() for e, _ in eval_preds], bn=bn, inherited=inherited)  # fmt: skip
    runfolder.write_run(out, meta, {name: _joined(groups)}, curve=curve)
    runfolder.write_json(out / "metrics.json", {name: metrics})
    return FinetuneResult(out=out, model=name, metrics=metrics, outcome=outcome, counts=data.counts,
                          excluded=data.excluded, meta=json.loads((out / "run.json").read_text("utf-8")))  # fmt: skip


def _run_meta(
    *, mode, task, data, lex, outcome, config, init, params, cat_m, dim_m, ckpt_path, seed, seconds, evals,
    bn, inherited,
) -> dict:  # fmt: skip
    """run.json of a fine-tuning run (docs/runs.md, docs/finetune.md)."""
    versions = runfolder.versions()
    checkpoint = (
        {"path": str(Path(ckpt_path).resolve()), "sha256": config["checkpoint_sha256"]} if ckpt_path else None
    )
    return {
        "kind": "finetune",
        "created": utc_now(),
        "evoked_version": versions["evoked"],
        "dataset": dim_m.name,
        "categorical_dataset": cat_m.name if cat_m is not None else None,
        "store": None,
        "features": None,
        "target": {"kind": "category-va", "lexicon": lex.describe(), "soft": bool(config["soft"])}
        if mode == "one_stage"
        else {"kind": "va", "stage1": "category-va", "lexicon": lex.describe()},
        "protocol": {"kind": "split", "train": ["train"], "val": "val", "eval": "test", "seed": seed},
        "mode": mode,
        "task": task,
        "backbone": config["backbone"],
        "weights": config["weights"],
        "init": init,
        "checkpoint": checkpoint,
        "preprocess": config["preprocess"],
        "size": config["size"],
        "freeze_until": config["freeze_until"],
        "freeze_bn": config["freeze_bn"],
        "freeze_bn_reason": (bn or {}).get("reason"),
        "batch_norm": bn,
        "inherited": inherited or {},
        "va_range": config["va_range"],
        "parameters": params,
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
        "evals": evals,
        "epochs_run": outcome.epochs_run,
        "best_epoch": outcome.best_epoch,
        "best_val_r_valence": outcome.best_score,
        "stopped_early": outcome.stopped_early,
        "history": outcome.history,
        "n_items": data.counts,
        "n_labels": config["n_labels"],
        "excluded": data.excluded,
        "bad_images": data.bad_images,
        "seed": seed,
        "device": config["device"],
        "precision": config["precision"],
        "seconds": seconds,
        "versions": versions,
    }
