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
from pathlib import Path

from evoked.data.manifest import Manifest
from evoked.errors import DatasetError
from evoked.registry import Registry

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}
)

Reader = Callable[[Path], Manifest]

#: Dataset kinds: a reader ``read(path) -> Manifest`` per ``KIND:PATH`` prefix. Extras: ``detect``
#: (path -> bool, asked highest ``priority`` first when a spec has no prefix) and ``pattern`` (PATH
#: is a pattern, braces or glob, that the reader expands itself). The readers register on import.
DATASETS: Registry[Reader] = Registry(
    "dataset kind",
    builtins=tuple(
        f"evoked.data.{m}" for m in ("emotion6", "folder", "ldl", "parquet", "tabular", "webdataset")
    ),
    error=DatasetError,
    fix="Write KIND:PATH, e.g. emotion6:data/emotion6 or folder:images/",
)


#: ``@register_dataset(name, help=..., aliases=(), detect=None, priority=0, pattern=False)``
register_dataset = DATASETS.register


def split_spec(spec: str) -> tuple[str | None, str]:
    """``"emotion6:/data/e6"`` -> ``("emotion6", "/data/e6")``; ``"/data/e6"`` -> ``(None, "/data/e6")``."""
    head, sep, tail = spec.partition(":")
    if sep and head.lower() in DATASETS:
        return head.lower(), tail
    if sep and len(head) > 1 and not os.path.exists(spec) and "/" not in head and "\\" not in head:
        raise DATASETS.unknown(head)
    return None, spec


def spec_path(spec: str) -> str:
    """The PATH of ``KIND:PATH`` when KIND is a registered dataset kind, else `spec` whole (no error)."""
    head, sep, tail = spec.partition(":")
    return tail if sep and head.lower() in DATASETS else spec


def load_dataset(spec: str | os.PathLike | Manifest) -> Manifest:
    """Read a dataset from ``KIND:PATH`` (or a bare PATH whose kind is detected)."""
    if isinstance(spec, Manifest):
        return spec
    kind, raw_path = split_spec(os.fspath(spec))
    path = Path(raw_path).expanduser()
    if not path.exists() and not (kind and DATASETS.get(kind).meta.get("pattern")):
        raise DatasetError(f"dataset path {str(path)!r} does not exist (from {os.fspath(spec)!r})")
    if kind is None:
        detectors = [e for e in DATASETS if e.meta.get("detect") and "alias_of" not in e.meta]
        for e in sorted(detectors, key=lambda e: -e.meta.get("priority", 0)):
            if e.meta["detect"](path):
                kind = e.name
                break
        else:
            raise DatasetError(
                f"cannot tell what kind of dataset {str(path)!r} is; write KIND:PATH with KIND one of "
                f"{DATASETS.describe()}"
            )
    return DATASETS.load(kind)(path)


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
