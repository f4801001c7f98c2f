"""Folder datasets: one sub-folder per category, optionally below train/val/test folders.

This is the ImageFolder layout, and the layout of FI, Flickr and Instagram in the two-stage
paper's repository (``root/{train,val,test}/{category}/*.jpg``). Images directly in the root (or
directly in a split folder) are included without a category.
"""

from __future__ import annotations

from pathlib import Path

from evoked.data.datasets import list_images, note_ignored, register_dataset
from evoked.data.manifest import Manifest, normalize_split
from evoked.errors import DatasetError

_SPLIT_DIRS = {"train", "training", "val", "valid", "validation", "dev", "test", "testing"}


def _has_split_level(root: Path) -> bool:
    subdirs = [d.name.lower() for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")]
    return bool(subdirs) and all(d in _SPLIT_DIRS for d in subdirs)


@register_dataset(
    "folder",
    detect=lambda p: p.is_dir(),
    aliases=("fi", "flickr", "instagram"),
    help="ROOT/[train|val|test/]CATEGORY/*.jpg (ImageFolder; FI, Flickr, Instagram)",
    priority=-1,  # any directory is a folder dataset: ask the specific kinds first
)
def read_folder(root: Path) -> Manifest:
    if not root.is_dir():
        raise DatasetError(f"folder dataset {str(root)!r} is not a directory")
    images, others = list_images(root)
    split_level = _has_split_level(root)
    paths, category, split = [], [], []
    for p in images:
        parts = p.relative_to(root).parts
        s = ""
        if split_level:
            s = normalize_split(parts[0], f"{p}: ")
            parts = parts[1:]
        paths.append(p.relative_to(root).as_posix())
        category.append(parts[0].lower() if len(parts) > 1 else "")
        split.append(s)
    if not paths:
        raise DatasetError(
            f"no images found under {str(root)!r} (looked for .jpg, .png, .webp, ...); "
            "expected ROOT/CATEGORY/IMAGE or ROOT/SPLIT/CATEGORY/IMAGE"
        )
    return Manifest.build(
        root,
        paths,
        category=category,
        split=split,
        name=root.resolve().name,
        kind="folder",
        notes=note_ignored(others, root, "not an image file by extension"),
    )
