"""`evoked data inspect`: what a dataset holds, and every file that is missing or fails to decode."""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from evoked.data.decode import DEFAULT_MAX_PIXELS, decode_rgb, probe, read_bytes
from evoked.data.manifest import Manifest
from evoked.data.webdataset import Reader, member_reader
from evoked.errors import DecodeError


def check_file(
    path: str, *, decode: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS, read: Reader = read_bytes
) -> str | None:
    """None if the file reads (and decodes), else the reason it does not."""
    try:
        data = read(path)
        if decode:
            decode_rgb(data, path, max_pixels)
        else:
            probe(data, path, max_pixels)
    except DecodeError as e:
        return e.reason
    return None


def _range(x: np.ndarray) -> dict | None:
    known = x[~np.isnan(x)]
    if not known.size:
        return None
    return {
        "n": int(known.size),
        "min": float(known.min()),
        "max": float(known.max()),
        "mean": float(known.mean()),
        "std": float(known.std()),
    }


def inspect_dataset(
    manifest: Manifest,
    *,
    check_files: bool = True,
    decode: bool = True,
    workers: int | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    on_progress: Callable[[int], None] | None = None,
) -> dict:
    """A JSON-ready summary of `manifest`; with `check_files`, every file is read (and decoded)."""
    report: dict = {
        "name": manifest.name,
        "kind": manifest.kind,
        "root": str(manifest.root),
        "items": len(manifest),
        "categories": manifest.category_counts(),
        "unlabeled_category": int(sum(1 for c in manifest.category if not c)),
        "distribution_categories": list(manifest.categories),
        "with_distribution": int(manifest.has_distribution.sum()),
        "valence": _range(manifest.valence),
        "arousal": _range(manifest.arousal),
        "splits": manifest.split_counts(),
        "folds": {
            int(k): int(v) for k, v in zip(*np.unique(manifest.fold[manifest.fold >= 0], return_counts=True))
        },
        "notes": list(manifest.notes),
    }
    warnings = []
    for dim in ("valence", "arousal"):
        r = report[dim]
        if r and (r["min"] < 1 or r["max"] > 9):
            warnings.append(
                f"{dim} ranges {r['min']:g}..{r['max']:g}, outside the 1..9 scale that category-derived VA uses"
            )
    report["warnings"] = warnings
    failures = []
    if check_files:
        paths = [str(p) for p in manifest.abspaths()]
        read = member_reader(manifest) if manifest.kind == "webdataset" else read_bytes  # images in tars
        with ThreadPoolExecutor(max_workers=workers or min(8, (os.cpu_count() or 1) + 2)) as pool:
            reasons = pool.map(
                lambda p: check_file(p, decode=decode, max_pixels=max_pixels, read=read), paths
            )
            for i, reason in enumerate(reasons):
                if reason is not None:
                    failures.append({"id": manifest.ids[i], "path": paths[i], "reason": reason})
                if on_progress:
                    on_progress(1)
    report["checked_files"] = bool(check_files)
    report["failures"] = failures
    return report


def format_report(report: dict) -> str:
    """The human-readable form printed by `evoked data inspect`."""
    lines = [
        f"dataset  {report['name']}  ({report['kind']}, root {report['root']})",
        f"items    {report['items']}",
    ]
    cats = report["categories"]
    if cats:
        lines.append(f"categories ({len(cats)}):")
        width = max(len(c) for c in cats)
        lines += [f"  {c:<{width}}  {n}" for c, n in cats.items()]
    if report["unlabeled_category"]:
        lines.append(f"  (no category: {report['unlabeled_category']})")
    if report["distribution_categories"]:
        lines.append(
            f"distribution over {', '.join(report['distribution_categories'])}: {report['with_distribution']} items"
        )
    for dim in ("valence", "arousal"):
        r = report[dim]
        lines.append(
            f"{dim:<8} {r['min']:.2f} .. {r['max']:.2f}  mean {r['mean']:.2f}  (n={r['n']})"
            if r
            else f"{dim:<8} none"
        )
    splits = report["splits"]
    lines.append(
        "splits   " + (", ".join(f"{k or 'none'} {v}" for k, v in splits.items()) if splits else "none")
    )
    if report["folds"]:
        lines.append("folds    " + ", ".join(f"{k}: {v}" for k, v in report["folds"].items()))
    for note in report["notes"]:
        lines.append(f"note     {note}")
    for w in report["warnings"]:
        lines.append(f"warning  {w}")
    if report["checked_files"]:
        fails = report["failures"]
        lines.append(f"failures {len(fails)}")
        lines += [f"  {f['path']}: {f['reason']}" for f in fails]
    else:
        lines.append("failures not checked (--no-check)")
    return "\n".join(lines)
