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
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

from evoked.errors import DatasetError, EvokedError

# a cell holding one of these (any case, spaces around ignored), or nothing at all, is missing
MISSING = frozenset({"", "nan", "na", "n/a", "none", "null"})

# a cell longer than this is no path, label or number: csv's own limit, named in our message
CELL_LIMIT = csv.field_size_limit()


def shown(value: object, width: int = 60) -> str:
    """`value`'s repr cut to `width` characters, for messages about cells that may be huge."""
    r = repr(value)
    return r if len(r) <= width else f"{r[: width - 15]}...({len(r)} chars)"


def regular_file(path: Path, what: str, error: type[EvokedError]) -> Path:
    """`path` when it is a regular file (a symlink to one is fine); a folder, FIFO, device or a
    missing file raises `error` naming the path: a FIFO would block the read forever."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError) as e:
        raise error(f"{what} {str(path)!r} cannot be read ({getattr(e, 'strerror', None) or e})") from e
    if stat.S_ISDIR(mode):
        raise error(f"{what} {str(path)!r} is a folder; give the {what} file itself")
    if not stat.S_ISREG(mode):
        raise error(f"{what} {str(path)!r} is not a regular file (a FIFO, socket or device); give a file")
    return path


def read_utf8(path: Path, what: str, error: type[EvokedError]) -> str:
    """The file as text (a BOM is dropped); bytes that are not UTF-8 raise `error` naming the line,
    the byte and the fix. `what` names the file's role in the message ("manifest", "lexicon")."""
    data = regular_file(path, what, error).read_bytes()
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
        except (TypeError, ValueError, OverflowError):
            raise error(
                f"{where}: {column} {shown(value)} is not a number (leave it empty if unknown)"
            ) from None
        if math.isinf(x):
            raise error(
                f"{where}: {column} {shown(value)} is infinite; write a finite number or leave it empty"
            )
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
        raise error(
            f"{where}: {column} {shown(value)} must be a whole number{bound} (leave it empty for none)"
        )
    return int(x)


def read_rows(
    path: Path, what: str = "table", error: type[EvokedError] = DatasetError, *, short_rows: bool = False
) -> tuple[list[dict], str]:
    """The rows of a CSV/TSV, JSON-lines or parquet table as dicts, and the format's name.

    Each row has its line number (1 = first data row for parquet) in ``__line__`` for messages.
    A CSV/TSV row with more fields than the header is an error naming its line, and so is one with
    fewer unless `short_rows` (its missing fields are then None, for the caller to name).
    """
    rows, fmt = iter_rows(path, what, error, short_rows=short_rows)
    return list(rows), fmt


def iter_rows(
    path: Path,
    what: str = "table",
    error: type[EvokedError] = DatasetError,
    *,
    short_rows: bool = False,
    columns: Callable[[str], bool] | None = None,
) -> tuple[Iterator[dict], str]:
    """`read_rows` one row at a time (a million-row manifest is never held as a million dicts).

    `columns(name)` says which parquet columns to read (the others are never loaded).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        from evoked.data.parquet import iter_parquet_rows  # pyarrow is imported for parquet only

        return iter_parquet_rows(regular_file(path, what, error), columns), "parquet"
    text = read_utf8(path, what, error)
    if suffix in (".jsonl", ".json", ".ndjson"):
        return _jsonl_rows(text, path, error), "jsonl"
    delimiter = "\t" if suffix in (".tsv", ".txt", ".tab") else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = reader.fieldnames
    except csv.Error as e:
        raise error(f"{path}:1: {e}; a header cell holds a column name") from None
    if not header:
        raise error(f"{path}: empty file; a {what} needs a header line naming its columns")
    return _csv_rows(reader, path, what, error, short_rows), "csv"


def _csv_rows(
    reader: csv.DictReader, path: Path, what: str, error: type[EvokedError], short_rows: bool
) -> Iterator[dict]:
    width = len(reader.fieldnames or ())
    lineno = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:  # a cell over CELL_LIMIT characters (or a broken quote)
            raise error(
                f"{path}:{lineno + 1}: {e}; a {what} cell holds a path, a label or a number "
                f"(at most {CELL_LIMIT} characters): check the quoting of that line"
            ) from None
        lineno += 1
        if None in row:
            raise error(f"{path}:{lineno}: more fields than header columns")
        if not short_rows and None in row.values():
            have = sum(v is not None for v in row.values())
            raise error(
                f"{path}:{lineno}: {have} fields, the header has {width}; "
                "leave unknown values empty but keep their commas"
            )
        row = {k.strip(): v for k, v in row.items()}
        row["__line__"] = lineno
        yield row


def _jsonl_rows(text: str, path: Path, error: type[EvokedError]) -> Iterator[dict]:
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield parse_json_object(line, f"{path}:{n}", error) | {"__line__": n}


def parse_json_object(text: str, where: str, error: type[EvokedError] = DatasetError) -> dict:
    """`text` as a JSON object; anything else raises `error` naming `where`."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{where}: not valid JSON ({e.msg} at {e.pos})") from e
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply to read; a label object is a few levels deep") from None
    except ValueError as e:  # an integer of more than 4300 digits
        raise error(
            f"{where}: JSON holds a number evoked cannot read ({e}); write labels as short numbers"
        ) from None
    if not isinstance(obj, dict):
        raise error(f"{where}: must hold a JSON object, not {type(obj).__name__}")
    return obj
