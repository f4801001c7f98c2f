"""Files users hand us (manifests, lexicons, prediction tables): UTF-8 text, table rows, and cells.

One reader for tables (`read_rows`: CSV/TSV, JSON lines, parquet) and one parser for number cells
(`parse_float`, `parse_int`) with one set of missing-value tokens, `MISSING`, used by every table
evoked reads.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from evoked.errors import DatasetError, EvokedError

# a cell holding one of these (any case, spaces around ignored), or nothing at all, is missing
MISSING = frozenset({"", "nan", "na", "n/a", "none", "null"})


def read_utf8(path: Path, what: str, error: type[EvokedError]) -> str:
    """The file as text (a BOM is dropped); bytes that are not UTF-8 raise `error` naming the line,
    the byte and the fix. `what` names the file's role in the message ("manifest", "lexicon")."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise error(
            f"{path}:{line}: byte {data[e.start : e.start + 1].hex()} at offset {e.start} is not UTF-8; "
            f"save the {what} as UTF-8 (e.g. iconv -f latin1 -t utf-8)"
        ) from e


def parse_float(
    value: object, where: str, column: str, *, error: type[EvokedError] = DatasetError, required: bool = False
) -> float:
    """A number cell as a float: None, NaN or a `MISSING` token is NaN, or an error when `required`.

    Infinite values and text that is not a number raise `error` naming `where`, `column` and the value.
    """
    x = math.nan
    if value is not None and not (isinstance(value, str) and value.strip().lower() in MISSING):
        try:
            if isinstance(value, bool):  # JSON true/false is not a rating
                raise TypeError
            x = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise error(f"{where}: {column} {value!r} is not a number (leave it empty if unknown)") from None
        if math.isinf(x):
            raise error(f"{where}: {column} {value!r} is infinite; write a finite number or leave it empty")
    if required and math.isnan(x):
        raise error(f"{where}: no {column} value; fill it in (a number)")
    return x


def parse_int(
    value: object,
    where: str,
    column: str,
    *,
    missing: int = -1,
    minimum: int | None = None,
    error: type[EvokedError] = DatasetError,
) -> int:
    """A whole-number cell (``3`` or ``3.0``); missing gives `missing`. Anything else raises `error`."""
    x = parse_float(value, where, column, error=error)
    if math.isnan(x):
        return missing
    if x != int(x) or (minimum is not None and x < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise error(f"{where}: {column} {value!r} must be a whole number{bound} (leave it empty for none)")
    return int(x)


def read_rows(
    path: Path, what: str = "table", error: type[EvokedError] = DatasetError, *, short_rows: bool = False
) -> tuple[list[dict], str]:
    """The rows of a CSV/TSV, JSON-lines or parquet table as dicts, and the format's name.

    Each row has its line number (1 = first data row for parquet) in ``__line__`` for messages.
    A CSV/TSV row with more fields than the header is an error naming its line, and so is one with
    fewer unless `short_rows` (its missing fields are then None, for the caller to name).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        from evoked.data.parquet import read_parquet_rows  # pyarrow is imported for parquet only

        return read_parquet_rows(path), "parquet"
    text = read_utf8(path, what, error)
    if suffix in (".jsonl", ".json", ".ndjson"):
        return _jsonl_rows(text, path, error), "jsonl"
    delimiter = "\t" if suffix in (".tsv", ".txt", ".tab") else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    if not reader.fieldnames:
        raise error(f"{path}: empty file; a {what} needs a header line naming its columns")
    rows = []
    for lineno, row in enumerate(reader, 2):
        if None in row:
            raise error(f"{path}:{lineno}: more fields than header columns")
        if None in row.values() and not short_rows:
            have = sum(v is not None for v in row.values())
            raise error(
                f"{path}:{lineno}: {have} fields, the header has {len(reader.fieldnames)}; "
                "leave unknown values empty but keep their commas"
            )
        row = {k.strip(): v for k, v in row.items()}
        row["__line__"] = lineno
        rows.append(row)
    return rows, "csv"


def _jsonl_rows(text: str, path: Path, error: type[EvokedError]) -> list[dict]:
    lines = enumerate(text.splitlines(), 1)
    return [
        parse_json_object(line, f"{path}:{n}", error) | {"__line__": n} for n, line in lines if line.strip()
    ]


def parse_json_object(text: str, where: str, error: type[EvokedError] = DatasetError) -> dict:
    """`text` as a JSON object; anything else raises `error` naming `where`."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e.msg} at {e.pos})") from e
    if not isinstance(obj, dict):
        raise error(f"{where}: must hold a JSON object, not {type(obj).__name__}")
    return obj
