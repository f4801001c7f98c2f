"""Export a store's features for tools that read npy and parquet, in bounded memory.

Two layouts, chosen with ``--format``:

- ``npy`` (clip-retrieval's, read by autofaiss and clip-retrieval's back end)::

      OUT/img_emb/img_emb_{i}.npy          (rows, D) float32 or float16
      OUT/metadata/metadata_{i}.parquet    id, path, status, category, valence, arousal, split, fold, p_<c>

  row j of ``img_emb_{i}.npy`` is row j of ``metadata_{i}.parquet``. Several features are
  concatenated in the order given (`_export.json` says where each one starts; a leading underscore keeps it out of
  ``pyarrow.parquet.read_table(OUT)``).
- ``parquet``: ``OUT/features_{i}.parquet`` with the metadata columns and one fixed-size-list
  column per feature, named as in the store (``color/stats``).

Only ``ok`` rows are exported; failed and pending rows are left out and counted. File numbers
are zero-padded to the width of the file count, as clip-retrieval does. The export is written
under a temporary name next to OUT (``.OUT.partial-PID``) and renamed at the end, so a killed
export leaves no half OUT, and the next export into OUT removes what it left. OUT is locked for the
export (`evoked.features.lock`): a second export into it is refused.
"""

from __future__ import annotations

import errno
import glob
import json
import logging
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from evoked import __version__
from evoked.errors import ConfigError
from evoked.features.index import _alive as pid_alive  # the one pid check (stale temporaries)
from evoked.features.lock import output_lock
from evoked.features.store import (
    FAILED,
    OK,
    PENDING,
    FeatureStore,
    open_store,
    read_categories,
    read_dataset_rows,
)
from evoked.registry import Registry

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

EXPORT_DTYPES = ("float32", "float16")
#: rows per read: about 32 MB of float32 features, whatever their width
CHUNK_BYTES = 32 << 20


@dataclass
class ExportSummary:
    out: str
    format: str
    features: dict[str, int]  # name -> dimension, in column order
    dtype: str
    normalized: bool
    rows: int
    files: list[str] = field(default_factory=list)
    left_out_failed: int = 0
    left_out_pending: int = 0


#: Output layouts (``--format``): a writer class per name.
EXPORT_FORMATS: Registry[type[_Writer]] = Registry("export format")


class _Writer:
    """One output layout: `write` takes consecutive exported rows; files roll over every N rows."""

    concatenates = False  # several features become one matrix (else: one column each)

    def __init__(self, out: Path, features: dict[str, int], dtype: str, total: int, rows_per_file: int):
        self.out, self.features, self.dtype = out, features, np.dtype(dtype)
        self.total, self.per_file = total, rows_per_file
        self.n_files = max(1, -(-total // rows_per_file))
        self.width = int(math.log10(self.n_files)) + 1
        self.files: list[str] = []
        self.done = 0

    def name(self, i: int) -> str:
        return str(i).zfill(self.width)

    def write(self, meta: pa.Table, x: np.ndarray) -> None:
        """`meta` is a pyarrow table of the rows' metadata, `x` their (rows, sum of D) features."""
        at = 0
        while at < len(x):
            file_ix, in_file = divmod(self.done, self.per_file)
            take = min(len(x) - at, self.per_file - in_file)
            if in_file == 0:
                self.open(file_ix, min(self.per_file, self.total - self.done))
            self.append(meta.slice(at, take), x[at : at + take])
            at += take
            self.done += take
            if self.done % self.per_file == 0 or self.done == self.total:
                self.close_file()

    def open(self, i: int, rows: int) -> None:
        raise NotImplementedError

    def append(self, meta: pa.Table, x: np.ndarray) -> None:
        raise NotImplementedError

    def close_file(self) -> None:
        raise NotImplementedError


@EXPORT_FORMATS.register("npy", help="OUT/img_emb/img_emb_{i}.npy + OUT/metadata/metadata_{i}.parquet")
class NpyWriter(_Writer):
    concatenates = True  # several features become one matrix
    meta_writer: Any  # a pyarrow ParquetWriter, opened with the file's first rows (their schema)

    def open(self, i: int, rows: int) -> None:
        import pyarrow.parquet as pq

        (self.out / "img_emb").mkdir(exist_ok=True)
        (self.out / "metadata").mkdir(exist_ok=True)
        emb = self.out / "img_emb" / f"img_emb_{self.name(i)}.npy"
        meta = self.out / "metadata" / f"metadata_{self.name(i)}.parquet"
        # the header first, then the rows as they come: no memory map, whose written pages would
        # count as this process's memory until the kernel writes them back
        self.fh = emb.open("wb")
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False}
        np.lib.format.write_array_header_1_0(
            self.fh, {**header, "shape": (rows, sum(self.features.values()))}
        )
        self.meta_path, self.pq, self.meta_writer = meta, pq, None
        self.files += [str(emb.relative_to(self.out)), str(meta.relative_to(self.out))]

    def append(self, meta: pa.Table, x: np.ndarray) -> None:
        self.fh.write(np.ascontiguousarray(x, dtype=self.dtype).tobytes())
        if self.meta_writer is None:
            self.meta_writer = self.pq.ParquetWriter(self.meta_path, meta.schema)
        self.meta_writer.write_table(meta)

    def close_file(self) -> None:
        self.fh.close()
        self.meta_writer.close()


@EXPORT_FORMATS.register("parquet", help="OUT/features_{i}.parquet, one list column per feature")
class ParquetWriter(_Writer):
    writer: Any  # a pyarrow ParquetWriter, opened with the file's first rows (their schema)

    def open(self, i: int, rows: int) -> None:
        import pyarrow.parquet as pq

        self.path = self.out / f"features_{self.name(i)}.parquet"
        self.pq, self.writer = pq, None
        self.files.append(self.path.name)

    def append(self, meta: pa.Table, x: np.ndarray) -> None:
        import pyarrow as pa

        table, at = meta, 0
        for name, dim in self.features.items():
            values = pa.array(np.ascontiguousarray(x[:, at : at + dim], dtype=self.dtype).reshape(-1))
            table = table.append_column(name, pa.FixedSizeListArray.from_arrays(values, dim))
            at += dim
        if self.writer is None:
            self.writer = self.pq.ParquetWriter(self.path, table.schema)
        self.writer.write_table(table)

    def close_file(self) -> None:
        self.writer.close()


def export_features(
    store: str | os.PathLike,
    features: Sequence[str],
    *,
    format: str = "npy",
    out: str | os.PathLike,
    rows_per_file: int = 1_000_000,
    normalize: bool = False,
    dtype: str = "float32",
    on_chunk: Callable[[int], None] | None = None,
) -> ExportSummary:
    """Write the `features` of the ok rows of `store` under `out` (an absent or empty folder).

    `normalize` scales each feature of each row to unit L2 norm (in the npy layout several features
    together are then divided by sqrt(count), so that rows are unit vectors for inner-product search).
    `on_chunk(rows_read)` reports progress.
    """
    EXPORT_FORMATS.get(format)
    if dtype not in EXPORT_DTYPES:
        raise ConfigError(f"--dtype {dtype!r}: use one of {', '.join(EXPORT_DTYPES)}")
    if rows_per_file < 1:
        raise ConfigError(f"--rows-per-file {rows_per_file}: must be at least 1")
    if not features:
        raise ConfigError(
            "give at least one --feature, e.g. --feature color/stats (see `evoked features info`)"
        )
    out = _checked_out(Path(out))
    with output_lock(out), open_store(store) as s:  # one export into a folder at a time
        _remove_stale(out)
        names = s.resolve_features(list(features))
        if len(set(names)) != len(names):
            raise ConfigError(f"a feature is given twice: {names}")
        return _export(s, names, format, out, rows_per_file, normalize, dtype, on_chunk)


def _checked_out(out: Path) -> Path:
    """--out, resolved through symlinks and checked before any work: an absent or empty folder."""
    if out.is_symlink() and not out.exists():
        raise ConfigError(
            f"--out {str(out)!r} is a symlink to {os.readlink(out)!r}, which does not exist; create that "
            "folder, or give another --out"
        )
    out = Path(os.path.realpath(out))
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(
            f"--out {str(out)!r} is not an empty folder; export into a new or empty folder "
            "(nothing was written, nothing there is replaced)"
        )
    return out


def _remove_stale(out: Path) -> None:
    """Remove the work folders ``.OUT.partial-PID`` that stopped exports left (their process is gone)."""
    for tmp in out.parent.glob(f".{glob.escape(out.name)}.partial-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and pid_alive(int(pid)) and int(pid) != os.getpid():
            log.warning("%s belongs to process %s, which is still running; left as it is", tmp, pid)
            continue
        log.info("removing %s, left by an export that was stopped", tmp)
        shutil.rmtree(tmp, ignore_errors=True)


def _check_space(out: Path, total: int, dims: dict[str, int], dtype: str) -> None:
    """Refuse an export that cannot fit on the disk of `out` before writing anything."""
    need = total * sum(dims.values()) * np.dtype(dtype).itemsize
    free = shutil.disk_usage(out.parent).free
    if need > free:
        raise ConfigError(
            f"the export needs about {need / 2**20:,.0f} MiB and the disk of {out.parent} has "
            f"{free / 2**20:,.0f} MiB free; free space, export fewer features, use --dtype float16, or give "
            "an --out on another disk"
        )


def _check_range(x: np.ndarray, names: Sequence[str], dims: dict[str, int], dtype: str, meta: pa.Table) -> None:
    """float16 holds at most 65504: a larger value would be written as inf. Name it and the fix."""
    if dtype != "float16":
        return
    big = np.abs(x) > np.finfo(np.float16).max
    if not big.any():
        return
    r, c = (int(v[0]) for v in np.nonzero(big))
    at = 0
    for name in names:
        if c < at + dims[name]:
            break
        at += dims[name]
    raise ConfigError(
        f"--dtype float16: {name} of item {meta.column('id')[r].as_py()!r} is {float(x[r, c]):g}, beyond float16's range "
        f"(+-65504), so it would be written as inf; export with --dtype float32, or with --normalize"
    )


def _export(
    s: FeatureStore, names, format, out: Path, rows_per_file, normalize, dtype, on_chunk
) -> ExportSummary:
    status = s.status
    dims = {n: int(s.dataset(n).shape[1]) for n in names}
    total = int((status == OK).sum())
    if total == 0:
        raise ConfigError(f"{s.path} has no ok rows to export (status: {s.counts()}); extract first")
    _check_space(out, total, dims, dtype)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        writer = EXPORT_FORMATS.load(format)(tmp, dims, dtype, total, rows_per_file)
        step = max(1, CHUNK_BYTES // (4 * sum(dims.values())))
        for start in range(0, len(s), step):
            rows = np.arange(start, min(start + step, len(s)))
            keep = status[rows] == OK
            if keep.any():
                x = np.concatenate([_feature(s, n, rows, normalize) for n in names], axis=1)
                if normalize and len(names) > 1 and writer.concatenates:
                    x /= np.sqrt(len(names))
                meta = _metadata(s.file, rows, keep)
                _check_range(x[keep], names, dims, dtype, meta)
                writer.write(meta, x[keep])
                del x
            if on_chunk:
                on_chunk(len(rows))
        summary = ExportSummary(
            out=str(out), format=format, features=dims, dtype=dtype, normalized=normalize, rows=total,
            files=writer.files, left_out_failed=int((status == FAILED).sum()),
            left_out_pending=int((status == PENDING).sum()),
        )  # fmt: skip
        description = {
            **asdict(summary),
            "store": str(s.path),
            "store_uuid": s.attrs.get("store_uuid", ""),
            "evoked_version": __version__,
            "columns": _offsets(dims),
        }
        (tmp / "_export.json").write_text(json.dumps(description, indent=2) + "\n", "utf-8")
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(tmp, out)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ConfigError(
                f"the disk of {out} is full ({e.strerror}); nothing was kept. Free space, export fewer "
                "features, use --dtype float16, or give an --out on another disk"
            ) from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _offsets(dims: dict[str, int]) -> dict[str, list[int]]:
    """Feature -> [first column, last column + 1] in the npy matrix."""
    out, at = {}, 0
    for n, d in dims.items():
        out[n] = [at, at + d]
        at += d
    return out


def _feature(s: FeatureStore, name: str, rows: np.ndarray, normalize: bool) -> np.ndarray:
    x = read_dataset_rows(s.dataset(name), rows)
    if normalize:
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        np.divide(x, norm, out=x, where=norm > 0)  # an all-zero row stays zero
    return x


def _metadata(f: h5py.File, rows: np.ndarray, keep: np.ndarray):
    """The metadata columns of the kept rows of one chunk, as a pyarrow table."""
    import pyarrow as pa

    sl = slice(int(rows[0]), int(rows[-1]) + 1)
    cols = {
        "id": f["items/id"].asstr()[sl][keep],
        "path": f["items/path"].asstr()[sl][keep],
        "status": np.full(int(keep.sum()), "ok", dtype=object),
        "category": f["labels/category"].asstr()[sl][keep],
        "valence": f["labels/valence"][sl][keep],
        "arousal": f["labels/arousal"][sl][keep],
        "split": f["labels/split"].asstr()[sl][keep],
        "fold": f["labels/fold"][sl][keep],
    }
    if "labels/distribution" in f:
        d = f["labels/distribution"]
        cats = read_categories(f["labels"])
        values = d[sl][keep]
        cols.update({f"p_{c}": values[:, k] for k, c in enumerate(cats)})
    return pa.table({k: pa.array(v.tolist() if v.dtype == object else v) for k, v in cols.items()})
