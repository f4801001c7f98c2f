"""Dataset kinds and the ``KIND:PATH`` spec that names a dataset on the command line.

A reader is one decorated function that turns a path into a `Manifest`::

    @register_dataset("emotion6", detect=_looks_like_emotion6, help="...")
    def read_emotion6(path: Path) -> Manifest: ...

`load_dataset("emotion6:../data/emotion6")` picks the reader by its prefix; without a prefix the
kinds' ``detect`` functions are asked, highest ``priority`` first.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from evoked.data.manifest import Manifest
from evoked.errors import DatasetError

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

Reader = Callable[[Path], Manifest]


@dataclass(frozen=True)
class DatasetKind:
    name: str
    read: Reader
    detect: Callable[[Path], bool] | None
    help: str
    priority: int = 0
    pattern: bool = False  # PATH is a pattern (braces, glob) that the reader expands itself


_KINDS: dict[str, DatasetKind] = {}


def register_dataset(
    name: str,
    *,
    detect: Callable[[Path], bool] | None = None,
    aliases: tuple[str, ...] = (),
    help: str = "",
    priority: int = 0,
    pattern: bool = False,
) -> Callable[[Reader], Reader]:
    """Register a reader under `name` (and `aliases`) for ``NAME:PATH`` specs.

    Detection asks kinds with a higher `priority` first; a catch-all reader registers a negative one.
    """

    def deco(fn: Reader) -> Reader:
        for key in (name, *aliases):
            if key in _KINDS:
                raise ValueError(f"dataset kind {key!r} is registered twice")
            _KINDS[key] = DatasetKind(key, fn, detect if key == name else None, help, priority, pattern)
        return fn

    return deco


def list_dataset_kinds() -> dict[str, str]:
    """Kind name -> one-line description."""
    return {k: v.help for k, v in _KINDS.items()}


def split_spec(spec: str) -> tuple[str | None, str]:
    """``"emotion6:/data/e6"`` -> ``("emotion6", "/data/e6")``; ``"/data/e6"`` -> ``(None, "/data/e6")``."""
    head, sep, tail = spec.partition(":")
    if sep and head.lower() in _KINDS:
        return head.lower(), tail
    if sep and len(head) > 1 and not os.path.exists(spec) and "/" not in head and "\\" not in head:
        raise DatasetError(
            f"unknown dataset kind {head!r} in {spec!r}; known kinds: {', '.join(sorted(_KINDS))}. "
            "Write KIND:PATH, e.g. emotion6:data/emotion6 or folder:images/"
        )
    return None, spec


def load_dataset(spec: str | os.PathLike | Manifest) -> Manifest:
    """Read a dataset from ``KIND:PATH`` (or a bare PATH whose kind is detected)."""
    if isinstance(spec, Manifest):
        return spec
    kind, raw_path = split_spec(os.fspath(spec))
    path = Path(raw_path).expanduser()
    if not path.exists() and not (kind and _KINDS[kind].pattern):
        raise DatasetError(f"dataset path {str(path)!r} does not exist (from {os.fspath(spec)!r})")
    if kind is None:
        for k in sorted(_KINDS.values(), key=lambda k: -k.priority):
            if k.detect is not None and k.detect(path):
                kind = k.name
                break
        else:
            raise DatasetError(
                f"cannot tell what kind of dataset {str(path)!r} is; write KIND:PATH with KIND one of "
                f"{', '.join(sorted(_KINDS))}"
            )
    return _KINDS[kind].read(path)


def list_images(directory: Path) -> tuple[list[Path], list[Path]]:
    """Image files below `directory` (sorted) and the other files found there (not images).

    Hidden files (``.DS_Store``, ``._x.jpg``) count as other files, so callers can report them.
    """
    images, others = [], []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in sorted(filenames):
            p = Path(dirpath) / fn
            if not fn.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS:
                images.append(p)
            else:
                others.append(p)
    return images, others


def note_ignored(others: list[Path], root: Path, why: str) -> list[str]:
    """A reader's note listing files it did not include, with a few examples."""
    if not others:
        return []
    rel = [p.relative_to(root).as_posix() if p.is_relative_to(root) else str(p) for p in others]
    shown = ", ".join(rel[:5]) + (f", ... ({len(rel)} in all)" if len(rel) > 5 else "")
    return [f"{len(rel)} files not included ({why}): {shown}"]
