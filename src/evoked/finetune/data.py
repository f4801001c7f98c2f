"""What the network trains and is evaluated on: items with masked targets, built from two manifests.

- The *categorical* set gives category-derived VA (through a lexicon) and category targets. It
  contributes its training items (split ``train``, or every item when it has no split); an id that is
  also in the dimensional set's val/test splits is removed, so nothing leaks into the evaluation.
- The *dimensional* set (VA ratings, split train/val/test) gives the fine-tuning items of two_stage
  (``n_labels`` of its train items), the validation items of early stopping, and the test items.

Each item carries a VA target with a mask and a category target with a mask, so one loader serves
every framework (two_stage/multi mixes category-only and VA-only items).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from evoked.data.decode import load_rgb
from evoked.data.lexicon import Lexicon
from evoked.data.manifest import Manifest
from evoked.errors import ConfigError, DatasetError, DecodeError, LabelError
from evoked.extract.backbone import Preprocess
from evoked.finetune.losses import multi_hot_top

log = logging.getLogger(__name__)

MODES = ("one_stage", "two_stage")
TASKS = ("single", "multi")
Transform = Callable[[torch.Tensor], torch.Tensor]  # a uint8 CHW image -> the network input


@dataclass
class Part:
    """Items of one role (train, val or test) with masked targets."""

    ids: np.ndarray  # (n,) str
    paths: np.ndarray  # (n,) absolute paths
    va: np.ndarray  # (n, 2) float32 VA target, NaN where unsupervised
    va_mask: np.ndarray  # (n,) bool
    cls: np.ndarray  # (n, K) float32 category target (one-hot, multi-hot or a distribution)
    cls_mask: np.ndarray  # (n,) bool
    category: np.ndarray  # (n,) str hard category, "" unknown (the truth for accuracy)
    source: np.ndarray  # (n,) "categorical" or "dimensional"
    distribution: np.ndarray | None = None  # (n, K') true label distribution (evaluation parts)
    categories: tuple[str, ...] = ()  # the K' names of `distribution`

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, rows: np.ndarray) -> Part:
        rows = np.asarray(rows)
        return Part(
            ids=self.ids[rows],
            paths=self.paths[rows],
            va=self.va[rows],
            va_mask=self.va_mask[rows],
            cls=self.cls[rows],
            cls_mask=self.cls_mask[rows],
            category=self.category[rows],
            source=self.source[rows],
            distribution=None if self.distribution is None else self.distribution[rows],
            categories=self.categories,
        )

    @staticmethod
    def concat(a: Part, b: Part) -> Part:
        return Part(
            ids=np.concatenate([a.ids, b.ids]),
            paths=np.concatenate([a.paths, b.paths]),
            va=np.concatenate([a.va, b.va]),
            va_mask=np.concatenate([a.va_mask, b.va_mask]),
            cls=np.concatenate([a.cls, b.cls]),
            cls_mask=np.concatenate([a.cls_mask, b.cls_mask]),
            category=np.concatenate([a.category, b.category]),
            source=np.concatenate([a.source, b.source]),
        )


@dataclass
class FinetuneData:
    train: Part
    val: Part
    test: Part
    classes: tuple[str, ...]  # the category head's outputs (multi task), else ()
    cls_loss: str | None  # "ce" or "bce" (multi task), else None
    counts: dict[str, int] = field(default_factory=dict)  # items per part
    excluded: dict[str, int] = field(default_factory=dict)  # reason -> items left out
    bad_images: list[dict] = field(default_factory=list)  # {id, path, reason} left out by skip_bad

    @property
    def parts(self) -> dict[str, Part]:
        return {"train": self.train, "val": self.val, "test": self.test}


def make_part(
    m: Manifest,
    rows: np.ndarray,
    *,
    va: np.ndarray | None,
    cls: np.ndarray | None,
    n_classes: int,
    source: str,
    keep_distribution: bool = False,
) -> Part:
    """The `rows` of `m` as a part: `va` / `cls` targets (None: none, masked out) and their masks."""
    n = len(rows)
    va_arr: np.ndarray = np.full((n, 2), np.nan, dtype=np.float32) if va is None else va.astype(np.float32)
    cls_arr = np.zeros((n, n_classes), dtype=np.float32) if cls is None else cls.astype(np.float32)
    dist = m.distribution[rows] if keep_distribution and m.distribution is not None else None
    return Part(
        ids=m.ids[rows].astype(object),
        paths=np.array([str(m.abspath(i)) for i in rows], dtype=object),
        va=va_arr,
        va_mask=np.zeros(n, dtype=bool) if va is None else ~np.isnan(va_arr).any(axis=1),
        cls=cls_arr,
        cls_mask=np.zeros(n, dtype=bool) if cls is None else np.ones(n, dtype=bool),
        category=m.category[rows].astype(object),
        source=np.full(n, source, dtype=object),
        distribution=dist,
        categories=tuple(m.categories) if dist is not None else (),
    )


def resolve_cls_loss(task: str, soft: bool, cls_loss: str) -> str | None:
    """``auto``: BCE on multi-hot labels for label-distribution sets (``soft``), else CE."""
    if task == "single":
        return None
    if cls_loss == "auto":
        return "bce" if soft else "ce"
    if cls_loss not in ("ce", "bce"):
        raise ConfigError(f"--cls-loss {cls_loss!r}: use auto, ce or bce")
    return cls_loss


def check_framework(
    mode: str, task: str, has_categorical: bool, n_labels: int | None, soft: bool, cls_loss: str
) -> str | None:
    """The checks of a framework that need no data; returns its category loss (`resolve_cls_loss`)."""
    if mode not in MODES:
        raise ConfigError(f"--mode {mode!r}: use one of {', '.join(MODES)}")
    if task not in TASKS:
        raise ConfigError(f"--task {task!r}: use one of {', '.join(TASKS)}")
    if (mode == "one_stage" or task == "multi") and not has_categorical:
        raise ConfigError(f"{mode}/{task} trains on a categorical dataset: pass --categorical DATASET")
    if n_labels is not None and mode != "two_stage":
        raise ConfigError(
            "--n-labels sets the size of the two_stage fine-tuning set; use it with --mode two_stage"
        )
    return resolve_cls_loss(task, soft, cls_loss)


def _dimensional_rows(dim: Manifest, mode: str, excluded: dict[str, int]) -> dict[str, np.ndarray]:
    splits = set(dim.split.tolist()) - {""}
    if not splits:
        raise ConfigError(
            f"the dimensional dataset {dim.name!r} has no train/val/test split; write one with "
            f"`evoked data split DATASET --out split.csv` and pass --dimensional csv:split.csv"
        )
    need = ("train", "val", "test") if mode == "two_stage" else ("val", "test")
    has_va = dim.has_va
    rows = {}
    for s in ("train", "val", "test"):
        in_split = dim.split == s
        no_va = int((in_split & ~has_va).sum())
        if no_va:
            excluded[f"dimensional_{s}_no_va"] = no_va
            log.info("%d %s items of %s have no VA rating and are left out", no_va, s, dim.name)
        rows[s] = np.flatnonzero(in_split & has_va)
    for s in need:
        if not len(rows[s]):
            raise ConfigError(
                f"the dimensional dataset {dim.name!r} has no VA-rated {s!r} items (splits: "
                f"{dim.split_counts()}); {_split_fix(s)}"
            )
    return rows


def _split_fix(split: str) -> str:
    if split == "val":
        return (
            "validation picks the best epoch: redo the split with a val fraction, e.g. --ratios 0.6,0.1,0.3"
        )
    return "redo the split with `evoked data split DATASET --out split.csv --ratios 0.6,0.1,0.3`"


def _categorical_rows(cat: Manifest, dim_eval_ids: set[str], excluded: dict[str, int]) -> np.ndarray:
    has_split = bool(any(cat.split))
    rows = np.flatnonzero(cat.split == "train") if has_split else np.arange(len(cat))
    if has_split and not len(rows):
        raise ConfigError(
            f"the categorical dataset {cat.name!r} has a split but no 'train' items ({cat.split_counts()}); "
            "only its train items are trained on: give it train items, or leave its split empty to use them all"
        )
    leak = np.array([i in dim_eval_ids for i in cat.ids[rows]], dtype=bool)
    # recorded even when 0: the run says that the check was made
    excluded["categorical_in_dimensional_eval"] = int(leak.sum())
    log.info(
        "%d categorical training items are in the dimensional val/test splits and are left out (no leakage)",
        int(leak.sum()),
    )
    return rows[~leak]


def prepare_data(
    *,
    categorical: Manifest | None,
    dimensional: Manifest,
    mode: str,
    task: str,
    lexicon: Lexicon,
    soft: bool = False,
    cls_loss: str = "auto",
    n_labels: int | None = None,
    seed: int = 0,
) -> FinetuneData:
    """Parts and targets of one framework. Raises ConfigError / LabelError for an impossible setup."""
    loss_kind = check_framework(mode, task, categorical is not None, n_labels, soft, cls_loss)
    excluded: dict[str, int] = {}
    drows = _dimensional_rows(dimensional, mode, excluded)
    # every id of the val/test splits, rated or not, stays out of the categorical training items
    eval_ids = set(dimensional.ids[np.isin(dimensional.split, ("val", "test"))].tolist())
    classes: tuple[str, ...] = ()
    parts: list[Part] = []
    if mode == "one_stage" or task == "multi":
        cat = categorical
        assert cat is not None  # check_framework asks for it
        crows = _labelled_rows(cat, _categorical_rows(cat, eval_ids, excluded), soft, excluded)
        classes = _head_classes(cat, task, soft)
        cat_va = None
        if mode == "one_stage":
            # category-derived VA: every label must be a lexicon word (LabelError lists the others)
            if soft:
                assert cat.distribution is not None  # _labelled_rows asks for it with --soft
                cat_va = lexicon.soft(cat.distribution[crows], cat.categories)
            else:
                cat_va = lexicon.hard(cat.category[crows].tolist())
        cls = _category_targets(cat, crows, classes, soft, loss_kind) if task == "multi" else None
        parts.append(make_part(cat, crows, va=cat_va, cls=cls, n_classes=len(classes), source="categorical"))
    if mode == "two_stage":
        rows = _fine_tuning_rows(drows["train"], n_labels, seed, excluded)
        parts.append(_rated_part(dimensional, rows, len(classes)))
    val, test = (_rated_part(dimensional, drows[s], len(classes), True) for s in ("val", "test"))
    train = parts[0] if len(parts) == 1 else Part.concat(parts[0], parts[1])
    data = FinetuneData(train, val, test, classes=classes, cls_loss=loss_kind, excluded=excluded)
    data.counts = count_items(data)
    return data


def _labelled_rows(cat: Manifest, crows: np.ndarray, soft: bool, excluded: dict[str, int]) -> np.ndarray:
    """The categorical training rows with a label distribution (`soft`) or a category label."""
    if soft and cat.distribution is None:
        raise LabelError(
            f"--soft uses label distributions, and the categorical dataset {cat.name!r} has none "
            "(p_<category> columns); leave out --soft to use its category labels"
        )
    has = cat.has_distribution[crows] if soft else cat.category[crows] != ""
    if (~has).any():
        excluded["categorical_no_distribution" if soft else "categorical_no_category"] = int((~has).sum())
    if not has.any():
        what = "label distributions" if soft else "category labels"
        raise LabelError(
            f"the categorical dataset {cat.name!r} has no training items with {what}; "
            + (
                "a label-distribution set needs --soft"
                if not soft and cat.distribution is not None
                else "give it a category column (or folders per category)"
            )
        )
    return crows[has]


def _head_classes(cat: Manifest, task: str, soft: bool) -> tuple[str, ...]:
    """The category head's outputs: none for the single task."""
    if task != "multi":
        return ()
    classes = tuple(cat.categories) if soft else tuple(cat.label_categories)
    if len(classes) < 2:
        raise LabelError(f"the multi task needs at least two categories; {cat.name!r} has {list(classes)}")
    return classes


def _category_targets(
    cat: Manifest, crows: np.ndarray, classes: tuple[str, ...], soft: bool, loss_kind: str | None
) -> np.ndarray:
    """The category head's targets: multi-hot (BCE) or a distribution (CE) with --soft, else one-hot."""
    if soft:
        assert cat.distribution is not None  # _labelled_rows asks for it with --soft
        d = np.nan_to_num(cat.distribution[crows])
        return multi_hot_top(d) if loss_kind == "bce" else d / np.maximum(d.sum(1, keepdims=True), 1e-12)
    index = {c: k for k, c in enumerate(classes)}
    cls = np.zeros((len(crows), len(classes)), dtype=np.float32)
    cls[np.arange(len(crows)), [index[c] for c in cat.category[crows]]] = 1.0
    return cls


def _fine_tuning_rows(
    train_rows: np.ndarray, n_labels: int | None, seed: int, excluded: dict[str, int]
) -> np.ndarray:
    """two_stage: the VA-rated train rows fine-tuned on, `n_labels` of them drawn by `seed`."""
    if n_labels is None:
        return train_rows
    if n_labels < 1 or n_labels > len(train_rows):
        raise ConfigError(
            f"--n-labels {n_labels}: the dimensional train split has {len(train_rows)} VA-rated items; "
            f"use 1..{len(train_rows)}"
        )
    excluded["dimensional_train_beyond_n_labels"] = len(train_rows) - n_labels
    return np.sort(np.random.default_rng(seed).choice(train_rows, size=n_labels, replace=False))


def _rated_part(m: Manifest, rows: np.ndarray, n_classes: int, keep_dist: bool = False) -> Part:
    va = np.stack([m.valence[rows], m.arousal[rows]], axis=1)
    return make_part(
        m, rows, va=va, cls=None, n_classes=n_classes, source="dimensional", keep_distribution=keep_dist
    )


def count_items(data: FinetuneData) -> dict[str, int]:
    src = data.train.source
    return {
        "train": len(data.train),
        "train_categorical": int((src == "categorical").sum()),
        "train_dimensional": int((src == "dimensional").sum()),
        "val": len(data.val),
        "test": len(data.test),
    }


# ---------------------------------------------------------------------------------------------- images


def _try_decode(path: str) -> str | None:
    try:
        load_rgb(path)
    except DecodeError as e:
        return e.reason
    return None


def find_bad_images(
    paths: list[str], *, workers: int = 4, on_progress: Callable[[int, int], None] | None = None
) -> dict[str, str]:
    """{path: reason} for every image of `paths` that cannot be decoded; ``on_progress(done, total)``."""
    bad: dict[str, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for done, (path, reason) in enumerate(zip(paths, pool.map(_try_decode, paths)), 1):
            if reason is not None:
                bad[path] = reason
            if on_progress is not None:
                on_progress(done, len(paths))
    return bad


def check_images(
    data: FinetuneData,
    evals: Sequence = (),
    *,
    skip_bad: bool = False,
    workers: int = 4,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[FinetuneData, list]:
    """Decode every image of the parts and of the eval sets (`finetune.evals.EvalSet`) once before
    training. A bad image is a DatasetError listing them all, or, with `skip_bad`, left out of its
    part and counted (``excluded["bad_image_<part>"]``, ``bad_image_eval_<name>`` for an eval set)."""
    named = {**data.parts, **{f"eval_{e.name}": e.part for e in evals}}
    paths = sorted({p for part in named.values() for p in part.paths.tolist()})
    bad = find_bad_images(paths, workers=workers, on_progress=on_progress)
    if not bad:
        return data, list(evals)
    listed = [
        {"part": name, "id": i, "path": p, "reason": bad[p]}
        for name, part in named.items()
        for i, p in zip(part.ids.tolist(), part.paths.tolist())
        if p in bad
    ]
    if not skip_bad:
        shown = "; ".join(f"{b['id']} ({b['path']}): {b['reason']}" for b in listed[:10])
        more = f" and {len(listed) - 10} more" if len(listed) > 10 else ""
        raise DatasetError(
            f"{len(bad)} image(s) cannot be read: {shown}{more}. Fix or remove them, or pass "
            "--skip-bad-images to leave them out (they are counted in run.json)"
        )
    log.warning("%d image(s) cannot be read and are left out: %s", len(bad), ", ".join(list(bad)[:5]))
    keep = {
        name: np.array([p not in bad for p in part.paths.tolist()], dtype=bool)
        for name, part in named.items()
    }
    for name, rows in keep.items():
        if (~rows).any():
            data.excluded[f"bad_image_{name}"] = int((~rows).sum())
        if not rows.any():
            raise DatasetError(f"no readable images left in the {name} part; see the failures listed above")
    for name in ("train", "val", "test"):
        setattr(data, name, getattr(data, name).subset(np.flatnonzero(keep[name])))
    data.bad_images = listed
    data.counts = count_items(data)
    return data, [e.subset(keep[f"eval_{e.name}"]) for e in evals]


# ---------------------------------------------------------------------------------------------- torch


class Rotate180(torch.nn.Module):
    """The offline MobileNetV2 weights expect the normalised image rotated by 180 degrees."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-2, -1)


def make_transform(pre: Preprocess, size: int, *, train: bool) -> Transform:
    """Train: RandomResizedCrop(size) + horizontal flip. Eval: Resize(size) + CenterCrop(size)
    (a square resize for backbones whose preprocessing squashes). Then the backbone's mean/std
    (and rotation), on uint8 CHW tensors."""
    from torchvision.transforms import InterpolationMode, v2

    interp = InterpolationMode(pre.interpolation)
    if train:
        ops = [v2.RandomResizedCrop(size, interpolation=interp, antialias=True), v2.RandomHorizontalFlip()]
    elif pre.mode == "squash":
        ops = [v2.Resize((size, size), interpolation=interp, antialias=True)]
    else:
        ops = [v2.Resize(size, interpolation=interp, antialias=True), v2.CenterCrop(size)]
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(pre.mean), list(pre.std))]
    if pre.rotate180:
        ops.append(Rotate180())
    return v2.Compose(ops)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one item in one epoch: the same on resume and in any worker."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1)[0])


class ImageDataset(Dataset):
    """Decodes an item's image and applies the transform; training items are augmented with a seed
    drawn from (seed, epoch, index), so augmentation does not depend on workers or resumption."""

    def __init__(self, part: Part, transform: Transform, *, augment: bool, seed: int = 0):
        self.part = part
        self.transform = transform
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.part)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        img = torch.from_numpy(np.ascontiguousarray(load_rgb(Path(self.part.paths[i])))).permute(2, 0, 1)
        if self.augment:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(sample_seed(self.seed, self.epoch, i))
                x = self.transform(img)
        else:
            x = self.transform(img)
        p = self.part
        return {
            "image": x,
            "va": torch.from_numpy(p.va[i]),
            "va_mask": torch.tensor(bool(p.va_mask[i])),
            "cls": torch.from_numpy(p.cls[i]),
            "cls_mask": torch.tensor(bool(p.cls_mask[i])),
            "index": torch.tensor(i),
        }
