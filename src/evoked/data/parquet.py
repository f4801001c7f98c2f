"""Parquet manifests: ``parquet:FILE`` with the columns of a CSV manifest (see `evoked.data.tabular`).

pyarrow reads the table; each row then goes through the same column rules as a CSV row (aliases,
``p_<category>`` distributions, paths relative to the file's folder). A ``distribution`` column of
structs or maps (``{"joy": 0.7, "fear": 0.3}``) is accepted, as in JSON-lines manifests.
"""

from __future__ import annotations

from pathlib import Path

from evoked.data.datasets import register_dataset
from evoked.data.manifest import Manifest
from evoked.errors import DatasetError


def read_parquet_rows(path: Path) -> list[dict]:
    """Rows of a parquet file as dicts, numbered from 1 in ``__line__`` (read through `text.read_rows`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise DatasetError(f"{path} is not a readable parquet file ({e})") from e
    rows: list[dict] = []
    for batch in pf.iter_batches(batch_size=65536):
        for row in batch.to_pylist():
            if isinstance(row.get("distribution"), list):  # a map column comes back as (key, value) pairs
                row["distribution"] = dict(row["distribution"])
            row["__line__"] = len(rows) + 1
            rows.append(row)
    return rows


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
