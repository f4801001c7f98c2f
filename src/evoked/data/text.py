"""Text files users hand us (manifests, lexicons): UTF-8 or a clear error naming the line."""

from __future__ import annotations

from pathlib import Path

from evoked.errors import EvokedError


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
