"""Parquet manifests: ``parquet:FILE`` with the columns of a CSV manifest (see `evoked.data.tabular`).

pyarrow reads the table; each row then goes through the same column rules as a CSV row (aliases,
``p_<category>`` distributions, paths relative to the file's folder). A ``distribution`` column of
structs or maps (``{"joy": 0.7, "fear": 0.3}``) is accepted, as in JSON-lines manifests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from evoked.data.datasets import register_dataset
from evoked.data.manifest import Manifest
from evoked.errors import DatasetError


def iter_parquet_rows(path: Path, columns: Callable[[str], bool] | None = None) -> Iterator[dict]:
    """Rows of a parquet file as dicts, numbered from 1 in ``__line__`` (read through `text.iter_rows`).

    Only the columns `columns(name)` accepts are read: a huge column the manifest does not use is
    never loaded. Columns of a type that is neither text nor a number (binary, list, struct) are
    refused before any row is read, except a ``distribution`` of structs or maps.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"{path} is not a readable parquet file ({e})") from e
    schema = pf.schema_arrow
    names = [n for n in schema.names if columns is None or columns(n)]
    for name in names:
        _check_type(path, name, schema.field(name).type)
    maps = {n for n in names if pa.types.is_map(schema.field(n).type)}
    line = 0
    try:
        batches = pf.iter_batches(batch_size=8192, columns=names)
        for batch in batches:
            for row in batch.to_pylist():
                for n in maps:  # a map column comes back as (key, value) pairs
                    if row[n] is not None:
                        row[n] = dict(row[n])
                line += 1
                row["__line__"] = line
                yield row
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{path}: cannot read the parquet rows after row {line} ({e})") from e


def _check_type(path: Path, name: str, dtype: object) -> None:
    import pyarrow as pa

    t = pa.types
    if t.is_dictionary(dtype):
        dtype = dtype.value_type  # type: ignore[attr-defined]
    if name.strip().lower() == "distribution":
        if (t.is_struct(dtype) or t.is_map(dtype)) and not any(t.is_nested(f.type) for f in _fields(dtype)):
            return
        raise DatasetError(
            f"{path}: column {name!r} is {dtype}; a distribution names its categories: write it as a "
            "struct or map such as {joy: 0.7, fear: 0.3}, or as one p_<category> column per category"
        )
    if t.is_string(dtype) or t.is_large_string(dtype) or t.is_integer(dtype) or t.is_floating(dtype):
        return
    if t.is_null(dtype) or t.is_decimal(dtype):
        return
    what = "bytes" if t.is_binary(dtype) or t.is_large_binary(dtype) else str(dtype)
    raise DatasetError(
        f"{path}: column {name!r} holds {what}; evoked reads one text or number per cell (one path, one "
        f"category): cast the column to string (pyarrow.compute.cast(col, pa.string())), or keep one value "
        "per row (several categories per image are a distribution: p_<category> columns)"
    )


def _fields(dtype: object) -> list:
    import pyarrow as pa

    if pa.types.is_map(dtype):
        return [dtype.key_field, dtype.item_field]  # type: ignore[attr-defined]
    return [dtype.field(i) for i in range(dtype.num_fields)]  # type: ignore[attr-defined]


def _is_parquet(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in (".parquet", ".pq")


@register_dataset(
    "parquet",
    detect=_is_parquet,
    help="a parquet manifest with the CSV manifest's columns: path[,id,category,valence,arousal,split,...]",
)
def read_parquet_manifest(path: Path) -> Manifest:
    from evoked.data.tabular import read_table

    return read_table(path)
