"""The HDF5 feature store: one file per dataset x backbone set, describing itself.

Layout (schema version 1)::

    /                       attrs: evoked_version, schema_version, created, dataset, dataset_kind,
                                   dataset_root, n_items, block_size, store_uuid, ids_sha256, shard
    /items/id  path         (N,) utf-8 strings; ids are unique and the join key
    /items/status           (N,) uint8: 0 pending, 1 ok, 2 failed
    /items/error            (N,) utf-8, at most 512 bytes: why a row failed
    /labels/category split  (N,) utf-8 ("" = unknown)
    /labels/valence arousal (N,) float64 (NaN = unknown)
    /labels/fold            (N,) int64 (-1 = none)
    /labels/distribution    (N, K) float32
    /labels/distribution_categories  (K,) utf-8: the names of its columns (older stores hold
                            them in /labels/distribution's attribute ``categories``, still read)
    /features/<extractor>/<output>   (N, D) float32 or float16; group attrs hold the provenance
    /features/<extractor>/layers.<block>   one per layer of the trunk, attrs layer, depth, dim
                            [, source_dim]; ``<extractor>/layers`` names them all, by depth
    /provenance/runs        (R,) utf-8 JSON, one per extraction run (empty = unused slot)
    /provenance/timings     (n_blocks, 6) float64: run, images, read_s, model_s, write_s, unix time
    /item, /<a>.<b>         empty HDF5 dimension scales naming the axes: ``item`` for every row axis,
                            ``resnet50.pool`` for the second axis of /features/resnet50/pool (netCDF
                            readers such as xarray's h5netcdf engine show them as named dimensions)

Why the file survives ``kill -9``: every row is allocated when the file is created (all items are
known from the manifest) with HDF5's early allocation, and the file is created under a temporary
name and renamed. After that, writing a block only overwrites chunk data in place: no HDF5
metadata ever changes, so the file is always readable. A block's features are flushed before its
status flips from pending to ok, so a resumed run redoes exactly the blocks that were not done.
Rows are processed in blocks of ``block_size`` rows (one HDF5 chunk each); a block is always
processed whole, which keeps batch composition -- and so the features -- identical on resume.

Readers during a write: since no metadata changes after creation, the writer opens the file
without HDF5's file lock, and any number of readers -- ``h5py.File(path, "r")``, with or without
``swmr=True``, or `open_store` -- can read it while a run writes, each seeing whole blocks (a
block's status turns ok only after its features are on disk). One writer at a time is enforced by
the run's lock file (`evoked.features.lock`), which the kernel releases when the writer dies.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from evoked import __version__
from evoked.clock import utc_now
from evoked.data.manifest import Manifest
from evoked.errors import ConfigError, DatasetError

LAYERS, LAYER_PREFIX = "layers", "layers."  # all layers of an extractor; one layer (evoked.extract.layers)

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PENDING, OK, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", OK: "ok", FAILED: "failed"}
ERROR_BYTES = 512
RUN_BYTES = 8192
MAX_RUNS = 256
TIMING_COLUMNS = ("run", "images", "read_s", "model_s", "write_s", "finished_unix")

_STR = h5py.string_dtype("utf-8")


@dataclass(frozen=True)
class OutputSpec:
    """One output of an extractor: ``resnet50/probs`` has name "probs" and dim 1000."""

    name: str
    dim: int
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ExtractorSpec:
    """A group of outputs written by one backbone, with its provenance attributes."""

    name: str
    outputs: tuple[OutputSpec, ...]
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class ShardInfo:
    """Rows [start, stop) of a manifest of `total` items, as shard `index` of `count`."""

    index: int
    count: int
    start: int
    stop: int
    total: int
    ids_sha256: str


def ids_fingerprint(ids: Iterable[str]) -> str:
    h = hashlib.sha256()
    for i in ids:
        h.update(str(i).encode("utf-8", "surrogateescape"))  # never fails; valid text hashes as before
        h.update(b"\0")
    return h.hexdigest()


def _attr_value(v):
    """HDF5 attributes hold scalars, strings and arrays; anything nested is stored as JSON."""
    if isinstance(v, (dict, list, tuple)) and not (
        isinstance(v, (list, tuple)) and v and all(isinstance(x, str) for x in v)
    ):
        return json.dumps(v)
    if v is None:
        return ""
    return v


def _early(dtype, shape, chunks, fill, fill_time: str) -> dict:
    """Keyword arguments for a dataset whose chunks are all allocated at creation."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    kw = dict(shape=shape, dtype=dtype, chunks=chunks, dcpl=dcpl, fill_time=fill_time)
    if fill is not None:
        kw["fillvalue"] = fill
    return kw


def _truncate_utf8(text: str, limit: int) -> bytes:
    data = text.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[: limit - 3].decode("utf-8", "ignore").encode("utf-8") + b"..."


class FeatureStore:
    """An open feature file. Use `FeatureStore.create` for a new one, `open_store` to read one."""

    def __init__(self, path: str | os.PathLike, mode: str = "r"):
        self.path = Path(path)
        if not self.path.exists():
            raise DatasetError(
                f"feature store {str(self.path)!r} does not exist; create it with `evoked extract`"
            )
        try:
            # A writer only overwrites preallocated chunks (see the module doc), so it needs no HDF5
            # file lock: without one, readers (plain, or swmr=True) can open the file during a run.
            # Writers exclude each other with evoked's own lock (evoked.features.lock).
            self.file = h5py.File(self.path, mode, **({} if mode == "r" else {"locking": False}))
        except OSError as e:
            raise DatasetError(f"cannot open feature store {str(self.path)!r}: {e}") from e
        if self.file.attrs.get("schema_version") is None or "items" not in self.file:
            self.file.close()
            raise DatasetError(f"{str(self.path)!r} is an HDF5 file but not an evoked feature store")
        schema = int(self.file.attrs["schema_version"])
        if schema > SCHEMA_VERSION:
            self.file.close()
            raise DatasetError(
                f"{str(self.path)!r} has schema version {schema}; this evoked ({__version__}) reads up to "
                f"{SCHEMA_VERSION}. Upgrade evoked."
            )
        self._ids: np.ndarray | None = None

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def create(
        cls,
        path: str | os.PathLike,
        manifest: Manifest,
        extractors: Sequence[ExtractorSpec],
        *,
        block_size: int = 256,
        dtype: str = "float32",
        shard: ShardInfo | None = None,
        attrs: dict | None = None,
    ) -> FeatureStore:
        """Write a new store with every row pending, atomically, and open it for writing."""
        path = Path(path)
        if dtype not in ("float32", "float16"):
            raise ConfigError(f"--dtype {dtype!r}: use float32 or float16")
        if block_size < 1:
            raise ConfigError(f"--batch-size {block_size}: must be at least 1")
        names = [e.name for e in extractors]
        if len(set(names)) != len(names):
            raise ConfigError(
                f"two backbones write the same feature group: {names}; give each a distinct name"
            )
        n = len(manifest)
        if n == 0:
            raise DatasetError("the dataset has no items")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".partial")
        tmp.unlink(missing_ok=True)
        chunk_rows = min(block_size, n)
        with h5py.File(tmp, "w", libver="earliest") as f:
            f.attrs.update(
                {
                    "evoked_version": __version__,
                    "schema_version": SCHEMA_VERSION,
                    "created": utc_now(),
                    "dataset": manifest.name,
                    "dataset_kind": manifest.kind,
                    "dataset_root": str(Path(os.path.abspath(manifest.root))),
                    "n_items": n,
                    "block_size": chunk_rows,
                    "dtype": dtype,
                    "store_uuid": uuid.uuid4().hex,
                    "ids_sha256": ids_fingerprint(manifest.ids),
                    "shard": "" if shard is None else f"{shard.index}/{shard.count}",
                }
            )
            if shard is not None:
                f.attrs.update(
                    {
                        "shard_index": shard.index,
                        "shard_count": shard.count,
                        "shard_start": shard.start,
                        "shard_stop": shard.stop,
                        "total_items": shard.total,
                        "total_ids_sha256": shard.ids_sha256,
                    }
                )
            for k, v in (attrs or {}).items():
                f.attrs[k] = _attr_value(v)
            items = f.create_group("items")
            items.create_dataset("id", data=manifest.ids.astype(object), dtype=_STR)
            items.create_dataset("path", data=manifest.paths.astype(object), dtype=_STR)
            st = items.create_dataset("status", **_early("u1", (n,), (chunk_rows,), PENDING, "alloc"))
            st.attrs["codes"] = json.dumps(STATUS_NAMES)
            items.create_dataset(
                "error", **_early(h5py.string_dtype("utf-8", ERROR_BYTES), (n,), (chunk_rows,), None, "alloc")
            )
            labels = f.create_group("labels")
            labels.create_dataset("category", data=manifest.category.astype(object), dtype=_STR)
            labels.create_dataset("split", data=manifest.split.astype(object), dtype=_STR)
            labels.create_dataset("valence", data=manifest.valence.astype("f8"))
            labels.create_dataset("arousal", data=manifest.arousal.astype("f8"))
            labels.create_dataset("fold", data=manifest.fold.astype("i8"))
            if manifest.distribution is not None:
                labels.create_dataset("distribution", data=manifest.distribution.astype("f4"))
                write_categories(labels, manifest.categories)
            feats = f.create_group("features")
            for ext in extractors:
                g = feats.create_group(ext.name)
                for k, v in ext.attrs.items():
                    g.attrs[k] = _attr_value(v)
                g.attrs["outputs"] = json.dumps({o.name: o.dim for o in ext.outputs})
                for out in ext.outputs:
                    # fill_time never: rows not yet written cost no disk (sparse) and read as zeros;
                    # failed rows are written as NaN explicitly; always filter on /items/status.
                    ds = g.create_dataset(
                        out.name, **_early(dtype, (n, out.dim), (chunk_rows, out.dim), None, "never")
                    )
                    for k, v in out.attrs.items():
                        ds.attrs[k] = _attr_value(v)
            prov = f.create_group("provenance")
            prov.create_dataset(
                "runs",
                **_early(h5py.string_dtype("utf-8", RUN_BYTES), (MAX_RUNS,), (MAX_RUNS,), None, "alloc"),
            )
            n_blocks = -(-n // chunk_rows)
            t = prov.create_dataset(
                "timings",
                **_early("f8", (n_blocks, len(TIMING_COLUMNS)), (min(n_blocks, 4096), 6), np.nan, "alloc"),
            )
            t.attrs["columns"] = list(TIMING_COLUMNS)
            attach_dimensions(f)  # now: no new objects may be created once SWMR writing starts
        os.replace(tmp, path)
        return cls(path, "r+")

    # -- basic properties ----------------------------------------------------------------------
    def close(self) -> None:
        if self.file.id.valid:
            self.file.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def attrs(self) -> dict:
        return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in self.file.attrs.items()}

    def __len__(self) -> int:
        return int(self.file["items/id"].shape[0])

    @property
    def block_size(self) -> int:
        return int(self.file.attrs["block_size"])

    @property
    def n_blocks(self) -> int:
        return -(-len(self) // self.block_size)

    def block_rows(self, block: int) -> np.ndarray:
        return np.arange(block * self.block_size, min((block + 1) * self.block_size, len(self)))

    @property
    def ids(self) -> np.ndarray:
        if self._ids is None:
            self._ids = np.asarray(self.file["items/id"].asstr()[:], dtype=object)
        return self._ids

    @property
    def paths(self) -> np.ndarray:
        return np.asarray(self.file["items/path"].asstr()[:], dtype=object)

    @property
    def status(self) -> np.ndarray:
        return self.file["items/status"][:]

    def errors(self) -> dict[str, str]:
        """id -> reason, for every failed row."""
        failed = np.flatnonzero(self.status == FAILED)
        if not failed.size:
            return {}
        reasons = self.file["items/error"][failed]
        return {self.ids[i]: r.decode("utf-8", "replace") for i, r in zip(failed, reasons)}

    @property
    def root(self) -> Path:
        return Path(str(self.file.attrs["dataset_root"]))

    # -- extractors and features ---------------------------------------------------------------
    @property
    def extractors(self) -> dict[str, dict]:
        """Extractor name -> its provenance attributes (``outputs`` decoded)."""
        out = {}
        for name, g in self.file["features"].items():
            attrs = {k: decode_attr(v) for k, v in g.attrs.items()}
            out[name] = attrs
        return out

    @property
    def feature_names(self) -> list[str]:
        return [f"{e}/{o}" for e, g in self.file["features"].items() for o in g]

    def dataset(self, feature: str) -> h5py.Dataset:
        key = f"features/{feature}"
        if feature.count("/") != 1 or key not in self.file:
            raise ConfigError(
                f"unknown feature {feature!r} in {self.path.name}; available: {', '.join(self.feature_names)}"
            )
        return self.file[key]

    def layer_outputs(self, extractor: str) -> list[str]:
        """The layer datasets of `extractor` (``resnet50/layers.layer1.0`` ...), by depth."""
        if extractor not in self.file["features"]:
            raise ConfigError(
                f"unknown extractor {extractor!r} in {self.path.name}; available: {', '.join(self.file['features'])}"
            )
        g = self.file["features"][extractor]
        names = [o for o in g if "depth" in g[o].attrs and o.startswith(LAYER_PREFIX)]
        names.sort(key=lambda o: float(g[o].attrs["depth"]))
        return [f"{extractor}/{o}" for o in names]

    def layer_info(self, feature: str) -> dict | None:
        """A layer dataset's recorded name, relative depth and dimension; None for other outputs."""
        ds = self.dataset(feature)
        if "depth" not in ds.attrs or not feature.split("/")[1].startswith(LAYER_PREFIX):
            return None
        info = {k: decode_attr(ds.attrs[k]) for k in ("layer", "depth", "dim", "source_dim") if k in ds.attrs}
        return {"feature": feature, **info}

    def resolve_features(self, features: Sequence[str]) -> list[str]:
        """Expand ``color/*`` or a bare extractor name ``color`` to all its outputs, in file order,
        and ``resnet50/layers`` to its layer datasets, by depth."""
        out: list[str] = []
        for f in features:
            if f.endswith("/" + LAYERS) and f.count("/") == 1:
                layers = self.layer_outputs(f.split("/")[0])
                if not layers:
                    raise ConfigError(
                        f"{self.path.name} has no layers of {f.split('/')[0]}; extract them with "
                        f"--backbone SPEC@layers (e.g. tv:mobilenet_v2@pool,layers)"
                    )
                out += layers
                continue
            ext = f[:-2] if f.endswith("/*") else f if "/" not in f else None
            if ext is not None:
                if ext not in self.file["features"]:
                    raise ConfigError(
                        f"unknown extractor {ext!r} in {self.path.name}; available: "
                        f"{', '.join(self.file['features'])}"
                    )
                out += [f"{ext}/{o}" for o in self.file["features"][ext]]
            else:
                self.dataset(f)
                out.append(f)
        return out

    def rows_for_ids(self, ids: Sequence[str]) -> np.ndarray:
        pos = {k: i for i, k in enumerate(self.ids.tolist())}
        missing = [k for k in ids if k not in pos]
        if missing:
            raise DatasetError(f"{len(missing)} ids are not in {self.path.name}, e.g. {missing[:5]}")
        return np.array([pos[k] for k in ids], dtype=np.int64)

    def read(
        self, feature: str | Sequence[str], rows: np.ndarray | None = None, ids: Sequence[str] | None = None
    ) -> np.ndarray:
        """Features as float32 (n, D); several features are concatenated in the order given.

        Rows that are not ``ok`` come back as NaN, so they cannot be used by mistake.
        """
        names = self.resolve_features([feature] if isinstance(feature, str) else list(feature))
        if ids is not None:
            rows = self.rows_for_ids(ids)
        rows = np.arange(len(self)) if rows is None else np.asarray(rows, dtype=np.int64)
        status = self.status[rows]
        parts = [read_dataset_rows(self.dataset(n), rows) for n in names]
        out = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        out[status != OK] = np.nan
        return out

    def iter_chunks(
        self, feature: str | Sequence[str], batch_rows: int = 65536
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, features) of ``ok`` rows, `batch_rows` at a time, in bounded memory."""
        status = self.status
        for start in range(0, len(self), batch_rows):
            rows = np.arange(start, min(start + batch_rows, len(self)))
            x = self.read(feature, rows=rows)
            keep = status[rows] == OK
            if keep.all():  # no copy of the chunk in the common case
                yield rows, x
            else:
                yield rows[keep], x[keep]
            del x  # not held while the next chunk is read

    def labels(self) -> dict[str, np.ndarray]:
        g = self.file["labels"]
        out = {
            "category": np.asarray(g["category"].asstr()[:], dtype=object),
            "split": np.asarray(g["split"].asstr()[:], dtype=object),
            "valence": g["valence"][:].astype(np.float64),
            "arousal": g["arousal"][:].astype(np.float64),
            "fold": g["fold"][:],
        }
        if "distribution" in g:
            out["distribution"] = g["distribution"][:].astype(np.float64)
            out["categories"] = read_categories(g)
        return out

    # -- writing -------------------------------------------------------------------------------
    def write_block(
        self, rows: np.ndarray, features: dict[str, np.ndarray], ok: np.ndarray, errors: dict[int, str]
    ) -> None:
        """Write features of `rows` (sorted) where `ok`, NaN elsewhere, then mark their status.

        The features are flushed before the status, so a kill in between leaves the rows pending.
        """
        rows = np.asarray(rows, dtype=np.int64)
        sl = (
            slice(int(rows[0]), int(rows[-1]) + 1)
            if rows.size and rows[-1] - rows[0] + 1 == rows.size
            else rows
        )
        for name, values in features.items():
            ds = self.dataset(name)
            block = np.full((rows.size, ds.shape[1]), np.nan, dtype=ds.dtype)
            block[ok] = values
            ds[sl] = block
        self.file.flush()
        status = np.where(ok, OK, FAILED).astype(np.uint8)
        for r, reason in errors.items():
            self.file["items/error"][int(r)] = _truncate_utf8(reason, ERROR_BYTES)
        self.file["items/status"][sl] = status
        self.file.flush()

    def record_run(self, record: dict) -> int:
        """Store a run's description in the first free slot; returns its number."""
        runs = self.file["provenance/runs"]
        used = runs[:]
        free = [i for i, r in enumerate(used) if not r]
        if not free:
            log.warning("%s: all %d run slots are used; this run is not recorded", self.path, MAX_RUNS)
            return -1
        runs[free[0]] = _truncate_utf8(json.dumps(record), RUN_BYTES)
        self.file.flush()
        return free[0]

    def runs(self) -> list[dict]:
        return [json.loads(r.decode("utf-8")) for r in self.file["provenance/runs"][:] if r]

    def record_timing(
        self, block: int, run: int, images: int, read_s: float, model_s: float, write_s: float
    ) -> None:
        self.file["provenance/timings"][block] = [run, images, read_s, model_s, write_s, time.time()]

    def timings(self) -> np.ndarray:
        return self.file["provenance/timings"][:]

    # -- summaries -----------------------------------------------------------------------------
    def counts(self) -> dict[str, int]:
        st = self.status
        return {name: int((st == code).sum()) for code, name in STATUS_NAMES.items()}

    def info(self) -> dict:
        """Items, outputs, dimensions and provenance, as printed by `evoked features info`."""
        t = self.timings()
        done = t[~np.isnan(t[:, 1])]
        timing = None
        if done.size:
            images = done[:, 1].sum()
            timing = {
                "blocks": int(done.shape[0]),
                "images": int(images),
                "read_s": float(done[:, 2].sum()),
                "model_s": float(done[:, 3].sum()),
                "write_s": float(done[:, 4].sum()),
            }
        return {
            "path": str(self.path),
            "attrs": self.attrs,
            "items": len(self),
            "status": self.counts(),
            "features": {
                name: {
                    "shape": list(self.dataset(name).shape),
                    "dtype": str(self.dataset(name).dtype),
                    "virtual": bool(self.dataset(name).is_virtual),
                }
                for name in self.feature_names
            },
            "extractors": self.extractors,
            "runs": self.runs(),
            "timing": timing,
        }


#: the netCDF-4 spelling of a dimension that has no coordinate values (what h5netcdf reads and writes)
_NC_DIMENSION = "This is a netCDF dimension but not a netCDF variable.%10d"
#: attributes that HDF5 dimension scales keep on datasets: never copied between files
DIMENSION_ATTRS = frozenset({"CLASS", "NAME", "DIMENSION_LIST", "REFERENCE_LIST", "DIMENSION_LABELS"})


def attach_dimensions(f: h5py.File) -> None:
    """Name the axes of every per-item dataset with HDF5 dimension scales (call at creation time).

    The scales are empty root datasets (no storage): ``/item`` for the rows, ``/<group>.<name>`` for
    a second axis. Root level, because netCDF readers see a dimension only in its group and below.
    """
    n = int(f["items/id"].shape[0])

    def scale(name: str, size: int) -> h5py.Dataset:
        if name not in f:
            f.create_dataset(name, shape=(size,), dtype="f4").make_scale(_NC_DIMENSION % size)
        return f[name]

    datasets: list[h5py.Dataset] = []

    def keep(name: str, obj: object) -> None:
        if name == CATEGORIES:  # K names, not a row axis even when K == N
            return
        if isinstance(obj, h5py.Dataset) and obj.shape and obj.shape[0] == n and obj.ndim <= 2:
            datasets.append(obj)

    for group in ("items", "labels", "features"):
        f[group].visititems(keep)
    item = scale("item", n)
    for ds in datasets:
        ds.dims[0].attach_scale(item)
        if ds.ndim == 2:
            parent, name = ds.name.strip("/").split("/")[-2:]
            ds.dims[1].attach_scale(scale(f"{parent}.{name}", ds.shape[1]))


def read_dataset_rows(ds: h5py.Dataset, rows: np.ndarray) -> np.ndarray:
    """Fancy-index rows quickly: contiguous ranges are read as slices, in sorted order."""
    if rows.size == 0:
        return np.zeros((0, ds.shape[1]), dtype=np.float32)
    if rows[-1] - rows[0] + 1 == rows.size and (np.diff(rows) == 1).all():
        return ds[int(rows[0]) : int(rows[-1]) + 1].astype(np.float32, copy=False)
    order = np.argsort(rows, kind="stable")
    sorted_rows = rows[order]
    uniq, inverse = np.unique(sorted_rows, return_inverse=True)
    lo, hi = int(uniq[0]), int(uniq[-1]) + 1
    if hi - lo <= 4 * uniq.size:  # dense enough: one slice read beats point selection
        data = ds[lo:hi][uniq - lo]
    else:
        data = ds[uniq]
    out = np.empty((rows.size, ds.shape[1]), dtype=np.float32)
    out[order] = data[inverse]
    return out


#: /labels/CATEGORIES names the columns of /labels/distribution
CATEGORIES = "distribution_categories"


def write_categories(labels: h5py.Group, categories: Sequence[str]) -> None:
    """The distribution's category names as a dataset: an HDF5 attribute holds at most 64 KB, which
    20,000 names overflow ("object header message is too large")."""
    labels.create_dataset(CATEGORIES, data=np.array(list(categories), dtype=object), dtype=_STR)


def read_categories(labels: h5py.Group) -> list[str]:
    """The distribution's category names: the dataset, or the attribute of stores written before it."""
    if CATEGORIES in labels:
        return [str(c) for c in labels[CATEGORIES].asstr()[:]]
    return [
        c.decode() if isinstance(c, bytes) else str(c) for c in labels["distribution"].attrs["categories"]
    ]


def decode_attr(v: object) -> Any:
    """An HDF5 attribute as Python: bytes decoded, JSON text parsed, numpy values as plain values."""
    if isinstance(v, bytes):
        v = v.decode("utf-8")
    if isinstance(v, str) and v[:1] in "{[":
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    if isinstance(v, np.ndarray):
        return [x.decode() if isinstance(x, bytes) else x for x in v.tolist()]
    if isinstance(v, np.generic):
        return v.item()
    return v


def open_store(path: str | os.PathLike) -> FeatureStore:
    """Open a feature store for reading."""
    return FeatureStore(path, "r")
