"""Merge shard files (``--shard i/n``) into one store without copying features.

Features, statuses, errors and timings become HDF5 virtual datasets that read straight from the
shard files (paths stored relative to the merged file, so keep them in one folder); ids, paths
and labels are small and are copied. A shard completed later with ``--resume`` shows through.
"""

from __future__ import annotations

import json
import os
import re
import uuid
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from evoked.errors import ConfigError
from evoked.extract.registry import comparable_config
from evoked.features.lock import output_lock
from evoked.features.store import (
    DIMENSION_ATTRS,
    FeatureStore,
    attach_dimensions,
    decode_attr,
    read_categories,
    write_categories,
)

_SHARD_RE = re.compile(r"\.shard-(\d+)-of-(\d+)\.h5$")
_SHARD_ATTRS = (
    "shard",
    "shard_index",
    "shard_count",
    "shard_start",
    "shard_stop",
    "total_items",
    "total_ids_sha256",
)


def find_shards(out: Path) -> list[Path]:
    """``feats.h5`` -> the ``feats.shard-I-of-N.h5`` files beside it, in shard order."""
    found = sorted(
        out.parent.glob(f"{out.stem}.shard-*-of-*{out.suffix}"),
        key=lambda p: int(m.group(1)) if (m := _SHARD_RE.search(p.name)) else -1,
    )
    return [p for p in found if _SHARD_RE.search(p.name)]


def _config_key(store: FeatureStore) -> str:
    configs = {n: comparable_config(a.get("config", {})) for n, a in store.extractors.items()}
    return json.dumps(configs, sort_keys=True)


def merge_shards(
    out: str | os.PathLike, shards: Sequence[str | os.PathLike] | None = None, overwrite: bool = False
) -> Path:
    """Write `out` as a virtual view of all shards; checks that they belong together first.

    `out` is locked as `extract` locks it (a store being written is never replaced), and an existing
    `out` is replaced only with `overwrite`, or when it is itself a merged view of the same dataset
    (it holds nothing of its own: merging again after a shard was completed refreshes it).
    """
    out = Path(out)
    paths = [Path(s) for s in shards] if shards else find_shards(out)
    if not paths:
        raise ConfigError(f"no shard files found for {out} (looked for {out.stem}.shard-I-of-N{out.suffix})")
    with output_lock(out):
        stores = [FeatureStore(p, "r") for p in paths]
        try:
            if not overwrite:
                _check_replaceable(out, stores[0])
            return _merge(out, stores)
        finally:
            for s in stores:
                s.close()


def _check_replaceable(out: Path, shard: FeatureStore) -> None:
    """An existing `out` may be replaced without --overwrite only if it is a merged view of `shard`'s dataset."""
    if not os.path.lexists(out):
        return
    try:
        with h5py.File(out, "r") as f:
            view = bool(f.attrs.get("merged_from")) and f.attrs.get("ids_sha256") == shard.attrs.get(
                "total_ids_sha256"
            )
    except OSError:
        view = False
    if not view:
        raise ConfigError(
            f"{out} already exists and is not a merged view of these shards; pass --overwrite to replace it, "
            "or give another OUT"
        )


def _merge(out: Path, stores: list[FeatureStore]) -> Path:
    first = stores[0].attrs
    if not first.get("shard"):
        raise ConfigError(f"{stores[0].path} is not a shard (it was not written with --shard I/N)")
    count = int(first["shard_count"])
    seen: dict[int, Path] = {}
    for s in stores:
        a = s.attrs
        if (
            not a.get("shard")
            or int(a["shard_count"]) != count
            or a["total_ids_sha256"] != first["total_ids_sha256"]
        ):
            raise ConfigError(
                f"{s.path} is not a shard of the same dataset and shard count as {stores[0].path}"
            )
        if _config_key(s) != _config_key(stores[0]) or a.get("dtype") != first.get("dtype"):
            raise ConfigError(
                f"{s.path} was extracted with other backbones or settings than {stores[0].path}"
            )
        if int(a["shard_index"]) in seen:
            raise ConfigError(
                f"shard {a['shard_index']} is given twice: {seen[int(a['shard_index'])]} and {s.path}"
            )
        seen[int(a["shard_index"])] = s.path
    missing = sorted(set(range(count)) - set(seen))
    if missing:
        raise ConfigError(
            f"shards {missing} of {count} are missing; extract them with --shard I/{count} first"
        )
    stores = sorted(stores, key=lambda s: int(s.attrs["shard_index"]))
    total = int(first["total_items"])
    spans = [(int(s.attrs["shard_start"]), int(s.attrs["shard_stop"])) for s in stores]
    if spans[0][0] != 0 or spans[-1][1] != total or any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
        raise ConfigError(f"shard row ranges {spans} do not cover the {total} items exactly")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    tmp.unlink(missing_ok=True)
    rel = [os.path.relpath(s.path.resolve(), out.parent.resolve()) for s in stores]
    with h5py.File(tmp, "w", libver="earliest") as f:
        for k, v in stores[0].file.attrs.items():
            if k not in _SHARD_ATTRS:
                f.attrs[k] = v
        f.attrs.update(
            {
                "n_items": total,
                "ids_sha256": first["total_ids_sha256"],
                "store_uuid": uuid.uuid4().hex,
                "shard": "",
                "merged_from": json.dumps(rel),
            }
        )
        for group in ("items", "labels", "provenance"):
            f.create_group(group)
        src0 = stores[0].file
        for name in ("items/id", "items/path", "labels/category", "labels/split"):
            data = np.concatenate([s.file[name].asstr()[:] for s in stores]).astype(object)
            f.create_dataset(name, data=data, dtype=h5py.string_dtype("utf-8"))
        for name in ("labels/valence", "labels/arousal", "labels/fold", "labels/distribution"):
            if name in src0:
                f.create_dataset(name, data=np.concatenate([s.file[name][:] for s in stores]))
                for k, v in src0[name].attrs.items():
                    if k not in DIMENSION_ATTRS:
                        f[name].attrs[k] = v
        if "labels/distribution" in src0:
            write_categories(f["labels"], read_categories(src0["labels"]))
        _virtual(f, "items/status", stores, rel, spans, src0)
        _virtual(f, "items/error", stores, rel, spans, src0)
        _virtual(f, "provenance/timings", stores, rel, None, src0)
        _virtual(f, "provenance/runs", stores, rel, None, src0)
        for ext, g in src0["features"].items():
            fg = f.require_group(f"features/{ext}")
            for k, v in g.attrs.items():
                fg.attrs[k] = v
            for name in g:
                _virtual(f, f"features/{ext}/{name}", stores, rel, spans, src0)
        attach_dimensions(f)
    os.replace(tmp, out)
    return out


def _virtual(f: h5py.File, name: str, stores, rel, spans, src0) -> None:
    """Stack `name` of every shard along rows; `spans` gives target rows (None: one after another)."""
    shapes = [s.file[name].shape for s in stores]
    rows = sum(sh[0] for sh in shapes)
    ds0 = src0[name]
    layout = h5py.VirtualLayout((rows, *ds0.shape[1:]), ds0.dtype)
    at = 0
    for k, (path, shape) in enumerate(zip(rel, shapes)):
        start = spans[k][0] if spans else at
        layout[start : start + shape[0]] = h5py.VirtualSource(path, name, shape=shape, dtype=ds0.dtype)
        at = start + shape[0]
    fill = np.nan if ds0.dtype.kind == "f" else None
    ds = f.create_virtual_dataset(name, layout, fillvalue=fill)
    for k, v in ds0.attrs.items():
        if k not in DIMENSION_ATTRS:
            ds.attrs[k] = v


def merged_from(store: FeatureStore) -> list[str]:
    v = store.file.attrs.get("merged_from")
    return list(decode_attr(v)) if v else []
